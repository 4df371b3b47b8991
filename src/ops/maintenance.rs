//! Background upkeep that runs on every instance:
//! - events left `waiting` for a parent that exists by now are applied (a release that missed
//!   them, e.g. across a crash), every [`SWEEP_INTERVAL`];
//! - rows past their keep time are deleted ([`retention`]) a minute after start, then daily;
//! - with `CRM_AUTO_RETRY_INTERVAL`, dead-lettered deliveries are made due again at that pace,
//!   so a fixed outage heals without a person;
//! - with `CRM_RECONCILE_INTERVAL`, TreadSoft's records changed since the last pass are read and
//!   applied ([`reconcile`]), so a change whose webhook never came still lands.

use crate::config::Retention;
use crate::db::Db;
use crate::ops::retention;
use crate::outbound::outbox;
use crate::outbound::worker::Delivery;
use crate::pull::import::{self, Importer, Start};
use crate::sync::apply::SyncContext;
use crate::sync::inbox;
use crate::sync::mapping::RecordType;
use crate::writer::{WriteError, Writer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

/// How often the sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long after start the first prune runs (not during start-up itself).
pub const PRUNE_DELAY: Duration = Duration::from_secs(60);

/// What the upkeep works with.
pub struct Upkeep {
    pub writer: Writer,
    pub db: Db,
    pub sync: Arc<SyncContext>,
    pub delivery: Arc<Delivery>,
    pub retention: Retention,
    /// `None`: dead letters wait for a person.
    pub auto_retry: Option<Duration>,
    /// `CRM_RECONCILE_INTERVAL` and what a pass reads with; `None`: no reconciliation.
    pub reconcile: Option<(Duration, Importer)>,
}

/// One sweep: applies waiting events whose parent exists; returns how many parents it released.
pub async fn sweep(writer: &Writer, sync: Arc<SyncContext>) -> Result<usize, WriteError> {
    writer.run(move |txn| Box::pin(async move { inbox::sweep_waiting(txn, &sync).await })).await
}

/// Runs each job at its pace until `stop` turns true. A prune runs as a task of its own, so a
/// long first one (millions of old rows) holds up neither the sweep nor the retries; it stops
/// between batches when the gateway stops.
pub async fn run(upkeep: Upkeep, mut stop: watch::Receiver<bool>) {
    let upkeep = Arc::new(upkeep);
    let start = Instant::now();
    let mut sweeps = interval_at(start, SWEEP_INTERVAL);
    let mut prunes = interval_at(start + PRUNE_DELAY, retention::INTERVAL);
    // Off: a tick that never comes (a century away).
    let retry_every = upkeep.auto_retry.unwrap_or(Duration::from_secs(100 * 365 * 24 * 3600));
    let mut retries = interval_at(start + retry_every, retry_every);
    let reconcile_every = upkeep.reconcile.as_ref().map_or(retry_every, |(every, _)| *every);
    let mut reconciles = interval_at(start + PRUNE_DELAY.min(reconcile_every), reconcile_every);
    for timer in [&mut sweeps, &mut prunes, &mut retries, &mut reconciles] {
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
    let mut reconciling: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = sweeps.tick() => match sweep(&upkeep.writer, upkeep.sync.clone()).await {
                Ok(0) => {}
                Ok(released) => tracing::info!(released, "applied webhook events that waited for a parent"),
                Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "the waiting-events sweep failed"),
            },
            _ = prunes.tick() => {
                if pruning.as_ref().is_none_or(|task| task.is_finished()) {
                    pruning = Some(tokio::spawn(prune(upkeep.clone(), stop.clone())));
                }
            }
            _ = retries.tick(), if upkeep.auto_retry.is_some() => {
                match outbox::retry_failed(&upkeep.writer, None, None).await {
                    Ok(0) => {}
                    Ok(retried) => {
                        tracing::info!(retried, "made dead-lettered deliveries due again (CRM_AUTO_RETRY_INTERVAL)");
                        upkeep.delivery.wake.notify_one();
                    }
                    Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "retrying dead letters failed"),
                }
            }
            _ = reconciles.tick(), if upkeep.reconcile.is_some() => {
                if reconciling.as_ref().is_none_or(|task| task.is_finished()) {
                    let (upkeep, stop) = (upkeep.clone(), stop.clone());
                    reconciling = Some(tokio::spawn(async move {
                        if let Some((every, importer)) = &upkeep.reconcile {
                            reconcile(importer, *every, stop).await;
                        }
                    }));
                }
            }
            changed = stop.changed() => {
                // Err: every sender is gone, so no stop will ever come; stop now rather than spin.
                if changed.is_err() {
                    break;
                }
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    for task in [pruning, reconciling].into_iter().flatten() {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "an upkeep task failed");
        }
    }
}

/// One reconciliation: for each record type, parents first, the records changed since the last
/// pass (with its overlap) are read and applied. Skipped for a type another instance passed over
/// within half the interval. Stops between pages when the gateway stops; the next pass resumes.
/// Returns the summary of each record type it read.
pub async fn reconcile(importer: &Importer, every: Duration, stop: watch::Receiver<bool>) -> Vec<import::Summary> {
    let mut done = Vec::new();
    let recent = match import::positions(importer.db.reader()).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %crate::error::ErrorChain(&e), "reconciliation cannot read its positions");
            return done;
        }
    };
    let half = chrono::Duration::from_std(every / 2).unwrap_or_default();
    for t in RecordType::ALL.into_iter().filter(|t| importer.crm.syncs(*t)) {
        let fresh = recent.iter().any(|row| {
            row.record_type == t.as_str() && row.finished_at.is_some_and(|at| chrono::Utc::now() - at < half)
        });
        if fresh {
            continue;
        }
        let mut stopped = stop.clone();
        let pass = importer.pass(t, Start::Resume, false, &import::Quiet);
        let summary = tokio::select! {
            summary = pass => summary,
            _ = stopped.wait_for(|stop| *stop) => return done,
        };
        match summary {
            Ok(s) => {
                if s.created + s.updated + s.failed + s.waiting == 0 {
                    tracing::debug!(record = t.as_str(), seen = s.seen, "reconciled: nothing missed");
                } else {
                    tracing::info!(
                        record = t.as_str(),
                        seen = s.seen,
                        created = s.created,
                        updated = s.updated,
                        failed = s.failed,
                        waiting = s.waiting,
                        "reconciled changes whose webhook did not arrive"
                    );
                }
                done.push(s);
            }
            // TreadSoft unreachable or refusing: the other types would fail alike; try next time.
            Err(e @ import::PassError::Crm { source: crate::crm::CrmError::Transient { .. }, .. }) => {
                tracing::error!(record = t.as_str(), error = %crate::error::ErrorChain(&e), "reconciliation stopped");
                return done;
            }
            Err(e) => {
                tracing::error!(record = t.as_str(), error = %crate::error::ErrorChain(&e), "reconciling this type failed");
            }
        }
    }
    done
}

async fn prune(upkeep: Arc<Upkeep>, stop: watch::Receiver<bool>) {
    let now = chrono::Utc::now();
    match retention::prune(&upkeep.writer, upkeep.db.reader(), &upkeep.retention, now, false, Some(&stop)).await {
        Ok(pruned) if pruned.total() == 0 => {}
        Ok(pruned) => tracing::info!(?pruned, "deleted rows past their keep time"),
        Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "pruning old rows failed"),
    }
}
