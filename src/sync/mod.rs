//! The sync rules, independent of HTTP: the clock, last-writer-wins, field mapping, and applying
//! inbound changes.

pub mod hlc;
pub mod lww;
pub mod mapping;
