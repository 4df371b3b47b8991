//! `sync_record_versions`: the version stamps of a record's synced fields, one row per record.
//!
//! `stamps` is a JSON object by local field name, each stamp an array
//! `[stamp_ms, stamp_seq, origin, event_id]`: milliseconds (TreadSoft's `updatedAt`, or the
//! gateway's hybrid logical clock), TreadSoft's record `version` (or the clock's logical counter),
//! `crm` or `local`, and the event that set it. For example
//! `{"email":[1764590400000,4,"crm","evt_1"],"phone":[1764590460000,0,"local","ev_9"]}`.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_record_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub entity_type: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub entity_id: String,
    /// The stamp of each field, as above.
    pub stamps: String,
    /// The largest `stamp_ms` in `stamps`: the floor of the gateway's clock after a restart.
    pub max_ms: i64,
}

impl ActiveModelBehavior for ActiveModel {}
