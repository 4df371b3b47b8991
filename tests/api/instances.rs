//! Three gateway instances on one database, under concurrent inbound and outbound load, with
//! every TreadSoft delivery sent to all three: each event is applied once, each change delivered
//! once, and nothing is left waiting or in flight.

use crate::helpers::{TestApp, TestDatabase, use_stub_patiently};
use crate::on_both_databases_without_app;
use crate::treadsoft_stub::Stub;
use entity::{crm_inbox, crm_outbox, properties, user};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const RECORDS: usize = 24;

fn crm_event(id: &str, kind: &str, crm_id: &str, data: Value) -> Value {
    let (record, _) = kind.split_once('.').unwrap();
    json!({"id": id, "type": kind, "changeSource": "ui", "requestId": null, "changedFields": [],
        "object": {"type": record, "id": crm_id, "externalId": null, "version": 1,
            "updatedAt": "2025-01-05T10:00:00.000Z", "deletedAt": null, "data": data}})
}

fn crm_contact(n: usize) -> Value {
    json!({"firstName": "Crm", "lastName": format!("Owner {n}"), "email": format!("crm{n}@example.com"), "phone": null,
        "companyName": null, "role": "owner", "membershipStatus": "active"})
}

fn crm_property(n: usize) -> Value {
    json!({"title": format!("House {n}"), "location": "Haworth", "bedrooms": 3, "pricePerNight": 120,
        "currency": "GBP", "status": "active", "ownerContactId": format!("crm_contact_wh{n}")})
}

fn site_property(n: usize) -> usize {
    1000 + RECORDS - n
}

/// Posts one delivery to every instance at once; returns the outcomes, one list per instance.
async fn to_all(apps: &[TestApp], events: Vec<Value>) -> Vec<Vec<String>> {
    let body = json!({"deliveryId": uuid::Uuid::new_v4().to_string(), "events": events}).to_string();
    futures_util::future::join_all(apps.iter().map(|app| as_treadsoft_sends(app, &body))).await
}

