//! Delivering the outbox to TreadSoft (a local stub): exactly once, correctly signed, through
//! failures, retries and restarts.

use crate::helpers::{TestApp, TestDatabase, use_stub};
use crate::on_both_databases_without_app;
use crate::treadsoft_stub::{Scripted, Stub};
use chrono::{Duration, Utc};
use entity::enums::CrmSyncStatus;
use entity::{crm_outbox, crm_requests, crm_sync_logs, user};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

fn owner(id: &str) -> Value {
    json!({"id": id, "name": "Mary Anne van Dyke", "email": format!("{id}@example.com"), "phone": "+44 1",
        "companyName": null, "role": "owner", "membershipStatus": "pending"})
}

async fn register(app: &TestApp, event_id: &str, user_id: &str) {
    let response = app.post_events(&json!({"id": event_id, "type": "owner.registered", "data": owner(user_id)})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

async fn stored_user(app: &TestApp, id: &str) -> user::Model {
    user::Entity::find_by_id(id).one(app.db.reader()).await.unwrap().unwrap()
}

async fn outbox(app: &TestApp) -> Vec<crm_outbox::Model> {
    crm_outbox::Entity::find().all(app.db.reader()).await.unwrap()
}

async fn with_stub(database: TestDatabase) -> (TestApp, Stub) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| use_stub(c, &stub)).await;
    (app, stub)
}

async fn a_new_owner_reaches_treadsoft_once_signed_and_linked(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;

    assert_eq!(app.deliver_pending().await, 1);
    assert_eq!(app.deliver_pending().await, 0, "nothing is sent twice");

    let contact = stub.state().by_external_id("contacts", "user_1").expect("the contact exists in TreadSoft");
    assert_eq!((contact["firstName"].as_str(), contact["lastName"].as_str()), (Some("Mary"), Some("Anne van Dyke")));
    assert!(stub.state().calls.iter().all(|c| c.signed));
    let user = stored_user(&app, "user_1").await;
    assert_eq!(user.crm_id.as_deref(), contact["id"].as_str());
    assert_eq!(user.crm_sync_status, CrmSyncStatus::Synced);
    assert!(user.crm_last_synced_at.is_some());
    assert_eq!(
        crm_requests::Entity::find().count(app.db.reader()).await.unwrap(),
        1,
        "the request id is kept for echoes"
    );
    let log = crm_sync_logs::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((log.action.as_str(), log.status.as_str()), ("create", "success"));
    assert!(!log.request_data.unwrap_or_default().contains(crate::treadsoft_stub::API_SECRET));
}

async fn a_later_edit_patches_only_the_changed_fields(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;

    app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}})).await;
    app.deliver_pending().await;

    let patch = stub.state().calls.iter().rev().find(|c| c.method == "PATCH").cloned().expect("a PATCH");
    assert_eq!(patch.body, json!({"phone": "+44 2", "externalId": "user_1"}));
    assert_eq!(stub.state().all("contacts").len(), 1);
}

async fn a_contact_treadsoft_has_by_email_is_linked_not_duplicated(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    stub.state().records.insert(
        ("contacts".into(), "crm_contact_existing".into()),
        json!({"id": "crm_contact_existing", "externalId": null, "email": "USER_1@example.com", "version": 3}),
    );
    register(&app, "ev_1", "user_1").await;

    app.deliver_pending().await;

    assert_eq!(stub.state().all("contacts").len(), 1);
    assert_eq!(stored_user(&app, "user_1").await.crm_id.as_deref(), Some("crm_contact_existing"));
    let linked = stub.state().records[&("contacts".to_owned(), "crm_contact_existing".to_owned())].clone();
    assert_eq!(linked["externalId"], "user_1");
}

