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
//! | `sync_tombstones` | older than `CRM_TOMBSTONE_RETENTION_DAYS` (30, at least 7) | a late event cannot bring a deleted record back |

use crate::config::Retention;
use crate::writer::{WriteError, Writer};
use chrono::{DateTime, Utc};
use entity::{crm_inbox, crm_outbox, crm_requests, crm_sync_logs, sync_tombstones};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::Serialize;
use std::time::Duration;

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

    async fn run(self, writer: &Writer, reader: &impl ConnectionTrait, dry_run: bool) -> Result<u64, WriteError> {
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
        let mut total = 0;
        loop {
            let batch = statement.clone();
            let deleted =
                writer.run(move |txn| Box::pin(async move { Ok(txn.execute(&batch).await?.rows_affected()) })).await?;
            total += deleted;
            if deleted < BATCH {
                return Ok(total);
            }
        }
    }
}

fn before(now: DateTime<Utc>, keep: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
}

/// Deletes (or with `dry_run` counts) every row past its keep time as of `now`.
pub async fn prune(
    writer: &Writer,
    reader: &impl ConnectionTrait,
    keep: &Retention,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Pruned, WriteError> {
    let sync_logs = Rule {
        entity: crm_sync_logs::Entity,
        which: Condition::all().add(crm_sync_logs::Column::CreatedAt.lt(before(now, keep.sync_logs))),
        key: vec![crm_sync_logs::Column::Id],
    }
    .run(writer, reader, dry_run)
    .await?;
    let inbox = Rule {
        entity: crm_inbox::Entity,
        which: Condition::all()
            .add(crm_inbox::Column::ReceivedAt.lt(before(now, keep.inbox)))
            .add(crm_inbox::Column::Outcome.is_in(["applied", "stale", "echo"])),
        key: vec![crm_inbox::Column::EventId],
    }
    .run(writer, reader, dry_run)
    .await?;
    let requests = Rule {
        entity: crm_requests::Entity,
        which: Condition::all().add(crm_requests::Column::CreatedAt.lt(before(now, keep.outbox))),
        key: vec![crm_requests::Column::RequestId],
    }
    .run(writer, reader, dry_run)
    .await?;
    let outbox = Rule {
        entity: crm_outbox::Entity,
        which: Condition::all()
            .add(crm_outbox::Column::Status.eq("delivered"))
            .add(crm_outbox::Column::UpdatedAt.lt(before(now, keep.outbox))),
        key: vec![crm_outbox::Column::Id],
    }
    .run(writer, reader, dry_run)
    .await?;
    let tombstones = Rule {
        entity: sync_tombstones::Entity,
        which: Condition::all().add(sync_tombstones::Column::CreatedAt.lt(before(now, keep.tombstones))),
        key: vec![sync_tombstones::Column::EntityType, sync_tombstones::Column::CrmId],
    }
    .run(writer, reader, dry_run)
    .await?;
    Ok(Pruned { sync_logs, inbox, requests, outbox, tombstones })
}
