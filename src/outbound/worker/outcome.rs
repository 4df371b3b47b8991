//! Recording what became of a sent row: the outbox row, the record's sync columns, the request
//! id for echo detection, and the sync log.

use super::Attempt;
use crate::crm::CrmError;
use crate::outbound::outbox;
use crate::outbound::retry::RetrySchedule;
use crate::sync::apply::SyncContext;
use crate::sync::inbox;
use crate::sync::log::SyncLog;
use crate::sync::mapping::RecordType;
use crate::sync::records;
use chrono::{DateTime, Utc};
use entity::{crm_outbox, crm_requests};
use sea_orm::{ActiveModelTrait, DatabaseTransaction, DbErr, EntityTrait, QuerySelect, Set};
use serde_json::{Map, Value};

/// Writes what became of one row: the outbox row, the record's sync columns, the request id for
/// echo detection, and the sync log.
pub(super) async fn record(
    txn: &DatabaseTransaction,
    schedule: &RetrySchedule,
    sync: &SyncContext,
    row: crm_outbox::Model,
    attempt: Attempt,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    // Only the instance whose lease still holds may record: one that ran past its lease was
    // taken over, and the newer outcome must not be overwritten.
    let current = crm_outbox::Entity::find_by_id(row.id).lock_exclusive().one(txn).await?;
    if current.as_ref().is_none_or(|c| c.status != "in_flight" || c.lease_until != row.lease_until) {
        tracing::warn!(outbox_id = row.id, "the lease was lost before the outcome was recorded");
        return Ok(());
    }
    let Some(t) = RecordType::parse(&row.record_type) else {
        return finish(txn, row, "failed", Some("unknown record type".into()), None).await;
    };
    match attempt {
        Attempt::Done { crm_id, request_id, action, request, response } => {
            if let Some(local) = records::find_by_id(txn, t, &row.record_id).await? {
                let mut changes = Map::new();
                let linked = crm_id.as_ref().filter(|_| action != "delete" && local.crm_id().is_none()).cloned();
                if let Some(crm_id) = &linked {
                    changes.insert("crm_id".into(), Value::String(crm_id.clone()));
                }
                let status = outbox::sync_status(txn, t, &row.record_id, Some(row.id)).await?;
                changes.insert("crm_sync_status".into(), Value::String(status.into()));
                changes.insert("crm_last_synced_at".into(), Value::from(now.timestamp_millis()));
                records::update(txn, t, &local, changes).await?;
                if let Some(crm_id) = linked {
                    // Webhook events that arrived before this record had its TreadSoft id can apply now.
                    inbox::release_waiting(txn, sync, Some((t, crm_id))).await?;
                }
                if let Some(request_id) = &request_id {
                    let sent: Vec<&String> = request.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                    crm_requests::Entity::insert(crm_requests::ActiveModel {
                        request_id: Set(request_id.clone()),
                        record_type: Set(t.as_str().to_owned()),
                        record_id: Set(row.record_id.clone()),
                        fields: Set(serde_json::to_string(&sent).unwrap_or_default()),
                        created_at: Set(now),
                    })
                    .on_conflict_do_nothing_on([crm_requests::Column::RequestId])
                    .exec_without_returning(txn)
                    .await?;
                }
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
                .write(txn)
                .await?;
            }
            finish(txn, row, "delivered", None, None).await
        }
        Attempt::Skipped(reason) => finish(txn, row, "delivered", Some(format!("skipped: {reason}")), None).await,
        Attempt::Failed { error: CrmError::NotSent { message }, .. } => {
            release(txn, row, std::time::Duration::ZERO, format!("released unsent: {message}"), now).await
        }
        Attempt::Later(wait, reason) => release(txn, row, wait, reason, now).await,
        Attempt::Failed { error, action, request } => {
            let message = error.to_string();
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
            .write(txn)
            .await?;
            let retry_after = match &error {
                CrmError::Transient { retry_after, .. } => *retry_after,
                _ => None,
            };
            let delay = error.is_transient().then(|| schedule.delay(row.attempts.max(0) as u32, retry_after)).flatten();
            match delay {
                Some(delay) => {
                    let next = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    finish(txn, row, "pending", Some(message), Some(next)).await
                }
                None => {
                    if let Some(local) = records::find_by_id(txn, t, &row.record_id).await? {
                        let changes = Map::from_iter([("crm_sync_status".to_owned(), Value::String("failed".into()))]);
                        records::update(txn, t, &local, changes).await?;
                    }
                    finish(txn, row, "failed", Some(message), None).await
                }
            }
        }
    }
}

/// Puts a row back to `pending`, due after `wait`, without using up an attempt.
async fn release(
    txn: &DatabaseTransaction,
    row: crm_outbox::Model,
    wait: std::time::Duration,
    reason: String,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut row: crm_outbox::ActiveModel = row.into();
    let attempts = row.attempts.take().unwrap_or(1);
    row.attempts = Set((attempts - 1).max(0));
    row.status = Set("pending".into());
    row.lease_until = Set(None);
    row.last_error = Set(Some(reason));
    row.next_attempt_at = Set(now + chrono::Duration::from_std(wait).unwrap_or_default());
    row.updated_at = Set(now);
    row.update(txn).await?;
    Ok(())
}

async fn finish(
    txn: &DatabaseTransaction,
    row: crm_outbox::Model,
    status: &str,
    last_error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
) -> Result<(), DbErr> {
    let mut row: crm_outbox::ActiveModel = row.into();
    row.status = Set(status.to_owned());
    row.lease_until = Set(None);
    row.last_error = Set(last_error);
    if let Some(next) = next_attempt_at {
        row.next_attempt_at = Set(next);
    }
    row.updated_at = Set(Utc::now());
    row.update(txn).await?;
    Ok(())
}