/// Sends a delivery until it is acknowledged, as TreadSoft does (API.md §4.1): a 503 (here: two
/// instances' group transactions that deadlocked, one of them chosen to give way) is sent again.
async fn as_treadsoft_sends(app: &TestApp, body: &str) -> Vec<String> {
    for _ in 0..20 {
        let response = app.post_webhook(body).await;
        match response.status().as_u16() {
            200 => {
                let answer: Value = response.json().await.unwrap();
                return answer["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["outcome"].as_str().unwrap().to_owned())
                    .collect();
            }
            503 => RETRIED.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            other => panic!("delivery answered {other}"),
        };
    }
    panic!("a delivery was refused 20 times");
}

static RETRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn three_instances_apply_each_event_and_deliver_each_change_once(database: TestDatabase) {
    let stub = Stub::start().await;
    let patient = |c: &mut crm_gateway::config::Config| use_stub_patiently(c, &stub);
    let first = TestApp::spawn_with(database, patient).await;
    let apps = vec![first.another_instance_with(patient).await, first.another_instance_with(patient).await];
    let apps: Vec<TestApp> = std::iter::once(first).chain(apps).collect();
    // TreadSoft has the records its webhooks describe (the gateway links them back there).
    for n in 0..RECORDS {
        let mut state = stub.state();
        let mut contact = crm_contact(n);
        contact["id"] = json!(format!("crm_contact_wh{n}"));
        state.records.insert(("contacts".into(), format!("crm_contact_wh{n}")), contact);
        let mut property = crm_property(n);
        property["id"] = json!(format!("crm_property_wh{n}"));
        state.records.insert(("properties".into(), format!("crm_property_wh{n}")), property);
    }

    let inbound = async {
        let mut answers = Vec::new();
        for n in 0..RECORDS {
            // The child first (it waits for its parent), then the parent, each to all three.
            let child =
                crm_event(&format!("evt_p{n}"), "property.created", &format!("crm_property_wh{n}"), crm_property(n));
            let parent =
                crm_event(&format!("evt_c{n}"), "contact.created", &format!("crm_contact_wh{n}"), crm_contact(n));
            let (c, p) = tokio::join!(to_all(&apps, vec![child]), to_all(&apps, vec![parent]));
            answers.push((format!("evt_p{n}"), c));
            answers.push((format!("evt_c{n}"), p));
        }
        answers
    };
    let outbound = async {
        for n in 0..RECORDS {
            let app = &apps[n % apps.len()];
            let owner = json!({"id": format!("ev_o{n}"), "type": "owner.registered", "data": {"id": format!("site{n}"),
                "name": "Site Owner", "email": format!("site{n}@example.com"), "phone": null, "companyName": null,
                "role": "owner", "membershipStatus": "pending"}});
            // Site ids count down: the id sequence is kept past the highest site id, so records
            // TreadSoft creates get ids above it, which a later, higher site id would collide with.
            let house = json!({"id": format!("ev_h{n}"), "type": "property.created", "data": {"id": site_property(n),
                "ownerId": format!("site{n}"), "title": "Cottage", "location": "Hebden", "bedrooms": 2,
                "pricePerNight": 9000, "currency": "GBP", "status": "draft"}});
            assert_eq!(app.post_events(&json!({"events": [owner, house]})).await.status(), 202);
            let _ = apps[(n + 1) % apps.len()].deliver_pending().await;
        }
    };
    let (answers, ()) = tokio::join!(inbound, outbound);
    // The rest goes out from all three at once.
    futures_util::future::join_all(apps.iter().map(TestApp::deliver_pending)).await;
    futures_util::future::join_all(apps.iter().map(TestApp::deliver_pending)).await;

    eprintln!(
        "three instances: {} deliveries answered 503 and were sent again",
        RETRIED.load(std::sync::atomic::Ordering::SeqCst)
    );
    for (event, outcomes) in &answers {
        let stored: Vec<&String> = outcomes.iter().map(|o| &o[0]).filter(|o| *o != "duplicate").collect();
        assert_eq!(stored.len(), 1, "{event} was taken by exactly one instance: {outcomes:?}");
    }
    let reader = apps[0].db.reader();
    let inbox = crm_inbox::Entity::find().all(reader).await.unwrap();
    assert_eq!(inbox.len(), 2 * RECORDS);
    let not_applied: Vec<_> = inbox.iter().filter(|r| r.outcome != "applied").collect();
    assert!(not_applied.is_empty(), "left waiting or failed: {not_applied:#?}");
    for n in 0..RECORDS {
        let property = properties::Entity::find()
            .filter(properties::Column::CrmId.eq(format!("crm_property_wh{n}")))
            .one(reader)
            .await
            .unwrap()
            .expect("the webhook's property");
        let owner = user::Entity::find_by_id(property.owner_id).one(reader).await.unwrap().unwrap();
        assert_eq!(owner.crm_id, Some(format!("crm_contact_wh{n}")));
    }
    let outbox = crm_outbox::Entity::find().all(reader).await.unwrap();
    let open: Vec<_> = outbox.iter().filter(|r| r.status != "delivered").collect();
    assert!(open.is_empty(), "not delivered: {open:#?}");

    let state = stub.state();
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for call in state.calls.iter().filter(|c| c.path.ends_with("/batch/upsert")) {
        for record in call.body["records"].as_array().unwrap() {
            *sent.entry(record["externalId"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(sent.len(), 2 * RECORDS, "every site record was created in TreadSoft");
    assert!(sent.values().all(|&n| n == 1), "a record was sent twice: {sent:?}");
    let links = state.calls.iter().filter(|c| c.method == "PATCH").count();
    assert_eq!(links, 2 * RECORDS, "each webhook record linked back once");
    for n in 0..RECORDS {
        let owner = state.by_external_id("contacts", &format!("site{n}")).expect("the site's owner");
        let house = state.by_external_id("properties", &site_property(n).to_string()).expect("the site's property");
        assert_eq!(house["ownerContactId"], owner["id"]);
    }
}

on_both_databases_without_app!(three_instances_apply_each_event_and_deliver_each_change_once);
