//! Salesforce, the third CRM (issue 13). Built so far: the OAuth token ([`auth`]), the sorting of
//! the REST API's answers ([`errors`]) and the REST client ([`client`], over the shared mapping's
//! Salesforce flavour), serving `CRM_PROVIDER=salesforce` outbound. Not yet: the Change Data
//! Capture subscriber over the Pub/Sub API (until then, reconciliation reads Salesforce's changes).

pub mod auth;
pub mod client;
pub mod errors;
