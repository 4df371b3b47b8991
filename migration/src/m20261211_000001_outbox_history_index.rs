//! One index fewer for each outbox row written (issue 9): `idx_crm_outbox_record`, of every row
//! by record, delivered ones included. Each new row put an entry in it, keyed by a record id that
//! bears no relation to the last one written, so a page of its own for each change queued (about
//! a tenth of what a delivered change wrote in all). The gateway's own lookups of a record's
//! rows read the open ones only, through `idx_crm_outbox_open`; the operator's view of a record
//! (`inspect`) now lists those too: the deliveries made are in the record's sync logs, and one
//! skipped (a record the mapping does not sync, say) is no longer listed.

use crate::index;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "idx_crm_outbox_record";
const TABLE: &str = "crm_outbox";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(NAME).table(TABLE).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_index(index(NAME, TABLE, &["record_type", "record_id"])).await
    }
}
