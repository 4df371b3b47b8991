//! Delivering the outbox to the CRM.
//!
//! One step ([`Delivery::deliver_due`]) claims due rows, at most one per record, marking them
//! `in_flight` under a lease (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so several instances
//! share the work and no row is sent twice at once), sends them (new records in batch upserts of up
//! to 100, changes as PATCHes of the record's current values), then records every outcome in one
//! transaction: linked and synced, retried later, or dead-lettered. Tests drive the step directly;
//! `serve` runs it in a loop woken by each new change.

use super::outbox;
use super::retry::RetrySchedule;
use crate::crm::{CrmClient, CrmError};
use crate::db::Db;
use crate::sync::apply::{self, SyncContext};
use crate::sync::log::SyncLog;
use crate::sync::mapping::{Kind, RecordType, local_to_crm};
use crate::sync::records::{self, Local};
use crate::writer::{WriteError, Writer};
use chrono::{DateTime, Utc};
use entity::{crm_outbox, crm_requests};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Most rows one step claims (and most records one batch upsert carries).
const BATCH: u64 = 100;
/// How soon a change is tried again when its parent has not reached the CRM yet.
const PARENT_WAIT: Duration = Duration::from_secs(2);
/// How often an idle worker looks for other instances' rows and due retries.
const POLL: Duration = Duration::from_secs(1);

/// The delivery engine. Cheap to share.
pub struct Delivery {
    db: Db,
    writer: Writer,
    crm: Arc<dyn CrmClient>,
    sync: Arc<SyncContext>,
    schedule: RetrySchedule,
    lease: Duration,
    /// One CRM request's timeout: a claimed row is not sent when less than this is left of its lease.
    request_timeout: Duration,
    /// Woken when a change is queued, so it goes out at once rather than at the next poll.
    pub wake: Arc<Notify>,
}

/// What sending one row came to.
#[derive(Debug)]
enum Attempt {
    Done {
        crm_id: Option<String>,
        request_id: Option<String>,
        action: &'static str,
        request: Value,
        response: Value,
    },
    Skipped(String),
    /// Not now, and not a failure (a parent not yet in the CRM).
    Later(Duration, String),
    Failed {
        error: CrmError,
        action: &'static str,
        request: Value,
    },
}

impl Delivery {
    pub fn new(
        db: Db,
        writer: Writer,
        crm: Arc<dyn CrmClient>,
        sync: Arc<SyncContext>,
        schedule: RetrySchedule,
        lease: Duration,
        request_timeout: Duration,
    ) -> Self {
        Self { db, writer, crm, sync, schedule, lease, request_timeout, wake: Arc::new(Notify::new()) }
    }

    /// Runs steps until `stop` turns true: at once when woken, otherwise every second.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.deliver_due(Utc::now()).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "delivery step failed"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One step at time `now`: claim, send, record. Returns how many rows it handled (rows released
    /// unsent because their lease ran short do not count).
    #[tracing::instrument(name = "deliver", skip_all, fields(claimed))]
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> Result<usize, WriteError> {
        self.deliver(now, None).await
    }

    /// Delivers the given rows now (those that are due and not in flight), for the routes that
    /// answer with the outcome of a sync.
    pub async fn deliver_rows(&self, ids: Vec<i64>) -> Result<usize, WriteError> {
        let mut total = 0;
        for chunk in ids.chunks(BATCH as usize) {
            total += self.deliver(Utc::now(), Some(chunk.to_vec())).await?;
        }
        Ok(total)
    }

