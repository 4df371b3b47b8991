//! `sync_tombstones`: deletes of CRM records, kept so older changes cannot resurrect them.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_tombstones")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub entity_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub crm_id: String,
    /// The local record, when there is one.
    pub entity_id: Option<String>,
    pub stamp_ms: i64,
    pub stamp_seq: i64,
    pub origin: String,
    pub event_id: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
