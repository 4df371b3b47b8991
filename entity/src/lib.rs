//! sea-orm entities for every table crm-gateway owns: the site's records (`user`, `properties`,
//! `bookings`, `enquiries`, `owner_memberships`) and the CRM audit trail (`crm_sync_logs`).
//!
//! Table and column names are the seed integration's (`shared/seed/crm-integration-v1.md`).
//! Money is integer minor units (pence for GBP); `crm_last_synced_at` is Unix milliseconds.

pub mod app_events;
pub mod bookings;
pub mod crm_audits;
pub mod crm_import_cursors;
pub mod crm_inbox;
pub mod crm_leases;
pub mod crm_outbox;
pub mod crm_requests;
pub mod crm_sent_values;
pub mod crm_stream_positions;
pub mod crm_sync_logs;
pub mod enquiries;
pub mod enums;
pub mod owner_memberships;
pub mod properties;
pub mod sync_record_versions;
pub mod sync_tombstones;
pub mod user;

pub mod prelude {
    pub use super::bookings::Entity as Bookings;
    pub use super::crm_sync_logs::Entity as CrmSyncLogs;
    pub use super::enquiries::Entity as Enquiries;
    pub use super::owner_memberships::Entity as OwnerMemberships;
    pub use super::properties::Entity as Properties;
    pub use super::user::Entity as User;
}
