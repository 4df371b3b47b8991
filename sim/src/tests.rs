//! The simulator driven by the gateway's own TreadSoft client, as the gateway will drive it.

use crate::server::Account;
use crm_gateway::config::TreadSoftConfig;
use crm_gateway::crm::rate_limit::RateLimit;
use crm_gateway::crm::treadsoft::TreadSoftClient;
use crm_gateway::crm::{CrmClient, CrmError};
use crm_gateway::sync::mapping::RecordType;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn account(rate_limit: u32) -> Account {
    Account {
        account_id: "acc_test".into(),
        api_key: "ts_key_test".into(),
        api_secret: "ts_secret_test".into(),
        rate_limit,
        rate_window: Duration::from_secs(10),
    }
}

/// A running simulator and a client for it (signing with `secret`).
fn started(rate_limit: u32, secret: &str) -> (Arc<crate::server::Sim>, TreadSoftClient) {
    let (sim, url, server) = crate::start_local(account(rate_limit)).unwrap();
    tokio::spawn(server);
    let config = TreadSoftConfig {
        api_url: url.parse().unwrap(),
        api_key: "ts_key_test".to_owned().into(),
        api_secret: secret.to_owned().into(),
    };
    let client = TreadSoftClient::new(
        config,
        Duration::from_secs(5),
        RateLimit { requests: 10_000, period: Duration::from_secs(1) },
    )
    .unwrap();
    (sim, client)
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn contact(email: &str) -> Map<String, Value> {
    fields(json!({"firstName": "Mary", "lastName": "Smith", "email": email, "phone": "+44 1",
        "companyName": null, "role": "owner", "membershipStatus": "active", "notAField": 1}))
}

#[tokio::test]
async fn a_contact_is_created_read_changed_and_deleted_with_versions_and_events() {
    let (sim, client) = started(100, "ts_secret_test");
    client.ping().await.expect("GET /v1/me answers");

    let created = client.create(RecordType::Contact, &contact("mary@example.com"), "key-1").await.unwrap();
    let id = created.record.id.clone();
    assert!(id.starts_with("crm_contact_"), "{id}");
    assert_eq!(created.record.version, 1);
    assert!(!created.record.fields.contains_key("notAField"), "unknown fields are ignored");
    let changed = client.update(RecordType::Contact, &id, &fields(json!({"phone": "+44 2"}))).await.unwrap();
    assert_eq!((changed.record.version, changed.record.fields["phone"].clone()), (2, json!("+44 2")));
    let same = client.update(RecordType::Contact, &id, &fields(json!({"phone": "+44 2"}))).await.unwrap();
    assert_eq!(same.record.version, 2, "equal values change nothing");
    assert_eq!(client.get(RecordType::Contact, &id).await.unwrap().fields["email"], "mary@example.com");
    client.delete(RecordType::Contact, &id).await.unwrap();
    assert!(matches!(client.get(RecordType::Contact, &id).await, Err(CrmError::NotFound { .. })));
    assert!(matches!(client.delete(RecordType::Contact, &id).await, Err(CrmError::NotFound { .. })));

    let events: Vec<Value> = sim.store().take_changes().into_iter().map(|c| c.event).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["contact.created", "contact.updated", "contact.deleted"]);
    assert_eq!(events[0]["requestId"], json!(created.request_id), "an API change carries its request id");
    assert_eq!(events[1]["changedFields"], json!(["phone"]));
    assert_eq!(events[2]["object"]["data"], Value::Null);
    assert!(events[2]["object"]["deletedAt"].is_string());
    assert_eq!(events[1]["object"]["version"], 2);
}

