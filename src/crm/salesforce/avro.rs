//! A Change Data Capture event's payload (`salesforce.md` §2.3): one Avro datum written with the
//! schema its `schema_id` names, decoded with `apache-avro` into the event's header and its field
//! values by Salesforce's names.
//!
//! - Values become JSON: unions unwrapped, dates as `YYYY-MM-DD`, date-times as RFC 3339.
//! - A compound field (`Name`, an address) keeps its record and lends its parts to the top level
//!   (`FirstName`, `LastName`), as the REST API shows them.
//! - `changedFields`, `nulledFields` and `diffFields` are decoded against this (the writer's)
//!   schema: top-level positions, and the parts of a compound field by its position.

use super::cdc::{Header, decode_bitmaps};
use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as Avro;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A parsed event schema, ready to decode payloads.
#[derive(Debug)]
pub struct EventSchema {
    schema: Schema,
    /// Top-level field names, by position.
    fields: Vec<String>,
    /// The parts of each compound field, by its position.
    nested: HashMap<usize, Vec<String>>,
}

/// An event decoded: what its header says, and every field value by Salesforce's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub header: Header,
    pub values: Map<String, Value>,
}

impl EventSchema {
    /// Parses a schema as `GetSchema` returns it (JSON).
    pub fn parse(json: &str) -> Result<Self, String> {
        let schema = Schema::parse_str(json).map_err(|e| format!("the event schema does not parse: {e}"))?;
        let Schema::Record(record) = &schema else {
            return Err("the event schema is not a record".into());
        };
        let mut named: HashMap<Name, Vec<String>> = HashMap::new();
        let mut nested = HashMap::new();
        for (position, field) in record.fields.iter().enumerate() {
            if let Some(parts) = parts_of(&field.schema, &mut named) {
                nested.insert(position, parts);
            }
        }
        let fields = record.fields.iter().map(|f| f.name.clone()).collect();
        Ok(Self { schema, fields, nested })
    }

    /// Decodes one payload.
    pub fn decode(&self, payload: &[u8]) -> Result<Decoded, String> {
        let datum = apache_avro::from_avro_datum(&self.schema, &mut &payload[..], None)
            .map_err(|e| format!("the event does not decode with its schema: {e}"))?;
        let Value::Object(mut values) = json_of(datum) else {
            return Err("the event is not a record".into());
        };
        let header = values.remove("ChangeEventHeader").unwrap_or_default();
        let header = self.header(&header)?;
        // The parts of compound fields, at the top level too (`Name.FirstName` → `FirstName`).
        let mut parts = Map::new();
        for value in values.values() {
            if let Value::Object(inner) = value {
                for (name, part) in inner {
                    parts.entry(name.clone()).or_insert_with(|| part.clone());
                }
            }
        }
        for (name, part) in parts {
            values.entry(name).or_insert(part);
        }
        Ok(Decoded { header, values })
    }

