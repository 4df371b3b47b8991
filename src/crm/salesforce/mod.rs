//! Salesforce, the third CRM (issue 13). Built so far: the OAuth token ([`auth`]) and the sorting
//! of the REST API's answers ([`errors`]). Not yet: the REST client, the mapping, the Change Data
//! Capture subscriber over the Pub/Sub API, and their wiring to `CRM_PROVIDER=salesforce`.

pub mod auth;
pub mod errors;
