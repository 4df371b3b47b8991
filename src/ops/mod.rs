//! Operating the gateway: health and readiness, metrics, the sync status, background upkeep.

pub mod health;
pub mod maintenance;
pub mod metrics;
pub mod status;