    async fn deliver(&self, now: DateTime<Utc>, only: Option<Vec<i64>>) -> Result<usize, WriteError> {
        let claimed = self.claim(now, only).await?;
        tracing::Span::current().record("claimed", claimed.len());
        let mut handled = claimed.len();
        let Some(lease_until) = claimed.first().and_then(|r| r.lease_until) else { return Ok(0) };
        let margin = chrono::Duration::from_std(self.request_timeout).unwrap_or_default();
        let lease_short = || Utc::now() + margin > lease_until;
        // Parents first: a property created in this step can then refer to its owner's new id.
        let mut by_type: BTreeMap<RecordType, Vec<crm_outbox::Model>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for row in claimed {
            match RecordType::parse(&row.record_type) {
                Some(t) => by_type.entry(t).or_default().push(row),
                None => unknown.push((row, Attempt::Skipped("unknown record type".into()))),
            }
        }
        self.record_all(unknown, now).await?;
        for (t, rows) in by_type {
            let mut creates: Vec<Create> = Vec::new();
            for row in rows {
                if lease_short() {
                    handled -= 1;
                    self.record_all(
                        vec![(row, Attempt::Later(Duration::ZERO, "released: its lease ran short".into()))],
                        now,
                    )
                    .await?;
                    continue;
                }
                let attempt = match self.prepare(t, &row).await {
                    Ok(Prepared::Create(local, payload)) => {
                        creates.push((row, local, payload));
                        continue;
                    }
                    Ok(Prepared::Sent(attempt)) => attempt,
                    Err(e) => Attempt::Later(PARENT_WAIT, format!("database error: {e}")),
                };
                // Recorded at once, so the request id is known before its webhook echo arrives.
                self.record_all(vec![(row, attempt)], now).await?;
            }
            if !creates.is_empty() {
                let results = if lease_short() {
                    handled -= creates.len();
                    creates
                        .into_iter()
                        .map(|(row, _, _)| (row, Attempt::Later(Duration::ZERO, "released".into())))
                        .collect()
                } else {
                    self.create_batch(t, creates).await
                };
                self.record_all(results, now).await?;
            }
        }
        Ok(handled)
    }

    /// Records outcomes, each in its own savepoint: one that cannot be written leaves its row in
    /// flight (its lease expires and it is tried again) without undoing the others.
    async fn record_all(
        &self,
        results: Vec<(crm_outbox::Model, Attempt)>,
        now: DateTime<Utc>,
    ) -> Result<(), WriteError> {
        if results.is_empty() {
            return Ok(());
        }
        let schedule = self.schedule.clone();
        let sync = self.sync.clone();
        self.writer
            .run(move |txn| {
                Box::pin(async move {
                    for (row, attempt) in results {
                        let id = row.id;
                        let savepoint = txn.begin().await?;
                        match record(&savepoint, &schedule, &sync, row, attempt, now).await {
                            Ok(()) => savepoint.commit().await?,
                            Err(e) => {
                                savepoint.rollback().await?;
                                tracing::error!(outbox_id = id, error = %e, "cannot record a delivery outcome");
                            }
                        }
                    }
                    Ok(())
                })
            })
            .await
    }

    /// Marks due rows `in_flight`, at most one per record and none of a record already in flight.
    async fn claim(&self, now: DateTime<Utc>, only: Option<Vec<i64>>) -> Result<Vec<crm_outbox::Model>, WriteError> {
        use chrono::SubsecRound;
        use sea_orm::ExprTrait;
        // Microseconds: what PostgreSQL keeps, so the lease read back compares equal.
        let now = now.trunc_subsecs(6);
        let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        self.writer
            .run(move |txn| {
                Box::pin(async move {
                    let mut due = crm_outbox::Entity::find();
                    if let Some(ids) = only {
                        due = due.filter(crm_outbox::Column::Id.is_in(ids));
                    }
                    let due = due
                        .filter(
                            Condition::any()
                                .add(
                                    crm_outbox::Column::Status
                                        .eq("pending")
                                        .and(crm_outbox::Column::NextAttemptAt.lte(now)),
                                )
                                .add(
                                    crm_outbox::Column::Status
                                        .eq("in_flight")
                                        .and(crm_outbox::Column::LeaseUntil.lt(now)),
                                ),
                        )
                        .order_by_asc(crm_outbox::Column::Id)
                        .limit(BATCH)
                        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                        .all(txn)
                        .await?;
                    let busy: HashSet<(String, String)> = crm_outbox::Entity::find()
                        .filter(crm_outbox::Column::Status.eq("in_flight"))
                        .filter(crm_outbox::Column::LeaseUntil.gte(now))
                        .all(txn)
                        .await?
                        .into_iter()
                        .map(|r| (r.record_type, r.record_id))
                        .collect();
                    let mut seen = HashSet::new();
                    let claimed: Vec<crm_outbox::Model> = due
                        .into_iter()
                        .filter(|r| {
                            let key = (r.record_type.clone(), r.record_id.clone());
                            !busy.contains(&key) && seen.insert(key)
                        })
                        .map(|mut r| {
                            r.attempts += 1;
                            r.status = "in_flight".into();
                            r.lease_until = Some(lease_until);
                            r
                        })
                        .collect();
                    if !claimed.is_empty() {
                        crm_outbox::Entity::update_many()
                            .col_expr(crm_outbox::Column::Status, Expr::value("in_flight"))
                            .col_expr(crm_outbox::Column::LeaseUntil, Expr::value(lease_until))
                            .col_expr(crm_outbox::Column::Attempts, Expr::col(crm_outbox::Column::Attempts).add(1))
                            .col_expr(crm_outbox::Column::UpdatedAt, Expr::value(now))
                            .filter(crm_outbox::Column::Id.is_in(claimed.iter().map(|r| r.id)))
                            .exec(txn)
                            .await?;
                    }
                    Ok(claimed)
                })
            })
            .await
    }

