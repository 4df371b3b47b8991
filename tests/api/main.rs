//! The integration suite: one binary, every test against the real app in-process, on SQLite and
//! (where it answers) PostgreSQL.

mod helpers;

mod cli;
mod crash;
mod crm_client;
mod dashboard;
mod database;
mod delivery;
mod events;
mod groups;
mod health;
mod hubspot;
mod hubspot_stub;
mod inbound;
mod instances;
mod lww_properties;
mod operations;
mod outage;
mod process;
mod pubsub_fake;
mod query_plans;
mod reliability;
mod retention;
mod salesforce;
mod secrets;
mod seed_routes;
mod treadsoft_stub;
