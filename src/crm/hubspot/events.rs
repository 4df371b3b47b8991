//! A HubSpot webhook delivery (`hubspot.md` §2.4-2.5), parsed and folded.
//!
//! A delivery is a JSON array of up to 100 events. `eventId` is not unique: an event's inbox key is
//! composite (portal, subscription, event id, object id, property, `occurredAt`). Order is not
//! guaranteed, and a property change carries one property: the events of one object are folded,
//! per property the latest `occurredAt` kept, so that the object can be read once (one batch read
//! per delivery) and each field stamped by its own change time. Unknown subscription types are
//! kept as such (recorded, answered 2xx, not applied).

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One event as HubSpot sends it. Unknown members are ignored; HubSpot adds them over time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_id: i64,
    #[serde(default)]
    pub subscription_id: i64,
    #[serde(default)]
    pub portal_id: i64,
    #[serde(default)]
    pub app_id: i64,
    /// Milliseconds: the change's time in HubSpot (the stamp for last-writer-wins).
    pub occurred_at: i64,
    /// `contact.creation`, `deal.propertyChange`, ...; older samples call it `eventType`.
    #[serde(alias = "eventType")]
    pub subscription_type: String,
    #[serde(default)]
    pub attempt_number: i64,
    #[serde(default)]
    pub object_id: Option<i64>,
    #[serde(default)]
    pub property_name: Option<String>,
    /// Always a string on the wire.
    #[serde(default)]
    pub property_value: Option<String>,
    #[serde(default)]
    pub change_source: Option<String>,
    #[serde(default)]
    pub source_id: Option<String>,
    /// Merges.
    #[serde(default)]
    pub primary_object_id: Option<i64>,
    #[serde(default)]
    pub merged_object_ids: Vec<i64>,
    #[serde(default)]
    pub new_object_id: Option<i64>,
    /// Associations.
    #[serde(default)]
    pub association_type: Option<String>,
    #[serde(default)]
    pub from_object_id: Option<i64>,
    #[serde(default)]
    pub to_object_id: Option<i64>,
    #[serde(default)]
    pub association_removed: Option<bool>,
    /// Generic object subscriptions (`object.propertyChange`): `0-1`, `0-3`, `2-...`.
    #[serde(default)]
    pub object_type_id: Option<String>,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Creation,
    Deletion,
    PropertyChange,
    Merge,
    Association,
    Restore,
    /// A subscription type the gateway does not handle: recorded, answered 2xx.
    Unknown,
}

impl Event {
    /// The object type (`contact`, `deal`, ...; `object` for generic subscriptions) and the kind.
    pub fn kind(&self) -> (&str, Kind) {
        let (object, action) = self.subscription_type.split_once('.').unwrap_or((&self.subscription_type, ""));
        let kind = match action {
            "creation" => Kind::Creation,
            "deletion" => Kind::Deletion,
            "propertyChange" => Kind::PropertyChange,
            "merge" => Kind::Merge,
            "associationChange" => Kind::Association,
            "restore" => Kind::Restore,
            _ => Kind::Unknown,
        };
        (object, kind)
    }

    /// The inbox key: `eventId` alone is not unique.
    pub fn key(&self) -> String {
        format!(
            "hs:{}:{}:{}:{}:{}:{}",
            self.portal_id,
            self.subscription_id,
            self.event_id,
            self.object_id.map(|id| id.to_string()).unwrap_or_default(),
            self.property_name.as_deref().unwrap_or_default(),
            self.occurred_at
        )
    }
}

/// Why a delivery could not be read at all (a 400: it is not retried into success).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("a HubSpot delivery is a JSON array of events: {0}")]
    NotAnArray(String),
    #[error("event {index}: {message}")]
    Event { index: usize, message: String },
    #[error("a HubSpot delivery holds at most 100 events, this one {0}")]
    TooMany(usize),
}

/// The largest delivery HubSpot sends.
pub const MAX_EVENTS: usize = 100;

/// Parses a delivery's body, each event with its raw JSON (kept for the inbox).
pub fn parse(body: &[u8]) -> Result<Vec<(Event, Value)>, ParseError> {
    let raw: Vec<Value> = serde_json::from_slice(body).map_err(|e| ParseError::NotAnArray(e.to_string()))?;
    if raw.len() > MAX_EVENTS {
        return Err(ParseError::TooMany(raw.len()));
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, value)| {
            let event = serde_json::from_value::<Event>(value.clone())
                .map_err(|e| ParseError::Event { index, message: e.to_string() })?;
            Ok((event, value))
        })
        .collect()
}

/// What a delivery says of one object, once its events are folded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub created_at: Option<i64>,
    pub deleted_at: Option<i64>,
    /// Each changed property's latest change time (its stamp), and the value that event carried.
    pub properties: BTreeMap<String, (i64, Option<String>)>,
    /// The latest event time of any kind.
    pub last_at: i64,
}

