//! Webhook delivery bodies (`inbound::routes::parse_delivery_body`), and each event of a parsed
//! delivery through the pure mapping (`sync::mapping::{nul_at, crm_to_local}`): no panics.
//! Without a NUL character anywhere in the event (which the apply step refuses first), no
//! mapped value holds one.
#![no_main]

use crm_gateway::inbound::routes::parse_delivery_body;
use crm_gateway::sync::mapping::{Mapped, RecordType, crm_to_local, nul_at};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|body: &[u8]| {
    let Ok(delivery) = parse_delivery_body(body) else { return };
    assert!((1..=100).contains(&delivery.events.len()));
    let empty = Map::new();
    for event in &delivery.events {
        assert!(event.get("id").and_then(Value::as_str).is_some_and(|id| !id.is_empty()));
        let has_nul = nul_at(event).is_some();
        let object = event.get("object");
        let data = object.and_then(|o| o.get("data")).and_then(Value::as_object).unwrap_or(&empty);
        // The record type the event names, or every type when it names none.
        let named = object
            .and_then(|o| o.get("type"))
            .and_then(Value::as_str)
            .or_else(|| event.get("type").and_then(Value::as_str).and_then(|t| t.split('.').next()))
            .and_then(RecordType::parse);
        let changed: Vec<&str> = event
            .get("changedFields")
            .and_then(Value::as_array)
            .map(|fields| fields.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for t in named.map_or(RecordType::ALL.to_vec(), |t| vec![t]) {
            let _ = t.local_fields_for(changed.iter().copied());
            for field in t.fields() {
                if let Ok(Mapped::Value(value)) = crm_to_local(field, data)
                    && !has_nul
                {
                    assert_eq!(nul_at(&value), None, "{}", field.local);
                }
            }
        }
    }
});
