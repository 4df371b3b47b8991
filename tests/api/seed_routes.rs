//! The site's v1 routes answer as the seed shows.

use crate::helpers::{TestApp, TestDatabase, error_code, use_stub};
use crate::on_both_databases_without_app;
use crate::treadsoft_stub::Stub;
use entity::{crm_outbox, user};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, PaginatorTrait, Set};
use serde_json::{Value, json};

impl TestApp {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.address));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    async fn register_owner(&self, user_id: &str, email: &str) -> reqwest::Response {
        let body = json!({"name": "John Smith", "email": email, "phone": "+44 7700 900123", "userId": user_id});
        self.call(reqwest::Method::POST, "/api/owner/register", Some(body)).await
    }
}

async fn with_stub(database: TestDatabase) -> (TestApp, Stub) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| use_stub(c, &stub)).await;
    (app, stub)
}

async fn registration_answers_201_pending_and_refuses_the_same_email(database: TestDatabase) {
    let (app, _stub) = with_stub(database).await;

    let created = app.register_owner("user_123abc", "john@example.com").await;
    let again = app.register_owner("user_other", "JOHN@Example.com").await;

    assert_eq!(created.status(), StatusCode::CREATED);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["user"]["id"], "user_123abc");
    assert_eq!(body["user"]["crmSyncStatus"], "pending");
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let error: Value = again.json().await.unwrap();
    assert_eq!(error["error"]["code"], "email_taken");
    assert!(error["error"]["message"].as_str().unwrap().contains("user_123abc"));
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 1);
    let unknown = app
        .call(
            reqwest::Method::POST,
            "/api/owner/register",
            Some(json!({"name": "A", "email": "a@b.c", "password": "x"})),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST, "an unknown field is refused, not silently dropped");
    assert!(unknown.text().await.unwrap().contains("password"));
}

async fn sync_owner_answers_synced_then_already_synced_and_reports_status(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    app.register_owner("user_123abc", "john@example.com").await;

    let first = app.call(reqwest::Method::POST, "/api/crm/sync/owner", Some(json!({"userId": "user_123abc"}))).await;
    let second = app.call(reqwest::Method::POST, "/api/crm/sync/owner", Some(json!({"userId": "user_123abc"}))).await;
    let status = app.get("/api/crm/sync/owner?userId=user_123abc").await;

    let crm_id = stub.state().by_external_id("contacts", "user_123abc").unwrap()["id"].clone();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.json::<Value>().await.unwrap(),
        json!({"success": true, "message": "Owner synced to CRM successfully", "crmId": crm_id})
    );
    assert_eq!(
        second.json::<Value>().await.unwrap(),
        json!({"success": true, "message": "Owner already synced to CRM", "crmId": crm_id})
    );
    let status: Value = status.json().await.unwrap();
    assert_eq!(
        (status["userId"].clone(), status["crmId"].clone(), status["syncStatus"].clone()),
        (json!("user_123abc"), crm_id, json!("synced"))
    );
    let last = status["lastSyncedAt"].as_str().unwrap();
    assert!(last.ends_with('Z') && last.len() == 24, "{last}");
    assert_eq!(stub.state().all("contacts").len(), 1);
}

async fn sync_routes_refuse_bad_input(database: TestDatabase) {
    let (app, _stub) = with_stub(database).await;

    let missing = app.call(reqwest::Method::POST, "/api/crm/sync/owner", Some(json!({}))).await;
    let unknown = app.get("/api/crm/sync/owner?userId=nobody").await;
    let property = app.call(reqwest::Method::POST, "/api/crm/sync/property", Some(json!({"propertyId": 99}))).await;
    let bulk = app.call(reqwest::Method::POST, "/api/crm/sync/bulk", Some(json!({"syncType": "everything"}))).await;

    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(missing).await, "invalid_request");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(property.status(), StatusCode::NOT_FOUND);
    assert_eq!(bulk.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(crm_outbox::Entity::find().all(app.db.reader()).await.unwrap().is_empty());
}

async fn sync_property_links_the_property(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    app.register_owner("user_1", "a@example.com").await;
    app.deliver_pending().await;
    let property = json!({"id": 123, "ownerId": "user_1", "title": "Haworth Hall", "location": "Haworth", "bedrooms": 12,
        "pricePerNight": 145050, "currency": "GBP", "status": "active"});
    app.post_events(&json!({"id": "ev_p", "type": "property.created", "data": property})).await;

    let response = app.call(reqwest::Method::POST, "/api/crm/sync/property", Some(json!({"propertyId": 123}))).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Property synced to CRM successfully");
    assert_eq!(body["crmId"], stub.state().by_external_id("properties", "123").unwrap()["id"]);
}

