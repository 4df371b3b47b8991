//! Salesforce's Change Data Capture subscription (issue 13):
//! - `crm_stream_positions`: the replay id of the last event applied from a channel, written in the
//!   same transaction as that event's changes, so a restart resumes right after it;
//! - `crm_leases`: which instance reads a channel; one at a time, and another takes over when the
//!   holder stops renewing (it died).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("crm_stream_positions")
                    .col(text("channel").primary_key())
                    // The replay id's bytes, base64: opaque, never parsed.
                    .col(text("replay_id"))
                    // Events applied from the channel so far.
                    .col(big_integer("events").default(0))
                    // When the replay id's event was committed: the channel keeps events 72 hours
                    // from then, however recently the id was stored.
                    .col(timestamp_with_time_zone("event_at"))
                    // Set when a batch held events that could not be read: the changes since
                    // then are read over REST once the batch is stored, and this is cleared.
                    .col(timestamp_with_time_zone_null("reconcile_from"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("crm_leases")
                    .col(text("name").primary_key())
                    .col(text("holder"))
                    .col(timestamp_with_time_zone("taken_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("crm_leases").to_owned()).await?;
        manager.drop_table(Table::drop().table("crm_stream_positions").to_owned()).await
    }
}
