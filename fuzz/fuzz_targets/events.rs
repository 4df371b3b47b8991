//! `POST /api/events` bodies (`outbound::events::parse`), from raw bytes as the JSON extractor
//! reads them, and `LocalChange::validate` on each parsed change: no panics, 1 to 500 events,
//! each with an id.
#![no_main]

use crm_gateway::outbound::events::{MAX_EVENTS, parse};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };
    for key in [None, Some("idem-fuzz")] {
        let Ok(events) = parse(body.clone(), key) else { continue };
        assert!((1..=MAX_EVENTS).contains(&events.len()));
        for event in &events {
            assert!(!event.id.trim().is_empty());
            assert!(!event.change.id.is_empty());
            let _ = event.change.validate();
        }
    }
});
