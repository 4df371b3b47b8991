//! The real binary under mixed load (signed webhooks, app events, deliveries to a TreadSoft stub),
//! killed with SIGKILL at random points over several rounds and restarted: every acknowledged
//! webhook event and app event is there exactly once, every change reaches TreadSoft exactly once
//! afterwards, and the leases of the dead processes are taken over.

use crate::helpers::TestDatabase;
use crate::on_both_databases_without_app;
use crate::process::{Gateway, env_for, signed};
use crate::treadsoft_stub::Stub;
use entity::enums::CrmSyncStatus;
use entity::{app_events, crm_inbox, crm_outbox, user};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 16;

/// One request the site or TreadSoft keeps sending until it is acknowledged.
#[derive(Debug, Clone)]
enum Item {
    /// A TreadSoft delivery: a new contact, then (in the same delivery) a change of its phone.
    Webhook(usize),
    /// The site registers an owner.
    Registered(usize),
    /// The site changes an owner's phone.
    Updated(usize),
}

fn webhook_events(n: usize) -> Vec<Value> {
    let contact = |phone: &str| {
        json!({"firstName": "Web", "lastName": format!("Hook {n}"), "email": format!("wh{n}@example.com"), "phone": phone,
            "companyName": null, "role": "owner", "membershipStatus": "active"})
    };
    let event = |kind: &str, version: i64, changed: Vec<&str>, phone: &str| {
        json!({"id": format!("evt_{kind}_{n}"), "type": format!("contact.{kind}"), "changeSource": "ui",
            "requestId": null, "changedFields": changed, "object": {"type": "contact", "id": format!("crm_contact_wh{n}"),
            "externalId": format!("wh{n}"), "version": version, "updatedAt": format!("2025-01-05T10:00:0{version}.000Z"),
            "deletedAt": null, "data": contact(phone)}})
    };
    vec![event("created", 1, vec![], "+44 1"), event("updated", 2, vec!["phone"], "+44 2")]
}

fn app_event(item: &Item) -> Value {
    match item {
        Item::Registered(n) => json!({"id": format!("ev_reg_{n}"), "type": "owner.registered", "data": {
            "id": format!("app{n}"), "name": "Mary Anne van Dyke", "email": format!("app{n}@example.com"),
            "phone": "+44 1", "companyName": null, "role": "owner", "membershipStatus": "pending"}}),
        Item::Updated(n) => json!({"id": format!("ev_upd_{n}"), "type": "owner.updated",
            "data": {"id": format!("app{n}"), "phone": format!("+44 new {n}")}}),
        Item::Webhook(_) => unreachable!(),
    }
}

/// Sends `item` once; whether the gateway acknowledged it (stored it durably).
async fn send(http: &reqwest::Client, address: &str, item: &Item) -> bool {
    let response = match item {
        Item::Webhook(n) => {
            let (headers, body) = signed(&webhook_events(*n), &format!("dlv_{n}"));
            let mut request = http
                .post(format!("{address}/api/crm/webhooks/treadsoft"))
                .header("Content-Type", "application/json")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await
        }
        _ => http.post(format!("{address}/api/events")).json(&app_event(item)).send().await,
    };
    let Ok(response) = response else { return false };
    let status = response.status().as_u16();
    match item {
        Item::Webhook(_) => {
            status == 200
                && response.json::<Value>().await.is_ok_and(|body| {
                    body["results"].as_array().is_some_and(|r| {
                        r.iter().all(|e| matches!(e["outcome"].as_str(), Some("applied" | "duplicate")))
                    })
                })
        }
        // An update of an owner whose registration is not acknowledged yet is 422: sent again later.
        _ => status == 202,
    }
}

/// Sends every item not yet acknowledged, eight at a time, until each has an answer or failed.
async fn send_all(address: &str, pending: &Mutex<Vec<Item>>, acknowledged: &Mutex<Vec<Item>>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let items: Vec<Item> = std::mem::take(&mut *pending.lock().unwrap());
    for chunk in items.chunks(8) {
        let answers = futures_util::future::join_all(chunk.iter().map(|item| send(&http, address, item))).await;
        for (item, acked) in chunk.iter().zip(answers) {
            if acked { acknowledged.lock().unwrap() } else { pending.lock().unwrap() }.push(item.clone());
        }
    }
}

