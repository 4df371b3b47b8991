//! HubSpot, the second CRM (issue 12): the webhook signature check ([`signature`]), a delivery's
//! parse and fold ([`events`]), the sorting of its API's answers ([`errors`]), the object and
//! property mapping ([`mapping`]), the CRM objects client ([`client`]) and the account's set-up
//! ([`setup`]).

pub mod client;
pub mod errors;
pub mod events;
/// The mapping is shared with Salesforce: [`crate::crm::mapping`].
pub use crate::crm::mapping;
pub mod setup;
pub mod signature;
