//! A Change Data Capture event's header turned into what the sync core applies (`salesforce.md`
//! §2.3-2.4): pure functions, ready for the Pub/Sub subscriber (not built yet) to feed.
//!
//! - `changedFields` / `nulledFields` are bitmaps over the writer schema's fields (`0x…` for the
//!   top level, `p-0x…` for the fields nested in the compound field at position `p`).
//! - An update becomes one change per changed field, each with the hash of its value
//!   ([`crate::sync::echo`]): a field the gateway wrote comes back as an echo whatever its
//!   `changeOrigin`, and a field a trigger changed in the same transaction is applied.
//! - The stamp is `commitTimestamp`; within a transaction, `sequenceNumber` orders the changes
//!   (it is part of their ids, which break ties).
//! - Gap events, an undelete, and a name changed in one part only are read again over REST; a
//!   `GAP_OVERFLOW` resyncs the object from its time.

use crate::crm::mapping::Mapping;
use crate::sync::change::Change;
use crate::sync::echo;
use crate::sync::mapping::RecordType;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The header fields the gateway reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub entity_name: String,
    pub record_ids: Vec<String>,
    pub change_type: String,
    pub change_origin: Option<String>,
    pub commit_timestamp: i64,
    pub transaction_key: String,
    pub sequence_number: i64,
    /// Field names, decoded from the bitmaps.
    pub changed_fields: Vec<String>,
    pub nulled_fields: Vec<String>,
    /// Long text fields sent as a diff, not a value: such a record is read again.
    pub diff_fields: Vec<String>,
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Apply these changes.
    Apply(Vec<Change>),
    /// Read these records again over REST (the event does not carry their values).
    Reread(RecordType, Vec<String>),
    /// Read every record of the type changed since this time (more changes than events).
    Resync(RecordType, DateTime<Utc>),
    /// Not a synced object.
    Ignore(String),
}

/// The `client=` of a `changeOrigin` (`com/salesforce/api/rest/62.0;client=crm-gateway/`).
pub fn origin_client(change_origin: &str) -> Option<&str> {
    change_origin
        .split(';')
        .find_map(|part| part.trim().strip_prefix("client="))
        .map(|client| client.trim_end_matches('/'))
        .filter(|client| !client.is_empty())
}

/// Field names from `changedFields`-style bitmaps over the schema's top-level `fields`; `nested`
/// names the fields inside the compound field at a position (`Name` → `FirstName`, …).
pub fn decode_bitmaps(bitmaps: &[String], fields: &[String], nested: impl Fn(usize) -> Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for bitmap in bitmaps {
        let (parent, hex) = match bitmap.split_once("-0x") {
            Some((position, hex)) => (position.parse::<usize>().ok(), hex),
            None => (None, bitmap.trim_start_matches("0x")),
        };
        let names = match parent {
            Some(p) => nested(p),
            None => fields.to_vec(),
        };
        for bit in set_bits(hex) {
            if let Some(name) = names.get(bit) {
                let parent_name = parent.and_then(|p| fields.get(p));
                out.push(parent_name.map_or_else(|| name.clone(), |parent| format!("{parent}.{name}")));
            }
        }
    }
    out
}

/// The positions of the set bits of a hex number, the least significant bit first.
fn set_bits(hex: &str) -> Vec<usize> {
    let mut bits = Vec::new();
    for (k, digit) in hex.chars().rev().enumerate() {
        let Some(value) = digit.to_digit(16) else { return Vec::new() };
        for b in 0..4 {
            if value & (1 << b) != 0 {
                bits.push(4 * k + b);
            }
        }
    }
    bits
}

/// One event (its header and its decoded field values, by Salesforce's names) as what to do.
/// `own_client` is the `client=` tag the gateway writes with: a change carrying it is marked as
/// made through the API (`changeSource: api`), so a local change still on its way stands.
pub fn action(mapping: &Mapping, header: &Header, values: &Map<String, Value>, own_client: &str) -> Action {
    let mut action = changes_of(mapping, header, values);
    let ours = header.change_origin.as_deref().and_then(origin_client) == Some(own_client);
    if let (Action::Apply(changes), true) = (&mut action, ours) {
        for change in changes {
            change.change_source = Some("api".to_owned());
        }
    }
    action
}