async fn a_500_is_retried_later_and_then_succeeds_once(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    stub.fail_next(500, "server_error", None);

    app.deliver_pending().await;

    let row = &outbox(&app).await[0];
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 1));
    assert!(row.next_attempt_at > Utc::now() + Duration::seconds(5), "backs off ~10 s");
    assert_eq!(app.deliver_pending().await, 0, "not due yet");

    app.deliver_at(Utc::now() + Duration::seconds(15)).await;

    assert_eq!(outbox(&app).await[0].status, "delivered");
    assert_eq!(stub.state().all("contacts").len(), 1);
    let keys: Vec<_> = stub.state().calls.iter().map(|c| c.idempotency_key.clone()).collect();
    assert_eq!(keys[0], keys[1], "the retry repeats the idempotency key of the same request");
}

async fn a_429_waits_at_least_retry_after(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    stub.fail_next(429, "rate_limited", Some(120));

    app.deliver_pending().await;

    let row = &outbox(&app).await[0];
    assert!(row.next_attempt_at >= Utc::now() + Duration::seconds(115), "{:?}", row.next_attempt_at);
}

async fn a_timeout_after_treadsoft_committed_creates_no_second_record(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    stub.state().script.push_back(Scripted::Slow(std::time::Duration::from_secs(2)));

    app.deliver_pending().await;
    assert_eq!(outbox(&app).await[0].status, "pending", "the timeout is transient");
    app.deliver_at(Utc::now() + Duration::seconds(15)).await;

    assert_eq!(stub.state().all("contacts").len(), 1);
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Synced);
}

async fn a_permanent_422_dead_letters_and_a_manual_retry_delivers(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    stub.fail_next(422, "validation_failed", None);

    app.deliver_pending().await;

    let row = outbox(&app).await.remove(0);
    assert_eq!(row.status, "failed");
    assert!(row.last_error.unwrap().contains("validation_failed"));
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Failed);
    let failed_logs = crm_sync_logs::Entity::find()
        .filter(crm_sync_logs::Column::Status.eq("failed"))
        .count(app.db.reader())
        .await
        .unwrap();
    assert_eq!(failed_logs, 1);

    let retry = app.http.post(format!("{}/api/crm/outbox/{}/retry", app.address, row.id)).send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    app.deliver_pending().await;

    assert_eq!(outbox(&app).await[0].status, "delivered");
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Synced);
}

async fn rapid_edits_while_sends_fail_end_at_the_last_value(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    let mut later = Utc::now();
    for (n, phone) in ["+44 2", "+44 3", "+44 4"].iter().enumerate() {
        stub.fail_next(503, "server_error", None);
        app.post_events(
            &json!({"id": format!("ev_p{n}"), "type": "owner.updated", "data": {"id": "user_1", "phone": phone}}),
        )
        .await;
        later += Duration::minutes(10);
        app.deliver_at(later).await;
    }
    assert_eq!(outbox(&app).await.iter().filter(|r| r.status == "pending").count(), 1, "coalesced into one row");

    app.deliver_at(later + Duration::hours(1)).await;

    let contact = stub.state().by_external_id("contacts", "user_1").unwrap();
    assert_eq!(contact["phone"], "+44 4");
    let patches: Vec<Value> =
        stub.state().calls.iter().filter(|c| c.method == "PATCH").map(|c| c.body["phone"].clone()).collect();
    assert_eq!(patches.last(), Some(&json!("+44 4")), "never flips back: {patches:?}");
}

async fn a_deleted_property_is_deleted_in_treadsoft_after_its_owner_and_itself_arrived(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    let property = json!({"id": 4201, "ownerId": "user_1", "title": "Haworth Hall", "location": "Haworth",
        "bedrooms": 12, "pricePerNight": 145050, "currency": "GBP", "status": "active"});
    app.post_events(&json!({"id": "ev_2", "type": "property.created", "data": property})).await;

    // One step: owners go before properties, so the property can name its owner's new id at once.
    app.deliver_pending().await;

    let sent = stub.state().by_external_id("properties", "4201").expect("the property reached TreadSoft");
    let owner_crm_id = stored_user(&app, "user_1").await.crm_id.unwrap();
    assert_eq!(sent["ownerContactId"], owner_crm_id.as_str(), "the owner is referenced by its TreadSoft id");
    assert_eq!(sent["pricePerNight"], json!(1450.5));

    app.post_events(&json!({"id": "ev_3", "type": "property.deleted", "data": {"id": 4201}})).await;
    app.deliver_pending().await;

    let crm_id = sent["id"].as_str().unwrap().to_owned();
    let delete = stub.state().calls.iter().find(|c| c.method == "DELETE").cloned().expect("a DELETE");
    assert_eq!(delete.path, format!("/v1/properties/{crm_id}"));
    assert!(stub.state().by_external_id("properties", "4201").is_none());
}

