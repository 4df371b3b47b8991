//! `user`: the site's users (owners, guests, admins), extended with the seed's CRM columns.

use crate::enums::{CrmSyncStatus, MembershipStatus, Role};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "user")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// Unique, compared case-insensitively (a unique index on `lower(email)`).
    pub email: String,
    pub phone: Option<String>,
    pub company_name: Option<String>,
    pub role: Role,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set when the record was deleted (in the CRM or locally); the row stays as a tombstone.
    pub deleted_at: Option<DateTimeUtc>,
    pub crm_id: Option<String>,
    pub crm_sync_status: CrmSyncStatus,
    /// Unix milliseconds of the last successful sync.
    pub crm_last_synced_at: Option<i64>,
    pub membership_status: MembershipStatus,
    #[sea_orm(has_many)]
    pub properties: HasMany<super::properties::Entity>,
    #[sea_orm(has_many)]
    pub owner_memberships: HasMany<super::owner_memberships::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