    /// Builds what a row sends; sends it unless it is a create (those go out in batches).
    async fn prepare(&self, t: RecordType, row: &crm_outbox::Model) -> Result<Prepared, DbErr> {
        let Some(local) = records::find_by_id(self.db.reader(), t, &row.record_id).await? else {
            return Ok(Prepared::Sent(Attempt::Skipped("the local record no longer exists".into())));
        };
        let crm_id = local.crm_id().map(str::to_owned);
        match (row.operation.as_str(), crm_id) {
            ("delete", None) => Ok(Prepared::Sent(Attempt::Skipped("never reached the CRM".into()))),
            ("delete", Some(crm_id)) => Ok(Prepared::Sent(self.delete(t, &crm_id).await)),
            ("link", None) => Ok(Prepared::Sent(Attempt::Skipped("not linked to a CRM record".into()))),
            ("link", Some(crm_id)) => {
                let payload = Map::from_iter([("externalId".to_owned(), Value::String(local.id.clone()))]);
                Ok(Prepared::Sent(self.patch(t, &crm_id, payload).await))
            }
            _ if local.is_deleted() => Ok(Prepared::Sent(Attempt::Skipped("the record was deleted".into()))),
            (_, crm_id) => {
                let fields: Option<Vec<String>> = row.fields.as_deref().and_then(|f| serde_json::from_str(f).ok());
                let payload = match self.payload(t, &local, fields.as_deref()).await? {
                    Ok(payload) => payload,
                    Err(attempt) => return Ok(Prepared::Sent(attempt)),
                };
                match crm_id {
                    Some(crm_id) => Ok(Prepared::Sent(self.patch(t, &crm_id, payload).await)),
                    None => {
                        // A create sends the whole record, whatever fields the row lists.
                        let full = match self.payload(t, &local, None).await? {
                            Ok(full) => full,
                            Err(attempt) => return Ok(Prepared::Sent(attempt)),
                        };
                        Ok(Prepared::Create(local, full))
                    }
                }
            }
        }
    }

    /// TreadSoft fields for `fields` of `local` (all when `None`), with references resolved.
    async fn payload(
        &self,
        t: RecordType,
        local: &Local,
        fields: Option<&[String]>,
    ) -> Result<Result<Map<String, Value>, Attempt>, DbErr> {
        if t == RecordType::Contact && local.values.get("role").and_then(Value::as_str) == Some("admin") {
            return Ok(Err(Attempt::Skipped("admins are not synced to the CRM".into())));
        }
        let mut out = Map::new();
        for field in t.fields().iter().filter(|f| fields.is_none_or(|list| list.iter().any(|n| n == f.local))) {
            let value = local.values.get(field.local).cloned().unwrap_or(Value::Null);
            let parent_crm_id = match field.kind {
                Kind::Ref(target) | Kind::OptRef(target) if !value.is_null() => {
                    let parent_id = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                    let parent = records::find_by_id(self.db.reader(), target, &parent_id).await?;
                    match parent.as_ref().and_then(Local::crm_id) {
                        Some(crm_id) => Some(crm_id.to_owned()),
                        None => {
                            return Ok(Err(Attempt::Later(
                                PARENT_WAIT,
                                format!("waiting for {} {parent_id} to reach the CRM", target.as_str()),
                            )));
                        }
                    }
                }
                _ => None,
            };
            out.extend(local_to_crm(field, &value, parent_crm_id.as_deref()));
        }
        out.insert("externalId".into(), Value::String(local.id.clone()));
        Ok(Ok(out))
    }

    async fn patch(&self, t: RecordType, crm_id: &str, payload: Map<String, Value>) -> Attempt {
        let request = Value::Object(payload.clone());
        match self.crm.update(t, crm_id, &payload).await {
            Ok(written) => Attempt::Done {
                crm_id: Some(written.record.id.clone()),
                request_id: written.request_id,
                action: "update",
                request,
                response: record_json(&written.record),
            },
            Err(error) => Attempt::Failed { error, action: "update", request },
        }
    }

