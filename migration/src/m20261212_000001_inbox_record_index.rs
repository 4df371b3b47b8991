//! The inbox's index by record keeps only the events not applied (issue 9). Every webhook event
//! put an entry in it, keyed by a TreadSoft id that bears no relation to the last one written, so
//! a page of its own for each event (about a sixth of what an inbound event wrote in all), for
//! one reader: the operator's view of a record (`inspect`). That view now finds the events a
//! record's sync logs name (each applied event logs its payload, kept longer than the inbox
//! row), and through this index the events that were not applied (stale, echoes, failures,
//! events waiting for a parent, ignored), which leave no log of their own under the record.

use crate::index;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "idx_crm_inbox_record";
const TABLE: &str = "crm_inbox";
const COLUMNS: [&str; 2] = ["record_type", "crm_id"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(NAME).table(TABLE).to_owned()).await?;
        let mut not_applied = index(NAME, TABLE, &COLUMNS);
        not_applied.and_where(Expr::col("outcome").ne("applied"));
        manager.create_index(not_applied).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(NAME).table(TABLE).to_owned()).await?;
        manager.create_index(index(NAME, TABLE, &COLUMNS)).await
    }
}
