//! `owner_memberships`: an owner's paid membership (the seed's table, column for column).

use crate::enums::{CrmSyncStatus, MembershipPaymentStatus, MembershipTier, OwnerMembershipStatus};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "owner_memberships")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: String,
    pub membership_tier: MembershipTier,
    pub status: OwnerMembershipStatus,
    pub start_date: Date,
    pub end_date: Option<Date>,
    pub auto_renew: bool,
    pub payment_status: MembershipPaymentStatus,
    pub crm_id: Option<String>,
    pub crm_sync_status: CrmSyncStatus,
    /// Unix milliseconds of the last successful sync.
    pub crm_last_synced_at: Option<i64>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set when the record was deleted (in the CRM or locally); the row stays as a tombstone.
    pub deleted_at: Option<DateTimeUtc>,
    #[sea_orm(belongs_to, from = "user_id", to = "id")]
    pub user: HasOne<super::user::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
