//! `crm_outbox`: changes waiting to be delivered to the CRM.

use crate::enums::{OutboxOperation, OutboxStatus};
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `contact`, `property`, `enquiry`, `booking` or `membership`.
    pub record_type: String,
    /// The local primary key, as text.
    pub record_id: String,
    pub operation: OutboxOperation,
    /// JSON array of the local fields to send; null means all.
    pub fields: Option<String>,
    pub event_id: Option<String>,
    pub status: OutboxStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub lease_until: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub idempotency_key: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
