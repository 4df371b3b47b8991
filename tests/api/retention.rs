//! Retention (`crm-gateway prune`, daily) and the automatic retry of dead letters.

use crate::helpers::{TestApp, TestDatabase, use_stub};
use crate::on_both_databases_without_app;
use crate::treadsoft_stub::Stub;
use chrono::{Duration, Utc};
use crm_gateway::ops::retention::{self, BATCH, Pruned};
use entity::enums::{OutboxOperation, OutboxStatus};
use entity::{crm_inbox, crm_outbox, crm_requests, crm_sync_logs, sync_tombstones};
use sea_orm::{ActiveValue::NotSet, EntityTrait, QueryOrder, Set};

fn log(id_hint: usize, days_ago: i64) -> crm_sync_logs::ActiveModel {
    crm_sync_logs::ActiveModel {
        id: NotSet,
        entity_type: Set("contact".into()),
        entity_id: Set(format!("user_{id_hint}")),
        crm_id: Set(None),
        action: Set("update".into()),
        status: Set("success".into()),
        request_data: Set(None),
        response_data: Set(None),
        error_message: Set(None),
        created_at: Set(Utc::now() - Duration::days(days_ago)),
    }
}

fn inbox(event_id: &str, outcome: &str, days_ago: i64) -> crm_inbox::ActiveModel {
    crm_inbox::ActiveModel {
        event_id: Set(event_id.into()),
        delivery_id: Set("d".into()),
        event_type: Set("contact.updated".into()),
        record_type: Set(Some("contact".into())),
        crm_id: Set(Some(format!("crm_{event_id}"))),
        received_at: Set(Utc::now() - Duration::days(days_ago)),
        payload: Set("{}".into()),
        outcome: Set(outcome.into()),
        reason: Set(None),
        waiting_for: Set((outcome == "waiting").then(|| "contact:crm_parent".to_owned())),
        attempts: Set(1),
        processed_at: Set(Utc::now() - Duration::days(days_ago)),
    }
}

fn request(id: &str, days_ago: i64) -> crm_requests::ActiveModel {
    crm_requests::ActiveModel {
        request_id: Set(id.into()),
        record_type: Set("contact".into()),
        record_id: Set("user_1".into()),
        fields: Set("[]".into()),
        created_at: Set(Utc::now() - Duration::days(days_ago)),
    }
}

fn outbox(record_id: &str, status: OutboxStatus, days_ago: i64) -> crm_outbox::ActiveModel {
    let at = Utc::now() - Duration::days(days_ago);
    crm_outbox::ActiveModel {
        id: NotSet,
        record_type: Set("contact".into()),
        record_id: Set(record_id.into()),
        operation: Set(OutboxOperation::Upsert),
        fields: Set(None),
        event_id: Set(None),
        status: Set(status),
        attempts: Set(1),
        next_attempt_at: Set(at),
        lease_until: Set(None),
        last_error: Set(None),
        idempotency_key: Set(format!("key-{record_id}-{status}-{days_ago}")),
        created_at: Set(at),
        updated_at: Set(at),
    }
}

fn tombstone(crm_id: &str, days_ago: i64) -> sync_tombstones::ActiveModel {
    sync_tombstones::ActiveModel {
        entity_type: Set("contact".into()),
        crm_id: Set(crm_id.into()),
        entity_id: Set(None),
        stamp_ms: Set(1),
        stamp_seq: Set(0),
        origin: Set("crm".into()),
        event_id: Set(format!("evt_{crm_id}")),
        created_at: Set(Utc::now() - Duration::days(days_ago)),
    }
}

/// Old and recent rows of every kind; returns how many old logs there are.
async fn old_and_new_rows(app: &TestApp) -> u64 {
    let c = app.db.writer();
    // More than two batches of old logs, so pruning takes several transactions.
    let old_logs = 2 * BATCH as usize + 17;
    let logs: Vec<_> = (0..old_logs).map(|i| log(i, 100)).chain([log(0, 1)]).collect();
    for chunk in logs.chunks(500) {
        crm_sync_logs::Entity::insert_many(chunk.to_vec()).exec(c).await.unwrap();
    }
    crm_inbox::Entity::insert_many([
        inbox("evt_old_applied", "applied", 40),
        inbox("evt_old_stale", "stale", 40),
        inbox("evt_old_echo", "echo", 40),
        inbox("evt_old_failed", "failed", 40),
        inbox("evt_old_waiting", "waiting", 40),
        inbox("evt_new_applied", "applied", 1),
    ])
    .exec(c)
    .await
    .unwrap();
    crm_requests::Entity::insert_many([request("req_old", 10), request("req_new", 1)]).exec(c).await.unwrap();
    crm_outbox::Entity::insert_many([
        outbox("user_a", OutboxStatus::Delivered, 10),
        outbox("user_b", OutboxStatus::Failed, 10),
        outbox("user_c", OutboxStatus::Pending, 10),
        outbox("user_d", OutboxStatus::Delivered, 1),
    ])
    .exec(c)
    .await
    .unwrap();
    sync_tombstones::Entity::insert_many([
        tombstone("crm_old", 40),
        tombstone("crm_new", 2),
        // Old, but the failed event evt_old_failed (crm id crm_evt_old_failed) may be replayed.
        tombstone("crm_evt_old_failed", 40),
    ])
    .exec(c)
    .await
    .unwrap();
    old_logs as u64
}

