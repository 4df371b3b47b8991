//! `properties`: holiday houses listed by owners.

use crate::enums::{CrmSyncStatus, PropertyStatus};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "properties")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub owner_id: String,
    pub title: String,
    pub location: String,
    pub bedrooms: i32,
    /// Minor units of `currency` (pence for GBP): exact, never a float.
    pub price_per_night: i64,
    pub currency: String,
    pub status: PropertyStatus,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set when the record was deleted (in the CRM or locally); the row stays as a tombstone.
    pub deleted_at: Option<DateTimeUtc>,
    pub crm_id: Option<String>,
    pub crm_sync_status: CrmSyncStatus,
    /// Unix milliseconds of the last successful sync.
    pub crm_last_synced_at: Option<i64>,
    #[sea_orm(belongs_to, from = "owner_id", to = "id")]
    pub owner: HasOne<super::user::Entity>,
    #[sea_orm(has_many)]
    pub bookings: HasMany<super::bookings::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