/// Folds the events of a delivery per (object type, object id), in any arrival order: the
/// objects to read (once, in one batch per type) and apply. Merges, associations and unknown
/// subscription types are not folded here.
pub fn fold<'e>(events: impl IntoIterator<Item = &'e Event>) -> BTreeMap<(String, i64), Touched> {
    let mut out: BTreeMap<(String, i64), Touched> = BTreeMap::new();
    for event in events {
        let (object, kind) = event.kind();
        let Some(id) = event.object_id else { continue };
        let object = event.object_type_id.clone().filter(|_| object == "object").unwrap_or_else(|| object.to_owned());
        let touched = out.entry((object, id)).or_default();
        touched.last_at = touched.last_at.max(event.occurred_at);
        match kind {
            Kind::Creation | Kind::Restore => {
                touched.created_at = Some(touched.created_at.map_or(event.occurred_at, |t| t.min(event.occurred_at)));
            }
            Kind::Deletion => {
                touched.deleted_at = Some(touched.deleted_at.map_or(event.occurred_at, |t| t.max(event.occurred_at)));
            }
            Kind::PropertyChange => {
                if let Some(name) = &event.property_name {
                    // Two changes at the same millisecond: the larger value, so that any
                    // arrival order folds alike.
                    let newer = touched
                        .properties
                        .get(name)
                        .is_none_or(|(at, value)| (event.occurred_at, &event.property_value) > (*at, value));
                    if newer {
                        touched.properties.insert(name.clone(), (event.occurred_at, event.property_value.clone()));
                    }
                }
            }
            Kind::Merge | Kind::Association | Kind::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(event_id: i64, object_id: i64, property: &str, value: &str, at: i64) -> Value {
        json!({"eventId": event_id, "subscriptionId": 7, "portalId": 62515, "appId": 54321, "occurredAt": at,
            "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": object_id,
            "propertyName": property, "propertyValue": value, "changeSource": "CRM_UI"})
    }

    #[test]
    fn the_published_sample_parses_with_its_unknown_fields_ignored() {
        // The v1 vector's body: HubSpot's own sample delivery.
        let file: Value = serde_json::from_str(include_str!("../../../tests/fixtures/hubspot-vectors.json")).unwrap();
        let body = file["vectors"][0]["body"].as_str().unwrap();
        let events = parse(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        let (event, raw) = &events[0];
        assert_eq!(event.kind(), ("contact", Kind::Creation));
        assert_eq!((event.object_id, event.occurred_at, event.portal_id), (Some(123), 1_564_113_600_000, 62515));
        assert_eq!(raw["changeFlag"], "NEW", "the raw event keeps every member");
        let legacy = parse(br#"[{"eventId": 1, "occurredAt": 5, "eventType": "deal.deletion", "objectId": 9}]"#);
        assert_eq!(legacy.unwrap()[0].0.kind(), ("deal", Kind::Deletion), "eventType is the older name");
    }

    #[test]
    fn the_inbox_key_tells_apart_events_that_share_an_event_id() {
        let a: Event = serde_json::from_value(change(1, 10, "phone", "1", 100)).unwrap();
        let b: Event = serde_json::from_value(change(1, 10, "email", "x@example.com", 100)).unwrap();
        let c: Event = serde_json::from_value(change(1, 11, "phone", "1", 100)).unwrap();
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_eq!(a.key(), serde_json::from_value::<Event>(change(1, 10, "phone", "1", 100)).unwrap().key());
    }

    #[test]
    fn events_of_one_object_fold_in_any_order_keeping_each_propertys_latest_change() {
        let body = json!([
            change(3, 10, "phone", "+44 3", 300),
            change(1, 10, "phone", "+44 1", 100),
            change(2, 10, "email", "a@example.com", 200),
            change(4, 11, "phone", "+44 9", 50),
            change(8, 11, "phone", "+44 8", 50),
            {"eventId": 5, "occurredAt": 400, "subscriptionType": "contact.deletion", "objectId": 11},
            {"eventId": 6, "occurredAt": 10, "subscriptionType": "contact.creation", "objectId": 10},
            {"eventId": 7, "occurredAt": 10, "subscriptionType": "contact.privacyDeletion", "objectId": 12},
        ]);
        let events: Vec<Event> =
            parse(body.to_string().as_bytes()).unwrap().into_iter().map(|(event, _)| event).collect();
        let mut reversed = events.clone();
        reversed.reverse();

        let folded = fold(&events);
        assert_eq!(folded, fold(&reversed), "arrival order does not matter");
        let ten = &folded[&("contact".to_owned(), 10)];
        assert_eq!(ten.properties["phone"], (300, Some("+44 3".into())), "the latest change of a property");
        assert_eq!(ten.properties["email"].0, 200, "each property keeps its own time");
        assert_eq!((ten.created_at, ten.deleted_at, ten.last_at), (Some(10), None, 300));
        assert_eq!(folded[&("contact".to_owned(), 11)].deleted_at, Some(400));
        assert_eq!(folded[&("contact".to_owned(), 11)].properties["phone"], (50, Some("+44 9".into())), "a tie");
        assert_eq!(events[7].kind().1, Kind::Unknown, "an unknown subscription type is kept, not applied");
    }

    #[test]
    fn what_is_not_a_delivery_is_refused_with_where() {
        assert!(matches!(parse(b"{}"), Err(ParseError::NotAnArray(_))));
        let missing = parse(br#"[{"eventId": 1, "subscriptionType": "contact.creation"}]"#);
        assert!(matches!(missing, Err(ParseError::Event { index: 0, .. })), "{missing:?}");
        let many = Value::Array(vec![change(1, 1, "phone", "1", 1); 101]).to_string();
        assert_eq!(parse(many.as_bytes()), Err(ParseError::TooMany(101)));
    }
}
