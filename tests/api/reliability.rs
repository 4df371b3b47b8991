//! Regression tests for the defects a review found (issue 8), each named after what a user would
//! notice, on both databases.

use crate::helpers::{TestApp, TestDatabase, error_code};
use crate::{on_both_databases, on_both_databases_without_app};
use entity::{app_events, crm_inbox, properties, user};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde_json::{Value, json};

fn contact_event(id: &str, crm_id: &str, email: &str, version: i64) -> Value {
    json!({
        "id": id, "type": "contact.created", "changeSource": "ui", "requestId": null, "changedFields": [],
        "object": {
            "type": "contact", "id": crm_id, "externalId": null, "version": version,
            "updatedAt": "2025-01-05T10:00:00.000Z", "deletedAt": null,
            "data": {"firstName": "José", "lastName": "Núñez", "email": email, "phone": null, "companyName": null,
                "role": "owner", "membershipStatus": "active"}
        }
    })
}

async fn register(app: &TestApp, user_id: &str, email: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/api/owner/register", app.address))
        .json(&json!({"name": "José Núñez", "email": email, "userId": user_id}))
        .send()
        .await
        .unwrap()
}

fn owner_event(event_id: &str, user_id: &str, email: &str) -> Value {
    json!({"id": event_id, "type": "owner.registered", "data": {"id": user_id, "name": "José Núñez", "email": email,
        "phone": null, "companyName": null, "role": "owner", "membershipStatus": "pending"}})
}

// --- 4. one email key, folded by Unicode's rules on both databases --------------------------

async fn emails_differing_only_in_unicode_case_or_form_are_one_user(app: TestApp) {
    let first = register(&app, "user_1", "JOSÉ@Example.com").await;
    let lower = register(&app, "user_2", "josé@example.com").await;
    let decomposed = register(&app, "user_3", "jose\u{301}@EXAMPLE.com").await;
    let event = app.post_events(&owner_event("ev_1", "user_4", "José@example.COM")).await;

    assert_eq!(first.status(), StatusCode::CREATED);
    for refused in [lower, decomposed, event] {
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "email_taken");
        assert!(body["error"]["message"].as_str().unwrap().contains("user_1"), "{body}");
    }
    assert_eq!(app_events::Entity::find().count(app.db.reader()).await.unwrap(), 0, "the refused event is not kept");
    // A TreadSoft contact with the email in another case links to the same user.
    assert_eq!(app.deliver(&[contact_event("evt_1", "crm_contact_1", "josé@EXAMPLE.com", 1)]).await, ["applied"]);
    let users = user::Entity::find().all(app.db.reader()).await.unwrap();
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!((users[0].id.as_str(), users[0].crm_id.as_deref()), ("user_1", Some("crm_contact_1")));
}

async fn changing_an_email_to_another_users_is_409(app: TestApp) {
    assert_eq!(app.post_events(&owner_event("ev_1", "user_1", "ÅSA@example.se")).await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.post_events(&owner_event("ev_2", "user_2", "bo@example.se")).await.status(), StatusCode::ACCEPTED);

    let change = json!({"id": "ev_3", "type": "owner.updated", "data": {"id": "user_2", "email": "åsa@EXAMPLE.se"}});
    let response = app.post_events(&change).await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "email_taken");
    let own = json!({"id": "ev_4", "type": "owner.updated", "data": {"id": "user_1", "email": "Åsa@example.se"}});
    assert_eq!(app.post_events(&own).await.status(), StatusCode::ACCEPTED, "a user may change the case of its own");
    let stored = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((stored.email.as_str(), stored.email_key.as_str()), ("Åsa@example.se", "åsa@example.se"));
}

async fn existing_rows_get_their_email_key_when_migrating(database: TestDatabase) {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;
    let db = database.connect().await;
    // The schema before the key: a user stored then, and a second one differing only in non-ASCII case.
    Migrator::up(db.writer(), Some(4)).await.unwrap();
    let insert = r#"INSERT INTO "user" (id, name, email, role, created_at, updated_at, crm_sync_status, membership_status)
        VALUES ('u1', 'A', 'ÉLODIE@example.fr', 'owner', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'pending', 'pending')"#;
    db.writer().execute_unprepared(insert).await.unwrap();

    Migrator::up(db.writer(), None).await.unwrap();

    let stored = user::Entity::find_by_id("u1").one(db.reader()).await.unwrap().unwrap();
    assert_eq!(stored.email_key, "élodie@example.fr");
    let mut twin: user::ActiveModel = stored.into();
    twin.id = Set("u2".into());
    twin.email = Set("élodie@example.fr".into());
    twin.crm_id = Set(None);
    assert!(twin.insert(db.writer()).await.is_err(), "the unique key holds across non-ASCII case");
}

