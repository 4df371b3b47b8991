//! `sync_field_versions`: the version stamp of each synced field of each record.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_field_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub entity_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub entity_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub field: String,
    /// Milliseconds: TreadSoft's `updatedAt`, or the gateway's hybrid logical clock.
    pub stamp_ms: i64,
    /// TreadSoft's record `version`, or the clock's logical counter.
    pub stamp_seq: i64,
    /// `crm` or `local`.
    pub origin: String,
    pub event_id: String,
}

impl ActiveModelBehavior for ActiveModel {}
