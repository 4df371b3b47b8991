//! Salesforce, the third CRM (issue 13). Built so far: the OAuth token ([`auth`]), the sorting of
//! the REST API's answers ([`errors`]) and the REST client ([`client`], over the shared mapping's
//! Salesforce flavour), serving `CRM_PROVIDER=salesforce` outbound, and the turning of a Change
//! Data Capture event's header into changes ([`cdc`], pure). Not yet: the subscriber over the
//! Pub/Sub API that feeds it (until then, reconciliation reads Salesforce's changes).

pub mod auth;
pub mod cdc;
pub mod client;
pub mod errors;
