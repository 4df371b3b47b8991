//! The simulator's records, in memory: TreadSoft's five record types with their fields
//! (API.md §2), versions and timestamps, unique emails and external ids, soft deletes, listing by
//! `updatedAt`, and the change events a webhook would carry (§4.2).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// A record collection: its REST name, record type and id prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    Contacts,
    Properties,
    Enquiries,
    Bookings,
    Memberships,
}

impl Collection {
    pub const ALL: [Collection; 5] =
        [Self::Contacts, Self::Properties, Self::Enquiries, Self::Bookings, Self::Memberships];

    pub fn parse(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.path() == path)
    }

    /// `/v1/<path>`.
    pub fn path(self) -> &'static str {
        match self {
            Self::Contacts => "contacts",
            Self::Properties => "properties",
            Self::Enquiries => "enquiries",
            Self::Bookings => "bookings",
            Self::Memberships => "memberships",
        }
    }

    /// The record type in events (`contact.updated`).
    pub fn record_type(self) -> &'static str {
        match self {
            Self::Contacts => "contact",
            Self::Properties => "property",
            Self::Enquiries => "enquiry",
            Self::Bookings => "booking",
            Self::Memberships => "membership",
        }
    }

    fn fields(self) -> &'static [(&'static str, Kind)] {
        use Kind::*;
        match self {
            Self::Contacts => &[
                ("firstName", Text),
                ("lastName", Text),
                ("email", Text),
                ("phone", Text),
                ("companyName", Text),
                ("role", OneOf(&["owner", "guest"])),
                ("membershipStatus", OneOf(&["active", "pending", "inactive"])),
            ],
            Self::Properties => &[
                ("title", Text),
                ("location", Text),
                ("bedrooms", Int),
                ("pricePerNight", Money),
                ("currency", Text),
                ("status", OneOf(&["draft", "active", "inactive"])),
                ("ownerContactId", Text),
            ],
            Self::Enquiries => &[
                ("contactId", Text),
                ("propertyId", Text),
                ("guestName", Text),
                ("guestEmail", Text),
                ("guestPhone", Text),
                ("subject", Text),
                ("message", Text),
                ("status", OneOf(&["new", "open", "responded", "closed"])),
                ("source", OneOf(&["website", "phone", "email", "partner"])),
            ],
            Self::Bookings => &[
                ("propertyId", Text),
                ("contactId", Text),
                ("guestName", Text),
                ("guestEmail", Text),
                ("checkIn", Date),
                ("checkOut", Date),
                ("guests", Int),
                ("totalPrice", Money),
                ("currency", Text),
                ("status", OneOf(&["pending", "confirmed", "cancelled", "completed"])),
                ("paymentStatus", OneOf(&["pending", "deposit_paid", "paid", "refunded", "failed"])),
            ],
            Self::Memberships => &[
                ("contactId", Text),
                ("tier", OneOf(&["basic", "standard", "premium"])),
                ("status", OneOf(&["pending", "active", "inactive", "cancelled"])),
                ("startDate", Date),
                ("endDate", Date),
                ("autoRenew", Bool),
                ("paymentStatus", OneOf(&["pending", "paid", "failed", "refunded"])),
            ],
        }
    }
}

/// What a field holds (every field may also be null).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
    /// A number with at most 2 decimals.
    Money,
    Bool,
    /// `YYYY-MM-DD`.
    Date,
    OneOf(&'static [&'static str]),
}

impl Kind {
    fn check(self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            return Ok(());
        }
        let ok = match self {
            Kind::Text => value.is_string(),
            Kind::Int => value.is_i64(),
            Kind::Money => value.as_f64().is_some_and(|n| ((n * 100.0).round() - n * 100.0).abs() < 1e-6),
            Kind::Bool => value.is_boolean(),
            Kind::Date => value.as_str().is_some_and(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()),
            Kind::OneOf(values) => value.as_str().is_some_and(|v| values.contains(&v)),
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            Kind::Text => "must be a string".into(),
            Kind::Int => "must be a whole number".into(),
            Kind::Money => "must be a number with at most 2 decimals".into(),
            Kind::Bool => "must be true or false".into(),
            Kind::Date => "must be a date YYYY-MM-DD".into(),
            Kind::OneOf(values) => format!("must be one of {}", values.join(", ")),
        })
    }
}