    fn header(&self, header: &Value) -> Result<Header, String> {
        let text = |name: &str| header.get(name).and_then(Value::as_str).map(str::to_owned);
        let list = |name: &str| -> Vec<String> {
            header
                .get(name)
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let bitmaps = |name: &str| decode_bitmaps(&list(name), &self.fields, |p| self.nested_of(p));
        Ok(Header {
            entity_name: text("entityName").ok_or("the event's header has no entityName")?,
            record_ids: list("recordIds"),
            change_type: text("changeType").ok_or("the event's header has no changeType")?,
            change_origin: text("changeOrigin").filter(|o| !o.is_empty()),
            commit_timestamp: header
                .get("commitTimestamp")
                .and_then(Value::as_i64)
                .ok_or("the event's header has no commitTimestamp")?,
            transaction_key: text("transactionKey").unwrap_or_default(),
            sequence_number: header.get("sequenceNumber").and_then(Value::as_i64).unwrap_or_default(),
            changed_fields: bitmaps("changedFields"),
            nulled_fields: bitmaps("nulledFields"),
            diff_fields: bitmaps("diffFields"),
        })
    }

    fn nested_of(&self, position: usize) -> Vec<String> {
        self.nested.get(&position).cloned().unwrap_or_default()
    }
}

/// The field names of a compound field's record (through a union with null, or a reference to
/// a record named before).
fn parts_of(schema: &Schema, named: &mut HashMap<Name, Vec<String>>) -> Option<Vec<String>> {
    match schema {
        Schema::Union(union) => union.variants().iter().find_map(|variant| parts_of(variant, named)),
        Schema::Record(RecordSchema { name, fields, .. }) => {
            let parts: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
            named.insert(name.clone(), parts.clone());
            Some(parts)
        }
        Schema::Ref { name } => named.get(name).cloned(),
        _ => None,
    }
}

/// An Avro value as JSON.
fn json_of(value: Avro) -> Value {
    match value {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(n) => Value::from(n),
        Avro::Long(n) => Value::from(n),
        Avro::Float(x) => serde_json::Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number),
        Avro::Double(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Union(_, inner) => json_of(*inner),
        Avro::Array(items) => Value::Array(items.into_iter().map(json_of).collect()),
        Avro::Map(entries) => Value::Object(entries.into_iter().map(|(k, v)| (k, json_of(v))).collect()),
        Avro::Record(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, json_of(v))).collect()),
        Avro::Date(days) => chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
            .map_or(Value::Null, |d| Value::String(d.format("%Y-%m-%d").to_string())),
        Avro::TimestampMillis(ms) | Avro::LocalTimestampMillis(ms) => {
            chrono::DateTime::from_timestamp_millis(ms).map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
        }
        Avro::TimestampMicros(us) | Avro::LocalTimestampMicros(us) => {
            chrono::DateTime::from_timestamp_micros(us).map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
        }
        Avro::Uuid(id) => Value::String(id.to_string()),
        Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        // Kinds Salesforce's change events do not use.
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONTACT: &str = include_str!("../../../tests/fixtures/salesforce/ContactChangeEvent.avsc");

    /// A payload written with the schema from JSON values (the way the tests' fake writes them).
    fn payload(schema_json: &str, value: Value) -> Vec<u8> {
        let schema = Schema::parse_str(schema_json).unwrap();
        let value = Avro::from(value).resolve(&schema).unwrap();
        apache_avro::to_avro_datum(&schema, value).unwrap()
    }

    #[test]
    fn a_contact_update_decodes_with_its_header_bitmaps_and_name_parts() {
        let schema = EventSchema::parse(CONTACT).unwrap();
        let event = json!({
            "ChangeEventHeader": {
                "entityName": "Contact", "recordIds": ["003A"], "changeType": "UPDATE",
                "changeOrigin": "com/salesforce/api/rest/62.0;client=crm-gateway/",
                "transactionKey": "0002a", "sequenceNumber": 1, "commitTimestamp": 1_764_000_000_000i64,
                "commitNumber": 11, "commitUser": "005A",
                // Email (position 3) and Phone (4); the Name's LastName (part 2).
                "changedFields": ["0x18", "1-0x4"], "nulledFields": [], "diffFields": []
            },
            "Name": {"Salutation": null, "FirstName": null, "LastName": "Lee"},
            "Email": "ann@example.com", "Phone": null, "Crm_Gateway_Id__c": null,
            "Birthdate": 20_000, "LastModifiedDate": 1_764_000_000_000i64
        });
        let decoded = schema.decode(&payload(CONTACT, event)).unwrap();
        let h = &decoded.header;
        assert_eq!((h.entity_name.as_str(), h.change_type.as_str()), ("Contact", "UPDATE"));
        assert_eq!(h.changed_fields, ["Email", "Phone", "Name.LastName"]);
        assert_eq!(h.commit_timestamp, 1_764_000_000_000);
        assert_eq!(decoded.values["LastName"], "Lee", "a name's parts are at the top level too");
        assert_eq!(decoded.values["Email"], "ann@example.com");
        assert_eq!(decoded.values["Birthdate"], "2024-10-04", "a date is a date, not a day count");
    }

    #[test]
    fn a_payload_that_is_not_the_schemas_is_refused_with_a_reason() {
        let schema = EventSchema::parse(CONTACT).unwrap();
        assert!(schema.decode(&[0xff, 0xff, 0xff]).unwrap_err().contains("does not decode"));
        assert!(EventSchema::parse("{\"type\": \"string\"}").unwrap_err().contains("not a record"));
        assert!(EventSchema::parse("{").unwrap_err().contains("does not parse"));
    }
}
