//! Pulling from the CRM instead of waiting to be told: the import and scheduled reconciliation
//! ([`import`]), which read TreadSoft's listings and apply them as webhooks are applied, and the
//! consistency audit ([`audit`]), which compares both sides field by field and can mend them.

pub mod audit;
pub mod commands;
pub mod import;
pub mod progress;
