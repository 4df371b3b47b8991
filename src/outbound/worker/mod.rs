//! Delivering the outbox to the CRM.
//!
//! One step ([`Delivery::deliver_due`]) claims due rows, at most one per record, marking them
//! `in_flight` under a lease (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so several instances
//! share the work and no row is sent twice at once), sends them (new records in batch upserts of up
//! to 100, changes as PATCHes of the record's current values), then records every outcome in one
//! transaction: linked and synced, retried later, or dead-lettered (`outcome.rs`); sending is `send.rs`. Tests drive the step directly;
//! `serve` runs it in a loop woken by each new change.

pub mod breaker;
mod outcome;
mod send;

use super::retry::RetrySchedule;
use crate::crm::{self, CrmClient, CrmError};
use crate::db::Db;
use crate::ops::metrics::Metrics;
use crate::sync::apply::SyncContext;
use crate::sync::mapping::RecordType;
use crate::writer::{WriteError, Writer};
use breaker::Gate;
use chrono::{DateTime, Utc};
use entity::crm_outbox;
use entity::enums::OutboxStatus;
use outcome::record;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseBackend, EntityTrait, QueryFilter, TransactionTrait};
use send::{Create, Prepared};
use serde_json::Value;
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
    /// Pauses delivery while the CRM is down.
    breaker: breaker::Breaker,
    metrics: Arc<Metrics>,
}

