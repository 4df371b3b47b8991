//! What the load sends: TreadSoft deliveries of synthetic contacts (API.md §4.2), signed the way
//! TreadSoft signs them, and the site's `owner.registered` app events.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};

/// The webhook signing secret shared by the load, the commit anchor and the gateway.
pub const WEBHOOK_SECRET: &str = "whsec_bench_5b0d0c1e";

const FIRST_NAMES: [&str; 8] = ["Zoë", "Oliver", "Amelia", "Rhys", "Siobhán", "Tomasz", "Priya", "Hamish"];
const LAST_NAMES: [&str; 8] =
    ["Brontë", "Whitaker", "Ó Briain", "Kowalczyk", "Fairbairn", "Lindqvist", "Patel", "MacLeod"];
const COMPANIES: [&str; 4] = [
    "Haworth Moor Escape Houses Ltd",
    "Peak District Group Stays & Retreats",
    "Cairngorm Lodges Partnership LLP",
    "Pembrokeshire Coast Holiday Homes",
];
const ALL_FIELDS: [&str; 7] = ["firstName", "lastName", "email", "phone", "companyName", "role", "membershipStatus"];

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An ordered stream of contact events for one load worker: each contact is created (version 1),
/// then updated `updates` times (versions 2, 3, ...), with `updatedAt` strictly increasing, before
/// the next contact starts. One worker sends its stream in order and waits for each answer, so
/// the gateway always sees a contact's versions in order.
pub struct ContactStream {
    /// Unique to this run and worker: contact ids, emails and event ids include it.
    tag: String,
    updates: u32,
    contact: u64,
    version: u32,
    created_ms: i64,
    last_ms: i64,
}

impl ContactStream {
    pub fn new(tag: String, updates: u32) -> Self {
        Self { tag, updates, contact: 0, version: 0, created_ms: 0, last_ms: 0 }
    }

    /// The next event of the stream.
    pub fn next_event(&mut self) -> Value {
        if self.version == 0 || self.version > self.updates {
            self.contact += 1;
            self.version = 1;
        } else {
            self.version += 1;
        }
        // Strictly increasing, even when two events are made within one millisecond.
        let now_ms = Utc::now().timestamp_millis().max(self.last_ms + 1);
        self.last_ms = now_ms;
        if self.version == 1 {
            self.created_ms = now_ms;
        }
        let at = rfc3339(Utc.timestamp_millis_opt(now_ms).single().unwrap_or_else(Utc::now));
        let created_at = rfc3339(Utc.timestamp_millis_opt(self.created_ms).single().unwrap_or_else(Utc::now));
        let (n, v) = (self.contact, self.version);
        let i = usize::try_from(n % 8).unwrap_or(0);
        let (first, last) = (FIRST_NAMES[i], LAST_NAMES[(i + 3) % 8]);
        let created = v == 1;
        json!({
            "id": format!("evt_{}_{n:06}_v{v}", self.tag),
            "type": if created { "contact.created" } else { "contact.updated" },
            "occurredAt": at,
            "changeSource": "ui",
            "requestId": null,
            "changedFields": if created { ALL_FIELDS.to_vec() } else { vec!["phone", "companyName"] },
            "object": {
                "type": "contact",
                "id": format!("crm_contact_{}_{n:06}", self.tag),
                "externalId": null,
                "version": v,
                "createdAt": created_at,
                "updatedAt": at,
                "deletedAt": null,
                "data": {
                    "firstName": first,
                    "lastName": last,
                    "email": format!("owner.{}.{n}@example.com", self.tag),
                    "phone": format!("+44 7{:03} {:06}", v % 1000, n % 1_000_000),
                    "companyName": COMPANIES[(i + usize::try_from(v).unwrap_or(0)) % COMPANIES.len()],
                    "role": "owner",
                    "membershipStatus": "active",
                    // Fields the gateway does not sync: TreadSoft may add fields at any time
                    // (API.md §2) and receivers ignore them; they make the body a realistic size.
                    "address": {
                        "line1": format!("{} Moorside Lane", 1 + n % 200),
                        "city": "Haworth",
                        "region": "West Yorkshire",
                        "postcode": "BD22 8QR",
                        "country": "GB"
                    },
                    "source": "partner-portal",
                    "tags": ["owner", "group-escape-houses", "newsletter"]
                }
            }
        })
    }
}

/// A delivery holding `events`, serialized as TreadSoft sends it.
pub fn delivery(events: Vec<Value>) -> Vec<u8> {
    let body = json!({
        "deliveryId": uuid::Uuid::new_v4().to_string(),
        "accountId": "acc_ge_houses",
        "events": events,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `X-TreadSoft-Timestamp` and `X-TreadSoft-Signature` for `body`, signed now.
pub fn sign(body: &[u8]) -> (String, String) {
    let timestamp = Utc::now().timestamp();
    (timestamp.to_string(), crm_gateway::inbound::verify::treadsoft_signature(WEBHOOK_SECRET, timestamp, body))
}

/// An `owner.registered` app event (`POST /api/events`) for a new user `user_id`.
pub fn owner_registered(user_id: &str) -> Vec<u8> {
    let body = json!({
        "id": format!("ev_{user_id}"),
        "type": "owner.registered",
        "occurredAt": rfc3339(Utc::now()),
        "data": {
            "id": user_id,
            "name": "Zoë Brontë",
            "email": format!("{user_id}@example.com"),
            "phone": "+44 7700 900123",
            "companyName": "Haworth Moor Escape Houses Ltd",
            "role": "owner",
            "membershipStatus": "pending"
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_is_created_then_updated_in_version_order() {
        let mut stream = ContactStream::new("t".into(), 2);
        let events: Vec<Value> = (0..6).map(|_| stream.next_event()).collect();
        let kinds: Vec<(&str, i64)> =
            events.iter().map(|e| (e["type"].as_str().unwrap(), e["object"]["version"].as_i64().unwrap())).collect();
        assert_eq!(
            kinds,
            [
                ("contact.created", 1),
                ("contact.updated", 2),
                ("contact.updated", 3),
                ("contact.created", 1),
                ("contact.updated", 2),
                ("contact.updated", 3)
            ]
        );
        assert_eq!(events[0]["object"]["id"], events[2]["object"]["id"]);
        assert_ne!(events[0]["object"]["id"], events[3]["object"]["id"]);
        let stamps: Vec<&str> = events.iter().map(|e| e["object"]["updatedAt"].as_str().unwrap()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    }

    #[test]
    fn a_single_event_delivery_is_about_one_kib() {
        let mut stream = ContactStream::new("b1w07".into(), 1);
        let size = delivery(vec![stream.next_event()]).len();
        assert!((900..=1200).contains(&size), "{size} bytes");
    }
}
