//! crm-gateway: a bridge between the Group Escape Houses site database and the TreadSoft CRM.
//!
//! - [`config`]: every setting, its default and validation
//! - [`db`]: connecting (SQLite pragmas, PostgreSQL pool) and migrating
//! - [`startup`]: the HTTP application and its lifecycle; [`state`]: what its handlers reach
//! - [`error`]: the JSON error shape
//! - [`ops`]: health and readiness
//! - [`cli`], [`telemetry`]: the command line and logging

pub mod affinity;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crm;
pub mod db;
pub mod error;
pub mod inbound;
pub mod ops;
pub mod outbound;
pub mod pull;
pub mod startup;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod writer;
