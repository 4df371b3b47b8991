//! `crm_inbox`: every verified webhook event, keyed by its id, with what became of it.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_inbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: String,
    pub delivery_id: String,
    pub event_type: String,
    pub record_type: Option<String>,
    pub crm_id: Option<String>,
    pub received_at: DateTimeUtc,
    /// The event exactly as received (JSON text), so it can be replayed.
    pub payload: String,
    /// `applied`, `stale`, `echo`, `failed` or `waiting`.
    pub outcome: String,
    pub reason: Option<String>,
    /// For `waiting`: `<record type>:<crm id>` of the parent it waits for.
    pub waiting_for: Option<String>,
    pub attempts: i32,
    pub processed_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
