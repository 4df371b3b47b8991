//! The operator's view: `GET /api/crm/status` (what the dashboard shows), `GET /metrics`
//! (Prometheus) and `/readyz`, each checked against what was really sent and stored.

use crate::helpers::{TestApp, TestDatabase, use_stub};
use crate::inbound::{created, event};
use crate::on_both_databases_without_app;
use crate::treadsoft_stub::Stub;
use entity::crm_outbox;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

/// A webhook delivery applied, the same delivered again (a duplicate), an event that fails, a
/// refused delivery, and an owner registered by the app whose delivery TreadSoft refuses for
/// good (a dead letter).
pub(crate) async fn some_of_everything(database: TestDatabase) -> (TestApp, Stub) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| use_stub(c, &stub)).await;
    stub.state().records.insert(
        ("contacts".into(), "crm_c1".into()),
        json!({"id": "crm_c1", "externalId": null, "email": "crm_c1@example.com", "version": 1}),
    );
    assert_eq!(app.deliver(&[created("evt_1", "crm_c1")]).await, ["applied"]);
    assert_eq!(app.deliver(&[created("evt_1", "crm_c1")]).await, ["duplicate"]);
    let bad = event(
        "evt_bad",
        "contact.created",
        "crm_c2",
        1,
        0,
        &[],
        json!({"firstName": "A", "lastName": "B", "email": "b@example.com", "role": "superuser"}),
    );
    assert_eq!(app.deliver(&[bad]).await, ["failed"]);
    let unsigned = app.post_webhook_with(r#"{"events": []}"#, &[]).await;
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    // Everything queued so far goes out (the link-back of crm_c1), then the owner, refused.
    app.deliver_pending().await;
    crate::helpers::dead_lettered_owner(&app, &stub).await;
    (app, stub)
}

async fn failed_rows(app: &TestApp) -> Vec<crm_outbox::Model> {
    crm_outbox::Entity::find().filter(crm_outbox::Column::Status.eq("failed")).all(app.db.reader()).await.unwrap()
}

async fn status(app: &TestApp) -> Value {
    let response = app.get("/api/crm/status").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn the_status_shows_records_outbox_webhooks_crm_and_failures(database: TestDatabase) {
    let (app, _stub) = some_of_everything(database).await;
    let failed = failed_rows(&app).await;
    assert_eq!(failed.len(), 1, "only the owner's create was dead-lettered: {failed:#?}");

    let status = status(&app).await;

    let contacts = &status["records"].as_array().unwrap()[0];
    assert_eq!(contacts["recordType"], "contact");
    assert_eq!((contacts["synced"].as_i64(), contacts["failed"].as_i64()), (Some(1), Some(1)), "{contacts}");
    assert_eq!(status["outbox"]["failed"], 1);
    assert_eq!(status["outbox"]["pending"], 0);
    assert_eq!(status["outbox"]["oldestPendingAgeSeconds"], Value::Null, "nothing waits");
    for window in ["lastHour", "lastDay"] {
        let counts = &status["webhooks"][window];
        assert_eq!(
            (&counts["applied"], &counts["duplicate"], &counts["failed"], &counts["stale"]),
            (&json!(1), &json!(1), &json!(1), &json!(0)),
            "{window}: {counts}"
        );
    }
    assert!(status["webhooks"]["lastReceivedAt"].is_string());
    assert_eq!(status["crm"]["provider"], "treadsoft");
    assert_eq!(status["crm"]["health"]["ok"], true, "the stub answers GET /v1/me");
    assert_eq!(status["crm"]["lastCall"]["ok"], true, "the health check was the last call");
    let outbound = status["failures"]["outbound"].as_array().unwrap();
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0]["id"], failed[0].id);
    assert_eq!(outbound[0]["recordId"], "user_1");
    assert!(outbound[0]["error"].as_str().unwrap().contains("validation_failed"), "{}", outbound[0]);
    let inbound = status["failures"]["inbound"].as_array().unwrap();
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0]["eventId"], "evt_bad");
    assert!(inbound[0]["error"].as_str().unwrap().contains("role"), "{}", inbound[0]);
}