    async fn delete(&self, t: RecordType, crm_id: &str) -> Attempt {
        let request = json!({ "id": crm_id });
        match self.crm.delete(t, crm_id).await {
            Ok(request_id) => {
                Attempt::Done { crm_id: None, request_id, action: "delete", request, response: Value::Null }
            }
            Err(CrmError::NotFound { .. }) => Attempt::Done {
                crm_id: None,
                request_id: None,
                action: "delete",
                request,
                response: json!({ "note": "already deleted in the CRM" }),
            },
            Err(error) => Attempt::Failed { error, action: "delete", request },
        }
    }

    /// Creates new records with batch upserts keyed by `externalId` (safe to repeat: a retry
    /// updates what a timed-out attempt created). A contact TreadSoft already has by email is
    /// linked to that contact and updated.
    async fn create_batch(&self, t: RecordType, rows: Vec<Create>) -> Vec<(crm_outbox::Model, Attempt)> {
        let mut results = Vec::with_capacity(rows.len());
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(BATCH as usize).collect();
            let payloads: Vec<Map<String, Value>> = chunk.iter().map(|(_, _, p)| p.clone()).collect();
            let key = idempotency_key(&payloads);
            match self.crm.batch_upsert(t, &payloads, &key).await {
                Err(error) => {
                    for (row, _, payload) in chunk {
                        let attempt =
                            Attempt::Failed { error: error.clone(), action: "create", request: Value::Object(payload) };
                        results.push((row, attempt));
                    }
                }
                Ok((items, request_id)) => {
                    for (row, local, payload) in chunk {
                        let item = items.iter().find(|i| i.external_id == local.id);
                        let attempt = match item {
                            Some(item) if item.status != "error" && item.id.is_some() => Attempt::Done {
                                crm_id: item.id.clone(),
                                request_id: request_id.clone(),
                                action: "create",
                                request: Value::Object(payload),
                                response: json!({ "id": item.id, "status": item.status }),
                            },
                            Some(item) => match item.error.as_ref().and_then(|e| e.existing_id.clone()) {
                                Some(existing) => match records::find_by_crm_id(self.db.reader(), t, &existing).await {
                                    Ok(Some(other)) if other.id != local.id => Attempt::Failed {
                                        error: CrmError::Permanent {
                                            status: 409,
                                            code: "duplicate".into(),
                                            message: format!(
                                                "TreadSoft has this email as {existing}, which is linked to {} {}",
                                                t.as_str(),
                                                other.id
                                            ),
                                        },
                                        action: "create",
                                        request: Value::Object(payload),
                                    },
                                    Ok(_) => self.patch(t, &existing, payload).await,
                                    Err(e) => Attempt::Later(PARENT_WAIT, format!("database error: {e}")),
                                },
                                None => {
                                    let e = item.error.clone().unwrap_or_default();
                                    let error = CrmError::Permanent { status: 422, code: e.code, message: e.message };
                                    Attempt::Failed { error, action: "create", request: Value::Object(payload) }
                                }
                            },
                            None => Attempt::Failed {
                                error: CrmError::Transient {
                                    status: None,
                                    message: "the batch answer left this record out".into(),
                                    retry_after: None,
                                },
                                action: "create",
                                request: Value::Object(payload),
                            },
                        };
                        results.push((row, attempt));
                    }
                }
            }
        }
        results
    }
}

/// The `Idempotency-Key` for a request body: derived from the body, so a retry of the same request
/// is recognised by TreadSoft (the first answer comes back, nothing is created twice), while a
/// request whose body changed meanwhile (a coalesced edit) gets a new key instead of TreadSoft's
/// `422 idempotency_mismatch`. Batch upserts are keyed by `externalId` as well, so even then no
/// record is created twice.
fn idempotency_key(payloads: &[Map<String, Value>]) -> String {
    use sha2::{Digest, Sha256};
    let body = serde_json::to_vec(payloads).unwrap_or_default();
    format!("cgw-{}", hex::encode(&Sha256::digest(&body)[..16]))
}

/// A row whose record does not exist in the CRM yet, with the record and its whole payload.
type Create = (crm_outbox::Model, Local, Map<String, Value>);

enum Prepared {
    Create(Local, Map<String, Value>),
    Sent(Attempt),
}

fn record_json(record: &crate::crm::CrmRecord) -> Value {
    let mut fields = record.fields.clone();
    fields.insert("id".into(), Value::String(record.id.clone()));
    Value::Object(fields)
}

/// Writes what became of one row: the outbox row, the record's sync columns, the request id for
/// echo detection, and the sync log.
async fn record(
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
                    apply::release_waiting(txn, sync, Some((t, crm_id))).await?;
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
        Attempt::Later(wait, reason) => {
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
