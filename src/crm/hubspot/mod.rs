//! HubSpot, the second CRM (issue 12). Built so far: the webhook signature check
//! ([`signature`]), a delivery's parse and fold ([`events`]), and the sorting of its API's
//! answers ([`errors`]). Not yet: the provider seam, the webhook route, the objects API client,
//! the mapping file.

pub mod errors;
pub mod events;
pub mod signature;