// --- 3. NUL characters and other data the database refuses ----------------------------------

async fn a_nul_character_fails_its_event_alone_and_the_rest_of_the_delivery_commits(app: TestApp) {
    let mut nul_in_data = contact_event("evt_2", "crm_contact_2", "two@example.com", 1);
    nul_in_data["object"]["data"]["companyName"] = json!("Acme\u{0} Ltd");
    let mut nul_in_id = contact_event("evt_3", "crm_contact_\u{0}3", "three@example.com", 1);
    nul_in_id["type"] = json!("contact.created");
    let events = [
        contact_event("evt_1", "crm_contact_1", "one@example.com", 1),
        nul_in_data,
        nul_in_id,
        contact_event("evt_4", "crm_contact_4", "four@example.com", 1),
    ];

    let outcomes = app.deliver(&events).await;

    assert_eq!(outcomes, ["applied", "failed", "failed", "applied"]);
    let row = crm_inbox::Entity::find_by_id("evt_2").one(app.db.reader()).await.unwrap().unwrap();
    assert!(row.reason.as_deref().unwrap().contains("object.data.companyName"), "{:?}", row.reason);
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 2);
    assert_eq!(app.deliver(&events[1..2]).await, ["duplicate"], "the failed event was stored, once");
}

async fn a_nul_character_or_a_negative_amount_from_the_site_is_422_and_writes_nothing(app: TestApp) {
    let mut nul = owner_event("ev_1", "user_1", "a@example.com");
    nul["data"]["name"] = json!("Zo\u{0}ë");
    let nul_id = owner_event("ev_\u{0}2", "user_2", "b@example.com");
    let negative = json!({"events": [
        owner_event("ev_3", "user_3", "c@example.com"),
        {"id": "ev_4", "type": "property.created", "data": {"id": 7, "ownerId": "user_3", "title": "Hall",
            "location": "Haworth", "bedrooms": -2, "pricePerNight": 100, "currency": "GBP", "status": "draft"}},
    ]});
    let registration = register(&app, "user_\u{0}5", "e@example.com").await;

    for (response, field) in [
        (app.post_events(&nul).await, "data.name"),
        (app.post_events(&nul_id).await, "id"),
        (app.post_events(&negative).await, "bedrooms"),
        (registration, "id"),
    ] {
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "validation_failed");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{body}");
    }
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 0);
    assert_eq!(properties::Entity::find().count(app.db.reader()).await.unwrap(), 0);
    assert_eq!(app_events::Entity::find().count(app.db.reader()).await.unwrap(), 0);
}

async fn the_database_refusing_data_counts_as_that_datas_error(database: TestDatabase) {
    let db = database.migrated().await;
    let row = |id: &str, email: &str, name: &str| user::ActiveModel {
        id: Set(id.into()),
        name: Set(name.into()),
        email: Set(email.into()),
        role: Set(entity::enums::Role::Owner),
        created_at: Set(chrono::Utc::now()),
        updated_at: Set(chrono::Utc::now()),
        crm_sync_status: Set(entity::enums::CrmSyncStatus::Pending),
        membership_status: Set(entity::enums::MembershipStatus::Pending),
        ..Default::default()
    };
    row("u1", "a@example.com", "A").insert(db.writer()).await.unwrap();

    let duplicate = row("u2", "A@example.com", "B").insert(db.writer()).await.unwrap_err();
    assert!(crm_gateway::db::is_data_error(&duplicate), "{duplicate}");
    if database.backend == crate::helpers::Backend::Postgres {
        let nul = row("u3", "c@example.com", "C\u{0}").insert(db.writer()).await.unwrap_err();
        assert!(crm_gateway::db::is_data_error(&nul), "{nul}");
    }
    let gone = db.writer().clone();
    gone.close_by_ref().await.unwrap();
    let closed = user::Entity::find().filter(user::Column::Id.eq("u1")).one(&gone).await.unwrap_err();
    assert!(!crm_gateway::db::is_data_error(&closed), "a connection problem is not the data's fault: {closed}");
}

on_both_databases!(
    emails_differing_only_in_unicode_case_or_form_are_one_user,
    changing_an_email_to_another_users_is_409,
    a_nul_character_fails_its_event_alone_and_the_rest_of_the_delivery_commits,
    a_nul_character_or_a_negative_amount_from_the_site_is_422_and_writes_nothing,
);

on_both_databases_without_app!(
    existing_rows_get_their_email_key_when_migrating,
    the_database_refusing_data_counts_as_that_datas_error
);
