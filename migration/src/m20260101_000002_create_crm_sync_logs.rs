//! `crm_sync_logs`, exactly as the seed's SQL, with the indexes its troubleshooting queries need.

use crate::index;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("crm_sync_logs")
                    .col(big_pk_auto("id"))
                    .col(text("entity_type"))
                    .col(text("entity_id"))
                    .col(text_null("crm_id"))
                    .col(text("action"))
                    .col(text("status"))
                    .col(text_null("request_data"))
                    .col(text_null("response_data"))
                    .col(text_null("error_message"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("idx_crm_sync_logs_status_created_at", "crm_sync_logs", &["status", "created_at"]))
            .await?;
        manager.create_index(index("idx_crm_sync_logs_entity_type", "crm_sync_logs", &["entity_type"])).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("crm_sync_logs").to_owned()).await
    }
}
