//! `crm_leases`: work only one instance may do at a time (reading a change stream), held by the
//! instance that took it until it stops renewing it.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_leases")]
pub struct Model {
    /// What is leased, e.g. `salesforce-cdc:/data/ChangeEvents`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The instance holding it.
    pub holder: String,
    pub taken_at: DateTimeUtc,
    /// When another instance may take it over.
    pub expires_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