async fn bulk_sync_counts_synced_failed_and_skipped(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    for n in 1..=3 {
        app.register_owner(&format!("user_{n}"), &format!("o{n}@example.com")).await;
    }
    app.call(reqwest::Method::POST, "/api/crm/sync/owner", Some(json!({"userId": "user_1"}))).await;
    for id in [1, 2] {
        let property = json!({"id": id, "ownerId": "user_1", "title": "House", "location": "Haworth", "bedrooms": 3,
            "pricePerNight": 10000, "currency": "GBP", "status": "draft"});
        app.post_events(&json!({"id": format!("ev_{id}"), "type": "property.created", "data": property})).await;
    }

    let owners = app.call(reqwest::Method::POST, "/api/crm/sync/bulk", Some(json!({"syncType": "owners"}))).await;
    stub.fail_next(422, "validation_failed", None);
    let all = app.call(reqwest::Method::POST, "/api/crm/sync/bulk", Some(json!({"syncType": "all"}))).await;

    let owners: Value = owners.json().await.unwrap();
    assert_eq!(owners["message"], "Bulk sync completed");
    assert_eq!(owners["results"], json!({"owners": {"synced": 2, "failed": 0, "skipped": 1}}));
    let all: Value = all.json().await.unwrap();
    assert_eq!(all["results"]["owners"], json!({"synced": 0, "failed": 0, "skipped": 3}));
    assert_eq!(all["results"]["properties"], json!({"synced": 0, "failed": 2, "skipped": 0}));
    let batch_calls = stub.state().calls.iter().filter(|c| c.path.ends_with("/batch/upsert")).count();
    assert!(batch_calls >= 2, "bulk creates go through batch upserts");
}

async fn profile_update_answers_the_seed_shape_and_syncs_in_the_background(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    app.register_owner("user_123abc", "john@example.com").await;
    app.deliver_pending().await;

    let update = json!({"userId": "user_123abc", "name": "John Smith", "phone": "+44 7700 900999",
        "companyName": "Smith Properties Ltd", "membershipStatus": "active"});
    let response = app.call(reqwest::Method::PUT, "/api/owner/profile", Some(update)).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Profile updated successfully");
    assert_eq!(
        body["user"],
        json!({"id": "user_123abc", "name": "John Smith", "email": "john@example.com", "crmSyncStatus": "pending"})
    );
    app.deliver_pending().await;
    let contact = stub.state().by_external_id("contacts", "user_123abc").unwrap();
    assert_eq!(
        (contact["phone"].clone(), contact["membershipStatus"].clone()),
        (json!("+44 7700 900999"), json!("active"))
    );
    let bad = app
        .call(
            reqwest::Method::PUT,
            "/api/owner/profile",
            Some(json!({"userId": "user_123abc", "membershipStatus": "gold"})),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown =
        app.call(reqwest::Method::PUT, "/api/owner/profile", Some(json!({"userId": "nobody", "phone": "1"}))).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

async fn a_running_worker_delivers_a_new_change_without_being_driven(database: TestDatabase) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| {
        use_stub(c, &stub);
        c.delivery_workers = 1;
    })
    .await;

    app.register_owner("user_1", "a@example.com").await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stub.state().by_external_id("contacts", "user_1").is_none() {
        assert!(std::time::Instant::now() < deadline, "the worker did not deliver the change");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn a_delivery_claimed_by_an_instance_that_died_is_taken_over_after_its_lease(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    app.register_owner("user_1", "a@example.com").await;
    let row = crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
    let mut claimed: crm_outbox::ActiveModel = row.into();
    claimed.status = Set(entity::enums::OutboxStatus::InFlight);
    claimed.attempts = Set(1);
    claimed.lease_until = Set(Some(chrono::Utc::now() + chrono::Duration::seconds(60)));
    claimed.update(app.db.writer()).await.unwrap();

    assert_eq!(app.deliver_pending().await, 0, "a leased row is left alone");
    app.deliver_at(chrono::Utc::now() + chrono::Duration::seconds(61)).await;

    assert_eq!(stub.state().all("contacts").len(), 1);
    assert_eq!(crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap().status, "delivered");
}

on_both_databases_without_app!(
    registration_answers_201_pending_and_refuses_the_same_email,
    sync_owner_answers_synced_then_already_synced_and_reports_status,
    sync_routes_refuse_bad_input,
    sync_property_links_the_property,
    bulk_sync_counts_synced_failed_and_skipped,
    profile_update_answers_the_seed_shape_and_syncs_in_the_background,
    a_running_worker_delivers_a_new_change_without_being_driven,
    a_delivery_claimed_by_an_instance_that_died_is_taken_over_after_its_lease,
);