/// What sending one row came to.
#[derive(Debug, Clone)]
enum Attempt {
    Done {
        crm_id: Option<String>,
        request_id: Option<String>,
        action: &'static str,
        request: Value,
        response: Value,
        /// The version TreadSoft answered with the whole record (`updatedAt` in ms, `version`):
        /// the sent fields hold that version's values now.
        answered: Option<(i64, i64)>,
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
    /// The CRM client (and its rate limiter) deliveries go through.
    pub fn crm(&self) -> Arc<dyn CrmClient> {
        self.crm.clone()
    }

    pub fn new(
        db: Db,
        writer: Writer,
        crm: Arc<dyn CrmClient>,
        sync: Arc<SyncContext>,
        schedule: RetrySchedule,
        lease: Duration,
        request_timeout: Duration,
    ) -> Self {
        Self {
            db,
            writer,
            crm,
            sync,
            schedule,
            lease,
            request_timeout,
            wake: Arc::new(Notify::new()),
            breaker: breaker::Breaker::default(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts delivery outcomes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs steps until `stop` turns true: at once when woken, otherwise every second.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.deliver_due(Utc::now()).await {
                // More may be due: the next step at once, unless the gateway is stopping (the
                // step in progress is finished; what is left stays queued for the next start).
                Ok(n) if n > 0 && !*stop.borrow() => continue,
                Ok(n) if n > 0 => return,
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

    /// The circuit breaker's state, for `/readyz`.
    pub fn circuit(&self) -> breaker::Status {
        self.breaker.status()
    }

    async fn deliver(&self, now: DateTime<Utc>, only: Option<Vec<i64>>) -> Result<usize, WriteError> {
        match self.breaker.gate(now) {
            Gate::Closed => {}
            Gate::Open => return Ok(0),
            Gate::Probe => {
                let probe = self.crm.ping().await;
                self.breaker.probed(now, probe.as_ref().map(drop));
                if self.breaker.gate(now) != Gate::Closed {
                    return Ok(0);
                }
            }
        }
        let handled = self.deliver_claimed(now, only).await;
        self.breaker.settle(now);
        handled
    }

    async fn deliver_claimed(&self, now: DateTime<Utc>, only: Option<Vec<i64>>) -> Result<usize, WriteError> {
        let claimed = self.claim(now, only).await?;
        tracing::Span::current().record("claimed", claimed.len());
        let mut handled = claimed.len();
        let Some(lease_until) = claimed.first().and_then(|r| r.lease_until) else { return Ok(0) };
        let margin = chrono::Duration::from_std(self.request_timeout).unwrap_or_default();
        let lease_short = || Utc::now() + margin > lease_until;
        // The same limit for requests that wait for the rate limiter: checked when they leave.
        let send_by = std::time::Instant::now() + (lease_until - margin - Utc::now()).to_std().unwrap_or_default();
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
            let loaded = self.load(t, &rows).await;
            let mut creates: Vec<Create> = Vec::new();
            for row in rows {
                let unsent = if lease_short() {
                    Some("released: its lease ran short")
                } else if self.breaker.tripped() {
                    Some("released: the CRM is failing, delivery pauses")
                } else {
                    None
                };
                if let Some(reason) = unsent {
                    handled -= 1;
                    self.record_all(vec![(row, Attempt::Later(Duration::ZERO, reason.into()))], now).await?;
                    continue;
                }
                let prepared = match &loaded {
                    Ok(loaded) => crm::send_by(send_by, self.prepare(t, &row, loaded)).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let attempt = match prepared {
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
                let results = if lease_short() || self.breaker.tripped() {
                    handled -= creates.len();
                    creates
                        .into_iter()
                        .map(|(row, _, _)| (row, Attempt::Later(Duration::ZERO, "released".into())))
                        .collect()
                } else {
                    crm::send_by(send_by, self.create_batch(t, creates)).await
                };
                self.record_all(results, now).await?;
            }
        }
        Ok(handled)
    }

    /// Records outcomes, all together in one savepoint; when that fails, each in its own, so one
    /// that cannot be written leaves its row in flight (its lease expires and it is tried again)
    /// without undoing the others.
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
        let counted = self
            .writer
            .run(move |txn| {
                Box::pin(async move {
                    let savepoint = txn.begin().await?;
                    match record(&savepoint, &schedule, &sync, &results, now).await {
                        Ok(counted) => {
                            savepoint.commit().await?;
                            return Ok(counted);
                        }
                        Err(e) => {
                            savepoint.rollback().await?;
                            tracing::debug!(error = %e, rows = results.len(), "recording outcomes together failed: one at a time");
                        }
                    }
                    let mut counted = Vec::with_capacity(results.len());
                    for result in results.chunks(1) {
                        let savepoint = txn.begin().await?;
                        match record(&savepoint, &schedule, &sync, result, now).await {
                            Ok(one) => {
                                savepoint.commit().await?;
                                counted.extend(one);
                            }
                            Err(e) => {
                                savepoint.rollback().await?;
                                tracing::error!(outbox_id = result[0].0.id, error = %e, "cannot record a delivery outcome");
                            }
                        }
                    }
                    Ok(counted)
                })
            })
            .await?;
        // Counted once committed: what was rolled back is tried again and counted then.
        for (outcome, status) in counted {
            self.metrics.delivery(outcome, status);
        }
        Ok(())
    }

    /// Marks due rows `in_flight`, at most one per record and none of a record already in flight.
    async fn claim(&self, now: DateTime<Utc>, only: Option<Vec<i64>>) -> Result<Vec<crm_outbox::Model>, WriteError> {
        use chrono::SubsecRound;
        // Microseconds: what PostgreSQL keeps, so the lease read back compares equal.
        let now = now.trunc_subsecs(6);
        let lease_until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        if self.db.backend() != DatabaseBackend::Postgres {
            return self.writer.run(move |txn| Box::pin(claim_in(txn, now, lease_until, only))).await;
        }
        // PostgreSQL: a short transaction of its own, so the claim lock below is held for the
        // claim only, not for a whole group of other work.
        let claim = async {
            let txn = self.db.writer().begin().await?;
            crate::db::bound_waits(&txn).await?;
            let claimed = claim_in(&txn, now, lease_until, only).await?;
            txn.commit().await?;
            Ok::<_, sea_orm::DbErr>(claimed)
        };
        claim.await.map_err(WriteError::Work)
    }
}

/// Marks due rows `in_flight` until `lease_until`, at most one per record and none of a record
/// already in flight.
async fn claim_in(
    txn: &sea_orm::DatabaseTransaction,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    only: Option<Vec<i64>>,
) -> Result<Vec<crm_outbox::Model>, sea_orm::DbErr> {
    use sea_orm::ExprTrait;
    // One claim at a time across instances: another instance's claim, committed
    // before this one looks, shows which records are in flight, so a backlog
    // larger than one batch cannot put two rows of one record in flight at once.
    crate::db::lock_named(txn, "crm_outbox.claim").await?;
    let due = super::outbox::due_query(now, BATCH, only).all(txn).await?;
    let mut seen = HashSet::new();
    let claimed: Vec<crm_outbox::Model> = due
        .into_iter()
        .filter(|r| {
            let key = (r.record_type.clone(), r.record_id.clone());
            seen.insert(key)
        })
        .map(|mut r| {
            r.attempts += 1;
            r.status = OutboxStatus::InFlight;
            r.lease_until = Some(lease_until);
            r
        })
        .collect();
    if !claimed.is_empty() {
        crm_outbox::Entity::update_many()
            .col_expr(crm_outbox::Column::Status, Expr::value(OutboxStatus::InFlight))
            .col_expr(crm_outbox::Column::LeaseUntil, Expr::value(lease_until))
            .col_expr(crm_outbox::Column::Attempts, Expr::col(crm_outbox::Column::Attempts).add(1))
            .col_expr(crm_outbox::Column::UpdatedAt, Expr::value(now))
            .filter(crm_outbox::Column::Id.is_in(claimed.iter().map(|r| r.id)))
            .exec(txn)
            .await?;
    }
    Ok(claimed)
}
