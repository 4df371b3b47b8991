//! `app_events`: the ids of the app's change events already accepted, so a retried event is taken once.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("app_events")
                    .col(text("id").primary_key())
                    .col(text("event_type"))
                    .col(text("record_type"))
                    .col(text("record_id"))
                    .col(timestamp_with_time_zone("received_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("app_events").to_owned()).await
    }
}
