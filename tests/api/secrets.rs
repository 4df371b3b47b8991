//! At `RUST_LOG=trace`, every path leaves no secret, API key, signature or token in the log or in
//! `crm_sync_logs`: the real binary, driven through webhooks (good and bad), app events (with the
//! right and a wrong token), delivery to TreadSoft, retries and replays.

use crate::helpers::{Backend, TestDatabase};
use crate::on_both_databases_without_app;
use crate::process::{Gateway, env_for};
use crate::treadsoft_stub::{API_KEY, API_SECRET, Stub};
use entity::crm_sync_logs;
use sea_orm::EntityTrait;
use serde_json::json;
use std::time::Duration;

const TOKEN: &str = "gw-token-3f9a1c7e55d04b2a";
const DB_PASSWORD: &str = "db-pass-8c1e0b6d";

async fn no_secret_reaches_the_log_or_the_sync_log(database: TestDatabase) {
    let stub = Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL here trusts the test user; a password in the URL shows whether it is redacted.
    let url = match database.backend {
        Backend::Postgres => {
            let mut url = url::Url::parse(&database.config.url).unwrap();
            url.set_password(Some(DB_PASSWORD)).unwrap();
            url.to_string()
        }
        Backend::Sqlite => database.config.url.clone(),
    };
    let mut env = env_for(&url, &stub);
    env.extend([
        ("RUST_LOG", "trace".to_owned()),
        ("GATEWAY_API_TOKEN", TOKEN.to_owned()),
        ("CRM_REQUEST_TIMEOUT_SECS", "2".to_owned()),
    ]);
    let gateway = Gateway::start(&env, dir.path()).await;
    let http = reqwest::Client::new();
    let base = gateway.address.clone();
    let mut signatures = Vec::new();

    // Webhooks: a good one, a wrong signature, a stale timestamp.
    let events = [json!({"id": "evt_1", "type": "contact.created", "changeSource": "ui", "requestId": null,
        "changedFields": [], "object": {"type": "contact", "id": "crm_contact_1", "externalId": null, "version": 1,
        "updatedAt": "2025-01-05T10:00:00.000Z", "deletedAt": null, "data": {"firstName": "A", "lastName": "B",
        "email": "a@example.com", "phone": null, "companyName": null, "role": "owner", "membershipStatus": "active"}}})];
    let (headers, body) = crate::process::signed(&events, "dlv_1");
    signatures.push(headers[1].1.clone());
    for (mangle, expected) in [(0, 200), (1, 401), (2, 401)] {
        let mut request = http.post(format!("{base}/api/crm/webhooks/treadsoft")).body(body.clone());
        for (name, value) in &headers {
            let value = match (mangle, *name) {
                (1, "X-TreadSoft-Signature") => value.replace("v1=", "v1=00"),
                (2, "X-TreadSoft-Timestamp") => "1000".to_owned(),
                _ => value.clone(),
            };
            request = request.header(*name, value);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), expected);
    }
    // App events with the token, and with a wrong one; then deliveries, a failure, a retry, a replay.
    let owner = json!({"id": "ev_1", "type": "owner.registered", "data": {"id": "user_1", "name": "Ann Lee",
        "email": "ann@example.com", "phone": null, "companyName": null, "role": "owner", "membershipStatus": "pending"}});
    let wrong = http.post(format!("{base}/api/events")).bearer_auth("not-the-token").json(&owner).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    stub.fail_next(422, "validation_failed", None);
    let sent = http.post(format!("{base}/api/events")).bearer_auth(TOKEN).json(&owner).send().await.unwrap();
    assert_eq!(sent.status().as_u16(), 202);
    let failed = async {
        while !stub.state().calls.iter().any(|c| c.path.ends_with("/batch/upsert")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), failed).await.expect("the delivery was tried");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retried = http.post(format!("{base}/api/crm/outbox/retry-failed")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(retried.status().as_u16(), 200);
    let delivered = async {
        while stub.state().by_external_id("contacts", "user_1").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), delivered).await.expect("the retry delivered");
    let replay = http.post(format!("{base}/api/crm/inbox/evt_1/replay")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status().as_u16(), 200);
    let mut gateway = gateway;
    assert_eq!(gateway.terminate_keep_log().await, Some(0));

    let log = gateway.log_text();
    let db = database.connect().await;
    let sync_logs = format!("{:?}", crm_sync_logs::Entity::find().all(db.reader()).await.unwrap());
    assert!(log.lines().count() > 50, "trace logging is on:\n{log}");
    assert!(sync_logs.contains("success") && sync_logs.contains("failed"), "both outcomes were logged: {sync_logs}");
    let mut secrets = vec![crate::helpers::WEBHOOK_SECRET, API_KEY, API_SECRET, TOKEN, DB_PASSWORD];
    secrets.extend(signatures.iter().map(|s| s.trim_start_matches("v1=")));
    for secret in secrets {
        let line = log.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "{secret:?} is in the log: {line:?}");
        assert!(!sync_logs.contains(secret), "{secret:?} is in crm_sync_logs");
    }
    for text in [&log, &sync_logs] {
        let signature = regex_lite_v1(text);
        assert!(signature.is_none(), "a signature is written: {signature:?}");
    }
}

/// The first `v1=` followed by 64 hex digits in `text` (a request or webhook signature).
fn regex_lite_v1(text: &str) -> Option<String> {
    text.match_indices("v1=").map(|(i, _)| &text[i + 3..]).find_map(|rest| {
        let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        (hex.len() >= 64).then(|| format!("v1={hex}"))
    })
}

on_both_databases_without_app!(no_secret_reaches_the_log_or_the_sync_log);
