//! Queuing deliveries to the CRM. A record has at most one pending row: a new change to a record
//! that already waits is merged into that row (its fields joined), so the CRM receives the record's
//! current state once instead of every intermediate edit.

use crate::sync::mapping::RecordType;
use crate::writer::{WriteError, Writer};
use chrono::{DateTime, Utc};
use entity::crm_outbox;
use entity::enums::{OutboxOperation, OutboxStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use std::collections::{BTreeSet, HashMap};

/// What a delivery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create the record in the CRM, or update the listed fields of it.
    Upsert,
    /// Delete the CRM record.
    Delete,
}

impl From<Operation> for OutboxOperation {
    fn from(operation: Operation) -> Self {
        match operation {
            Operation::Upsert => Self::Upsert,
            Operation::Delete => Self::Delete,
        }
    }
}

/// Queues (or merges into the record's pending row) a delivery of `fields` (`None`: all fields).
pub async fn enqueue(
    c: &impl ConnectionTrait,
    t: RecordType,
    record_id: &str,
    operation: Operation,
    fields: Option<&[&str]>,
    event_id: Option<&str>,
) -> Result<i64, DbErr> {
    let now = Utc::now();
    let pending =
        undelivered_query(&[(t, record_id.to_owned())], &[OutboxStatus::Pending]).lock_exclusive().one(c).await?;
    if let Some(row) = pending {
        let merged = merged(operation, &row, fields);
        let id = row.id;
        let mut row: crm_outbox::ActiveModel = row.into();
        row.operation = Set(merged.0.into());
        row.fields = Set(merged.1);
        row.event_id = Set(event_id.map(str::to_owned));
        // A new change deserves a fresh try, not the backoff of the failures before it.
        row.attempts = Set(0);
        row.next_attempt_at = Set(now);
        row.updated_at = Set(now);
        row.update(c).await?;
        return Ok(id);
    }
    let row = pending_row(t, record_id, operation, fields, event_id).insert(c).await?;
    Ok(row.id)
}

/// What pending row `row` becomes when a change `operation` of `fields` is merged into it: a
/// delete absorbs anything; upserts join their field lists.
pub fn merged(operation: Operation, row: &crm_outbox::Model, fields: Option<&[&str]>) -> (Operation, Option<String>) {
    match (operation, row.operation) {
        (Operation::Delete, _) => (Operation::Delete, None),
        (Operation::Upsert, OutboxOperation::Delete) => (Operation::Delete, None),
        (Operation::Upsert, _) => (Operation::Upsert, merge_fields(row.fields.as_deref(), fields)),
    }
}