async fn prune_removes_only_rows_past_their_keep_time(database: TestDatabase) {
    let app = TestApp::spawn(database).await;
    let old_logs = old_and_new_rows(&app).await;
    let keep = crm_gateway::config::Settings::default().validate().unwrap().retention;
    let expected = Pruned { sync_logs: old_logs, inbox: 3, requests: 1, outbox: 1, tombstones: 1 };

    let dry = retention::prune(&app.writer, app.db.reader(), &keep, Utc::now(), true, None).await.unwrap();
    assert_eq!(dry, expected, "the dry run counts");
    assert_eq!(crm_sync_logs::Entity::find().all(app.db.reader()).await.unwrap().len() as u64, old_logs + 1);

    let pruned = retention::prune(&app.writer, app.db.reader(), &keep, Utc::now(), false, None).await.unwrap();

    assert_eq!(pruned, expected);
    assert_eq!(crm_sync_logs::Entity::find().all(app.db.reader()).await.unwrap().len(), 1, "the recent log stays");
    let mut events: Vec<String> =
        crm_inbox::Entity::find().all(app.db.reader()).await.unwrap().into_iter().map(|e| e.event_id).collect();
    events.sort();
    assert_eq!(events, ["evt_new_applied", "evt_old_failed", "evt_old_waiting"], "failed and waiting events stay");
    let requests: Vec<String> =
        crm_requests::Entity::find().all(app.db.reader()).await.unwrap().into_iter().map(|r| r.request_id).collect();
    assert_eq!(requests, ["req_new"]);
    let rows: Vec<(String, String)> = crm_outbox::Entity::find()
        .order_by_asc(crm_outbox::Column::RecordId)
        .all(app.db.reader())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.record_id, r.status.to_string()))
        .collect();
    let expect = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(rows, expect(&[("user_b", "failed"), ("user_c", "pending"), ("user_d", "delivered")]));
    let tombstones: Vec<String> =
        sync_tombstones::Entity::find().all(app.db.reader()).await.unwrap().into_iter().map(|t| t.crm_id).collect();
    assert_eq!(tombstones.len(), 2, "{tombstones:?}");
    assert!(tombstones.contains(&"crm_new".to_owned()));
    assert!(tombstones.contains(&"crm_evt_old_failed".to_owned()), "a replay could bring the record back");

    let again = retention::prune(&app.writer, app.db.reader(), &keep, Utc::now(), false, None).await.unwrap();
    assert_eq!(again, Pruned::default(), "nothing left to remove");
}

async fn dead_letters_are_retried_by_themselves_when_asked(database: TestDatabase) {
    let stub = Stub::start().await;
    let app = TestApp::spawn_with(database, |c| {
        use_stub(c, &stub);
        // The real minimum is a minute; the test drives the same loop faster.
        c.auto_retry_interval = Some(std::time::Duration::from_millis(200));
    })
    .await;
    crate::helpers::dead_lettered_owner(&app, &stub).await;
    assert_eq!(crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap().status, "failed");

    // The upkeep makes it due again; the next delivery step sends it.
    let started = std::time::Instant::now();
    loop {
        let row = crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap();
        if row.status == "pending" {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the dead letter was not retried");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.deliver_pending().await;
    assert_eq!(crm_outbox::Entity::find().one(app.db.reader()).await.unwrap().unwrap().status, "delivered");
}

async fn prune_on_the_command_line_says_what_it_removed(database: TestDatabase) {
    if database.backend != crate::helpers::Backend::Sqlite {
        return; // the binary is the same on both; its SQLite file is easy to hand over
    }
    let url = database.config.url.clone();
    let app = TestApp::spawn(database).await;
    let old_logs = old_and_new_rows(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_crm-gateway"))
            .env_clear()
            .env("DATABASE_URL", &url)
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    let dry = run(&["prune", "--dry-run"]);
    assert!(dry.starts_with("would remove (dry run, nothing removed):"), "{dry}");
    assert!(dry.contains(&old_logs.to_string()) && dry.contains("crm_sync_logs"), "{dry}");
    let done: serde_json::Value = serde_json::from_str(&run(&["prune", "--json"])).unwrap();
    assert_eq!(done["dryRun"], false);
    assert_eq!(done["removed"]["syncLogs"], old_logs);
    assert_eq!(done["removed"]["inbox"], 3);
}

on_both_databases_without_app!(
    prune_removes_only_rows_past_their_keep_time,
    dead_letters_are_retried_by_themselves_when_asked,
    prune_on_the_command_line_says_what_it_removed,
);
