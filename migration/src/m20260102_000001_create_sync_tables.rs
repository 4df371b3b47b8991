//! The tables the two-way sync needs: `deleted_at` on every synced table, the webhook inbox, per-field
//! version stamps, delete tombstones, the outbound outbox and the CRM requests the gateway made.

use crate::index;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const SYNCED_TABLES: [&str; 5] = ["user", "properties", "bookings", "enquiries", "owner_memberships"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in SYNCED_TABLES {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .add_column(timestamp_with_time_zone_null("deleted_at"))
                        .to_owned(),
                )
                .await?;
        }

        // Every verified webhook event, keyed by TreadSoft's event id: the idempotency record.
        manager
            .create_table(
                Table::create()
                    .table("crm_inbox")
                    .col(text("event_id").primary_key())
                    .col(text("delivery_id"))
                    .col(text("event_type"))
                    .col(text_null("record_type"))
                    .col(text_null("crm_id"))
                    .col(timestamp_with_time_zone("received_at"))
                    .col(text("payload"))
                    .col(text("outcome"))
                    .col(text_null("reason"))
                    .col(text_null("waiting_for"))
                    .col(integer("attempts").default(1))
                    .col(timestamp_with_time_zone("processed_at"))
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("idx_crm_inbox_outcome", "crm_inbox", &["outcome"])).await?;
        manager.create_index(index("idx_crm_inbox_waiting_for", "crm_inbox", &["waiting_for"])).await?;
        manager.create_index(index("idx_crm_inbox_received_at", "crm_inbox", &["received_at"])).await?;

        // The version stamp of each synced field of each record (last-writer-wins, per field).
        manager
            .create_table(
                Table::create()
                    .table("sync_field_versions")
                    .col(text("entity_type"))
                    .col(text("entity_id"))
                    .col(text("field"))
                    .col(big_integer("stamp_ms"))
                    .col(big_integer("stamp_seq"))
                    .col(text("origin"))
                    .col(text("event_id"))
                    .primary_key(Index::create().col("entity_type").col("entity_id").col("field"))
                    .to_owned(),
            )
            .await?;

        // Deletes seen from the CRM, kept so that older changes never resurrect the record.
        manager
            .create_table(
                Table::create()
                    .table("sync_tombstones")
                    .col(text("entity_type"))
                    .col(text("crm_id"))
                    .col(text_null("entity_id"))
                    .col(big_integer("stamp_ms"))
                    .col(big_integer("stamp_seq"))
                    .col(text("origin"))
                    .col(text("event_id"))
                    .col(timestamp_with_time_zone("created_at"))
                    .primary_key(Index::create().col("entity_type").col("crm_id"))
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("idx_sync_tombstones_created_at", "sync_tombstones", &["created_at"])).await?;

        // Changes waiting to be sent to the CRM.
        manager
            .create_table(
                Table::create()
                    .table("crm_outbox")
                    .col(big_pk_auto("id"))
                    .col(text("record_type"))
                    .col(text("record_id"))
                    .col(text("operation"))
                    .col(text_null("fields"))
                    .col(text_null("event_id"))
                    .col(text("status").default("pending"))
                    .col(integer("attempts").default(0))
                    .col(timestamp_with_time_zone("next_attempt_at"))
                    .col(timestamp_with_time_zone_null("lease_until"))
                    .col(text_null("last_error"))
                    .col(text("idempotency_key"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("idx_crm_outbox_due", "crm_outbox", &["status", "next_attempt_at"])).await?;
        manager.create_index(index("idx_crm_outbox_record", "crm_outbox", &["record_type", "record_id"])).await?;

        // The X-TreadSoft-Request-Id of each call the gateway made: webhooks carrying one are echoes.
        manager
            .create_table(
                Table::create()
                    .table("crm_requests")
                    .col(text("request_id").primary_key())
                    .col(text("record_type"))
                    .col(text("record_id"))
                    .col(text("fields"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("idx_crm_requests_created_at", "crm_requests", &["created_at"])).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["crm_requests", "crm_outbox", "sync_tombstones", "sync_field_versions", "crm_inbox"] {
            manager.drop_table(Table::drop().table(Alias::new(table)).to_owned()).await?;
        }
        for table in SYNCED_TABLES {
            manager.alter_table(Table::alter().table(Alias::new(table)).drop_column("deleted_at").to_owned()).await?;
        }
        Ok(())
    }
}