async fn every_record_type_is_created_then_updated_in_treadsoft(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_o", "user_1").await;
    let events = crate::helpers::every_record_type_of_user_1();
    assert_eq!(app.post_events(&events).await.status(), StatusCode::ACCEPTED);

    // One step is enough: parents are sent (and their TreadSoft ids stored) before their children.
    app.deliver_pending().await;

    let contact_id = stored_user(&app, "user_1").await.crm_id.unwrap();
    let property = stub.state().by_external_id("properties", "7").expect("property");
    let enquiry = stub.state().by_external_id("enquiries", "11").expect("enquiry");
    let booking = stub.state().by_external_id("bookings", "21").expect("booking");
    let membership = stub.state().by_external_id("memberships", "31").expect("membership");
    assert_eq!(enquiry["propertyId"], property["id"]);
    assert_eq!(enquiry["contactId"], Value::Null);
    assert_eq!(
        (booking["propertyId"].clone(), booking["contactId"].clone()),
        (property["id"].clone(), json!(contact_id))
    );
    assert_eq!((booking["totalPrice"].clone(), booking["checkIn"].clone()), (json!(10153.5), json!("2025-07-01")));
    assert_eq!(
        (membership["contactId"].clone(), membership["tier"].clone(), membership["autoRenew"].clone()),
        (json!(contact_id), json!("premium"), json!(true))
    );

    let updates = json!({"events": [
        {"id": "ev_e2", "type": "enquiry.updated", "data": {"id": 11, "status": "responded"}},
        {"id": "ev_b2", "type": "booking.cancelled", "data": {"id": 21}},
        {"id": "ev_m2", "type": "membership.updated", "data": {"id": 31, "autoRenew": false}},
    ]});
    app.post_events(&updates).await;
    app.deliver_pending().await;

    assert_eq!(stub.state().by_external_id("enquiries", "11").unwrap()["status"], "responded");
    assert_eq!(stub.state().by_external_id("bookings", "21").unwrap()["status"], "cancelled");
    assert_eq!(stub.state().by_external_id("memberships", "31").unwrap()["autoRenew"], false);
    assert_eq!(outbox(&app).await.iter().filter(|r| r.status != "delivered").count(), 0);
}

async fn a_contact_created_from_a_webhook_gets_its_external_id_linked_back(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    stub.state().records.insert(
        ("contacts".into(), "crm_contact_from_crm".into()),
        json!({"id": "crm_contact_from_crm", "externalId": null, "email": "new@example.com", "version": 1}),
    );
    let event = json!({"id": "evt_1", "type": "contact.created", "changeSource": "ui", "requestId": null, "changedFields": [],
        "object": {"type": "contact", "id": "crm_contact_from_crm", "externalId": null, "version": 1,
            "updatedAt": "2025-01-05T10:00:00.000Z", "deletedAt": null,
            "data": {"firstName": "New", "lastName": "Owner", "email": "new@example.com", "phone": null,
                "companyName": null, "role": "owner", "membershipStatus": "active"}}});
    assert_eq!(app.deliver(&[event]).await, ["applied"]);
    let local = user::Entity::find().one(app.db.reader()).await.unwrap().unwrap();

    app.deliver_pending().await;

    let linked = stub.state().records[&("contacts".to_owned(), "crm_contact_from_crm".to_owned())].clone();
    assert_eq!(linked["externalId"], local.id.as_str());
    assert_eq!(outbox(&app).await[0].status, "delivered");
}

