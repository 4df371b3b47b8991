//! Operating the gateway: health and readiness.

pub mod health;