/// Records read again over REST because of `header`'s event, as changes stamped by each record's
/// `LastModifiedDate` (whole seconds in Salesforce), or the event's commit time when later; with
/// `GAP_DELETE`, an id no longer readable is deleted. Like a listing, a record read carries every
/// field with one stamp, so fields changed here and not yet delivered keep their local value
/// (`changeSource: import`).
pub fn reread(t: RecordType, header: &Header, ids: &[String], records: &[crate::crm::CrmRecord]) -> Vec<Change> {
    let at = DateTime::<Utc>::from_timestamp_millis(header.commit_timestamp).unwrap_or_default();
    let mut changes = Vec::new();
    for id in ids {
        match records.iter().find(|r| &r.id == id) {
            Some(record) => {
                let stamp = record.updated_at.map_or(at, |read| read.max(at));
                let mut change = Change::of(t, "updated", key(header, id, "read"), id.clone(), stamp);
                change.set_record(record);
                change.change_source = Some("import".to_owned());
                // Every field read is news (an update names the fields it changes).
                change.changed_fields =
                    record.fields.keys().filter(|k| !matches!(k.as_str(), "id" | "externalId")).cloned().collect();
                changes.push(change);
            }
            None if header.change_type == "GAP_DELETE" => {
                let mut change = Change::of(t, "deleted", key(header, id, ""), id.clone(), at);
                change.object.deleted_at = Some(at);
                changes.push(change);
            }
            // Gone since: its delete comes as an event of its own.
            None => {}
        }
    }
    changes
}

fn changes_of(mapping: &Mapping, header: &Header, values: &Map<String, Value>) -> Action {
    let Some(t) = mapping.record_type_of(&header.entity_name) else {
        return Action::Ignore(format!("{} is not a synced object", header.entity_name));
    };
    let at = DateTime::<Utc>::from_timestamp_millis(header.commit_timestamp).unwrap_or_default();
    let ids = header.record_ids.clone();
    // The last part of a compound field's name (`Name.FirstName` → `FirstName`).
    let leaf = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    match header.change_type.as_str() {
        "GAP_OVERFLOW" => Action::Resync(t, at),
        // A key-prefix wildcard names no record to read: the whole object is read again.
        _ if ids.iter().any(|id| id.ends_with('*')) => Action::Resync(t, at),
        // The site does not bring a deleted record back (its tombstone wins).
        "UNDELETE" | "GAP_UNDELETE" => Action::Ignore(format!(
            "{} {} was undeleted in Salesforce; it stays deleted here",
            t.as_str(),
            ids.join(", ")
        )),
        kind if kind.starts_with("GAP_") => Action::Reread(t, ids),
        "UPDATE" if !header.diff_fields.is_empty() => Action::Reread(t, ids),
        "DELETE" => Action::Apply(
            ids.iter()
                .map(|id| {
                    let mut change = Change::of(t, "deleted", key(header, id, ""), id.clone(), at);
                    change.object.deleted_at = Some(at);
                    change
                })
                .collect(),
        ),
        "CREATE" => Action::Apply(
            ids.iter()
                .map(|id| {
                    let record = mapping.from_crm(t, id, values, Some(at));
                    let mut change = Change::of(t, "created", key(header, id, ""), id.clone(), at);
                    change.set_record(&record);
                    change
                })
                .collect(),
        ),
        "UPDATE" => {
            let names: Vec<String> =
                header.changed_fields.iter().chain(&header.nulled_fields).map(|n| leaf(n)).collect();
            let fields: Vec<String> = names.iter().filter_map(|n| mapping.field_of(t, n).map(str::to_owned)).collect();
            // A name is one field here: one part alone would lose the other.
            let parts = ["firstName", "lastName"].map(|p| fields.iter().any(|f| f == p));
            if parts[0] != parts[1] {
                return Action::Reread(t, ids);
            }
            let record = mapping.from_crm(t, "", values, Some(at));
            let mut changes = Vec::new();
            for id in &ids {
                for field in &fields {
                    let value = record.fields.get(field).cloned().unwrap_or(Value::Null);
                    let mut change = Change::of(t, "updated", key(header, id, field), id.clone(), at);
                    change.echo_of = Some(echo::echo_of(t, id, field, &value));
                    change.changed_fields = vec![field.clone()];
                    change.needs_record = true;
                    change.partial = true;
                    let mut data = Map::new();
                    data.insert(field.clone(), value);
                    // The other part of a name changed together (both are in `fields`).
                    for part in
                        ["firstName", "lastName"].iter().filter(|p| *p != field && fields.iter().any(|f| f == *p))
                    {
                        data.insert((*part).to_owned(), record.fields.get(*part).cloned().unwrap_or(Value::Null));
                    }
                    change.object.data = Some(data);
                    changes.push(change);
                }
            }
            Action::Apply(changes)
        }
        other => Action::Ignore(format!("change type {other} is not synced")),
    }
}

