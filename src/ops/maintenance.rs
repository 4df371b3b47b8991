//! Background upkeep that runs on every instance: events left `waiting` for a parent that exists
//! by now are applied (a release that missed them, e.g. across a crash).

use crate::sync::apply::SyncContext;
use crate::sync::inbox;
use crate::writer::{WriteError, Writer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// One sweep: applies waiting events whose parent exists; returns how many parents it released.
pub async fn sweep(writer: &Writer, sync: Arc<SyncContext>) -> Result<usize, WriteError> {
    writer.run(move |txn| Box::pin(async move { inbox::sweep_waiting(txn, &sync).await })).await
}

/// Sweeps at start and every [`SWEEP_INTERVAL`] until `stop` turns true.
pub async fn run(writer: Writer, sync: Arc<SyncContext>, mut stop: watch::Receiver<bool>) {
    loop {
        match sweep(&writer, sync.clone()).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "applied webhook events that waited for a parent"),
            Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "the waiting-events sweep failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
