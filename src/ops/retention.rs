//! Retention: what the gateway no longer needs is deleted daily (and by `crm-gateway prune`), in
//! batches of [`BATCH`] rows, each batch a transaction of its own through the writer, so the
//! write lock is never held for long and webhooks and app events keep flowing in between.
//!
//! | table | deleted when | why it is kept until then |
//! |---|---|---|
//! | `crm_sync_logs` | older than `CRM_LOG_RETENTION_DAYS` (90) | the seed's "keep last 90 days" |
//! | `crm_inbox` | applied, stale or echo, received more than `CRM_INBOX_RETENTION_DAYS` (30) ago | a re-sent event is recognised as a duplicate; failed and waiting events stay until resolved |
//! | `crm_requests` | older than `CRM_OUTBOX_RETENTION_DAYS` (7) | the webhook of the gateway's own write is recognised as an echo |
//! | `crm_outbox` | delivered, last changed more than `CRM_OUTBOX_RETENTION_DAYS` (7) ago | what was sent can be looked up; pending, in-flight and failed rows stay |
//! | `sync_tombstones` | older than `CRM_TOMBSTONE_RETENTION_DAYS` (30, at least 7), and no failed or waiting event about the record | a late or replayed event cannot bring a deleted record back |

use crate::config::Retention;
use crate::writer::{WriteError, Writer};
use chrono::{DateTime, Utc};
use entity::enums::OutboxStatus;
use entity::{crm_inbox, crm_outbox, crm_requests, crm_sync_logs, sync_tombstones};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;

/// Rows one delete takes.
pub const BATCH: u64 = 1000;
/// How often every instance prunes.
pub const INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Rows removed (or, on a dry run, that would be), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    pub sync_logs: u64,
    pub inbox: u64,
    pub requests: u64,
    pub outbox: u64,
    pub tombstones: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.sync_logs + self.inbox + self.requests + self.outbox + self.tombstones
    }
}

/// One table's rule: which rows go, and the key that names them.
struct Rule<E: EntityTrait> {
    entity: E,
    which: Condition,
    key: Vec<E::Column>,
}

impl<E: EntityTrait> Rule<E> {
    /// `DELETE FROM t WHERE key IN (SELECT key FROM t WHERE which LIMIT n)`: the same on both
    /// databases, a bounded batch each time.
    fn batch(&self) -> sea_orm::sea_query::DeleteStatement {
        let keys = Query::select()
            .columns(self.key.iter().copied())
            .from(self.entity)
            .cond_where(self.which.clone())
            .limit(BATCH)
            .to_owned();
        let key: SimpleExpr = match self.key.as_slice() {
            [one] => Expr::col(*one),
            many => Expr::tuple(many.iter().map(|c| Expr::col(*c))),
        };
        Query::delete().from_table(self.entity).and_where(key.in_subquery(keys)).to_owned()
    }

    async fn run(
        self,
        writer: &Writer,
        reader: &impl ConnectionTrait,
        dry_run: bool,
        stop: Option<&watch::Receiver<bool>>,
    ) -> Result<u64, WriteError> {
        if dry_run {
            let count: Option<i64> = E::find()
                .select_only()
                .column_as(Expr::cust("COUNT(*)"), "n")
                .filter(self.which)
                .into_tuple()
                .one(reader)
                .await
                .map_err(WriteError::Work)?;
            return Ok(count.unwrap_or(0) as u64);
        }
        let statement = self.batch();
        let table = self.entity.table_name();
        let mut total = 0;
        loop {
            if stop.is_some_and(|stop| *stop.borrow()) {
                return Ok(total); // the gateway is stopping: the rest waits for the next prune
            }
            let batch = statement.clone();
            let started = std::time::Instant::now();
            let deleted = writer
                .run(move |txn| {
                    Box::pin(async move {
                        // Instances prune one batch at a time, not against each other.
                        crate::db::lock_named(txn, "crm-gateway:retention").await?;
                        Ok(txn.execute(&batch).await?.rows_affected())
                    })
                })
                .await?;
            // From queuing the batch to its commit: the longest the write lock can have been held.
            tracing::debug!(table, deleted, took = ?started.elapsed(), "pruned a batch");
            total += deleted;
            if deleted < BATCH {
                return Ok(total);
            }
        }
    }
}

