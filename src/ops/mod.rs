//! Operating the gateway: health and readiness, background upkeep.

pub mod health;
pub mod maintenance;
