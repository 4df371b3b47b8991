//! `crm_sent_values`: the hash of the value the gateway last sent, per CRM record and field, for a
//! CRM whose webhooks do not name the request that made a change (HubSpot). See `sync::echo`.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_sent_values")]
pub struct Model {
    /// `sent:<record type>:<crm id>:<field>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub value_hash: String,
    pub sent_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
