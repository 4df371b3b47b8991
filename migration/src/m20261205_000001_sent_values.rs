//! `crm_sent_values`: for a CRM whose webhooks do not say which request made a change (HubSpot),
//! the hash of the value the gateway last sent, per CRM record and field; an incoming change to
//! that value is the echo of the gateway's own write. One row per record and field, replaced by
//! each later send.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("crm_sent_values")
                    // `sent:<record type>:<crm id>:<field>`
                    .col(text("key").primary_key())
                    .col(text("value_hash"))
                    .col(timestamp_with_time_zone("sent_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("crm_sent_values").to_owned()).await
    }
}
