//! `crm_stream_positions`: where a subscription to a CRM's change stream (Salesforce's Change
//! Data Capture channel) stands: the replay id of the last event applied, written in the same
//! transaction as its changes.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_stream_positions")]
pub struct Model {
    /// The channel, e.g. `/data/ChangeEvents`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub channel: String,
    /// The replay id's bytes, base64.
    pub replay_id: String,
    /// Events applied from the channel so far.
    pub events: i64,
    /// When the replay id's event was committed (the channel keeps events 72 hours from then).
    pub event_at: DateTimeUtc,
    /// Set when a batch held events that could not be read: the records changed since then are
    /// to be read over REST (then it is cleared).
    pub reconcile_from: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
