//! CRM deliveries into the gateway: TreadSoft's (and Standard Webhooks') and HubSpot's, each on
//! its own route; only the configured provider's answers.

pub mod hubspot;
pub mod inbox;
pub mod routes;
pub mod salesforce;
pub mod verify;
