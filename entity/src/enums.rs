//! The closed value sets stored as text columns. The strings are TreadSoft's (API.md §2) wherever
//! TreadSoft has the same field, so a value crosses the bridge unchanged.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A user's role on the site. TreadSoft knows `owner` and `guest`; `admin` stays local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[sea_orm(string_value = "owner")]
    Owner,
    #[sea_orm(string_value = "guest")]
    Guest,
    #[sea_orm(string_value = "admin")]
    Admin,
}

/// Where a record stands with the CRM (`crm_sync_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum CrmSyncStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "synced")]
    Synced,
    #[sea_orm(string_value = "failed")]
    Failed,
}

/// `user.membership_status`, TreadSoft's contact `membershipStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum MembershipStatus {
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "inactive")]
    Inactive,
}

/// `properties.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum PropertyStatus {
    #[sea_orm(string_value = "draft")]
    Draft,
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "inactive")]
    Inactive,
}

/// `bookings.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "confirmed")]
    Confirmed,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
    #[sea_orm(string_value = "completed")]
    Completed,
}

/// `bookings.payment_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum BookingPaymentStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "deposit_paid")]
    DepositPaid,
    #[sea_orm(string_value = "paid")]
    Paid,
    #[sea_orm(string_value = "refunded")]
    Refunded,
    #[sea_orm(string_value = "failed")]
    Failed,
}

/// `enquiries.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum EnquiryStatus {
    #[sea_orm(string_value = "new")]
    New,
    #[sea_orm(string_value = "open")]
    Open,
    #[sea_orm(string_value = "responded")]
    Responded,
    #[sea_orm(string_value = "closed")]
    Closed,
}

/// `enquiries.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum EnquirySource {
    #[sea_orm(string_value = "website")]
    Website,
    #[sea_orm(string_value = "phone")]
    Phone,
    #[sea_orm(string_value = "email")]
    Email,
    #[sea_orm(string_value = "partner")]
    Partner,
}

/// `owner_memberships.membership_tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum MembershipTier {
    #[sea_orm(string_value = "basic")]
    Basic,
    #[sea_orm(string_value = "standard")]
    Standard,
    #[sea_orm(string_value = "premium")]
    Premium,
}

/// `owner_memberships.status` (a membership can also be `cancelled`, unlike `user.membership_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum OwnerMembershipStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "inactive")]
    Inactive,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

/// `owner_memberships.payment_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum MembershipPaymentStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "paid")]
    Paid,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "refunded")]
    Refunded,
}

/// Where an outbox row stands (`crm_outbox.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting to be sent (now or at `next_attempt_at`).
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Claimed by a delivery worker until `lease_until`.
    #[sea_orm(string_value = "in_flight")]
    InFlight,
    #[sea_orm(string_value = "delivered")]
    Delivered,
    /// Given up on (a dead letter) until someone retries it.
    #[sea_orm(string_value = "failed")]
    Failed,
}

/// What an outbox row does (`crm_outbox.operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "snake_case")]
pub enum OutboxOperation {
    /// Create the record in the CRM, or update the listed fields of it.
    #[sea_orm(string_value = "upsert")]
    Upsert,
    /// Delete the CRM record.
    #[sea_orm(string_value = "delete")]
    Delete,
    /// Tell the CRM the local id of a record it created (`externalId`).
    #[sea_orm(string_value = "link")]
    Link,
}

impl OutboxStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl OutboxOperation {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Delete => "delete",
            Self::Link => "link",
        }
    }
}

/// `row.status == "failed"`: a value compares equal to its stored text.
macro_rules! eq_text {
    ($($t:ty),*) => {$(
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

eq_text!(OutboxStatus, OutboxOperation);
