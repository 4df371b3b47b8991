//! `crm_sync_logs`: one row per CRM call or inbound change, as the seed defines it.

use entity::crm_sync_logs;
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, NotSet, Set};

/// One log row. `request_data` and `response_data` are JSON text and never hold secrets.
#[derive(Debug, Default)]
pub struct SyncLog<'a> {
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    pub crm_id: Option<&'a str>,
    /// `create`, `update` or `delete`.
    pub action: &'a str,
    /// `success`, `failed` or `pending`.
    pub status: &'a str,
    pub request_data: Option<String>,
    pub response_data: Option<String>,
    pub error_message: Option<String>,
}

impl SyncLog<'_> {
    pub async fn write(self, c: &impl ConnectionTrait) -> Result<(), DbErr> {
        self.row().insert(c).await?;
        Ok(())
    }

    /// The row, to be written with others in one statement.
    pub fn row(self) -> crm_sync_logs::ActiveModel {
        crm_sync_logs::ActiveModel {
            id: NotSet,
            entity_type: Set(self.entity_type.to_owned()),
            entity_id: Set(self.entity_id.to_owned()),
            crm_id: Set(self.crm_id.map(str::to_owned)),
            action: Set(self.action.to_owned()),
            status: Set(self.status.to_owned()),
            request_data: Set(self.request_data),
            response_data: Set(self.response_data),
            error_message: Set(self.error_message),
            created_at: Set(chrono::Utc::now()),
        }
    }
}