/// A new pending row for a change `operation` of `fields` of record `record_id`.
pub fn pending_row(
    t: RecordType,
    record_id: &str,
    operation: Operation,
    fields: Option<&[&str]>,
    event_id: Option<&str>,
) -> crm_outbox::ActiveModel {
    let now = Utc::now();
    crm_outbox::ActiveModel {
        record_type: Set(t.as_str().to_owned()),
        record_id: Set(record_id.to_owned()),
        operation: Set(operation.into()),
        fields: Set(fields.map(|f| serde_json::to_string(f).unwrap_or_default())),
        event_id: Set(event_id.map(str::to_owned)),
        status: Set(OutboxStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        last_error: Set(None),
        idempotency_key: Set(format!("cgw-{}", uuid::Uuid::now_v7())),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

/// The statuses of a delivery not done yet: the rows `idx_crm_outbox_open` holds.
pub const OPEN: [OutboxStatus; 3] = [OutboxStatus::Pending, OutboxStatus::InFlight, OutboxStatus::Failed];

/// `status IN (...)` with the statuses written into the statement as constants, not bound as
/// parameters: a plan can use the partial index of open rows (`idx_crm_outbox_open`, `WHERE status
/// IN ('pending', 'in_flight', 'failed')`) only where the database can prove the query's rows are
/// among the index's, and with bound values it cannot (a cached generic plan on PostgreSQL;
/// SQLite's planner). Without that index a record's lookup walks its delivered history. SQLite
/// proves it only from a term identical to the index's, so some of the open statuses are asked
/// for as `status IN (<all three>) AND status IN (<these>)`.
pub fn status_in(statuses: &[OutboxStatus]) -> Expr {
    status_in_of(crm_outbox::Entity, statuses)
}

/// [`status_in`] of the outbox named `table` in the statement (an alias, in a subquery).
fn status_in_of(table: impl sea_orm::sea_query::IntoIden + Clone, statuses: &[OutboxStatus]) -> Expr {
    use sea_orm::ActiveEnum;
    use sea_orm::sea_query::ExprTrait;
    let of = |statuses: &[OutboxStatus]| {
        Expr::col((table.clone(), crm_outbox::Column::Status))
            .is_in(statuses.iter().map(|s| Expr::Constant(s.to_value().into())))
    };
    if statuses != OPEN && statuses.iter().all(|s| OPEN.contains(s)) {
        return of(&OPEN).and(of(statuses));
    }
    of(statuses)
}

/// The rows a delivery step may claim at `now`, oldest first, at most `limit` (among `only`, when
/// given): pending and due, or in flight under a lease that has run out, of a record with no
/// other row in flight under a lease that holds. Locked on PostgreSQL, skipping rows another
/// instance holds. One statement: the records in flight are excluded by the database (on SQLite
/// through the index of open rows; PostgreSQL's planner may take the status index), so they
/// neither cost a read of their own nor take places in the batch.
pub fn due_query(now: DateTime<Utc>, limit: u64, only: Option<Vec<i64>>) -> sea_orm::Select<crm_outbox::Entity> {
    use crm_outbox::Column;
    use sea_orm::sea_query::{ExprTrait, LockBehavior, LockType, Query};
    let busy = "busy";
    let in_flight = Query::select()
        .expr(Expr::val(1))
        .from_as(crm_outbox::Entity, busy)
        .and_where(Expr::col((busy, Column::RecordType)).equals((crm_outbox::Entity, Column::RecordType)))
        .and_where(Expr::col((busy, Column::RecordId)).equals((crm_outbox::Entity, Column::RecordId)))
        .and_where(status_in_of(busy, &[OutboxStatus::InFlight]))
        .and_where(Expr::col((busy, Column::LeaseUntil)).gte(now))
        .to_owned();
    let mut due = crm_outbox::Entity::find();
    if let Some(ids) = only {
        due = due.filter(Column::Id.is_in(ids));
    }
    due.filter(
        Condition::any()
            .add(Column::Status.eq(OutboxStatus::Pending).and(Column::NextAttemptAt.lte(now)))
            .add(Column::Status.eq(OutboxStatus::InFlight).and(Column::LeaseUntil.lt(now))),
    )
    .filter(Expr::exists(in_flight).not())
    .order_by_asc(Column::Id)
    .limit(limit)
    .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
}

/// The record's deliveries that are not done (pending, in flight or failed), links aside.
async fn undelivered(
    c: &impl ConnectionTrait,
    t: RecordType,
    record_id: &str,
    except: Option<i64>,
) -> Result<Vec<crm_outbox::Model>, DbErr> {
    let mut query = undelivered_query(&[(t, record_id.to_owned())], &OPEN);
    if let Some(id) = except {
        query = query.filter(crm_outbox::Column::Id.ne(id));
    }
    query.all(c).await
}

/// The ids of `t`'s records with a delivery not done (pending, in flight or failed), links aside.
pub async fn undelivered_ids(
    c: &impl ConnectionTrait,
    t: RecordType,
) -> Result<std::collections::HashSet<String>, DbErr> {
    let ids: Vec<String> = crm_outbox::Entity::find()
        .select_only()
        .column(crm_outbox::Column::RecordId)
        .distinct()
        .filter(crm_outbox::Column::RecordType.eq(t.as_str()))
        .filter(status_in(&OPEN))
        .filter(crm_outbox::Column::Operation.ne(OutboxOperation::Link))
        .into_tuple()
        .all(c)
        .await?;
    Ok(ids.into_iter().collect())
}

/// The record's `crm_sync_status` given its deliveries (other than `except`): `failed` if one is
/// dead-lettered, `pending` if one is queued or in flight, else `synced`.
pub async fn sync_status(
    c: &impl ConnectionTrait,
    t: RecordType,
    record_id: &str,
    except: Option<i64>,
) -> Result<&'static str, DbErr> {
    Ok(status_of(&undelivered(c, t, record_id, except).await?))
}

/// [`sync_status`] from the record's undelivered rows.
pub fn status_of(undelivered: &[crm_outbox::Model]) -> &'static str {
    if undelivered.iter().any(|r| r.status == OutboxStatus::Failed) {
        "failed"
    } else if undelivered.is_empty() {
        "synced"
    } else {
        "pending"
    }
}

/// The local fields of the record with a change not yet confirmed by the CRM (pending or in
/// flight); `None` in the set means every field.
pub async fn unconfirmed_fields(
    c: &impl ConnectionTrait,
    t: RecordType,
    record_id: &str,
) -> Result<Option<BTreeSet<String>>, DbErr> {
    Ok(unconfirmed_of(&undelivered(c, t, record_id, None).await?))
}

/// [`unconfirmed_fields`] from the record's undelivered rows.
pub fn unconfirmed_of(undelivered: &[crm_outbox::Model]) -> Option<BTreeSet<String>> {
    fields_of(undelivered.iter().filter(|r| r.status != OutboxStatus::Failed))
}

/// The local fields of the undelivered rows given, dead-lettered ones included; `None`: every field.
pub fn undelivered_fields(undelivered: &[crm_outbox::Model]) -> Option<BTreeSet<String>> {
    fields_of(undelivered.iter())
}

fn fields_of<'a>(rows: impl Iterator<Item = &'a crm_outbox::Model>) -> Option<BTreeSet<String>> {
    let mut fields = BTreeSet::new();
    for row in rows {
        match row.fields.as_deref().map(serde_json::from_str::<BTreeSet<String>>) {
            Some(Ok(listed)) => fields.extend(listed),
            _ => return None,
        }
    }
    Some(fields)
}