#[tokio::test]
async fn a_second_contact_with_the_same_email_is_a_duplicate_naming_the_first() {
    let (_sim, client) = started(100, "ts_secret_test");
    let first = client.create(RecordType::Contact, &contact("Mary@Example.com"), "k1").await.unwrap();

    let second = client.create(RecordType::Contact, &contact("mary@example.COM"), "k2").await;

    assert_eq!(second.unwrap_err(), CrmError::Duplicate { existing_id: first.record.id });
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_batch_upserts_go_by_external_id() {
    let (sim, client) = started(100, "ts_secret_test");
    let first = client.create(RecordType::Contact, &contact("a@example.com"), "same-key").await.unwrap();
    let again = client.create(RecordType::Contact, &contact("a@example.com"), "same-key").await.unwrap();
    assert_eq!((&again.record.id, &again.request_id), (&first.record.id, &first.request_id));
    assert_eq!(sim.store().counts()["contacts"], 1, "nothing created twice");
    let mismatch = client.create(RecordType::Contact, &contact("b@example.com"), "same-key").await;
    assert!(
        matches!(mismatch, Err(CrmError::Permanent { status: 422, ref code, .. }) if code == "idempotency_mismatch")
    );

    let mut new = contact("c@example.com");
    new.insert("externalId".into(), json!("user_c"));
    let mut taken = contact("A@example.com");
    taken.insert("externalId".into(), json!("user_a"));
    let (results, _) = client.batch_upsert(RecordType::Contact, &[new.clone(), taken], "batch-1").await.unwrap();
    assert_eq!(results[0].status, "created");
    assert_eq!(results[1].status, "error", "one record's error does not fail the other");
    assert_eq!(results[1].error.as_ref().unwrap().existing_id.as_deref(), Some(first.record.id.as_str()));
    new.insert("phone".into(), json!("+44 9"));
    let (results, _) = client.batch_upsert(RecordType::Contact, &[new], "batch-2").await.unwrap();
    assert_eq!(results[0].status, "updated");
    assert_eq!(client.get(RecordType::Contact, results[0].id.as_deref().unwrap()).await.unwrap().version, 2);
}

#[tokio::test]
async fn lists_page_by_updated_at_and_cursor() {
    let (_sim, client) = started(100, "ts_secret_test");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            client
                .create(RecordType::Contact, &contact(&format!("p{i}@example.com")), &format!("k{i}"))
                .await
                .unwrap()
                .record
                .id,
        );
    }
    let since: chrono::DateTime<chrono::Utc> = "2000-01-01T00:00:00Z".parse().unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client.list_since(RecordType::Contact, since, cursor.as_deref(), 2).await.unwrap();
        assert!(page.data.len() <= 2);
        seen.extend(page.data.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every record once, oldest change first");
    client.update(RecordType::Contact, &ids[1], &fields(json!({"phone": "+44 7"}))).await.unwrap();
    let latest = client.get(RecordType::Contact, &ids[1]).await.unwrap().updated_at.unwrap();
    let page = client.list_since(RecordType::Contact, latest, None, 100).await.unwrap();
    assert_eq!(page.data.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [ids[1].clone()]);
}

#[tokio::test]
async fn bad_signatures_bad_fields_and_too_many_requests_are_refused_as_treadsoft_does() {
    let (_sim, wrong) = started(100, "not-the-secret");
    assert!(matches!(wrong.ping().await, Err(CrmError::Permanent { status: 401, .. })));

    let (_sim, client) = started(3, "ts_secret_test");
    let mut bad = contact("d@example.com");
    bad.insert("role".into(), json!("admin"));
    let refused = client.create(RecordType::Contact, &bad, "k").await;
    assert!(matches!(refused, Err(CrmError::Permanent { status: 422, ref code, .. }) if code == "validation_failed"));
    client.ping().await.unwrap();
    client.ping().await.unwrap();
    match client.ping().await {
        Err(CrmError::Transient { status: Some(429), retry_after: Some(wait), .. }) => {
            assert!(wait > Duration::ZERO && wait <= Duration::from_secs(10), "{wait:?}");
        }
        other => panic!("the fourth call in 10 s should be rate limited, got {other:?}"),
    }
}

