//! `crm_import_cursors`: how far the import (and reconciliation) has read each record type's
//! CRM listing. Saved in the transaction of each page it applied.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_import_cursors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub record_type: String,
    /// The `updatedSince` of the pass under way, or of the last one.
    pub pass_since: DateTimeUtc,
    /// The listing's next cursor; `None` once the pass has read its last page.
    pub cursor: Option<String>,
    /// The largest `updatedAt` among the records applied so far.
    pub last_updated_at: Option<DateTimeUtc>,
    pub pages: i64,
    pub records: i64,
    pub started_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
