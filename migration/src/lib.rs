//! crm-gateway's schema, one migration per change. Every migration runs on SQLite and PostgreSQL
//! and has a working `down`.

pub use sea_orm_migration::prelude::*;

mod m20260101_000001_create_site_tables;
mod m20260101_000002_create_crm_sync_logs;
mod m20260102_000001_create_sync_tables;
mod m20260103_000001_create_app_events;
mod m20260104_000001_user_email_key;
mod m20261203_000001_operations_indexes;
mod m20261204_000001_import_and_audit;
mod m20261205_000001_sent_values;
mod m20261206_000001_stream_positions;
mod m20261207_000001_outbox_open_index;
mod m20261208_000001_record_versions;
mod m20261209_000001_sync_log_failed_crm_id;
mod m20261210_000001_inbox_indexes;
mod m20261211_000001_outbox_history_index;
mod m20261212_000001_inbox_record_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260101_000001_create_site_tables::Migration),
            Box::new(m20260101_000002_create_crm_sync_logs::Migration),
            Box::new(m20260102_000001_create_sync_tables::Migration),
            Box::new(m20260103_000001_create_app_events::Migration),
            Box::new(m20260104_000001_user_email_key::Migration),
            Box::new(m20261203_000001_operations_indexes::Migration),
            Box::new(m20261204_000001_import_and_audit::Migration),
            Box::new(m20261205_000001_sent_values::Migration),
            Box::new(m20261206_000001_stream_positions::Migration),
            Box::new(m20261207_000001_outbox_open_index::Migration),
            Box::new(m20261208_000001_record_versions::Migration),
            Box::new(m20261209_000001_sync_log_failed_crm_id::Migration),
            Box::new(m20261210_000001_inbox_indexes::Migration),
            Box::new(m20261211_000001_outbox_history_index::Migration),
            Box::new(m20261212_000001_inbox_record_index::Migration),
        ]
    }
}

/// `CREATE INDEX name ON table (columns)`, the form every index here takes.
pub(crate) fn index(name: &str, table: impl IntoIden, columns: &[&'static str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table);
    for column in columns {
        index.col(*column);
    }
    index.to_owned()
}
