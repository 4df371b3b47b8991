//! TreadSoft (and Standard Webhooks) deliveries into the gateway.

pub mod inbox;
pub mod routes;
pub mod verify;
