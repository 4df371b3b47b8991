//! Background upkeep that runs on every instance:
//! - events left `waiting` for a parent that exists by now are applied (a release that missed
//!   them, e.g. across a crash), every [`SWEEP_INTERVAL`];
//! - rows past their keep time are deleted ([`retention`]) a minute after start, then daily;
//! - with `CRM_AUTO_RETRY_INTERVAL`, dead-lettered deliveries are made due again at that pace,
//!   so a fixed outage heals without a person.

use crate::config::Retention;
use crate::db::Db;
use crate::ops::retention;
use crate::outbound::outbox;
use crate::outbound::worker::Delivery;
use crate::sync::apply::SyncContext;
use crate::sync::inbox;
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
    for timer in [&mut sweeps, &mut prunes, &mut retries] {
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
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
    if let Some(task) = pruning
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the prune task failed");
    }
}

async fn prune(upkeep: Arc<Upkeep>, stop: watch::Receiver<bool>) {
    let now = chrono::Utc::now();
    match retention::prune(&upkeep.writer, upkeep.db.reader(), &upkeep.retention, now, false, Some(&stop)).await {
        Ok(pruned) if pruned.total() == 0 => {}
        Ok(pruned) => tracing::info!(?pruned, "deleted rows past their keep time"),
        Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "pruning old rows failed"),
    }
}
