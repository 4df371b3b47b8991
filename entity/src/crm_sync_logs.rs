//! `crm_sync_logs`: one row per CRM call or inbound apply, as the seed defines it.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_sync_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `contact`, `property`, `enquiry`, `booking` or `membership`.
    pub entity_type: String,
    pub entity_id: String,
    pub crm_id: Option<String>,
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `success`, `failed` or `pending`.
    pub status: String,
    /// JSON text; never holds secrets or signature headers.
    pub request_data: Option<String>,
    /// JSON text.
    pub response_data: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