async fn a_property_deleted_while_its_create_is_in_flight_is_deleted_in_treadsoft(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    let property = json!({"id": 9, "ownerId": "user_1", "title": "House", "location": "Haworth", "bedrooms": 3,
        "pricePerNight": 10000, "currency": "GBP", "status": "draft"});
    app.post_events(&json!({"id": "ev_2", "type": "property.created", "data": property})).await;
    stub.state().script.push_back(Scripted::Slow(std::time::Duration::from_millis(300)));
    let calls_before = stub.state().calls.len();

    let sending = async {
        app.deliver_pending().await;
    };
    let deleting = async {
        while stub.state().calls.len() == calls_before {
            tokio::task::yield_now().await;
        }
        app.post_events(&json!({"id": "ev_3", "type": "property.deleted", "data": {"id": 9}})).await
    };
    let (_, deleted) = tokio::join!(sending, deleting);
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    app.deliver_at(Utc::now() + Duration::seconds(30)).await;

    assert!(stub.state().by_external_id("properties", "9").is_none(), "the create that raced the delete was undone");
    assert!(stub.state().calls.iter().any(|c| c.method == "DELETE"));
}

async fn a_webhook_does_not_mark_a_record_with_a_failed_change_synced(database: TestDatabase) {
    let (app, stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    let crm_id = stored_user(&app, "user_1").await.crm_id.unwrap();
    stub.fail_next(422, "validation_failed", None);
    app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "bad"}})).await;
    app.deliver_pending().await;
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Failed);

    let event = json!({"id": "evt_w", "type": "contact.updated", "changeSource": "ui", "requestId": null,
        "changedFields": ["companyName"], "object": {"type": "contact", "id": crm_id, "externalId": "user_1", "version": 5,
        "updatedAt": (Utc::now() + Duration::seconds(5)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "deletedAt": null,
        "data": {"firstName": "Mary", "lastName": "Anne van Dyke", "email": "user_1@example.com", "phone": "+44 1",
            "companyName": "Workflow Co", "role": "owner", "membershipStatus": "pending"}}});
    assert_eq!(app.deliver(&[event]).await, ["applied"]);

    let user = stored_user(&app, "user_1").await;
    assert_eq!(user.company_name.as_deref(), Some("Workflow Co"));
    assert_eq!(user.crm_sync_status, CrmSyncStatus::Failed, "the failed change is still unsent");
    let resync = app
        .http
        .post(format!("{}/api/crm/sync/owner", app.address))
        .json(&json!({"userId": "user_1"}))
        .send()
        .await
        .unwrap();
    let body: Value = resync.json().await.unwrap();
    assert_eq!(body["message"], "Owner synced to CRM successfully", "the owner is re-driven, not 'already synced'");
}

async fn an_api_change_does_not_overwrite_a_local_change_still_on_its_way(database: TestDatabase) {
    let (app, _stub) = with_stub(database).await;
    register(&app, "ev_1", "user_1").await;
    app.deliver_pending().await;
    let crm_id = stored_user(&app, "user_1").await.crm_id.unwrap();
    app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 new"}}))
        .await;

    // The echo of an earlier request whose id the gateway has not recorded, stamped by a clock that runs ahead.
    let echo = json!({"id": "evt_echo", "type": "contact.updated", "changeSource": "api", "requestId": "req_unknown",
        "changedFields": ["phone"], "object": {"type": "contact", "id": crm_id, "externalId": "user_1", "version": 9,
        "updatedAt": (Utc::now() + Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "deletedAt": null,
        "data": {"firstName": "Mary", "lastName": "Anne van Dyke", "email": "user_1@example.com", "phone": "+44 old",
            "companyName": null, "role": "owner", "membershipStatus": "pending"}}});

    assert_eq!(app.deliver(&[echo]).await, ["echo"]);
    assert_eq!(stored_user(&app, "user_1").await.phone.as_deref(), Some("+44 new"));
}

async fn a_change_accepted_before_a_restart_is_delivered_after_it(database: TestDatabase) {
    let stub = Stub::start().await;
    let mut before = TestApp::spawn_with(database, |c| use_stub(c, &stub)).await;
    register(&before, "ev_1", "user_1").await;
    stub.fail_next(503, "server_error", None);
    before.deliver_pending().await;
    before.stop().await.unwrap();

    let after = before.another_instance_with(|c| use_stub(c, &stub)).await;
    after.deliver_at(Utc::now() + Duration::minutes(1)).await;

    assert_eq!(stub.state().all("contacts").len(), 1);
    assert_eq!(stored_user(&after, "user_1").await.crm_sync_status, CrmSyncStatus::Synced);
    assert!(stub.state().calls.iter().all(|c| c.signed));
}

async fn auth_is_refused_without_the_token(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.api_token = Some("s3cret".to_owned().into())).await;

    let refused = app.post_events(&json!({"id": "ev_1", "type": "owner.registered", "data": owner("user_1")})).await;

    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(user::Entity::find().count(app.db.reader()).await.unwrap(), 0);
}

