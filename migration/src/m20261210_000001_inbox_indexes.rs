//! Fewer indexes for each inbox row written (issue 9). Two are the first column of a wider one
//! that serves the same queries (`idx_crm_inbox_outcome` of `(outcome, received_at)`,
//! `idx_crm_inbox_received_at` of `(received_at, outcome)`), and the index of the record an event
//! waits for keeps only the rows that wait (most rows have none): the lookups of waiting events
//! compare `waiting_for` with a value, which tells both databases that it is not null.

use crate::index;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLE: &str = "crm_inbox";
const COVERED: [(&str, &str); 2] = [("idx_crm_inbox_outcome", "outcome"), ("idx_crm_inbox_received_at", "received_at")];
const WAITING: &str = "idx_crm_inbox_waiting_for";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, _) in COVERED {
            manager.drop_index(Index::drop().name(name).table(TABLE).to_owned()).await?;
        }
        manager.drop_index(Index::drop().name(WAITING).table(TABLE).to_owned()).await?;
        let mut waiting = index(WAITING, TABLE, &["waiting_for"]);
        waiting.and_where(Expr::col("waiting_for").is_not_null());
        manager.create_index(waiting).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(WAITING).table(TABLE).to_owned()).await?;
        manager.create_index(index(WAITING, TABLE, &["waiting_for"])).await?;
        for (name, column) in COVERED {
            manager.create_index(index(name, TABLE, &[column])).await?;
        }
        Ok(())
    }
}
