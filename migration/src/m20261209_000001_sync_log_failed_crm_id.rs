//! The sync log's index of CRM ids keeps only the failed rows (issue 9). The logs list finds a CRM
//! id's other rows through the index by record, once the id is resolved to the local record (or
//! its tombstone); only a failed row's record may not exist here. The full index, keyed by a
//! random id, took a page of its own for each event written: about 10 KB of the 89 KB an inbound
//! event wrote (BENCHMARKS.md, session 15).

use crate::index;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLE: &str = "crm_sync_logs";
const EVERY: &str = "idx_crm_sync_logs_crm_id";
const FAILED: &str = "idx_crm_sync_logs_failed_crm_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut failed = index(FAILED, TABLE, &["crm_id"]);
        failed.and_where(Expr::col("status").eq("failed"));
        manager.create_index(failed).await?;
        manager.drop_index(Index::drop().name(EVERY).table(TABLE).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_index(index(EVERY, TABLE, &["crm_id"])).await?;
        manager.drop_index(Index::drop().name(FAILED).table(TABLE).to_owned()).await
    }
}
