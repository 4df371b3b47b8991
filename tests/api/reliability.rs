//! Regression tests for the defects a review found (issue 8), each named after what a user would
//! notice, on both databases.

use crate::helpers::{Backend, TestApp, TestDatabase, error_code};
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

async fn users_whose_emails_clash_once_folded_stop_the_migration_until_resolved(database: TestDatabase) {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;
    let db = database.connect().await;
    Migrator::up(db.writer(), Some(4)).await.unwrap();
    if database.backend == Backend::Sqlite {
        // PostgreSQL's lower() folds É already, so only SQLite could hold these two.
        for (id, email) in [("u1", "JOSÉ@example.com"), ("u2", "josé@example.com")] {
            let insert = format!(
                r#"INSERT INTO "user" (id, name, email, role, created_at, updated_at, crm_sync_status, membership_status)
                VALUES ('{id}', 'A', '{email}', 'owner', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'pending', 'pending')"#
            );
            db.writer().execute_unprepared(&insert).await.unwrap();
        }
        let refused = Migrator::up(db.writer(), None).await.unwrap_err().to_string();
        assert!(refused.contains("josé@example.com: users u1, u2"), "{refused}");
        db.writer().execute_unprepared(r#"DELETE FROM "user" WHERE id = 'u2'"#).await.unwrap();
    }

    Migrator::up(db.writer(), None).await.expect("the migration runs once the clash is resolved");

    assert!(user::Entity::find().all(db.reader()).await.unwrap().iter().all(|u| !u.email_key.is_empty()));
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
    // A lookup by an id with a NUL finds nothing (not a database error).
    let status = app.get("/api/crm/sync/owner?userId=user_%00").await;
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
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
    if database.backend == Backend::Postgres {
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
    users_whose_emails_clash_once_folded_stop_the_migration_until_resolved,
    the_database_refusing_data_counts_as_that_datas_error
);

// --- helpers for races with another instance -------------------------------------------------

/// A write transaction of "another instance": its own connection, holding what it wrote.
async fn other_instance_transaction(app: &TestApp) -> (sea_orm::DatabaseConnection, sea_orm::DatabaseTransaction) {
    use sea_orm::TransactionTrait;
    let connection = sea_orm::Database::connect(&app.database_config.url).await.unwrap();
    let options = sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    let txn = connection.begin_with_options(options).await.unwrap();
    (connection, txn)
}

/// Runs `action` while `held` is open; on PostgreSQL `held` commits once the gateway is seen
/// waiting for one of its locks (the interleaving under test), on SQLite at once (the gateway's
/// writer then waits for the file lock, so the interleaving cannot happen there).
async fn while_held<T>(app: &TestApp, held: sea_orm::DatabaseTransaction, action: impl Future<Output = T>) -> T {
    let release = async {
        if app.backend == Backend::Postgres {
            wait_until_the_gateway_waits_for_a_lock(app).await;
        }
        held.commit().await.unwrap();
    };
    tokio::join!(action, release).0
}

async fn wait_until_the_gateway_waits_for_a_lock(app: &TestApp) {
    use sea_orm::ConnectionTrait;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let sql =
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    loop {
        let row = app.db.reader().query_one_raw(sea_orm::Statement::from_string(app.db.backend(), sql)).await;
        if row.unwrap().unwrap().try_get::<i64>("", "n").unwrap() > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway never waited for the held lock");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn exec(txn: &sea_orm::DatabaseTransaction, sql: &str) {
    use sea_orm::ConnectionTrait;
    txn.execute_unprepared(sql).await.unwrap();
}

fn later(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn contact_update(id: &str, crm_id: &str, external_id: &str, phone: &str) -> Value {
    json!({"id": id, "type": "contact.updated", "changeSource": "ui", "requestId": null, "changedFields": ["phone"],
        "object": {"type": "contact", "id": crm_id, "externalId": external_id, "version": 2, "updatedAt": later(5),
            "deletedAt": null, "data": {"firstName": "José", "lastName": "Núñez", "email": format!("{external_id}@example.com"),
                "phone": phone, "companyName": null, "role": "owner", "membershipStatus": "pending"}}})
}

fn property_event(id: &str, crm_id: &str, owner_crm_id: &str) -> Value {
    json!({"id": id, "type": "property.created", "changeSource": "ui", "requestId": null, "changedFields": [],
        "object": {"type": "property", "id": crm_id, "externalId": null, "version": 1, "updatedAt": later(0),
            "deletedAt": null, "data": {"title": "Haworth Hall", "location": "Haworth", "bedrooms": 12,
                "pricePerNight": 1450.5, "currency": "GBP", "status": "active", "ownerContactId": owner_crm_id}}})
}

const INSERT_LINKED_USER: &str = r#"INSERT INTO "user" (id, name, email, email_key, role, created_at, updated_at,
    crm_id, crm_sync_status, membership_status) VALUES ('user_p', 'Parent', 'p@example.com', 'p@example.com', 'owner',
    '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'crm_contact_p', 'synced', 'active')"#;

// --- 1. a record linked meanwhile to the same CRM id is the record itself -------------------

async fn an_event_for_a_record_linked_meanwhile_by_another_instance_applies(app: TestApp) {
    assert_eq!(
        app.post_events(&owner_event("ev_1", "user_1", "user_1@example.com")).await.status(),
        StatusCode::ACCEPTED
    );
    let (_connection, other) = other_instance_transaction(&app).await;
    exec(&other, r#"UPDATE "user" SET crm_id = 'crm_contact_1' WHERE id = 'user_1'"#).await;

    let outcomes =
        while_held(&app, other, app.deliver(&[contact_update("evt_1", "crm_contact_1", "user_1", "+44 new")])).await;

    assert_eq!(outcomes, ["applied"]);
    let user = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(user.phone.as_deref(), Some("+44 new"));
}

async fn the_same_email_registered_on_another_instance_at_once_is_409(app: TestApp) {
    let (_connection, other) = other_instance_transaction(&app).await;
    exec(
        &other,
        r#"INSERT INTO "user" (id, name, email, email_key, role, created_at, updated_at, crm_sync_status,
        membership_status) VALUES ('user_there', 'A', 'Race@example.com', 'race@example.com', 'owner',
        '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'pending', 'pending')"#,
    )
    .await;

    let response = while_held(&app, other, register(&app, "user_here", "race@EXAMPLE.com")).await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "email_taken", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("user_there"), "{body}");
}

// --- 2. waiting events are not stranded across instances ----------------------------------------

async fn a_child_arriving_while_another_instance_links_its_parent_does_not_wait_forever(app: TestApp) {
    use crm_gateway::sync::mapping::RecordType;
    let (_connection, other) = other_instance_transaction(&app).await;
    exec(&other, INSERT_LINKED_USER).await;
    // The other instance releases what waits for the parent it just linked: nothing yet.
    crm_gateway::sync::inbox::release_waiting(&other, &app.sync, Some((RecordType::Contact, "crm_contact_p".into())))
        .await
        .unwrap();

    let outcomes =
        while_held(&app, other, app.deliver(&[property_event("evt_p", "crm_property_1", "crm_contact_p")])).await;

    assert_eq!(outcomes, ["applied"], "the child found its parent once the other instance committed");
    let property = properties::Entity::find().one(app.db.reader()).await.unwrap().expect("the property exists");
    assert_eq!(property.owner_id, "user_p");
}

async fn the_sweep_applies_events_whose_parent_arrived_unannounced(app: TestApp) {
    use sea_orm::ConnectionTrait;
    assert_eq!(app.deliver(&[property_event("evt_p", "crm_property_1", "crm_contact_p")]).await, ["waiting"]);
    // The parent arrives without its release running (as after a crash between the two).
    app.db.writer().execute_unprepared(INSERT_LINKED_USER).await.unwrap();

    let released = crm_gateway::ops::maintenance::sweep(&app.writer, app.sync.clone()).await.unwrap();

    assert_eq!(released, 1);
    let row = crm_inbox::Entity::find_by_id("evt_p").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(row.outcome, "applied");
    assert_eq!(properties::Entity::find().count(app.db.reader()).await.unwrap(), 1);
    assert_eq!(crm_gateway::ops::maintenance::sweep(&app.writer, app.sync.clone()).await.unwrap(), 0);
}

on_both_databases!(
    an_event_for_a_record_linked_meanwhile_by_another_instance_applies,
    the_same_email_registered_on_another_instance_at_once_is_409,
    a_child_arriving_while_another_instance_links_its_parent_does_not_wait_forever,
    the_sweep_applies_events_whose_parent_arrived_unannounced,
);

// --- 5. without a token: no proxied, no cross-site requests --------------------------------

async fn without_a_token_proxied_and_cross_site_requests_are_refused(app: TestApp) {
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let post = |n: usize, headers: &[(&str, String)]| {
        let mut request = app.http.post(format!("{}/api/events", app.address));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.json(&owner_event(&format!("ev_{n}"), &format!("user_{n}"), &format!("u{n}@example.com"))).send()
    };
    let refused = [
        vec![("X-Forwarded-For", "203.0.113.9".to_owned())],
        vec![("Forwarded", "for=203.0.113.9".to_owned())],
        vec![("X-Real-IP", "203.0.113.9".to_owned())],
        vec![("Origin", "https://evil.example".to_owned())],
        vec![("Origin", "null".to_owned())],
        vec![("Origin", format!("http://127.0.0.1:{port}")), ("Sec-Fetch-Site", "cross-site".to_owned())],
        vec![("Sec-Fetch-Site", "same-site".to_owned())],
        // DNS rebinding: another site's name resolved to 127.0.0.1, its page posting to itself.
        vec![
            ("Host", format!("evil.example:{port}")),
            ("Origin", format!("http://evil.example:{port}")),
            ("Sec-Fetch-Site", "same-origin".to_owned()),
        ],
    ];
    for (n, headers) in refused.iter().enumerate() {
        let response = post(n, headers).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(error_code(response).await, "forbidden");
    }
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 0);
    let same_origin = [("Origin", format!("http://127.0.0.1:{port}")), ("Sec-Fetch-Site", "same-origin".to_owned())];
    assert_eq!(post(100, &same_origin).await.unwrap().status(), StatusCode::ACCEPTED, "the page served here may post");
    assert_eq!(post(101, &[]).await.unwrap().status(), StatusCode::ACCEPTED, "a script on this machine may post");
}

async fn with_a_token_a_proxied_request_is_served(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.api_token = Some("t0ken".to_owned().into())).await;

    let response = app
        .http
        .post(format!("{}/api/events", app.address))
        .bearer_auth("t0ken")
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&owner_event("ev_1", "user_1", "u1@example.com"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

// --- 6. a retry cannot put an in-flight row back -----------------------------------------------

async fn a_retry_racing_a_claim_leaves_the_row_in_flight(app: TestApp) {
    use entity::crm_outbox;
    let now = chrono::Utc::now();
    let row = crm_outbox::ActiveModel {
        record_type: Set("contact".into()),
        record_id: Set("user_1".into()),
        operation: Set(entity::enums::OutboxOperation::Upsert),
        status: Set(entity::enums::OutboxStatus::Failed),
        attempts: Set(8),
        next_attempt_at: Set(now),
        idempotency_key: Set("cgw-test".into()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(app.db.writer())
    .await
    .unwrap();
    let (_connection, other) = other_instance_transaction(&app).await;
    exec(&other, &format!("UPDATE crm_outbox SET status = 'in_flight' WHERE id = {}", row.id)).await;

    let retry = app.http.post(format!("{}/api/crm/outbox/{}/retry", app.address, row.id)).send();
    let response = while_held(&app, other, retry).await.unwrap();

    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "not_retryable");
    let stored = crm_outbox::Entity::find_by_id(row.id).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(stored.status, "in_flight", "the claimed row was not put back to be sent a second time");
}

// --- the smaller items ------------------------------------------------------------------------

async fn a_created_event_for_an_existing_record_is_409_not_an_update(app: TestApp) {
    assert_eq!(app.post_events(&owner_event("ev_1", "user_1", "a@example.com")).await.status(), StatusCode::ACCEPTED);
    let property = |event: &str, title: &str| {
        json!({"id": event, "type": "property.created", "data": {"id": 5, "ownerId": "user_1", "title": title,
            "location": "Haworth", "bedrooms": 2, "pricePerNight": 100, "currency": "GBP", "status": "draft"}})
    };
    assert_eq!(app.post_events(&property("ev_2", "First")).await.status(), StatusCode::ACCEPTED);

    let again = app.post_events(&property("ev_3", "Second")).await;
    let owner_again = app.post_events(&owner_event("ev_4", "user_1", "a@example.com")).await;

    for response in [again, owner_again] {
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(error_code(response).await, "already_exists");
    }
    let stored = properties::Entity::find_by_id(5).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(stored.title, "First");
}

async fn a_site_id_never_moves_the_id_sequence_backwards(database: TestDatabase) {
    use sea_orm::ConnectionTrait;
    let app = TestApp::spawn(database).await;
    if app.backend != Backend::Postgres {
        return; // SQLite has no sequence to move.
    }
    let r = app.db.writer();
    r.execute_unprepared("SELECT setval(pg_get_serial_sequence('properties', 'id'), 50)").await.unwrap();
    app.post_events(&owner_event("ev_1", "user_1", "a@example.com")).await;

    let site = json!({"id": "ev_2", "type": "property.created", "data": {"id": 5, "ownerId": "user_1", "title": "T",
        "location": "L", "bedrooms": 2, "pricePerNight": 100, "currency": "GBP", "status": "draft"}});
    assert_eq!(app.post_events(&site).await.status(), StatusCode::ACCEPTED);

    let sql = "SELECT pg_sequence_last_value(pg_get_serial_sequence('properties', 'id')::regclass) AS v";
    let row = r.query_one_raw(sea_orm::Statement::from_string(app.db.backend(), sql)).await.unwrap().unwrap();
    assert_eq!(row.try_get::<i64>("", "v").unwrap(), 50);
}

on_both_databases!(
    without_a_token_proxied_and_cross_site_requests_are_refused,
    a_retry_racing_a_claim_leaves_the_row_in_flight,
    a_created_event_for_an_existing_record_is_409_not_an_update,
);

on_both_databases_without_app!(
    with_a_token_a_proxied_request_is_served,
    a_site_id_never_moves_the_id_sequence_backwards
);

// --- delivery: 7, dead-lettered parents, the rate limiter and the lease, shutdown --------------

mod delivery {
    use super::*;
    use crate::helpers::use_stub;
    use crate::treadsoft_stub::{Scripted, Stub};
    use chrono::{Duration, Utc};
    use entity::crm_outbox;

    async fn with_stub(database: TestDatabase) -> (TestApp, Stub) {
        let stub = Stub::start().await;
        let app = TestApp::spawn_with(database, |c| use_stub(c, &stub)).await;
        (app, stub)
    }

    fn property(event: &str, kind: &str, data: Value) -> Value {
        json!({"id": event, "type": kind, "data": data})
    }

    fn house(id: i64, owner: &str) -> Value {
        json!({"id": id, "ownerId": owner, "title": "House", "location": "Haworth", "bedrooms": 3,
            "pricePerNight": 10000, "currency": "GBP", "status": "draft"})
    }

    async fn rows(app: &TestApp) -> Vec<crm_outbox::Model> {
        crm_outbox::Entity::find().all(app.db.reader()).await.unwrap()
    }

    async fn a_delete_after_a_timed_out_create_deletes_the_record_in_treadsoft(database: TestDatabase) {
        let (app, stub) = with_stub(database).await;
        app.post_events(&owner_event("ev_1", "user_1", "u1@example.com")).await;
        app.deliver_pending().await;
        app.post_events(&property("ev_2", "property.created", house(9, "user_1"))).await;
        stub.state().script.push_back(Scripted::Slow(std::time::Duration::from_secs(2)));
        app.deliver_pending().await; // TreadSoft creates it; its answer is lost.
        assert_eq!(
            app.post_events(&json!({"id": "ev_3", "type": "property.deleted", "data": {"id": 9}})).await.status(),
            StatusCode::ACCEPTED
        );
        app.deliver_at(Utc::now() + Duration::minutes(1)).await;
        let created = stub.state().by_external_id("properties", "9").expect("the create reached TreadSoft");

        // The creation's webhook arrives.
        let owner_crm_id = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap().crm_id;
        let echo = json!({"id": "evt_echo", "type": "property.created", "changeSource": "api", "requestId": "req_lost",
            "changedFields": [], "object": {"type": "property", "id": created["id"], "externalId": "9", "version": 1,
                "updatedAt": later(0), "deletedAt": null, "data": {"title": "House", "location": "Haworth", "bedrooms": 3,
                    "pricePerNight": 100, "currency": "GBP", "status": "draft", "ownerContactId": owner_crm_id}}});
        assert_eq!(app.deliver(&[echo]).await, ["applied"]);
        app.deliver_pending().await;

        assert!(stub.state().by_external_id("properties", "9").is_none(), "the record does not live on in TreadSoft");
        let stored = properties::Entity::find_by_id(9).one(app.db.reader()).await.unwrap().unwrap();
        assert!(stored.deleted_at.is_some());
        assert_eq!(stored.crm_id.as_deref(), created["id"].as_str());
    }

    async fn a_child_of_a_dead_lettered_parent_is_dead_lettered_and_both_go_out_on_retry(database: TestDatabase) {
        let (app, stub) = with_stub(database).await;
        app.post_events(&owner_event("ev_1", "user_1", "u1@example.com")).await;
        stub.fail_next(422, "validation_failed", None);
        app.deliver_pending().await;
        app.post_events(&property("ev_2", "property.created", house(9, "user_1"))).await;
        let calls = stub.state().calls.len();

        app.deliver_at(Utc::now() + Duration::minutes(5)).await;

        let child = rows(&app).await.into_iter().find(|r| r.record_type == "property").unwrap();
        assert_eq!(child.status, "failed", "not retried every 2 s forever");
        assert!(child.last_error.as_deref().unwrap().contains("contact user_1 failed to reach the CRM"), "{child:?}");
        assert_eq!(stub.state().calls.len(), calls, "nothing of the child was sent");

        let retried = app.http.post(format!("{}/api/crm/outbox/retry-failed", app.address)).send().await.unwrap();
        assert_eq!(retried.json::<Value>().await.unwrap()["retried"], 2);
        app.deliver_pending().await;
        let owner = stub.state().by_external_id("contacts", "user_1").expect("the owner reached TreadSoft");
        let house = stub.state().by_external_id("properties", "9").expect("the property reached TreadSoft");
        assert_eq!(house["ownerContactId"], owner["id"]);
    }

    async fn a_request_that_waited_past_its_lease_for_the_rate_limit_is_not_sent(database: TestDatabase) {
        let stub = Stub::start().await;
        let app = TestApp::spawn_with(database, |c| {
            use_stub(c, &stub);
            c.crm_request_timeout = std::time::Duration::from_millis(300);
            c.delivery_lease = std::time::Duration::from_secs(1);
            c.crm_rate_limit =
                crm_gateway::crm::rate_limit::RateLimit { requests: 1, period: std::time::Duration::from_secs(3) };
        })
        .await;
        app.post_events(&owner_event("ev_1", "user_1", "u1@example.com")).await;
        app.deliver_pending().await; // the batch upsert takes the limiter's one request for 3 s
        app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}}))
            .await;
        let calls = stub.state().calls.len();

        app.delivery.deliver_due(Utc::now()).await.unwrap();

        assert_eq!(stub.state().calls.len(), calls, "nothing left after the lease was short");
        let row = rows(&app).await.into_iter().find(|r| r.operation == "upsert" && r.status != "delivered").unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("pending", 0), "released without using up an attempt");
        assert!(row.last_error.as_deref().unwrap().contains("unsent"), "{row:?}");
    }

    async fn stopping_waits_for_the_delivery_step_in_progress(database: TestDatabase) {
        let stub = Stub::start().await;
        let mut app = TestApp::spawn_with(database, |c| {
            use_stub(c, &stub);
            c.crm_request_timeout = std::time::Duration::from_secs(5);
            c.delivery_lease = std::time::Duration::from_secs(30);
            c.delivery_workers = 1;
        })
        .await;
        stub.state().script.push_back(Scripted::Slow(std::time::Duration::from_millis(500)));
        app.post_events(&owner_event("ev_1", "user_1", "u1@example.com")).await;
        while stub.state().calls.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Queued while that step is under way: it is for the next start, not for the shutdown.
        app.post_events(&owner_event("ev_2", "user_2", "u2@example.com")).await;

        app.stop().await.unwrap();

        let rows = rows(&app).await;
        let status = |id: &str| rows.iter().find(|r| r.record_id == id).unwrap().status;
        assert_eq!(status("user_1"), "delivered", "the step in progress finished and its outcome was written");
        assert_eq!(status("user_2"), "pending", "no further step was started after the stop");
        let stored = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
        assert!(stored.crm_id.is_some());
    }

    async fn a_claim_waits_for_another_instances_claim_and_skips_its_records(database: TestDatabase) {
        let (app, stub) = with_stub(database).await;
        // A contact from TreadSoft (its link-back queued) that the site then edits: two due rows.
        assert_eq!(app.deliver(&[contact_event("evt_1", "crm_contact_1", "one@example.com", 1)]).await, ["applied"]);
        let local = user::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
        let edit = json!({"id": "ev_1", "type": "owner.updated", "data": {"id": local.id, "phone": "+44 9"}});
        assert_eq!(app.post_events(&edit).await.status(), StatusCode::ACCEPTED);
        assert_eq!(rows(&app).await.len(), 2);
        // Another instance is claiming the link row right now.
        let (_connection, other) = other_instance_transaction(&app).await;
        if app.backend == Backend::Postgres {
            exec(&other, "SELECT pg_advisory_xact_lock(hashtextextended('crm_outbox.claim', 0))").await;
        }
        exec(
            &other,
            "UPDATE crm_outbox SET status = 'in_flight', lease_until = '2999-01-01T00:00:00Z' WHERE operation = 'link'",
        )
        .await;

        while_held(&app, other, app.delivery.deliver_due(Utc::now())).await.unwrap();

        let edit_row = rows(&app).await.into_iter().find(|r| r.operation == "upsert").unwrap();
        assert_eq!(edit_row.status, "pending", "one row of a record in flight at a time, across instances");
        assert!(stub.state().calls.is_empty(), "{:?}", stub.state().calls);
    }

    on_both_databases_without_app!(
        a_claim_waits_for_another_instances_claim_and_skips_its_records,
        a_delete_after_a_timed_out_create_deletes_the_record_in_treadsoft,
        a_child_of_a_dead_lettered_parent_is_dead_lettered_and_both_go_out_on_retry,
        a_request_that_waited_past_its_lease_for_the_rate_limit_is_not_sent,
        stopping_waits_for_the_delivery_step_in_progress,
    );
}