/// The cut-off `keep` before `now` (the beginning of time for a keep time longer than that).
fn before(now: DateTime<Utc>, keep: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(keep)
        .ok()
        .and_then(|keep| now.checked_sub_signed(keep))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `SELECT 1 FROM crm_inbox WHERE outcome IN ('failed', 'waiting')` about the tombstone's record
/// (and `outcome <> 'applied'`, so that the index by record serves it).
fn unresolved_events_of_the_tombstone() -> sea_orm::sea_query::SelectStatement {
    use crm_inbox::Column as I;
    use sync_tombstones::Column as T;
    Query::select()
        .expr(Expr::val(1))
        .from(crm_inbox::Entity)
        .and_where(Expr::col((crm_inbox::Entity, I::Outcome)).is_in(["failed", "waiting"]))
        // Through the partial index of events not applied, by record.
        .and_where(crate::sync::inbox::not_applied())
        .and_where(Expr::col((crm_inbox::Entity, I::RecordType)).equals((sync_tombstones::Entity, T::EntityType)))
        .and_where(Expr::col((crm_inbox::Entity, I::CrmId)).equals((sync_tombstones::Entity, T::CrmId)))
        .to_owned()
}

/// Deletes (or with `dry_run` counts) every row past its keep time as of `now`; stops between
/// batches once `stop` turns true.
pub async fn prune(
    writer: &Writer,
    reader: &impl ConnectionTrait,
    keep: &Retention,
    now: DateTime<Utc>,
    dry_run: bool,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<Pruned, WriteError> {
    let sync_logs = Rule {
        entity: crm_sync_logs::Entity,
        which: Condition::all().add(crm_sync_logs::Column::CreatedAt.lt(before(now, keep.sync_logs))),
        key: vec![crm_sync_logs::Column::Id],
    }
    .run(writer, reader, dry_run, stop)
    .await?;
    let inbox = Rule {
        entity: crm_inbox::Entity,
        which: Condition::all()
            .add(crm_inbox::Column::ReceivedAt.lt(before(now, keep.inbox)))
            .add(crm_inbox::Column::Outcome.is_in(["applied", "stale", "echo"])),
        key: vec![crm_inbox::Column::EventId],
    }
    .run(writer, reader, dry_run, stop)
    .await?;
    let requests = Rule {
        entity: crm_requests::Entity,
        which: Condition::all().add(crm_requests::Column::CreatedAt.lt(before(now, keep.outbox))),
        key: vec![crm_requests::Column::RequestId],
    }
    .run(writer, reader, dry_run, stop)
    .await?;
    let outbox = Rule {
        entity: crm_outbox::Entity,
        which: Condition::all()
            .add(crm_outbox::Column::Status.eq(OutboxStatus::Delivered))
            .add(crm_outbox::Column::UpdatedAt.lt(before(now, keep.outbox))),
        key: vec![crm_outbox::Column::Id],
    }
    .run(writer, reader, dry_run, stop)
    .await?;
    let tombstones = Rule {
        entity: sync_tombstones::Entity,
        which: Condition::all()
            .add(sync_tombstones::Column::CreatedAt.lt(before(now, keep.tombstones)))
            // A failed or waiting event about the record can still be replayed: its tombstone
            // must stay, or the replay would bring the deleted record back.
            .add(Expr::exists(unresolved_events_of_the_tombstone()).not()),
        key: vec![sync_tombstones::Column::EntityType, sync_tombstones::Column::CrmId],
    }
    .run(writer, reader, dry_run, stop)
    .await?;
    Ok(Pruned { sync_logs, inbox, requests, outbox, tombstones })
}
