//! `crm_import_cursors`: how far the import (and reconciliation) has read each record type's
//! listing, saved with each page it applied, so an interrupted pass continues where it stopped.
//! `crm_audits`: each consistency audit's counts, for the dashboard and scripts.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("crm_import_cursors")
                    .col(text("record_type").primary_key())
                    // The `updatedSince` of the pass under way (or the last one).
                    .col(timestamp_with_time_zone("pass_since"))
                    // The listing's next cursor; null once the pass has read the last page.
                    .col(text_null("cursor"))
                    // The largest `updatedAt` of the records applied so far.
                    .col(timestamp_with_time_zone_null("last_updated_at"))
                    .col(big_integer("pages").default(0))
                    .col(big_integer("records").default(0))
                    .col(timestamp_with_time_zone("started_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .col(timestamp_with_time_zone_null("finished_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("crm_audits")
                    .col(big_integer("id").primary_key().auto_increment())
                    .col(timestamp_with_time_zone("started_at"))
                    .col(timestamp_with_time_zone("finished_at"))
                    .col(boolean("fixed"))
                    // The record types compared, comma-separated.
                    .col(text("record_types"))
                    // JSON: the counts of each kind of difference (see `crm_gateway::pull::audit::Counts`).
                    .col(text("counts"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("crm_audits").to_owned()).await?;
        manager.drop_table(Table::drop().table("crm_import_cursors").to_owned()).await
    }
}
