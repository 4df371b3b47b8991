//! Operating the gateway: health and readiness, metrics, the sync status and its dashboard,
//! background upkeep.

pub mod dashboard;
pub mod health;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod recovery;
pub mod report;
pub mod retention;
pub mod status;