async fn killed_at_random_points_nothing_acknowledged_is_lost_or_done_twice(database: TestDatabase) {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_for(&database.config.url, &stub);
    env.extend([
        ("CRM_REQUEST_TIMEOUT_SECS", "1".to_owned()),
        ("CRM_DELIVERY_LEASE_SECS", "3".to_owned()),
        ("CRM_RETRY_SCHEDULE", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s".to_owned()),
        ("CRM_DELIVERY_WORKERS", "2".to_owned()),
        ("RUST_LOG", "warn,crm_gateway::startup=info".to_owned()),
    ]);
    let pending = Mutex::new(Vec::new());
    let acknowledged = Mutex::new(Vec::new());
    let mut killed_mid_request = 0;
    for round in 0..ROUNDS {
        let gateway = Gateway::start(&env, dir.path()).await;
        // Slow answers widen the window in which a kill lands while TreadSoft has acted but
        // the gateway has not yet recorded it.
        for _ in 0..3 {
            stub.state().script.push_back(crate::treadsoft_stub::Scripted::Slow(Duration::from_millis(150)));
        }
        {
            let mut pending = pending.lock().unwrap();
            for i in 0..PER_ROUND {
                let n = round * PER_ROUND + i;
                pending.push(Item::Webhook(n));
                pending.push(Item::Registered(n));
                if n >= 3 {
                    pending.push(Item::Updated(n - 3));
                }
            }
        }
        let kill_after = Duration::from_millis(fastrand::u64(10..150));
        let address = gateway.address.clone();
        let load = send_all(&address, &pending, &acknowledged);
        tokio::pin!(load);
        let killed = tokio::select! {
            () = &mut load => false,
            () = tokio::time::sleep(kill_after) => true,
        };
        gateway.kill();
        if killed {
            load.await; // what was under way fails now, and is sent again next round
            killed_mid_request += 1;
        }
    }

    // A last start: everything not acknowledged is sent again, and the outbox drains; rows the
    // killed processes left in flight are taken over when their lease runs out.
    let db = database.connect().await;
    let orphaned =
        crm_outbox::Entity::find().filter(crm_outbox::Column::Status.eq("in_flight")).count(db.reader()).await.unwrap();
    let gateway = Gateway::start(&env, dir.path()).await;
    for _ in 0..20 {
        if pending.lock().unwrap().is_empty() {
            break;
        }
        send_all(&gateway.address, &pending, &acknowledged).await;
    }
    assert!(pending.lock().unwrap().is_empty(), "some requests were never acknowledged: {:?}", pending.lock().unwrap());
    let drained = async {
        loop {
            let open = crm_outbox::Entity::find()
                .filter(crm_outbox::Column::Status.ne("delivered"))
                .count(db.reader())
                .await
                .unwrap();
            if open == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), drained).await.is_err() {
        let rows = crm_outbox::Entity::find().all(db.reader()).await.unwrap();
        panic!("the outbox did not drain: {rows:#?}\n{}", gateway.log_text());
    }
    assert_eq!(gateway.terminate().await, Some(0));
    eprintln!(
        "crash test: {ROUNDS} rounds, {killed_mid_request} killed under load, {orphaned} deliveries left in flight"
    );

    let acknowledged = acknowledged.into_inner().unwrap();
    let users = user::Entity::find().all(db.reader()).await.unwrap();
    for item in &acknowledged {
        match item {
            Item::Webhook(n) => {
                for event in webhook_events(*n) {
                    let id = event["id"].as_str().unwrap();
                    let row = crm_inbox::Entity::find_by_id(id).one(db.reader()).await.unwrap();
                    assert_eq!(row.map(|r| r.outcome).as_deref(), Some("applied"), "webhook event {id}");
                }
                let user = users.iter().find(|u| u.id == format!("wh{n}")).expect("the webhook's contact");
                assert_eq!(user.phone.as_deref(), Some("+44 2"));
            }
            Item::Registered(n) | Item::Updated(n) => {
                let id = app_event(item)["id"].as_str().unwrap().to_owned();
                assert_eq!(app_events::Entity::find_by_id(id).count(db.reader()).await.unwrap(), 1);
                let user = users.iter().find(|u| u.id == format!("app{n}")).expect("the registered owner");
                assert_eq!(user.crm_sync_status, CrmSyncStatus::Synced, "{user:?}");
            }
        }
    }
    // TreadSoft holds one contact per registered owner, with its latest phone, and nothing else.
    let registered: BTreeSet<String> = users.iter().filter(|u| u.id.starts_with("app")).map(|u| u.id.clone()).collect();
    let contacts = stub.state().all("contacts");
    let external: Vec<String> = contacts.iter().map(|c| c["externalId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(external.len(), registered.len(), "no contact created twice: {external:?}");
    assert_eq!(external.iter().cloned().collect::<BTreeSet<_>>(), registered);
    for user in users.iter().filter(|u| u.id.starts_with("app")) {
        let contact = contacts.iter().find(|c| c["externalId"] == user.id.as_str()).unwrap();
        assert_eq!(Some(contact["id"].as_str().unwrap()), user.crm_id.as_deref());
        assert_eq!(contact["phone"].as_str(), user.phone.as_deref(), "the latest phone reached TreadSoft");
    }
}

on_both_databases_without_app!(killed_at_random_points_nothing_acknowledged_is_lost_or_done_twice);
