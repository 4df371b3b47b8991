//! `crm_requests`: the `X-TreadSoft-Request-Id` of each write the gateway made, and what it sent.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_requests")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    pub record_type: String,
    pub record_id: String,
    /// JSON array of the TreadSoft fields the request set.
    pub fields: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
