//! Recording what became of sent rows: the outbox row, the record's sync columns, the request
//! id for echo detection, and the sync log.

use super::Attempt;
use crate::crm::CrmError;
use crate::outbound::outbox;
use crate::outbound::retry::RetrySchedule;
use crate::sync::apply::SyncContext;
use crate::sync::echo;
use crate::sync::hlc::Stamp;
use crate::sync::inbox;
use crate::sync::log::SyncLog;
use crate::sync::lww::{Origin, Version};
use crate::sync::mapping::RecordType;
use crate::sync::records;
use crate::sync::records::Local;
use crate::sync::stamps;
use chrono::{DateTime, Utc};
use entity::enums::OutboxStatus;
use entity::{crm_outbox, crm_requests, crm_sent_values};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What one recorded row came to, and the CRM's HTTP status if it answered.
pub(super) type Counted = (&'static str, Option<u16>);

/// What to write to one outbox row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RowUpdate {
    status: OutboxStatus,
    last_error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
    /// Set when a release gives the attempt back.
    attempts: Option<i32>,
}

impl RowUpdate {
    fn finish(status: OutboxStatus, last_error: Option<String>, next_attempt_at: Option<DateTime<Utc>>) -> Self {
        Self { status, last_error, next_attempt_at, attempts: None }
    }

    /// Back to `pending`, due after `wait`, without using up an attempt.
    fn release(row: &crm_outbox::Model, wait: std::time::Duration, reason: String, now: DateTime<Utc>) -> Self {
        Self {
            status: OutboxStatus::Pending,
            last_error: Some(reason),
            next_attempt_at: Some(now + chrono::Duration::from_std(wait).unwrap_or_default()),
            attempts: Some((row.attempts - 1).max(0)),
        }
    }
}

