//! The inbox of webhook events: recording each by id (a repeat is a duplicate), applying it in a
//! savepoint, writing its outcome, replaying it, and releasing events that waited for a parent.

use super::apply::{Decision, SyncContext, apply_event};
use super::log::SyncLog;
use super::mapping::RecordType;
use chrono::Utc;
use entity::crm_inbox;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, Set,
    Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Duplicate,
    Stale,
    Echo,
    Failed,
    Waiting,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Echo => "echo",
            Self::Failed => "failed",
            Self::Waiting => "waiting",
        }
    }
}

/// One line of a delivery's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResult {
    pub event_id: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Records event `raw` of delivery `delivery_id` in the inbox and applies it.
pub async fn receive(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    delivery_id: &str,
    raw: &Value,
) -> Result<EventResult, DbErr> {
    // Text columns cannot hold U+0000 on PostgreSQL: such an event is stored with U+FFFD in its
    // columns (the payload keeps it, escaped) and then fails to apply, alone.
    let text = |pointer: &str| raw.pointer(pointer).and_then(Value::as_str).map(|s| s.replace('\0', "\u{FFFD}"));
    let event_id = text("/id").unwrap_or_default();
    let now = Utc::now();
    let row = crm_inbox::ActiveModel {
        event_id: Set(event_id.clone()),
        delivery_id: Set(delivery_id.replace('\0', "\u{FFFD}")),
        event_type: Set(text("/type").unwrap_or_default()),
        record_type: Set(text("/object/type")),
        crm_id: Set(text("/object/id")),
        received_at: Set(now),
        payload: Set(raw.to_string()),
        outcome: Set("received".to_owned()),
        reason: Set(None),
        waiting_for: Set(None),
        attempts: Set(1),
        processed_at: Set(now),
    };
    let inserted = crm_inbox::Entity::insert(row)
        .on_conflict_do_nothing_on([crm_inbox::Column::EventId])
        .exec_without_returning(txn)
        .await?;
    if !matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        return Ok(EventResult { event_id, outcome: Outcome::Duplicate, reason: None });
    }

    let decision = apply_guarded(txn, ctx, raw).await?;
    let result = EventResult { event_id: event_id.clone(), outcome: decision.outcome, reason: decision.reason.clone() };
    record_outcome(txn, &event_id, &decision, false).await?;
    release_waiting(txn, ctx, decision.linked).await?;
    Ok(result)
}

/// Applies a stored event again (after a fix): `crm-gateway inbox replay` and the replay route.
pub async fn replay(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    event_id: &str,
) -> Result<Option<EventResult>, DbErr> {
    let Some(row) = crm_inbox::Entity::find_by_id(event_id).one(txn).await? else { return Ok(None) };
    let raw: Value = serde_json::from_str(&row.payload).map_err(|e| DbErr::Json(e.to_string()))?;
    let decision = apply_guarded(txn, ctx, &raw).await?;
    record_outcome(txn, event_id, &decision, true).await?;
    let result =
        EventResult { event_id: event_id.to_owned(), outcome: decision.outcome, reason: decision.reason.clone() };
    release_waiting(txn, ctx, decision.linked).await?;
    Ok(Some(result))
}

/// Applies events that waited for a record that now exists, and those that waited for them.
pub async fn release_waiting(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    linked: Option<(RecordType, String)>,
) -> Result<(), DbErr> {
    let mut queue: VecDeque<(RecordType, String)> = linked.into_iter().collect();
    while let Some((t, crm_id)) = queue.pop_front() {
        crate::db::lock_named(txn, &waiting_key(t, &crm_id)).await?;
        let waiting = crm_inbox::Entity::find()
            .filter(crm_inbox::Column::Outcome.eq(Outcome::Waiting.as_str()))
            .filter(crm_inbox::Column::WaitingFor.eq(waiting_key(t, &crm_id)))
            .all(txn)
            .await?;
        for row in waiting {
            let Ok(raw) = serde_json::from_str::<Value>(&row.payload) else { continue };
            let decision = apply_guarded(txn, ctx, &raw).await?;
            record_outcome(txn, &row.event_id, &decision, true).await?;
            queue.extend(decision.linked);
        }
    }
    Ok(())
}

