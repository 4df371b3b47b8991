//! The sync rules, independent of HTTP: the clock, last-writer-wins, field mapping, and applying
//! inbound changes.

pub mod apply;
pub mod change;
pub mod echo;
pub mod hlc;
pub mod inbox;
pub mod log;
pub mod lww;
pub mod mapping;
pub mod records;
pub mod stamps;
pub(crate) mod view;
