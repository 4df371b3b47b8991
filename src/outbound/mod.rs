//! Changes from the site to the CRM: applying them locally, the outbox, and delivery.

pub mod admin;
pub mod changes;
pub mod events;
pub mod outbox;
pub mod retry;
pub mod seed_routes;
pub mod worker;