/// A change's inbox key: stable however often the event is delivered, and ordered within a
/// transaction by its sequence number (a tie between two changes of one field goes to the later).
fn key(header: &Header, record_id: &str, field: &str) -> String {
    format!(
        "sf:{}:{}:{:06}:{record_id}:{field}",
        header.commit_timestamp, header.transaction_key, header.sequence_number
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::mapping::Flavor;
    use serde_json::json;

    fn header(change_type: &str, changed: &[&str]) -> Header {
        Header {
            entity_name: "Contact".into(),
            record_ids: vec!["003A".into()],
            change_type: change_type.into(),
            change_origin: Some("com/salesforce/api/rest/62.0;client=crm-gateway/".into()),
            commit_timestamp: 1_764_000_000_000,
            transaction_key: "0002a".into(),
            sequence_number: 3,
            changed_fields: changed.iter().map(|s| (*s).to_owned()).collect(),
            nulled_fields: Vec::new(),
            diff_fields: Vec::new(),
        }
    }

    #[test]
    fn the_client_of_a_change_origin_is_read_with_or_without_a_trailing_slash() {
        assert_eq!(origin_client("com/salesforce/api/rest/62.0;client=crm-gateway/"), Some("crm-gateway"));
        assert_eq!(origin_client("com/salesforce/api/soap/58.0;client=crm-gateway"), Some("crm-gateway"));
        assert_eq!(origin_client("com/salesforce/api/rest/62.0"), None);
        assert_eq!(origin_client(""), None);
    }

    #[test]
    fn bitmaps_name_top_level_and_nested_fields() {
        let fields: Vec<String> =
            ["ChangeEventHeader", "Name", "Email", "Phone", "Role__c"].iter().map(|s| (*s).to_owned()).collect();
        let nested = |p: usize| {
            assert_eq!(p, 1);
            vec!["Salutation".to_owned(), "FirstName".to_owned(), "LastName".to_owned()]
        };
        // 0x14: bits 2 and 4 (Email, Role__c); 1-0x4: bit 2 of Name (LastName).
        let names = decode_bitmaps(&["0x14".into(), "1-0x4".into()], &fields, nested);
        assert_eq!(names, ["Email", "Role__c", "Name.LastName"]);
        assert_eq!(set_bits("650004E0"), [5, 6, 7, 10, 24, 26, 29, 30], "long bitmaps read digit by digit");
        assert!(set_bits("zz").is_empty());
    }

    #[test]
    fn an_update_is_one_change_per_field_each_known_as_an_echo_by_its_value() {
        let mapping = Mapping::defaults(Flavor::Salesforce);
        let values = json!({"Email": "new@example.com", "Phone": null}).as_object().unwrap().clone();
        let mut h = header("UPDATE", &["Email"]);
        h.nulled_fields = vec!["Phone".into()];
        let Action::Apply(changes) = action(&mapping, &h, &values, "crm-gateway") else { panic!() };
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].changed_fields, ["email"]);
        assert_eq!(changes[0].object.data.as_ref().unwrap()["email"], "new@example.com");
        assert_eq!(
            changes[0].echo_of.as_deref(),
            Some(echo::echo_of(RecordType::Contact, "003A", "email", &json!("new@example.com")).as_str())
        );
        assert_eq!(changes[1].object.data.as_ref().unwrap()["phone"], Value::Null, "a nulled field is cleared");
        assert_eq!(changes[0].object.updated_at.timestamp_millis(), 1_764_000_000_000);
        assert_ne!(changes[0].id, changes[1].id, "one inbox key per field");
        assert!(changes[0].id.starts_with("sf:1764000000000:0002a:000003:003A:"));
        assert_eq!(changes[0].change_source.as_deref(), Some("api"), "made with the gateway's client tag");
        h.change_origin = Some("com/salesforce/api/soap/62.0;client=SfdcInternalAPI/".into());
        let Action::Apply(changes) = action(&mapping, &h, &values, "crm-gateway") else { panic!() };
        assert_eq!(changes[0].change_source, None, "someone else's change");
        h.diff_fields = vec!["Description".into()];
        assert_eq!(
            action(&mapping, &h, &values, "crm-gateway"),
            Action::Reread(RecordType::Contact, vec!["003A".into()]),
            "a long text sent as a diff is read whole"
        );
    }

    #[test]
    fn gaps_undeletes_half_names_and_overflows_are_read_again() {
        let mapping = Mapping::defaults(Flavor::Salesforce);
        let none = Map::new();
        assert_eq!(
            action(&mapping, &header("GAP_UPDATE", &[]), &none, "crm-gateway"),
            Action::Reread(RecordType::Contact, vec!["003A".into()])
        );
        assert!(matches!(action(&mapping, &header("UNDELETE", &[]), &none, "crm-gateway"), Action::Ignore(_)));
        assert_eq!(
            action(&mapping, &header("UPDATE", &["Name.FirstName"]), &none, "crm-gateway"),
            Action::Reread(RecordType::Contact, vec!["003A".into()])
        );
        assert!(matches!(
            action(&mapping, &header("GAP_OVERFLOW", &[]), &none, "crm-gateway"),
            Action::Resync(RecordType::Contact, _)
        ));
        let mut wildcard = header("UPDATE", &["Email"]);
        wildcard.record_ids = vec!["003*".into()];
        assert!(matches!(action(&mapping, &wildcard, &none, "crm-gateway"), Action::Resync(..)));
        wildcard.change_type = "GAP_UPDATE".into();
        assert!(matches!(action(&mapping, &wildcard, &none, "crm-gateway"), Action::Resync(..)), "never read by id");
        let mut account = header("UPDATE", &["Name"]);
        account.entity_name = "Account".into();
        assert!(matches!(action(&mapping, &account, &none, "crm-gateway"), Action::Ignore(_)));
    }

    #[test]
    fn a_create_carries_every_field_and_a_delete_tombstones_each_record() {
        let mapping = Mapping::defaults(Flavor::Salesforce);
        let values =
            json!({"FirstName": "Ann", "LastName": "Lee", "Email": "ann@example.com", "Crm_Gateway_Id__c": null})
                .as_object()
                .unwrap()
                .clone();
        let Action::Apply(created) = action(&mapping, &header("CREATE", &[]), &values, "crm-gateway") else { panic!() };
        assert_eq!(created[0].event_type, "contact.created");
        assert_eq!(created[0].object.data.as_ref().unwrap()["firstName"], "Ann");
        assert!(created[0].partial, "fields Salesforce holds no value for are unknown");
        let mut two = header("DELETE", &[]);
        two.record_ids = vec!["003A".into(), "003B".into()];
        let Action::Apply(deleted) = action(&mapping, &two, &Map::new(), "crm-gateway") else { panic!() };
        assert_eq!(deleted.iter().map(|c| c.object.id.as_str()).collect::<Vec<_>>(), ["003A", "003B"]);
        assert!(deleted.iter().all(|c| c.event_type == "contact.deleted"));
    }

    #[test]
    fn records_read_again_are_stamped_by_their_own_time_and_a_gap_delete_of_a_gone_record_deletes() {
        let mapping = Mapping::defaults(Flavor::Salesforce);
        let values = json!({"FirstName": "Ann", "LastName": "Lee-Hart", "Email": "ann@example.com"});
        let at = DateTime::<Utc>::from_timestamp_millis(1_764_000_005_000);
        let record = mapping.from_crm(RecordType::Contact, "003A", values.as_object().unwrap(), at);
        let ids = vec!["003A".to_owned(), "003B".to_owned()];
        let changes = reread(RecordType::Contact, &header("GAP_UPDATE", &[]), &ids, std::slice::from_ref(&record));
        assert_eq!(changes.len(), 1, "a record gone since is left to its own delete event");
        assert_eq!(changes[0].object.updated_at, at.unwrap(), "the read record's time, later than the event's");
        assert_eq!(changes[0].change_source.as_deref(), Some("import"), "undelivered local changes stand");
        assert_eq!(changes[0].object.data.as_ref().unwrap()["lastName"], "Lee-Hart");
        assert!(changes[0].changed_fields.iter().any(|f| f == "lastName"), "{:?}", changes[0].changed_fields);
        let deleted = reread(RecordType::Contact, &header("GAP_DELETE", &[]), &ids, &[record]);
        assert_eq!(deleted[1].event_type, "contact.deleted");
        assert_eq!(deleted[1].object.id, "003B");
    }
}