/// The undelivered rows (as [`undelivered`]) of every record in `records`, by record. Pending
/// rows are locked (a change may be merged into one; the claim skips locked rows); rows in flight
/// or failed are only read, so that recording a delivery's outcome (which locks its row, then the
/// record) never waits in a cycle with an apply (which locks the record, then reads these). On
/// SQLite, where the writer's transaction holds the whole database, that is one read ([`open_of`]).
pub async fn undelivered_of(
    c: &impl ConnectionTrait,
    records: &[(RecordType, String)],
) -> Result<HashMap<(RecordType, String), Vec<crm_outbox::Model>>, DbErr> {
    if c.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(undelivered_by_record(open_of(c, records).await?));
    }
    let mut rows = Vec::new();
    for chunk in records.chunks(crate::db::MAX_PARAMS / 2) {
        rows.extend(undelivered_query(chunk, &[OutboxStatus::Pending]).lock_exclusive().all(c).await?);
        rows.extend(undelivered_query(chunk, &[OutboxStatus::InFlight, OutboxStatus::Failed]).all(c).await?);
    }
    Ok(undelivered_by_record(rows))
}

/// The rows of `records` in one of `statuses`, links aside, oldest first.
pub fn undelivered_query(
    records: &[(RecordType, String)],
    statuses: &[OutboxStatus],
) -> sea_orm::Select<crm_outbox::Entity> {
    rows_of(records, statuses).filter(crm_outbox::Column::Operation.ne(OutboxOperation::Link))
}

/// The rows of `records` in one of `statuses`, oldest first.
fn rows_of(records: &[(RecordType, String)], statuses: &[OutboxStatus]) -> sea_orm::Select<crm_outbox::Entity> {
    crm_outbox::Entity::find()
        .filter(crate::sync::stamps::by_type(records, crm_outbox::Column::RecordType, crm_outbox::Column::RecordId))
        .filter(status_in(statuses))
        .order_by_asc(crm_outbox::Column::Id)
}

