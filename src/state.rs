//! What every route handler can reach.

use crate::config::Config;
use crate::db::Db;
use crate::ops::metrics::Metrics;
use crate::ops::status::{CrmHealth, StatusCache};
use crate::outbound::worker::Delivery;
use crate::sync::apply::SyncContext;
use crate::writer::Writer;
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub config: Config,
    pub db: Db,
    /// The group-commit writer: every write goes through it.
    pub writer: Writer,
    pub sync: Arc<SyncContext>,
    /// Sends the outbox to the CRM; `wake` it after queuing a change.
    pub delivery: Arc<Delivery>,
    pub metrics: Arc<Metrics>,
    /// The CRM's health, checked at most every 30 s.
    pub health: CrmHealth,
    pub status_cache: StatusCache,
}
