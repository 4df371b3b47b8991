//! `user`: the site's users (owners, guests, admins), extended with the seed's CRM columns.

use crate::enums::{CrmSyncStatus, MembershipStatus, Role};
use sea_orm::Set;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "user")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// As the user gave it.
    pub email: String,
    /// [`email_key`] of `email`, uniquely indexed: the one form in which emails are compared.
    /// Set from `email` whenever an active model with `email` set is saved.
    pub email_key: String,
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

#[async_trait::async_trait]
impl ActiveModelBehavior for ActiveModel {
    async fn before_save<C>(mut self, _db: &C, _insert: bool) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        if self.email.is_set() {
            self.email_key = Set(email_key(self.email.as_ref()));
        }
        Ok(self)
    }
}

/// The form two emails are compared in: Unicode NFC, lower-cased by Unicode's rules (not only
/// ASCII), surrounding white space dropped. `JOSÉ@Example.com`, `josé@example.com` and the
/// decomposed `jose\u{301}@example.com` share one key. Computed here rather than by the database,
/// whose `lower()` folds only ASCII on SQLite and follows the server's locale on PostgreSQL.
pub fn email_key(email: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let composed: String = email.trim().nfc().collect();
    composed.to_lowercase().nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::email_key;

    #[test]
    fn emails_fold_by_unicode_case_and_normal_form() {
        assert_eq!(email_key("JOSÉ@Example.COM"), "josé@example.com");
        assert_eq!(email_key("jose\u{301}@example.com"), email_key("JOSÉ@example.com"));
        assert_eq!(email_key(" ÅSA@example.se "), "åsa@example.se");
        assert_ne!(email_key("josé@example.com"), email_key("jose@example.com"));
    }
}
