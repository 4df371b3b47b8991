//! `POST /api/events`: the site's changes are stored with fresh stamps and queued for the CRM.

use crate::helpers::{TestApp, error_code};
use crate::on_both_databases;
use entity::{app_events, crm_outbox, properties, user};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

fn owner(id: &str, phone: &str) -> Value {
    json!({
        "id": id, "name": "Zoë Brontë", "email": format!("{id}@example.com"), "phone": phone,
        "companyName": null, "role": "owner", "membershipStatus": "pending"
    })
}

async fn outbox_rows(app: &TestApp) -> Vec<crm_outbox::Model> {
    crm_outbox::Entity::find().all(app.db.reader()).await.unwrap()
}

async fn a_registration_is_stored_and_queued_once(app: TestApp) {
    let event = json!({"id": "ev_1", "type": "owner.registered", "occurredAt": "2025-01-05T10:30:00Z", "data": owner("user_1", "+44 1")});

    let first = app.post_events(&event).await;
    let again = app.post_events(&event).await;

    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"accepted": ["ev_1"], "duplicates": []}));
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"accepted": [], "duplicates": ["ev_1"]}));
    let stored = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(stored.name, "Zoë Brontë");
    assert_eq!(stored.crm_sync_status, entity::enums::CrmSyncStatus::Pending);
    let rows = outbox_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].operation.as_str(), rows[0].fields.as_deref()), ("upsert", None));
}

async fn rapid_edits_coalesce_into_one_pending_delivery(app: TestApp) {
    app.post_events(&json!({"id": "ev_1", "type": "owner.registered", "data": owner("user_1", "+44 1")})).await;

    let edits = json!({"events": [
        {"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}},
        {"id": "ev_3", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 3", "companyName": "Co"}},
    ]});
    let response = app.post_events(&edits).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let rows = outbox_rows(&app).await;
    assert_eq!(rows.len(), 1, "one pending delivery per record");
    let stored = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((stored.phone.as_deref(), stored.company_name.as_deref()), (Some("+44 3"), Some("Co")));
}

async fn an_invalid_event_is_422_naming_the_field_and_writes_nothing(app: TestApp) {
    let mut bad = owner("user_2", "+44 2");
    bad.as_object_mut().unwrap().remove("email");
    let body = json!({"events": [
        {"id": "ev_ok", "type": "owner.registered", "data": owner("user_1", "+44 1")},
        {"id": "ev_bad", "type": "owner.registered", "data": bad},
    ]});

    let response = app.post_events(&body).await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "validation_failed");
    assert!(error["error"]["message"].as_str().unwrap().contains("email"), "{error}");
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 0, "nothing half-written");
    assert_eq!(app_events::Entity::find().count(app.db.reader()).await.unwrap(), 0);
    assert!(outbox_rows(&app).await.is_empty());
}

async fn a_property_deleted_before_it_reached_the_crm_is_never_sent(app: TestApp) {
    app.post_events(&json!({"id": "ev_1", "type": "owner.registered", "data": owner("user_1", "+44 1")})).await;
    let property = json!({"id": 4201, "ownerId": "user_1", "title": "Haworth Hall", "location": "Haworth", "bedrooms": 12,
        "pricePerNight": 145050, "currency": "GBP", "status": "active"});
    app.post_events(&json!({"id": "ev_2", "type": "property.created", "data": property})).await;

    let response = app.post_events(&json!({"id": "ev_3", "type": "property.deleted", "data": {"id": 4201}})).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let stored = properties::Entity::find_by_id(4201).one(app.db.reader()).await.unwrap().unwrap();
    assert!(stored.deleted_at.is_some());
    let rows = crm_outbox::Entity::find()
        .filter(crm_outbox::Column::RecordType.eq("property"))
        .count(app.db.reader())
        .await
        .unwrap();
    assert_eq!(rows, 0, "its queued create was cancelled");
}

async fn a_local_edit_after_a_crm_change_wins_even_when_the_crm_clock_runs_ahead(app: TestApp) {
    let ahead = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let crm_event = |id: &str, version: i64, phone: &str| {
        json!({
            "id": id, "type": "contact.updated", "changeSource": "ui", "requestId": null, "changedFields": ["phone"],
            "object": {"type": "contact", "id": "crm_contact_1", "externalId": null, "version": version, "updatedAt": ahead,
                "deletedAt": null, "data": {"firstName": "Ann", "lastName": "Lee", "email": "ann@example.com", "phone": phone,
                "companyName": null, "role": "owner", "membershipStatus": "active"}}
        })
    };
    app.deliver(&[crm_event("evt_1", 1, "+44 crm")]).await;
    let local_id = user::Entity::find().one(app.db.reader()).await.unwrap().unwrap().id;

    let edit = app
        .post_events(
            &json!({"id": "ev_local", "type": "owner.updated", "data": {"id": local_id, "phone": "+44 local"}}),
        )
        .await;
    assert_eq!(edit.status(), StatusCode::ACCEPTED);
    // A CRM change stamped like the first one (same clock reading, older version) arrives late.
    let late = app.deliver(&[crm_event("evt_0", 1, "+44 late")]).await;

    assert_eq!(late, ["stale"]);
    let stored = user::Entity::find_by_id(local_id).one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!(stored.phone.as_deref(), Some("+44 local"));
}

async fn a_body_that_is_not_json_is_415_and_an_oversized_one_413(app: TestApp) {
    let text = app
        .http
        .post(format!("{}/api/events", app.address))
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let huge = app
        .http
        .post(format!("{}/api/events", app.address))
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"pad":"{}"}}"#, "x".repeat(2 * 1024 * 1024)))
        .send()
        .await
        .unwrap();

    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(text).await, "unsupported_media_type");
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(huge).await, "payload_too_large");
}

on_both_databases!(
    a_registration_is_stored_and_queued_once,
    rapid_edits_coalesce_into_one_pending_delivery,
    an_invalid_event_is_422_naming_the_field_and_writes_nothing,
    a_property_deleted_before_it_reached_the_crm_is_never_sent,
    a_local_edit_after_a_crm_change_wins_even_when_the_crm_clock_runs_ahead,
    a_body_that_is_not_json_is_415_and_an_oversized_one_413,
);
