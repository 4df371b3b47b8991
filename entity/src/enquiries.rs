//! `enquiries`: a guest's question about a property (the seed's table, column for column).

use crate::enums::{CrmSyncStatus, EnquirySource, EnquiryStatus};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "enquiries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: Option<String>,
    pub property_id: Option<i64>,
    pub guest_name: String,
    pub guest_email: String,
    pub guest_phone: Option<String>,
    pub subject: String,
    pub message: String,
    pub status: EnquiryStatus,
    pub source: EnquirySource,
    pub crm_id: Option<String>,
    pub crm_sync_status: CrmSyncStatus,
    /// Unix milliseconds of the last successful sync.
    pub crm_last_synced_at: Option<i64>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set when the record was deleted (in the CRM or locally); the row stays as a tombstone.
    pub deleted_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
