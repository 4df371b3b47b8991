//! The stamps of a record's fields in one row (`sync_record_versions`), replacing one row per
//! field (`sync_field_versions`, issue 9). A new owner took six rows of stamps, each with its own
//! entry in the primary key: the largest write of both the inbound and the outbound profiles.
//! Now it takes one row holding a JSON object by field (see the entity). The stamps stored are
//! carried over on the way up and back on the way down. `down` re-creates the old table as its
//! first migration did, written out again: a migration does not share code with another, so
//! that changing one never changes what an applied one means.

use sea_orm_migration::sea_orm::DatabaseBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on SQLite too: the stamps are never in neither table.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("sync_record_versions")
                    .col(text("entity_type"))
                    .col(text("entity_id"))
                    .col(text("stamps"))
                    .col(big_integer("max_ms"))
                    .primary_key(Index::create().col("entity_type").col("entity_id"))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            // An instance still running the version before this one must not write stamps after
            // the copy has read the table: they would go with the dropped table. It waits here
            // (then fails on the missing table: stop older instances before this upgrade).
            manager
                .get_connection()
                .execute_unprepared(r#"LOCK TABLE "sync_field_versions" IN EXCLUSIVE MODE"#)
                .await?;
        }
        let copy = match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                r#"INSERT INTO "sync_record_versions" ("entity_type", "entity_id", "stamps", "max_ms")
                   SELECT "entity_type", "entity_id",
                          json_object_agg("field", json_build_array("stamp_ms", "stamp_seq", "origin", "event_id"))::text,
                          MAX("stamp_ms")
                   FROM "sync_field_versions" GROUP BY "entity_type", "entity_id""#
            }
            _ => {
                r#"INSERT INTO "sync_record_versions" ("entity_type", "entity_id", "stamps", "max_ms")
                   SELECT "entity_type", "entity_id",
                          json_group_object("field", json_array("stamp_ms", "stamp_seq", "origin", "event_id")),
                          MAX("stamp_ms")
                   FROM "sync_field_versions" GROUP BY "entity_type", "entity_id""#
            }
        };
        manager.get_connection().execute_unprepared(copy).await?;
        manager.drop_table(Table::drop().table("sync_field_versions").to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
        let copy = match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                r#"INSERT INTO "sync_field_versions"
                   SELECT r."entity_type", r."entity_id", s.key, (s.value->>0)::bigint, (s.value->>1)::bigint,
                          s.value->>2, s.value->>3
                   FROM "sync_record_versions" r, json_each(r."stamps"::json) s"#
            }
            _ => {
                r#"INSERT INTO "sync_field_versions"
                   SELECT r."entity_type", r."entity_id", s.key, json_extract(s.value, '$[0]'),
                          json_extract(s.value, '$[1]'), json_extract(s.value, '$[2]'), json_extract(s.value, '$[3]')
                   FROM "sync_record_versions" r, json_each(r."stamps") s"#
            }
        };
        manager.get_connection().execute_unprepared(copy).await?;
        manager.drop_table(Table::drop().table("sync_record_versions").to_owned()).await
    }
}
