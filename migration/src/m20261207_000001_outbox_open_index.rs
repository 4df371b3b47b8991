//! An index of the outbox rows not yet delivered, by record (issue 9). Each group of changes and
//! each delivery outcome looks up the open rows of a set of records (`status` pending, in flight
//! or failed). The index by record alone also walks every delivered row of the record type: on
//! PostgreSQL, before statistics exist (a busy new table), the planner took that and scanned the
//! whole type (about 5 ms a lookup at 25,000 rows, growing with the history). Open rows are few
//! whatever the history, so this one stays small.

use crate::index;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "idx_crm_outbox_open";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut open = index(NAME, "crm_outbox", &["record_type", "record_id"]);
        open.and_where(Expr::col("status").is_in(["pending", "in_flight", "failed"]));
        manager.create_index(open).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(NAME).table("crm_outbox").to_owned()).await
    }
}