/// Why a write was refused (API.md §3.3).
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    NotFound,
    /// A contact with that email exists: its id.
    Duplicate(String),
    /// Field name → message.
    Invalid(BTreeMap<String, String>),
    VersionMismatch,
}

impl Refused {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(BTreeMap::from([(field.to_owned(), message.into())]))
    }
}

/// A change, as a webhook event describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event: Value,
}

/// Where a change came from (`changeSource`), and the request that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub change_source: &'static str,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone)]
struct Stored {
    /// The record as the API returns it: common fields and the type's fields.
    body: Map<String, Value>,
    deleted_at: Option<DateTime<Utc>>,
}

/// Every record, and the changes not yet handed to the webhook sender.
#[derive(Debug, Default)]
pub struct Store {
    records: BTreeMap<(Collection, String), Stored>,
    /// The live records by their unique fields: (collection, `email` lower-cased or
    /// `externalId`, value) → id.
    unique: HashMap<(Collection, &'static str, String), String>,
    next_id: u64,
    /// The last timestamp given, so that each change is stamped later than the one before.
    last_ms: i64,
    changes: Vec<Change>,
}

/// The fields no two live records of a collection share.
const UNIQUE: [&str; 2] = ["email", "externalId"];

fn unique_key(c: Collection, field: &'static str, value: &str) -> (Collection, &'static str, String) {
    (c, field, if field == "email" { value.to_lowercase() } else { value.to_owned() })
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Store {
    /// A clock that never repeats or goes back: each change gets a later millisecond.
    fn now(&mut self) -> DateTime<Utc> {
        let ms = Utc::now().timestamp_millis().max(self.last_ms + 1);
        self.last_ms = ms;
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    fn live(&self, c: Collection, id: &str) -> Option<&Stored> {
        self.records.get(&(c, id.to_owned())).filter(|r| r.deleted_at.is_none())
    }

    /// The live record `id`.
    pub fn get(&self, c: Collection, id: &str) -> Option<Value> {
        self.live(c, id).map(|r| Value::Object(r.body.clone()))
    }

    /// The live record (other than `except`) whose unique `field` (`email`, compared without
    /// case, or `externalId`) is `value`.
    fn find_by(&self, c: Collection, field: &'static str, value: &str, except: Option<&str>) -> Option<String> {
        self.unique.get(&unique_key(c, field, value)).filter(|id| Some(id.as_str()) != except).cloned()
    }

    /// Moves a record's entries in the unique index from `before` to `after` (`None`: none).
    fn reindex(
        &mut self,
        c: Collection,
        id: &str,
        before: Option<&Map<String, Value>>,
        after: Option<&Map<String, Value>>,
    ) {
        for field in UNIQUE {
            if let Some(value) = before.and_then(|b| b.get(field)).and_then(Value::as_str) {
                self.unique.remove(&unique_key(c, field, value));
            }
            if let Some(value) = after.and_then(|a| a.get(field)).and_then(Value::as_str) {
                self.unique.insert(unique_key(c, field, value), id.to_owned());
            }
        }
    }

    /// The live record whose `externalId` is `external_id`.
    pub fn by_external_id(&self, c: Collection, external_id: &str) -> Option<String> {
        self.find_by(c, "externalId", external_id, None)
    }

    /// The type's known fields of `input` (others are ignored), checked, and the uniqueness rules
    /// against the other live records.
    fn accepted(
        &self,
        c: Collection,
        input: &Map<String, Value>,
        except: Option<&str>,
    ) -> Result<Map<String, Value>, Refused> {
        let mut fields = Map::new();
        let mut problems = BTreeMap::new();
        for (name, kind) in c.fields() {
            if let Some(value) = input.get(*name) {
                match kind.check(value) {
                    Ok(()) => {
                        fields.insert((*name).to_owned(), value.clone());
                    }
                    Err(message) => {
                        problems.insert((*name).to_owned(), message);
                    }
                }
            }
        }
        match input.get("externalId") {
            None => {}
            Some(Value::Null) => {
                fields.insert("externalId".into(), Value::Null);
            }
            Some(Value::String(external_id)) if external_id.len() <= 255 => {
                if self.find_by(c, "externalId", external_id, except).is_some() {
                    problems.insert("externalId".into(), "another record has this externalId".into());
                }
                fields.insert("externalId".into(), Value::String(external_id.clone()));
            }
            Some(_) => {
                problems.insert("externalId".into(), "must be a string of at most 255 characters".into());
            }
        }
        if !problems.is_empty() {
            return Err(Refused::Invalid(problems));
        }
        if c == Collection::Contacts
            && let Some(email) = fields.get("email").and_then(Value::as_str)
            && let Some(existing) = self.find_by(c, "email", email, except)
        {
            return Err(Refused::Duplicate(existing));
        }
        Ok(fields)
    }

    /// `POST /v1/R`: a new record.
    pub fn create(&mut self, c: Collection, input: &Map<String, Value>, source: &Source) -> Result<Value, Refused> {
        let fields = self.accepted(c, input, None)?;
        if c == Collection::Contacts && fields.get("email").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(Refused::invalid("email", "is required"));
        }
        let now = self.now();
        self.next_id += 1;
        let id = format!("crm_{}_{:06}", c.record_type(), self.next_id);
        let mut body = Map::new();
        body.insert("id".into(), json!(id));
        body.insert("externalId".into(), Value::Null);
        for (name, _) in c.fields() {
            body.insert((*name).to_owned(), Value::Null);
        }
        let changed: Vec<String> = fields.keys().cloned().collect();
        body.extend(fields);
        body.insert("version".into(), json!(1));
        body.insert("createdAt".into(), json!(stamp(now)));
        body.insert("updatedAt".into(), json!(stamp(now)));
        self.reindex(c, &id, None, Some(&body));
        self.records.insert((c, id.clone()), Stored { body: body.clone(), deleted_at: None });
        self.record_change(c, &id, "created", changed, source);
        Ok(Value::Object(body))
    }

    /// `PATCH /v1/R/{id}`: the fields given; nothing changes (no version, no event) when they equal
    /// the stored ones.
    pub fn update(
        &mut self,
        c: Collection,
        id: &str,
        input: &Map<String, Value>,
        if_match: Option<i64>,
        source: &Source,
    ) -> Result<Value, Refused> {
        let current = self.live(c, id).ok_or(Refused::NotFound)?;
        if if_match.is_some_and(|v| current.body.get("version").and_then(Value::as_i64) != Some(v)) {
            return Err(Refused::VersionMismatch);
        }
        let fields = self.accepted(c, input, Some(id))?;
        let changed: Vec<String> =
            fields.iter().filter(|(k, v)| current.body.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        if changed.is_empty() {
            return Ok(Value::Object(current.body.clone()));
        }
        let before = current.body.clone();
        let now = self.now();
        let stored = self.records.get_mut(&(c, id.to_owned())).ok_or(Refused::NotFound)?;
        let version = stored.body.get("version").and_then(Value::as_i64).unwrap_or(1) + 1;
        for name in &changed {
            stored.body.insert(name.clone(), fields[name].clone());
        }
        stored.body.insert("version".into(), json!(version));
        stored.body.insert("updatedAt".into(), json!(stamp(now)));
        let body = stored.body.clone();
        self.reindex(c, id, Some(&before), Some(&body));
        self.record_change(c, id, "updated", changed, source);
        Ok(Value::Object(body))
    }

    /// `DELETE /v1/R/{id}`.
    pub fn delete(&mut self, c: Collection, id: &str, source: &Source) -> Result<(), Refused> {
        self.live(c, id).ok_or(Refused::NotFound)?;
        let now = self.now();
        let stored = self.records.get_mut(&(c, id.to_owned())).ok_or(Refused::NotFound)?;
        let version = stored.body.get("version").and_then(Value::as_i64).unwrap_or(1) + 1;
        stored.body.insert("version".into(), json!(version));
        stored.body.insert("updatedAt".into(), json!(stamp(now)));
        stored.deleted_at = Some(now);
        let body = stored.body.clone();
        self.reindex(c, id, Some(&body), None);
        self.record_change(c, id, "deleted", Vec::new(), source);
        Ok(())
    }

    /// `GET /v1/R?updatedSince=&limit=&cursor=`: live records updated at or after `since`, by
    /// `updatedAt` then `id`, after the record `after` (a page's last: its `updatedAt` and `id`).
    pub fn list(
        &self,
        c: Collection,
        since: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> (Vec<Value>, Option<(String, String)>) {
        let mut live: Vec<(&str, &str, &Stored)> = self
            .records
            .iter()
            .filter(|((coll, _), r)| *coll == c && r.deleted_at.is_none())
            .map(|((_, id), r)| (r.body.get("updatedAt").and_then(Value::as_str).unwrap_or_default(), id.as_str(), r))
            .filter(|(updated, _, _)| since.is_none_or(|s| *updated >= s))
            .filter(|(updated, id, _)| after.is_none_or(|(u, i)| (*updated, *id) > (u, i)))
            .collect();
        live.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let more = live.len() > limit;
        live.truncate(limit);
        let next = if more { live.last().map(|(u, i, _)| ((*u).to_owned(), (*i).to_owned())) } else { None };
        (live.into_iter().map(|(_, _, r)| Value::Object(r.body.clone())).collect(), next)
    }

    fn record_change(&mut self, c: Collection, id: &str, action: &str, changed: Vec<String>, source: &Source) {
        let Some(stored) = self.records.get(&(c, id.to_owned())) else { return };
        let body = &stored.body;
        let data: Map<String, Value> = c
            .fields()
            .iter()
            .map(|(name, _)| ((*name).to_owned(), body.get(*name).cloned().unwrap_or(Value::Null)))
            .collect();
        let updated_at = body.get("updatedAt").cloned().unwrap_or(Value::Null);
        let event = json!({
            "id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
            "type": format!("{}.{action}", c.record_type()),
            "occurredAt": updated_at,
            "changeSource": source.change_source,
            "requestId": source.request_id,
            "changedFields": changed,
            "object": {
                "type": c.record_type(),
                "id": id,
                "externalId": body.get("externalId").cloned().unwrap_or(Value::Null),
                "version": body.get("version").cloned().unwrap_or(json!(1)),
                "updatedAt": updated_at,
                "deletedAt": stored.deleted_at.map(stamp),
                "data": if stored.deleted_at.is_some() { Value::Null } else { Value::Object(data) },
            }
        });
        self.changes.push(Change { event });
    }

    /// The changes made since the last call, oldest first (for the webhook sender).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// How many live records each collection holds.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> = Collection::ALL.iter().map(|c| (c.path(), 0)).collect();
        for ((c, _), r) in &self.records {
            if r.deleted_at.is_none() {
                *counts.entry(c.path()).or_default() += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(email: &str) -> Map<String, Value> {
        json!({"firstName": "A", "lastName": "B", "email": email, "role": "owner", "membershipStatus": "active"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn unique_fields_follow_creates_changes_and_deletes() {
        let ui = Source { change_source: "ui", request_id: None };
        let mut store = Store::default();
        let id = |v: Value| v["id"].as_str().unwrap().to_owned();
        let a = id(store.create(Collection::Contacts, &contact("A@example.com"), &ui).unwrap());
        assert!(matches!(
            store.create(Collection::Contacts, &contact("a@EXAMPLE.com"), &ui),
            Err(Refused::Duplicate(existing)) if existing == a
        ));
        store.update(Collection::Contacts, &a, &contact("new@example.com"), None, &ui).unwrap();
        let b = id(store.create(Collection::Contacts, &contact("a@example.com"), &ui).unwrap());
        assert!(
            matches!(store.update(Collection::Contacts, &b, &contact("NEW@example.com"), None, &ui),
                Err(Refused::Duplicate(existing)) if existing == a),
            "an email changed to another's is refused"
        );
        store.delete(Collection::Contacts, &a, &ui).unwrap();
        store.update(Collection::Contacts, &b, &contact("new@example.com"), None, &ui).expect("free after the delete");
        let mut linked = contact("x@example.com");
        linked.insert("externalId".into(), json!("user_1"));
        store.create(Collection::Contacts, &linked, &ui).unwrap();
        let mut same = contact("y@example.com");
        same.insert("externalId".into(), json!("user_1"));
        assert!(matches!(store.create(Collection::Contacts, &same, &ui), Err(Refused::Invalid(_))));
        assert!(store.by_external_id(Collection::Contacts, "user_1").is_some());
    }
}
