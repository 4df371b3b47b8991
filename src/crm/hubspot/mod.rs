//! HubSpot, the second CRM (issue 12). Built so far: the webhook signature check
//! ([`signature`]). Not yet: the provider seam, the payload's parse, the objects API client.

pub mod signature;
