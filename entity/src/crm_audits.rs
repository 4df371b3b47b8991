//! `crm_audits`: each consistency audit's counts (the dashboard shows the last one).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_audits")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub started_at: DateTimeUtc,
    pub finished_at: DateTimeUtc,
    /// Whether the audit ran with `--fix`.
    pub fixed: bool,
    /// The record types compared, comma-separated.
    pub record_types: String,
    /// JSON: the counts of each kind of difference.
    pub counts: String,
}

impl ActiveModelBehavior for ActiveModel {}
