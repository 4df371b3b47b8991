//! HubSpot, the second CRM (issue 12). Built so far: the webhook signature check
//! ([`signature`]) and a delivery's parse and fold ([`events`]). Not yet: the provider seam, the
//! webhook route, the objects API client, the mapping file.

pub mod events;
pub mod signature;