async fn two_workers_deliver_a_thousand_changes_exactly_once(database: TestDatabase) {
    let stub = Stub::start().await;
    let patient = |c: &mut crm_gateway::config::Config| crate::helpers::use_stub_patiently(c, &stub);
    let first = TestApp::spawn_with(database, patient).await;
    let second = first.another_instance_with(patient).await;
    for batch in 0..2 {
        let events: Vec<Value> = (0..500)
            .map(|n| {
                let id = format!("user_{batch}_{n}");
                json!({"id": format!("ev_{batch}_{n}"), "type": "owner.registered", "data": owner(&id)})
            })
            .collect();
        assert_eq!(first.post_events(&json!({ "events": events })).await.status(), StatusCode::ACCEPTED);
    }

    let (a, b) = tokio::join!(first.deliver_pending(), second.deliver_pending());
    let rest = first.deliver_pending().await;

    let not_delivered = outbox(&first).await.into_iter().filter(|r| r.status != "delivered").count();
    assert_eq!((a + b + rest, not_delivered), (1000, 0), "every row handled once (a={a} b={b} rest={rest})");
    let (records, mut sent) = {
        let state = stub.state();
        let sent: Vec<String> = state
            .calls
            .iter()
            .filter(|c| c.path.ends_with("/batch/upsert"))
            .flat_map(|c| {
                c.body["records"].as_array().unwrap().iter().map(|r| r["externalId"].as_str().unwrap().to_owned())
            })
            .collect();
        (state.all("contacts").len(), sent)
    };
    assert_eq!(records, 1000);
    let total = sent.len();
    sent.sort();
    sent.dedup();
    assert_eq!((total, sent.len()), (1000, 1000), "no record was sent twice");
    let synced = user::Entity::find()
        .filter(user::Column::CrmSyncStatus.eq(CrmSyncStatus::Synced))
        .count(first.db.reader())
        .await
        .unwrap();
    assert_eq!(synced, 1000);
}

/// A batch's outcomes are recorded together; one that cannot be written (here: the TreadSoft id
/// given to user_2 is already another user's) is left in flight alone, the others are recorded.
async fn an_outcome_that_cannot_be_written_leaves_only_its_row_in_flight(database: TestDatabase) {
    use sea_orm::ConnectionTrait;
    let (app, stub) = with_stub(database).await;
    for i in 1..=3 {
        register(&app, &format!("ev_{i}"), &format!("user_{i}")).await;
    }
    // The stub numbers its first batch request 1 and the three contacts 2, 3 and 4, in order.
    let squatter = r#"INSERT INTO "user" (id, name, email, email_key, role, created_at, updated_at, crm_id,
        crm_sync_status, membership_status) VALUES ('squatter', 'S', 's@example.com', 's@example.com', 'owner',
        '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z', 'crm_contact_3', 'synced', 'active')"#;
    app.db.writer().execute_unprepared(squatter).await.unwrap();

    assert_eq!(app.deliver_pending().await, 3);

    assert_eq!(stub.state().by_external_id("contacts", "user_2").unwrap()["id"], "crm_contact_3");
    for (id, crm_id) in [("user_1", "crm_contact_2"), ("user_3", "crm_contact_4")] {
        let user = stored_user(&app, id).await;
        assert_eq!((user.crm_id.as_deref(), user.crm_sync_status), (Some(crm_id), CrmSyncStatus::Synced));
    }
    let stuck = stored_user(&app, "user_2").await;
    assert_eq!((stuck.crm_id, stuck.crm_sync_status), (None, CrmSyncStatus::Pending));
    let rows = outbox(&app).await;
    let status = |id: &str| rows.iter().find(|r| r.record_id == id).unwrap().status;
    assert_eq!([status("user_1"), status("user_2"), status("user_3")], ["delivered", "in_flight", "delivered"]);
}