/// Every open row (pending, in flight, failed) of the records in `records`, links included,
/// oldest first, unlocked: on SQLite, where the writer's transaction holds the whole database, one
/// read that serves both what a delivery outcome checks of its own rows (in flight, under its
/// lease) and the records' other undelivered rows ([`undelivered_of`]).
pub async fn open_of(
    c: &impl ConnectionTrait,
    records: &[(RecordType, String)],
) -> Result<Vec<crm_outbox::Model>, DbErr> {
    let mut out = Vec::new();
    for chunk in records.chunks(crate::db::MAX_PARAMS / 2) {
        out.extend(open_query(chunk).all(c).await?);
    }
    Ok(out)
}

/// The open rows of `records`, links included, oldest first: what [`open_of`] reads.
pub fn open_query(records: &[(RecordType, String)]) -> sea_orm::Select<crm_outbox::Entity> {
    rows_of(records, &OPEN)
}

/// `rows` (open rows, as [`open_of`] reads them) by record, links aside: the undelivered rows of
/// each, as [`undelivered_of`] returns them.
pub fn undelivered_by_record(
    rows: impl IntoIterator<Item = crm_outbox::Model>,
) -> HashMap<(RecordType, String), Vec<crm_outbox::Model>> {
    let mut out: HashMap<(RecordType, String), Vec<crm_outbox::Model>> = HashMap::new();
    for row in rows.into_iter().filter(|r| r.operation != OutboxOperation::Link) {
        if let Some(t) = RecordType::parse(&row.record_type) {
            out.entry((t, row.record_id.clone())).or_default().push(row);
        }
    }
    out
}

/// Whether the record's delivery was dead-lettered and nothing of it is queued or being sent
/// (a retry by hand makes the failed row pending again, and this false).
pub async fn dead_lettered(c: &impl ConnectionTrait, t: RecordType, record_id: &str) -> Result<bool, DbErr> {
    let rows = undelivered(c, t, record_id, None).await?;
    Ok(rows.iter().any(|r| r.status == OutboxStatus::Failed) && rows.iter().all(|r| r.status == OutboxStatus::Failed))
}

/// Whether a delivery of the record is being sent right now.
pub async fn in_flight(c: &impl ConnectionTrait, t: RecordType, record_id: &str) -> Result<bool, DbErr> {
    Ok(undelivered(c, t, record_id, None).await?.iter().any(|r| r.status == OutboxStatus::InFlight))
}

/// Makes the rows matching `which` due now with a fresh attempt count (a retry by hand);
/// returns how many.
pub async fn make_due(c: &impl ConnectionTrait, which: Condition) -> Result<u64, DbErr> {
    let now = Utc::now();
    let result = crm_outbox::Entity::update_many()
        .col_expr(crm_outbox::Column::Status, Expr::value(OutboxStatus::Pending))
        .col_expr(crm_outbox::Column::Attempts, Expr::value(0))
        .col_expr(crm_outbox::Column::NextAttemptAt, Expr::value(now))
        .col_expr(crm_outbox::Column::UpdatedAt, Expr::value(now))
        .filter(which)
        .exec(c)
        .await?;
    Ok(result.rows_affected)
}

/// Drops the record's queued deliveries (a record deleted before it ever reached the CRM).
pub async fn cancel_pending(c: &impl ConnectionTrait, t: RecordType, record_id: &str) -> Result<(), DbErr> {
    crm_outbox::Entity::delete_many()
        .filter(crm_outbox::Column::RecordType.eq(t.as_str()))
        .filter(crm_outbox::Column::RecordId.eq(record_id))
        .filter(status_in(&[OutboxStatus::Pending]))
        .exec(c)
        .await?;
    Ok(())
}