/// Writes what became of each sent row: the outbox rows, the records' sync columns, the request
/// ids for echo detection, the sync log, and the release of webhook events that waited for a
/// record linked here. A few statements per table for all the rows together. Returns what each
/// row recorded came to, for the metrics: `delivered`, `skipped`, `released`, `retry` or
/// `dead_letter`, with the CRM's HTTP status.
pub(super) async fn record(
    txn: &DatabaseTransaction,
    schedule: &RetrySchedule,
    sync: &SyncContext,
    results: &[(crm_outbox::Model, Attempt)],
    now: DateTime<Utc>,
) -> Result<Vec<Counted>, DbErr> {
    // Only the instance whose lease still holds may record: one that ran past its lease was
    // taken over, and the newer outcome must not be overwritten.
    let ids: Vec<i64> = results.iter().map(|(row, _)| row.id).collect();
    // Each row's record type, parsed once; `None` for a type this build does not know.
    let types: Vec<Option<RecordType>> = results.iter().map(|(row, _)| RecordType::parse(&row.record_type)).collect();
    let records: Option<Vec<(RecordType, String)>> =
        results.iter().zip(&types).map(|((row, _), t)| t.map(|t| (t, row.record_id.clone()))).collect();
    let (current, read_open): (HashMap<i64, crm_outbox::Model>, _) = match records {
        // SQLite: the open rows of every record sent, read once, hold both the rows sent (a row
        // not among them is not in flight, so not held) and the records' other undelivered rows.
        Some(records) if txn.get_database_backend() != DatabaseBackend::Postgres => {
            let open = outbox::open_of(txn, &records).await?;
            let sent: HashSet<i64> = ids.iter().copied().collect();
            let current = open.iter().filter(|row| sent.contains(&row.id)).map(|row| (row.id, row.clone())).collect();
            (current, Some(outbox::undelivered_by_record(open)))
        }
        // PostgreSQL: the rows sent are locked first, then (below) their records, then the
        // records' pending rows, the order an apply cannot wait on in a cycle.
        _ => {
            let current = crm_outbox::Entity::find()
                .filter(crm_outbox::Column::Id.is_in(ids))
                .order_by_asc(crm_outbox::Column::Id)
                .lock_exclusive()
                .all(txn)
                .await?
                .into_iter()
                .map(|row| (row.id, row))
                .collect();
            (current, None)
        }
    };
    let held: Vec<(&crm_outbox::Model, &Attempt, Option<RecordType>)> = results
        .iter()
        .zip(types)
        .filter(|((row, _), _)| {
            let holds = current
                .get(&row.id)
                .is_some_and(|c| c.status == OutboxStatus::InFlight && c.lease_until == row.lease_until);
            if !holds {
                tracing::warn!(outbox_id = row.id, "the lease was lost before the outcome was recorded");
            }
            holds
        })
        .map(|((row, attempt), t)| (row, attempt, t))
        .collect();

    // The records delivered or dead-lettered, with their other undelivered rows.
    let touched: Vec<(RecordType, String)> = held
        .iter()
        .filter(|(_, attempt, _)| matches!(attempt, Attempt::Done { .. } | Attempt::Failed { .. }))
        .filter_map(|(row, _, t)| t.map(|t| (t, row.record_id.clone())))
        .collect();
    let mut locals: HashMap<(RecordType, String), Local> = HashMap::new();
    for t in RecordType::ALL {
        let ids: Vec<String> = touched.iter().filter(|(k, _)| *k == t).map(|(_, id)| id.clone()).collect();
        if !ids.is_empty() {
            for local in records::find_many(txn, t, &[], &ids, &[]).await? {
                locals.insert((t, local.id.clone()), local);
            }
        }
    }
    let undelivered = match read_open {
        Some(undelivered) => undelivered,
        None => outbox::undelivered_of(txn, &touched).await?,
    };

    let mut updates: HashMap<RowUpdate, Vec<i64>> = HashMap::new();
    let mut changed: BTreeMap<(RecordType, String), Map<String, Value>> = BTreeMap::new();
    let mut linked = Vec::new();
    let mut requests = Vec::new();
    let mut sent_values = Vec::new();
    let mut logs = Vec::new();
    let mut counted: Vec<Counted> = Vec::with_capacity(held.len());
    let mut restamps: Vec<(RecordType, String, &'static str, Version)> = Vec::new();
    for (row, attempt, t) in held {
        let Some(t) = t else {
            let update = RowUpdate::finish(OutboxStatus::Failed, Some("unknown record type".into()), None);
            updates.entry(update).or_default().push(row.id);
            counted.push(("dead_letter", None));
            continue;
        };
        let key = (t, row.record_id.clone());
        let update = match attempt {
            Attempt::Done { crm_id, request_id, action, request, response, answered } => {
                // Only a record read under lock above: its stamps are written whole (read, merged).
                let restamp = locals.contains_key(&key) && undelivered_others(&undelivered, &key, row.id) == 0;
                if let (Some((ms, version)), true) = (answered, restamp) {
                    // The sent fields now hold TreadSoft's version `version`: stamped so, a listing
                    // read before this write (an older version, its older values) cannot undo it.
                    // Not while another change of the record waits: its fields stay the local ones.
                    let stamp = Version {
                        stamp: Stamp { ms: *ms, seq: *version },
                        origin: Origin::Crm,
                        event_id: request_id.clone().unwrap_or_default(),
                    };
                    sync.hlc.observe(stamp.stamp);
                    for field in sent_fields(t, row) {
                        restamps.push((t, row.record_id.clone(), field, stamp.clone()));
                    }
                }
                if let Some(local) = locals.get(&key) {
                    let mut changes = Map::new();
                    let link = crm_id.as_ref().filter(|_| *action != "delete" && local.crm_id().is_none());
                    if let Some(crm_id) = link {
                        changes.insert("crm_id".into(), Value::String(crm_id.clone()));
                        // Webhook events that arrived before this record had its TreadSoft id can apply now.
                        linked.push((t, crm_id.clone()));
                    }
                    let others: Vec<crm_outbox::Model> =
                        undelivered.get(&key).into_iter().flatten().filter(|r| r.id != row.id).cloned().collect();
                    changes.insert("crm_sync_status".into(), Value::String(outbox::status_of(&others).into()));
                    changes.insert("crm_last_synced_at".into(), Value::from(now.timestamp_millis()));
                    changed.entry(key.clone()).or_default().extend(changes);
                    if let Some(request_id) = request_id {
                        let sent: Vec<&String> = request.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                        requests.push(crm_requests::ActiveModel {
                            request_id: Set(request_id.clone()),
                            record_type: Set(t.as_str().to_owned()),
                            record_id: Set(row.record_id.clone()),
                            fields: Set(serde_json::to_string(&sent).unwrap_or_default()),
                            created_at: Set(now),
                        });
                    } else if let (Some(crm_id), true) = (crm_id.as_deref().or(local.crm_id()), *action != "delete") {
                        // No request id to know the echo by: the value sent, per field.
                        for (field, value) in request.as_object().into_iter().flatten() {
                            if field != "externalId" {
                                sent_values.push(crm_sent_values::ActiveModel {
                                    key: Set(echo::sent_key(t, crm_id, field)),
                                    value_hash: Set(echo::value_hash(value)),
                                    sent_at: Set(now),
                                });
                            }
                        }
                    }
                    logs.push(
                        SyncLog {
                            entity_type: t.as_str(),
                            entity_id: &row.record_id,
                            crm_id: crm_id.as_deref().or(local.crm_id()),
                            action,
                            status: "success",
                            request_data: Some(request.to_string()),
                            response_data: Some(response.to_string()),
                            error_message: None,
                        }
                        .row(),
                    );
                }
                counted.push(("delivered", Some(200)));
                RowUpdate::finish(OutboxStatus::Delivered, None, None)
            }
            Attempt::Skipped(reason) => {
                counted.push(("skipped", None));
                RowUpdate::finish(OutboxStatus::Delivered, Some(format!("skipped: {reason}")), None)
            }
            Attempt::Failed { error: CrmError::NotSent { message }, .. } => {
                counted.push(("released", None));
                RowUpdate::release(row, std::time::Duration::ZERO, format!("released unsent: {message}"), now)
            }
            Attempt::Later(wait, reason) => {
                counted.push(("released", None));
                RowUpdate::release(row, *wait, reason.clone(), now)
            }
            Attempt::Failed { error, action, request } => {
                let message = error.to_string();
                logs.push(
                    SyncLog {
                        entity_type: t.as_str(),
                        entity_id: &row.record_id,
                        crm_id: None,
                        action,
                        status: "failed",
                        request_data: Some(request.to_string()),
                        response_data: None,
                        error_message: Some(message.clone()),
                    }
                    .row(),
                );
                let retry_after = match error {
                    CrmError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let delay =
                    error.is_transient().then(|| schedule.delay(row.attempts.max(0) as u32, retry_after)).flatten();
                match delay {
                    Some(delay) => {
                        counted.push(("retry", error.status()));
                        let next = now + chrono::Duration::from_std(delay).unwrap_or_default();
                        RowUpdate::finish(OutboxStatus::Pending, Some(message), Some(next))
                    }
                    None => {
                        counted.push(("dead_letter", error.status()));
                        if locals.contains_key(&key) {
                            changed
                                .entry(key.clone())
                                .or_default()
                                .insert("crm_sync_status".into(), Value::String("failed".into()));
                        }
                        RowUpdate::finish(OutboxStatus::Failed, Some(message), None)
                    }
                }
            }
        };
        updates.entry(update).or_default().push(row.id);
    }

    // Records: each whole, over itself (read above under lock), a statement per record type.
    for t in RecordType::ALL {
        let rows: Vec<(Map<String, Value>, records::Reindexed)> = changed
            .iter()
            .filter(|((k, _), _)| *k == t)
            .filter_map(|(key, changes)| {
                let stored = &locals.get(key)?.values;
                let mut values = stored.clone();
                values.extend(changes.clone());
                let reindexed = records::changed_indexed(t, stored, &values);
                Some((values, reindexed))
            })
            .collect();
        if !rows.is_empty() {
            records::overwrite_many(txn, t, rows).await?;
        }
    }
    stamps::write_field_versions(txn, restamps.iter().map(|(t, id, field, v)| (*t, id.as_str(), *field, v))).await?;
    let on_conflict = OnConflict::column(crm_requests::Column::RequestId).do_nothing().to_owned();
    crate::db::insert_all(txn, requests, Some(on_conflict)).await?;
    let replace = OnConflict::column(crm_sent_values::Column::Key)
        .update_columns([crm_sent_values::Column::ValueHash, crm_sent_values::Column::SentAt])
        .to_owned();
    crate::db::insert_all(txn, dedupe_sent(sent_values), Some(replace)).await?;
    crate::db::insert_all(txn, logs, None).await?;
    for (update, ids) in updates {
        let mut query = crm_outbox::Entity::update_many()
            .col_expr(crm_outbox::Column::Status, Expr::value(update.status))
            .col_expr(crm_outbox::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(crm_outbox::Column::LastError, Expr::value(update.last_error))
            .col_expr(crm_outbox::Column::UpdatedAt, Expr::value(Utc::now()));
        if let Some(next) = update.next_attempt_at {
            query = query.col_expr(crm_outbox::Column::NextAttemptAt, Expr::value(next));
        }
        if let Some(attempts) = update.attempts {
            query = query.col_expr(crm_outbox::Column::Attempts, Expr::value(attempts));
        }
        query.filter(crm_outbox::Column::Id.is_in(ids)).exec(txn).await?;
    }
    inbox::release_waiting(txn, sync, linked).await?;
    Ok(counted)
}

/// How many undelivered rows of record `key` there are besides row `this`.
fn undelivered_others(
    undelivered: &HashMap<(RecordType, String), Vec<crm_outbox::Model>>,
    key: &(RecordType, String),
    this: i64,
) -> usize {
    undelivered.get(key).map_or(0, |rows| rows.iter().filter(|r| r.id != this).count())
}

/// The local fields a delivery row sent: those it lists, or every field of the type.
fn sent_fields(t: RecordType, row: &crm_outbox::Model) -> Vec<&'static str> {
    let listed: Option<Vec<String>> = row.fields.as_deref().and_then(|f| serde_json::from_str(f).ok());
    t.fields().iter().map(|f| f.local).filter(|f| listed.as_ref().is_none_or(|l| l.iter().any(|x| x == f))).collect()
}

/// The last of several values sent for one key in a batch (one statement cannot upsert a key twice).
fn dedupe_sent(rows: Vec<crm_sent_values::ActiveModel>) -> Vec<crm_sent_values::ActiveModel> {
    let mut last: std::collections::HashMap<String, crm_sent_values::ActiveModel> = std::collections::HashMap::new();
    for row in rows {
        if let sea_orm::ActiveValue::Set(key) = &row.key {
            last.insert(key.clone(), row);
        }
    }
    last.into_values().collect()
}