/// Most parents one sweep releases for each record type.
const SWEEP_LIMIT: usize = 500;

/// Applies events still `waiting` for a parent that exists by now (a release that missed them:
/// a crash between two steps, or an older gateway). Returns how many parents it released.
pub async fn sweep_waiting(txn: &DatabaseTransaction, ctx: &SyncContext) -> Result<usize, DbErr> {
    let mut released = 0;
    for t in RecordType::ALL {
        // Only the keys whose parent exists: however many events wait for parents that never
        // come, these are found. Names come from the code, never from input.
        let prefix = format!("{}:", t.as_str());
        let sql = format!(
            r#"SELECT DISTINCT i.waiting_for FROM crm_inbox i
               WHERE i.outcome = 'waiting' AND i.waiting_for LIKE '{prefix}%'
                 AND EXISTS (SELECT 1 FROM "{table}" x
                             WHERE x.crm_id = SUBSTR(i.waiting_for, {start}) AND x.deleted_at IS NULL)
               LIMIT {SWEEP_LIMIT}"#,
            table = t.table(),
            start = prefix.len() + 1,
        );
        let rows = txn.query_all_raw(Statement::from_string(txn.get_database_backend(), sql)).await?;
        for row in rows {
            let key: String = row.try_get("", "waiting_for")?;
            let crm_id = key[prefix.len()..].to_owned();
            release_waiting(txn, ctx, Some((t, crm_id))).await?;
            released += 1;
        }
    }
    Ok(released)
}

pub(super) fn waiting_key(t: RecordType, crm_id: &str) -> String {
    format!("{}:{crm_id}", t.as_str())
}

async fn record_outcome(
    txn: &DatabaseTransaction,
    event_id: &str,
    decision: &Decision,
    again: bool,
) -> Result<(), DbErr> {
    let Some(row) = crm_inbox::Entity::find_by_id(event_id).one(txn).await? else { return Ok(()) };
    let attempts = row.attempts + i32::from(again);
    let mut row: crm_inbox::ActiveModel = row.into();
    row.outcome = Set(decision.outcome.as_str().to_owned());
    row.reason = Set(decision.reason.clone());
    row.waiting_for = Set(decision.waiting_for.clone());
    row.attempts = Set(attempts);
    row.processed_at = Set(Utc::now());
    row.update(txn).await?;
    Ok(())
}

/// Applies in a savepoint; a database error rolls the event back and is tried once more (another
/// gateway instance may have created the same record meanwhile), then recorded as `failed`.
async fn apply_guarded(txn: &DatabaseTransaction, ctx: &SyncContext, raw: &Value) -> Result<Decision, DbErr> {
    let mut last_error = None;
    for _ in 0..2 {
        let savepoint = txn.begin().await?;
        match apply_event(&savepoint, ctx, raw).await {
            Ok(decision) => {
                savepoint.commit().await?;
                return Ok(decision);
            }
            Err(e) => {
                savepoint.rollback().await?;
                last_error = Some(e);
            }
        }
    }
    // Data the database refuses (a constraint, a data exception) fails this event alone; anything else (a lost
    // connection, a lock timeout) fails the delivery, so TreadSoft sends it again.
    let Some(last_error) = last_error else { return Err(DbErr::Custom("no attempt was made".into())) };
    if !crate::db::is_data_error(&last_error) {
        return Err(last_error);
    }
    let error = last_error.to_string();
    tracing::warn!(%error, "an inbound event failed");
    let entity_id = raw.pointer("/object/externalId").and_then(Value::as_str).unwrap_or_default();
    SyncLog {
        entity_type: raw.pointer("/object/type").and_then(Value::as_str).unwrap_or("unknown"),
        entity_id,
        crm_id: raw.pointer("/object/id").and_then(Value::as_str),
        action: "update",
        status: "failed",
        request_data: Some(raw.to_string()),
        error_message: Some(error.clone()),
        ..Default::default()
    }
    .write(txn)
    .await?;
    Ok(Decision::new(Outcome::Failed, format!("database error: {error}")))
}