/// An app with owner `user_1` registered and a delivery step sending it, which TreadSoft (a stub)
/// holds for `hold`: returned once the request has arrived, with the step's task. The request
/// timeout (30 s) and the lease are well past the hold, so the send is answered, not timed out;
/// what a test does meanwhile must take less than `hold` (its failure says when it did not).
async fn registered_and_sending_slowly(
    database: TestDatabase,
    hold: std::time::Duration,
) -> (TestApp, Stub, tokio::task::JoinHandle<usize>) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| crate::helpers::use_stub_patiently(c, &stub)).await;
    register(&app, "ev_1", "user_1").await;
    stub.state().script.push_back(Scripted::Slow(hold));
    let delivery = app.delivery.clone();
    let sending = tokio::spawn(async move { delivery.deliver_due(Utc::now()).await.unwrap() });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stub.state().calls.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the worker did not send");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (app, stub, sending)
}

/// An instance that was still sending when its lease ran out and another instance claimed the row
/// leaves the row to that instance: its outcome is not recorded over the newer claim (no link, no
/// log, no request id; the row still in flight under the other lease).
async fn an_outcome_after_the_lease_was_taken_over_is_not_recorded(database: TestDatabase) {
    use sea_orm::{ActiveModelTrait, Set};
    let (app, stub, sending) = registered_and_sending_slowly(database, std::time::Duration::from_secs(1)).await;
    // Another instance's claim, as `claim_in` makes it, after this one's lease ran out.
    let row = outbox(&app).await.remove(0);
    assert_eq!(row.status, "in_flight", "the takeover came after the outcome: the machine is too slow for this test");
    let other_lease = row.lease_until.unwrap() + Duration::seconds(90);
    let mut claimed: crm_outbox::ActiveModel = row.into();
    claimed.lease_until = Set(Some(other_lease));
    claimed.attempts = Set(2);
    claimed.update(app.db.writer()).await.unwrap();
    sending.await.unwrap();

    assert_eq!(stub.state().all("contacts").len(), 1, "it was sent");
    let row = outbox(&app).await.remove(0);
    assert_eq!((row.status.as_str(), row.lease_until), ("in_flight", Some(other_lease)));
    let user = stored_user(&app, "user_1").await;
    assert_eq!((user.crm_id, user.crm_sync_status), (None, CrmSyncStatus::Pending));
    assert_eq!(crm_sync_logs::Entity::find().count(app.db.reader()).await.unwrap(), 0);
    assert_eq!(crm_requests::Entity::find().count(app.db.reader()).await.unwrap(), 0);
}

/// A record's change queued while an earlier change of it is still on its way waits for that
/// send: a step meanwhile (another instance's, say) claims the other records' rows but not this
/// one's, and the change goes out once the first is recorded, so TreadSoft gets them in order.
async fn a_change_waits_while_its_record_is_in_flight(database: TestDatabase) {
    let (app, stub, sending) = registered_and_sending_slowly(database, std::time::Duration::from_secs(2)).await;
    let changed = json!({"id": "ev_2", "type": "owner.updated", "data": {"id": "user_1", "phone": "+44 2"}});
    assert_eq!(app.post_events(&changed).await.status(), StatusCode::ACCEPTED);
    register(&app, "ev_3", "user_2").await;

    let claimed = app.delivery.deliver_due(Utc::now()).await.unwrap();
    let slow = "the first send ended before this step: the machine is too slow for this test";
    assert_eq!(claimed, 1, "{}", if sending.is_finished() { slow } else { "the other owner only" });
    let mut rows = outbox(&app).await;
    rows.sort_by_key(|r| r.id);
    let of = |id: &str| -> Vec<&str> { rows.iter().filter(|r| r.record_id == id).map(|r| r.status.as_str()).collect() };
    assert_eq!(of("user_1"), ["in_flight", "pending"], "the change waits for the send before it");
    assert_eq!(of("user_2"), ["delivered"]);
    assert_eq!(sending.await.unwrap(), 1);

    assert_eq!(app.deliver_pending().await, 1, "then the change goes");
    let calls: Vec<String> = stub.state().calls.iter().map(|c| c.method.clone()).collect();
    assert_eq!(calls, ["POST", "POST", "PATCH"]);
    let contact = stub.state().by_external_id("contacts", "user_1").unwrap();
    assert_eq!(contact["phone"], "+44 2");
    assert_eq!(stored_user(&app, "user_1").await.crm_sync_status, CrmSyncStatus::Synced);
}