async fn a_change_waiting_shows_its_age(database: TestDatabase) {
    let app = TestApp::spawn(database).await;
    let owner = json!({"id": "user_9", "name": "Ann Lee", "email": "ann@example.com", "phone": null,
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&json!({"id": "ev_9", "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let status = status(&app).await;

    assert_eq!(status["outbox"]["pending"], 1);
    let age = status["outbox"]["oldestPendingAgeSeconds"].as_f64().expect("an age");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(status["outbox"]["byType"][0]["recordType"], "contact");
    assert_eq!(status["records"][0]["pending"], 1);
    assert_eq!(status["crm"]["provider"], "mock");
}

/// The value of the series `name{labels}` in a text exposition; `None` when it is absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_count_what_happened(database: TestDatabase) {
    let (app, _stub) = some_of_everything(database).await;

    let response = app.get("/metrics").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(value(r#"crm_gateway_webhook_events_total{outcome="applied"}"#), 1.0);
    assert_eq!(value(r#"crm_gateway_webhook_events_total{outcome="duplicate"}"#), 1.0);
    assert_eq!(value(r#"crm_gateway_webhook_events_total{outcome="failed"}"#), 1.0);
    assert_eq!(value(r#"crm_gateway_webhook_refusals_total{reason="missing_signature"}"#), 1.0);
    assert_eq!(value("crm_gateway_webhook_apply_seconds_count"), 3.0, "three deliveries applied");
    assert_eq!(value(r#"crm_gateway_deliveries_total{outcome="delivered",status="200"}"#), 1.0);
    assert_eq!(value(r#"crm_gateway_deliveries_total{outcome="dead_letter",status="422"}"#), 1.0);
    assert_eq!(value("crm_gateway_dead_letters_total"), 1.0);
    assert_eq!(value(r#"crm_gateway_outbox_rows{record_type="contact",status="failed"}"#), 1.0);
    assert!(value(r#"crm_gateway_crm_request_seconds_count{operation="batch_upsert",status="422"}"#) >= 1.0);
    assert!(value("crm_gateway_writer_group_jobs_count") >= 3.0);
    assert!(value("crm_gateway_rate_limit_wait_seconds_count") >= 2.0);
    assert_eq!(
        value(r#"crm_gateway_http_requests_total{route="/api/crm/webhooks/treadsoft",method="POST",status="200"}"#),
        3.0
    );
    assert_eq!(
        value(r#"crm_gateway_http_requests_total{route="/api/crm/webhooks/treadsoft",method="POST",status="401"}"#),
        1.0
    );
    assert_eq!(value("crm_gateway_crm_circuit_open"), 0.0);
    assert_eq!(value("crm_gateway_crm_last_call_ok"), 0.0, "the last call was the refused create");
    assert!(text.trim_end().ends_with("# EOF"));
}

async fn readyz_reports_the_backlog_dead_letters_and_a_failing_crm_and_stays_ready(database: TestDatabase) {
    let (app, stub) = some_of_everything(database).await;
    let owner = json!({"id": "user_2", "name": "Bob Stone", "email": "bob@example.com", "phone": null,
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&json!({"id": "ev_2", "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    stub.fail_next(503, "unavailable", None);
    app.deliver_pending().await;

    let response = app.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::OK, "a CRM outage does not make the gateway unready");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["outbox"]["backlog"], 1, "{body}");
    assert_eq!(body["checks"]["outbox"]["deadLetters"], 1);
    assert_eq!(body["checks"]["crm"]["lastCallOk"], false);
    assert!(body["checks"]["crm"]["lastCallAt"].is_string(), "{body}");
    assert!(!body.to_string().contains("unavailable: scripted"), "no CRM error text on the public route: {body}");
}

async fn status_and_metrics_need_the_token_when_one_is_set(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.api_token = Some("s3cret".to_owned().into())).await;
    for path in ["/metrics", "/api/crm/status"] {
        let refused = app.get(path).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(refused.headers().contains_key("x-request-id"), "a refusal carries its request id too");
        let served = app.http.get(format!("{}{path}", app.address)).bearer_auth("s3cret").send().await.unwrap();
        assert_eq!(served.status(), StatusCode::OK, "{path}");
    }
    let metrics = app.http.get(format!("{}/metrics", app.address)).bearer_auth("s3cret").send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"crm_gateway_http_requests_total{route="/metrics",method="GET",status="401"} 1"#),
        "refusals are counted:\n{text}"
    );
}

async fn replay_failed_replays_every_failed_event_since_a_time(database: TestDatabase) {
    let app = TestApp::spawn(database).await;
    let bad = |id: &str, crm_id: &str| {
        event(
            id,
            "contact.created",
            crm_id,
            1,
            0,
            &[],
            json!({"firstName": "A", "lastName": "B", "email": format!("{crm_id}@example.com"), "role": "superuser"}),
        )
    };
    assert_eq!(app.deliver(&[bad("evt_a", "crm_a"), bad("evt_b", "crm_b")]).await, ["failed", "failed"]);
    let later = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // The stored payloads are replayed as they are (the fix would be in the gateway), so both
    // fail again: the summary says what was tried and what it came to.
    let response = app.request(reqwest::Method::POST, "/api/crm/inbox/replay-failed").await;
    assert_eq!(response.status(), StatusCode::OK);
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary, json!({"replayed": 2, "outcomes": {"failed": 2}}));
    let since = app
        .request(reqwest::Method::POST, &format!("/api/crm/inbox/replay-failed?since={}", later.replace('+', "%2B")))
        .await;
    let summary: Value = since.json().await.unwrap();
    assert_eq!(summary["replayed"], 0, "both were received before `since`");
    let bad_since = app.request(reqwest::Method::POST, "/api/crm/inbox/replay-failed?since=yesterday").await;
    assert_eq!(bad_since.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(crate::helpers::error_code(bad_since).await, "validation_failed");
}

async fn retry_failed_can_be_limited_to_one_record(database: TestDatabase) {
    let (app, _stub) = some_of_everything(database).await;
    let failed = failed_rows(&app).await;
    assert_eq!(failed.len(), 1);
    let other =
        app.request(reqwest::Method::POST, "/api/crm/outbox/retry-failed?recordType=contact&recordId=user_2").await;
    assert_eq!(other.json::<Value>().await.unwrap(), json!({"retried": 0}));
    let without_type = app.request(reqwest::Method::POST, "/api/crm/outbox/retry-failed?recordId=user_1").await;
    assert_eq!(without_type.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let this =
        app.request(reqwest::Method::POST, "/api/crm/outbox/retry-failed?recordType=contact&recordId=user_1").await;

    assert_eq!(this.json::<Value>().await.unwrap(), json!({"retried": 1}));
    assert!(failed_rows(&app).await.is_empty());
}

async fn the_dashboard_is_served_with_a_strict_content_security_policy(database: TestDatabase) {
    let app = TestApp::spawn_with(database, |c| c.api_token = Some("t".to_owned().into())).await;
    for (path, kind) in
        [("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")]
    {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path} needs no token: it holds no data");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(header("content-security-policy").contains("script-src 'self'"), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff");
    }
    let page = app.get("/dashboard").await.text().await.unwrap();
    assert!(page.contains(r#"<script src="/dashboard/app.js" defer>"#));
    assert!(!page.contains("onclick") && !page.contains("<script>"), "no inline script");
}

async fn logs_are_filtered_and_paged_newest_first(database: TestDatabase) {
    let (app, _stub) = some_of_everything(database).await;
    let get = |path: String| {
        let app = &app;
        async move {
            let response = app.get(&path).await;
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let (status, all) = get("/api/crm/logs".into()).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> = all["items"].as_array().unwrap().iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(ids.len() >= 3 && ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(all["nextCursor"], Value::Null);

    let (_, first) = get("/api/crm/logs?limit=2".into()).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["nextCursor"].as_str().expect("a next page").to_owned();
    let (_, second) = get(format!("/api/crm/logs?limit=2&cursor={cursor}")).await;
    assert_eq!(second["items"][0]["id"].as_i64().unwrap(), ids[2], "the next page starts after the first");

    let (_, failed) = get("/api/crm/logs?recordType=user&recordId=user_1&status=failed".into()).await;
    let failed = failed["items"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"].as_str().unwrap().contains("validation_failed"));

    for bad in ["limit=0", "status=meh", "since=yesterday", "recordType=planet", "cursor=abc", "colour=red"] {
        let (status, body) = get(format!("/api/crm/logs?{bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(body["error"]["code"], "validation_failed", "{bad}");
    }
}

async fn failures_are_listed_by_direction_with_a_cursor(database: TestDatabase) {
    let app = TestApp::spawn(database).await;
    let bad = |id: &str| {
        event(
            id,
            "contact.created",
            &format!("crm_{id}"),
            1,
            0,
            &[],
            json!({"firstName": "A", "lastName": "B", "email": format!("{id}@example.com"), "role": "superuser"}),
        )
    };
    let events: Vec<Value> = (0..5).map(|i| bad(&format!("evt_{i}"))).collect();
    assert_eq!(app.deliver(&events).await, ["failed"; 5]);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/crm/failures/inbound?limit=2".to_owned(),
            Some(c) => format!("/api/crm/failures/inbound?limit=2&cursor={c}"),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|f| f["eventId"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["evt_4", "evt_3", "evt_2", "evt_1", "evt_0"], "every failure once, newest first");
    let one: Value = app.get("/api/crm/failures/inbound?crmId=crm_evt_2").await.json().await.unwrap();
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    let outbound: Value = app.get("/api/crm/failures/outbound").await.json().await.unwrap();
    assert_eq!(outbound, json!({"items": [], "nextCursor": null}));
}

async fn inspect_shows_a_records_whole_sync_state(database: TestDatabase) {
    let (app, _stub) = some_of_everything(database).await;

    let response = app.get("/api/crm/records/user/user_1").await;

    assert_eq!(response.status(), StatusCode::OK);
    let record: Value = response.json().await.unwrap();
    assert_eq!(record["recordType"], "contact");
    assert_eq!(record["record"]["email"], "mary@example.com");
    assert_eq!(record["record"]["crm_sync_status"], "failed");
    let stamped: Vec<&str> =
        record["fieldStamps"].as_array().unwrap().iter().map(|s| s["field"].as_str().unwrap()).collect();
    assert!(stamped.contains(&"email"), "{stamped:?}");
    assert_eq!(record["outbox"][0]["status"], "failed");
    assert_eq!(record["logs"][0]["status"], "failed");
    let from_crm = user_id_of(&app, "crm_c1").await;
    // An older version of it, stale: not applied, so no log of its own under the record.
    let older = event("evt_0", "contact.updated", "crm_c1", 0, -60, &["phone"], json!({"phone": "+44 0"}));
    assert_eq!(app.deliver(&[older]).await, ["stale"]);
    let record: Value = app.get(&format!("/api/crm/records/contact/{from_crm}")).await.json().await.unwrap();
    assert_eq!(record["crmId"], "crm_c1");
    let events: Vec<(&str, &str)> = record["inbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["eventId"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [("evt_0", "stale"), ("evt_1", "applied")],
        "newest first: the stale one, the one that created it"
    );
    // Its link-back was delivered: no longer an outbox row to act on, a log of what was sent.
    assert_eq!(record["outbox"], json!([]), "only deliveries not done are listed");
    let logs = record["logs"].as_array().unwrap();
    let sent_back =
        |l: &&Value| l["status"] == "success" && l["request"].as_str().is_some_and(|r| r.contains(&from_crm));
    assert!(logs.iter().any(|l| l["action"] == "update" && sent_back(&l)), "{logs:#?}");
    assert_eq!(app.get("/api/crm/records/user/nobody").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get("/api/crm/records/planet/1").await.status(), StatusCode::NOT_FOUND);
}

async fn user_id_of(app: &TestApp, crm_id: &str) -> String {
    entity::user::Entity::find()
        .filter(entity::user::Column::CrmId.eq(crm_id))
        .one(app.db.reader())
        .await
        .unwrap()
        .expect("a linked user")
        .id
}

on_both_databases_without_app!(
    logs_are_filtered_and_paged_newest_first,
    failures_are_listed_by_direction_with_a_cursor,
    inspect_shows_a_records_whole_sync_state,
    replay_failed_replays_every_failed_event_since_a_time,
    retry_failed_can_be_limited_to_one_record,
    the_dashboard_is_served_with_a_strict_content_security_policy,
    the_status_shows_records_outbox_webhooks_crm_and_failures,
    a_change_waiting_shows_its_age,
    metrics_count_what_happened,
    readyz_reports_the_backlog_dead_letters_and_a_failing_crm_and_stays_ready,
    status_and_metrics_need_the_token_when_one_is_set,
);
