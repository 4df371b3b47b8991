//! Indexes the operator's tools need: a record's inbox events and sync logs (`inspect`, the
//! logs and failures lists), the status's counts, and retention's deletes by age (sync logs by `created_at`,
//! delivered outbox rows by `updated_at`), so that none of them walks a whole table.

use crate::index;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, &str, &[&str]); 7] = [
    ("idx_crm_inbox_record", "crm_inbox", &["record_type", "crm_id"]),
    // The failures list: failed events, newest first.
    ("idx_crm_inbox_outcome_received", "crm_inbox", &["outcome", "received_at"]),
    // The status's counts by outcome over the last hour and day, from the index alone.
    ("idx_crm_inbox_received_outcome", "crm_inbox", &["received_at", "outcome"]),
    ("idx_crm_sync_logs_entity", "crm_sync_logs", &["entity_type", "entity_id"]),
    ("idx_crm_sync_logs_crm_id", "crm_sync_logs", &["crm_id"]),
    ("idx_crm_sync_logs_created_at", "crm_sync_logs", &["created_at"]),
    ("idx_crm_outbox_status_updated", "crm_outbox", &["status", "updated_at"]),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, columns) in INDEXES {
            manager.create_index(index(name, table, columns)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in INDEXES {
            manager.drop_index(Index::drop().name(name).table(table).to_owned()).await?;
        }
        Ok(())
    }
}