/// The point of reading a claimed batch's records (and their parents) together: delivering fifty
/// new owners and a house of each takes as many statements, reads and writes, as one of each.
async fn fifty_owners_and_houses_are_delivered_with_as_many_statements_as_one(database: TestDatabase) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let stub = Stub::start().await;
    let mut db = database.migrated().await;
    let statements = Arc::new(AtomicUsize::new(0));
    let (reads, writes) = (statements.clone(), statements.clone());
    db.on_read_statement(move |_| {
        reads.fetch_add(1, Ordering::SeqCst);
    });
    db.on_write_statement(move |_| {
        writes.fetch_add(1, Ordering::SeqCst);
    });
    let app = TestApp::spawn_on(database, db, |c| use_stub(c, &stub)).await;
    let deliver = |from: usize, n: usize| {
        let (app, statements) = (&app, &statements);
        async move {
            let events: Vec<Value> = (from..from + n)
                .flat_map(|i| {
                    let house = json!({"id": 5000 + i, "ownerId": format!("user_{i}"), "title": "Cottage",
                        "location": "Hebden", "bedrooms": 2, "pricePerNight": 9000, "currency": "GBP", "status": "draft"});
                    [
                        json!({"id": format!("ev_o{i}"), "type": "owner.registered", "data": owner(&format!("user_{i}"))}),
                        json!({"id": format!("ev_h{i}"), "type": "property.created", "data": house}),
                    ]
                })
                .collect();
            assert_eq!(app.post_events(&json!({"events": events})).await.status(), StatusCode::ACCEPTED);
            let before = statements.load(Ordering::SeqCst);
            assert_eq!(app.deliver_pending().await, 2 * n);
            statements.load(Ordering::SeqCst) - before
        }
    };

    let one = deliver(0, 1).await;
    let fifty = deliver(1, 50).await;

    assert_eq!(fifty, one, "statements to deliver 50 owners and houses vs 1");
    let state = stub.state();
    let houses: Vec<&Value> =
        state.records.iter().filter(|((kind, _), _)| kind == "properties").map(|(_, house)| house).collect();
    assert_eq!(houses.len(), 51);
    for house in houses {
        let i = house["externalId"].as_str().unwrap().parse::<usize>().unwrap() - 5000;
        let owner = &state.records[&("contacts".to_owned(), house["ownerContactId"].as_str().unwrap().to_owned())];
        assert_eq!(owner["externalId"], json!(format!("user_{i}")), "each house names its owner's TreadSoft id");
    }
}

