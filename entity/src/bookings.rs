//! `bookings`: reservations of a property.

use crate::enums::{BookingPaymentStatus, BookingStatus, CrmSyncStatus};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "bookings")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub property_id: i64,
    /// The guest's account, when the guest has one.
    pub user_id: Option<String>,
    pub guest_name: String,
    pub guest_email: String,
    pub check_in: Date,
    pub check_out: Date,
    pub guests: i32,
    /// Minor units of `currency` (pence for GBP): exact, never a float.
    pub total_price: i64,
    pub currency: String,
    pub status: BookingStatus,
    pub payment_status: BookingPaymentStatus,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set when the record was deleted (in the CRM or locally); the row stays as a tombstone.
    pub deleted_at: Option<DateTimeUtc>,
    pub crm_id: Option<String>,
    pub crm_sync_status: CrmSyncStatus,
    /// Unix milliseconds of the last successful sync.
    pub crm_last_synced_at: Option<i64>,
    #[sea_orm(belongs_to, from = "property_id", to = "id")]
    pub property: HasOne<super::properties::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
