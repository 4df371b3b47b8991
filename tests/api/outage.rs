//! TreadSoft down for hours, then rate limiting and duplicates: delivery pauses behind the
//! circuit breaker instead of using up every attempt, resumes by itself, and every record ends
//! synced with exactly one TreadSoft record.

use crate::helpers::{TestApp, TestDatabase, use_stub};
use crate::on_both_databases_without_app;
use crate::treadsoft_stub::{Scripted, Stub};
use chrono::{Duration, Utc};
use crm_gateway::outbound::retry::RetrySchedule;
use entity::enums::CrmSyncStatus;
use entity::{crm_outbox, user};
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

const OWNERS: usize = 30;
const ALREADY_IN_TREADSOFT: usize = 5;

fn email(n: usize) -> String {
    format!("owner{n}@example.com")
}

async fn circuit(app: &TestApp) -> Value {
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    ready["checks"]["crm"].clone()
}

fn calls(stub: &Stub, path_end: &str) -> usize {
    stub.state().calls.iter().filter(|c| c.path.ends_with(path_end)).count()
}

async fn hours_of_outage_then_429s_and_duplicates_end_with_each_record_synced_once(database: TestDatabase) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| {
        use_stub(c, &stub);
        c.retry_schedule = RetrySchedule::parse("1s,2s,5s,10s,30s,1m,2m,5m,10m,10m").unwrap();
    })
    .await;
    // TreadSoft has some of these owners already, by email: they must be linked, not duplicated.
    for n in 0..ALREADY_IN_TREADSOFT {
        stub.state().records.insert(
            ("contacts".into(), format!("crm_contact_existing_{n}")),
            json!({"id": format!("crm_contact_existing_{n}"), "email": email(n), "firstName": "Old", "lastName": "Name",
                "externalId": null, "version": 1}),
        );
    }
    let events: Vec<Value> = (0..OWNERS)
        .map(|n| {
            json!({"id": format!("ev_{n}"), "type": "owner.registered", "data": {"id": format!("user_{n}"),
            "name": "Mary Anne van Dyke", "email": email(n), "phone": null, "companyName": null, "role": "owner",
            "membershipStatus": "pending"}})
        })
        .collect();
    assert_eq!(app.post_events(&json!({ "events": events })).await.status(), StatusCode::ACCEPTED);

    // Three hours of 503s, a delivery step every minute.
    stub.state().down = Some(503);
    let mut now = Utc::now();
    for minute in 0..180 {
        now += Duration::minutes(1);
        app.deliver_at(now).await;
        if minute == 10 {
            let state = circuit(&app).await;
            assert_eq!(state["circuit"], "open", "{state}");
            assert!(state["nextProbeAt"].is_string(), "{state}");
        }
    }
    let upserts_during_outage = calls(&stub, "/batch/upsert");
    let probes = calls(&stub, "/v1/me");
    assert_eq!(
        upserts_during_outage,
        crm_gateway::outbound::worker::breaker::THRESHOLD as usize,
        "paused, not hammered"
    );
    assert!((10..=40).contains(&probes), "probed with growing pauses: {probes}");
    let outbox = crm_outbox::Entity::find().all(app.db.reader()).await.unwrap();
    assert!(outbox.iter().all(|r| r.status == "pending"), "no attempt was used up while paused");

    // TreadSoft is back, and rate limits the first calls.
    stub.state().down = None;
    for _ in 0..3 {
        stub.state().script.push_back(Scripted::Fail(429, "rate_limited", Some(1)));
    }
    for _ in 0..30 {
        now += Duration::minutes(1);
        app.deliver_at(now).await;
    }

    assert_eq!(circuit(&app).await["circuit"], "closed");
    let users = user::Entity::find().all(app.db.reader()).await.unwrap();
    assert_eq!(users.len(), OWNERS);
    assert!(users.iter().all(|u| u.crm_sync_status == CrmSyncStatus::Synced), "{users:?}");
    let contacts = stub.state().all("contacts");
    assert_eq!(contacts.len(), OWNERS, "one TreadSoft contact per owner, the existing ones reused");
    for user in &users {
        let crm_id = user.crm_id.as_deref().expect("linked");
        let record = contacts.iter().find(|c| c["id"] == crm_id).expect("the linked contact exists");
        assert_eq!(record["externalId"], user.id.as_str());
    }
    for n in 0..ALREADY_IN_TREADSOFT {
        let linked = users.iter().find(|u| u.id == format!("user_{n}")).unwrap();
        assert_eq!(linked.crm_id.as_deref(), Some(format!("crm_contact_existing_{n}").as_str()));
    }
}

on_both_databases_without_app!(hours_of_outage_then_429s_and_duplicates_end_with_each_record_synced_once);