/// A record written back sets, of its indexed columns, only those that changed: SQLite rewrites
/// a row's entry in every index over a column an update sets, changed or not, and the email's and
/// CRM id's indexes are keyed at random (a page written for each record). The outcome of a create
/// sets the new CRM id and leaves the email alone; a change of the phone sets neither; a change of
/// the email sets it, and the record is then found by its new email.
async fn a_record_written_back_sets_only_the_indexed_columns_that_changed(database: TestDatabase) {
    use std::sync::{Arc, Mutex};
    let stub = Stub::start().await;
    let mut db = database.migrated().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    db.on_write_statement(move |info| record.lock().unwrap().push(info.statement.sql.clone()));
    let app = TestApp::spawn_on(database, db, |c| use_stub(c, &stub)).await;
    // The columns each upsert of a user since the last call set.
    let user_sets = || -> Vec<String> {
        let statements = std::mem::take(&mut *seen.lock().unwrap());
        statements
            .iter()
            .filter(|sql| sql.starts_with(r#"INSERT INTO "user""#))
            .filter_map(|sql| sql.split_once("DO UPDATE SET").map(|(_, set)| set.to_owned()))
            .collect()
    };
    let sets = |set: &str, column: &str| set.contains(&format!(r#""{column}" = "excluded"."{column}""#));

    register(&app, "ev_1", "user_1").await;
    assert_eq!(user_sets(), Vec::<String>::new(), "a new user is inserted");
    assert_eq!(app.deliver_pending().await, 1);
    let linked = user_sets();
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert!(sets(&linked[0], "crm_id") && sets(&linked[0], "crm_sync_status"), "{}", linked[0]);
    assert!(!sets(&linked[0], "email_key") && !sets(&linked[0], "role"), "{}", linked[0]);
    let crm_id = stored_user(&app, "user_1").await.crm_id.expect("linked");

    let phone = json!({"id": "user_1", "phone": "+44 2"});
    let response = app.post_events(&json!({"id": "ev_2", "type": "owner.updated", "data": phone})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let changed = user_sets();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(sets(&changed[0], "phone"), "{}", changed[0]);
    for column in ["crm_id", "email_key", "role"] {
        assert!(!sets(&changed[0], column), "{column} set: {}", changed[0]);
    }

    let email = json!({"id": "user_1", "email": "Mary.Anne@Example.com"});
    let response = app.post_events(&json!({"id": "ev_3", "type": "owner.updated", "data": email})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let moved = user_sets();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(sets(&moved[0], "email") && sets(&moved[0], "email_key"), "{}", moved[0]);
    assert!(!sets(&moved[0], "crm_id") && !sets(&moved[0], "role"), "{}", moved[0]);
    let by_email = user::Entity::find()
        .filter(user::Column::EmailKey.eq(user::email_key("mary.anne@example.com")))
        .one(app.db.reader())
        .await
        .unwrap()
        .expect("found by its new email");
    assert_eq!((by_email.id.as_str(), by_email.phone.as_deref()), ("user_1", Some("+44 2")));
    assert_eq!(by_email.crm_id.as_deref(), Some(crm_id.as_str()), "the link stays");
    let old = user::Entity::find().filter(user::Column::EmailKey.eq(user::email_key("user_1@example.com")));
    assert_eq!(old.count(app.db.reader()).await.unwrap(), 0, "nothing is found by the old email");
}

on_both_databases_without_app!(
    an_outcome_after_the_lease_was_taken_over_is_not_recorded,
    a_change_waits_while_its_record_is_in_flight,
    a_record_written_back_sets_only_the_indexed_columns_that_changed,
    fifty_owners_and_houses_are_delivered_with_as_many_statements_as_one,
    two_workers_deliver_a_thousand_changes_exactly_once,
    an_outcome_that_cannot_be_written_leaves_only_its_row_in_flight,
    a_new_owner_reaches_treadsoft_once_signed_and_linked,
    a_later_edit_patches_only_the_changed_fields,
    a_contact_treadsoft_has_by_email_is_linked_not_duplicated,
    a_500_is_retried_later_and_then_succeeds_once,
    a_429_waits_at_least_retry_after,
    a_timeout_after_treadsoft_committed_creates_no_second_record,
    a_permanent_422_dead_letters_and_a_manual_retry_delivers,
    rapid_edits_while_sends_fail_end_at_the_last_value,
    a_deleted_property_is_deleted_in_treadsoft_after_its_owner_and_itself_arrived,
    every_record_type_is_created_then_updated_in_treadsoft,
    a_contact_created_from_a_webhook_gets_its_external_id_linked_back,
    a_property_deleted_while_its_create_is_in_flight_is_deleted_in_treadsoft,
    a_webhook_does_not_mark_a_record_with_a_failed_change_synced,
    an_api_change_does_not_overwrite_a_local_change_still_on_its_way,
    a_change_accepted_before_a_restart_is_delivered_after_it,
    auth_is_refused_without_the_token,
);