/// Polls `check` every 20 ms until it is true, for at most 10 s.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "{what} did not happen within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_gateway_and_the_simulator_keep_each_other_in_sync_both_ways() {
    // The simulator, then the gateway pointed at it, then the simulator's webhooks at the gateway.
    let pair = crate::pull_tests::pair(crate::pull_tests::Backend::Sqlite).await.unwrap();
    let (sim, sim_url, gateway, http) =
        (pair.sim.clone(), pair.sim_url.clone(), pair.gateway.clone(), pair.http.clone());

    // Site → CRM: an owner registered on the site appears in TreadSoft, linked by its id.
    let registered: Value = http
        .post(format!("{gateway}/api/owner/register"))
        .json(&json!({"name": "Mary Smith", "email": "mary@example.com", "phone": "+44 1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = registered["user"]["id"].as_str().unwrap().to_owned();
    eventually("the owner in TreadSoft", async || {
        sim.store().by_external_id(crate::store::Collection::Contacts, &user_id).is_some()
    })
    .await;
    let contacts: Value = http.get(format!("{sim_url}/admin/contacts")).send().await.unwrap().json().await.unwrap();
    assert_eq!(contacts["data"][0]["externalId"], json!(user_id), "the admin API lists it");
    let crm_id = contacts["data"][0]["id"].as_str().unwrap().to_owned();

    // CRM → site: a CRM user edits the contact; its webhook changes the site's user.
    let edited = http
        .patch(format!("{sim_url}/admin/contacts/{crm_id}"))
        .json(&json!({"phone": "+44 20 7946 0000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), reqwest::StatusCode::OK);
    let phone_on_the_site = async |http: &reqwest::Client| -> Value {
        let record: Value =
            http.get(format!("{gateway}/api/crm/records/user/{user_id}")).send().await.unwrap().json().await.unwrap();
        record["record"]["phone"].clone()
    };
    eventually("the site's user changed", async || phone_on_the_site(&http).await == json!("+44 20 7946 0000")).await;
    assert!(sim.sent().delivered >= 1);

    // A webhook lost for good: the site does not see the change (what import will heal).
    let dropped =
        http.put(format!("{sim_url}/admin/faults")).json(&json!({"dropWebhooks": true})).send().await.unwrap();
    assert_eq!(dropped.status(), reqwest::StatusCode::OK);
    let given_up = sim.sent().given_up;
    http.patch(format!("{sim_url}/admin/contacts/{crm_id}"))
        .json(&json!({"phone": "+44 1 lost"}))
        .send()
        .await
        .unwrap();
    eventually("the dropped delivery", async || sim.sent().given_up > given_up).await;
    assert_eq!(phone_on_the_site(&http).await, json!("+44 20 7946 0000"));
}

#[tokio::test]
async fn faults_make_the_api_fail_slow_or_down_until_switched_off() {
    let (sim, client) = started(10_000, "ts_secret_test");
    let faults = |f: crate::server::Faults| *sim.faults() = f;

    faults(crate::server::Faults { error_rate: 1.0, ..Default::default() });
    assert!(matches!(client.ping().await, Err(CrmError::Transient { status: Some(503), .. })));
    faults(crate::server::Faults { outage_until: Some(chrono::Utc::now().timestamp() + 60), ..Default::default() });
    assert!(matches!(client.ping().await, Err(CrmError::Transient { status: Some(503), .. })));
    faults(crate::server::Faults { latency_ms: 150, ..Default::default() });
    let started = std::time::Instant::now();
    client.ping().await.expect("slow, not failing");
    assert!(started.elapsed() >= Duration::from_millis(150), "the answer came before the added latency");
    faults(crate::server::Faults::default());
    client.ping().await.expect("switched off");
}

#[tokio::test]
async fn the_admin_api_switches_faults_and_refuses_nonsense() {
    let (sim, url, server) = crate::start_local(account(100)).unwrap();
    tokio::spawn(server);
    let http = reqwest::Client::new();
    let put = |body: Value| http.put(format!("{url}/admin/faults")).json(&body).send();

    let on = put(json!({"errorRate": 0.5, "outageSeconds": 30})).await.unwrap();
    assert_eq!(on.status(), reqwest::StatusCode::OK);
    assert_eq!(sim.faults().error_rate, 0.5);
    assert!(sim.faults().outage_until.is_some_and(|t| t > chrono::Utc::now().timestamp()));
    assert_eq!(put(json!({"errorRate": 2})).await.unwrap().status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(put(json!({"colour": "red"})).await.unwrap().status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(put(json!({})).await.unwrap().status(), reqwest::StatusCode::OK);
    assert_eq!(*sim.faults(), crate::server::Faults::default(), "what is not given is off");
}
