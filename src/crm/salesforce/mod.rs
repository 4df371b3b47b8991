//! Salesforce, the third CRM (issue 13): the OAuth token ([`auth`]), the sorting of the REST
//! API's answers ([`errors`]) and the REST client ([`client`], over the shared mapping's
//! Salesforce flavour) serve `CRM_PROVIDER=salesforce` outbound; Change Data Capture events come
//! in over the Pub/Sub API ([`pubsub`], gRPC), are decoded ([`avro`]) and turned into changes
//! ([`cdc`]) by the subscriber in `inbound::salesforce`.

pub mod auth;
pub mod avro;
pub mod cdc;
pub mod client;
pub mod errors;
pub mod pubsub;