/// The union of two field lists, where `None` means every field.
fn merge_fields(stored: Option<&str>, new: Option<&[&str]>) -> Option<String> {
    let stored: Option<BTreeSet<String>> = stored.map(|text| serde_json::from_str(text).unwrap_or_default());
    match (stored, new) {
        (Some(mut set), Some(new)) => {
            set.extend(new.iter().map(|f| (*f).to_owned()));
            Some(serde_json::to_string(&set).unwrap_or_default())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_merge_and_all_absorbs_any() {
        assert_eq!(
            merge_fields(Some(r#"["phone"]"#), Some(&["name", "phone"])).as_deref(),
            Some(r#"["name","phone"]"#)
        );
        assert_eq!(merge_fields(None, Some(&["name"])), None);
        assert_eq!(merge_fields(Some(r#"["name"]"#), None), None);
    }
}

/// What retrying one row came to.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryOne {
    Queued,
    NotFound,
    /// The row is delivered or being delivered; its status is given.
    NotRetryable(OutboxStatus),
}

/// Makes a `failed` (or waiting `pending`) row due now, with a fresh attempt count.
pub async fn retry_one(writer: &Writer, id: i64) -> Result<RetryOne, WriteError> {
    writer
        .run(move |txn| {
            Box::pin(async move {
                let Some(row) = crm_outbox::Entity::find_by_id(id).one(txn).await? else {
                    return Ok(RetryOne::NotFound);
                };
                // Guarded by status in the update itself: a row another instance claims between
                // the read and the update stays in flight instead of going out twice at once.
                let retryable = Condition::all()
                    .add(crm_outbox::Column::Id.eq(id))
                    .add(crm_outbox::Column::Status.is_in([OutboxStatus::Failed, OutboxStatus::Pending]));
                if make_due(txn, retryable).await? == 0 {
                    return Ok(RetryOne::NotRetryable(row.status));
                }
                Ok(RetryOne::Queued)
            })
        })
        .await
}

/// Makes every `failed` row (of one record type, and of one record of it, if given) due now, with
/// a fresh attempt count; returns how many.
pub async fn retry_failed(
    writer: &Writer,
    record_type: Option<RecordType>,
    record_id: Option<String>,
) -> Result<u64, WriteError> {
    writer
        .run(move |txn| {
            Box::pin(async move {
                let mut which = Condition::all().add(status_in(&[OutboxStatus::Failed]));
                if let Some(t) = record_type {
                    which = which.add(crm_outbox::Column::RecordType.eq(t.as_str()));
                }
                if let Some(id) = record_id {
                    which = which.add(crm_outbox::Column::RecordId.eq(id));
                }
                make_due(txn, which).await
            })
        })
        .await
}

/// Makes the record's waiting delivery (pending or failed, not a link-back) due now, or queues a
/// delivery of the whole record: the seed's "sync now". Returns the row's id.
pub async fn queue_now(writer: &Writer, t: RecordType, record_id: String) -> Result<i64, WriteError> {
    writer
        .run(move |txn| {
            Box::pin(async move {
                let waiting =
                    undelivered_query(&[(t, record_id.clone())], &[OutboxStatus::Pending, OutboxStatus::Failed])
                        .one(txn)
                        .await?;
                if let Some(row) = waiting {
                    let which = Condition::all()
                        .add(crm_outbox::Column::Id.eq(row.id))
                        .add(crm_outbox::Column::Status.is_in([OutboxStatus::Pending, OutboxStatus::Failed]));
                    make_due(txn, which).await?;
                    return Ok(row.id);
                }
                enqueue(txn, t, &record_id, Operation::Upsert, None, None).await
            })
        })
        .await
}

/// Queues a delivery of each whole record (merged into its pending row if it has one), in one
/// transaction; returns the rows' ids.
pub async fn queue_all(writer: &Writer, t: RecordType, record_ids: Vec<String>) -> Result<Vec<i64>, WriteError> {
    writer
        .run(move |txn| {
            Box::pin(async move {
                let mut rows = Vec::with_capacity(record_ids.len());
                for id in &record_ids {
                    rows.push(enqueue(txn, t, id, Operation::Upsert, None, None).await?);
                }
                Ok(rows)
            })
        })
        .await
}

/// The last error of outbox row `id`, if it has one.
pub async fn last_error(c: &impl ConnectionTrait, id: i64) -> Result<Option<String>, DbErr> {
    Ok(crm_outbox::Entity::find_by_id(id).one(c).await?.and_then(|row| row.last_error))
}
