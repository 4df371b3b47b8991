//! Which CRM object holds each record type, and which property (field) each of the gateway's CRM
//! fields, for a CRM whose names are the account's own (HubSpot, Salesforce): defaults that work
//! out of the box for each [`Flavor`], overridden key by key by a TOML file (`CRM_MAPPING_FILE`).
//!
//! The gateway's CRM fields are the provider-neutral vocabulary of the sync core (the names in
//! [`crate::sync::mapping`]); this mapping translates them to the CRM's properties and back.
//! HubSpot sends and takes every property value as a string: numbers, booleans and dates are
//! turned back into their JSON kinds by the field's kind, and an empty string is no value.
//! Salesforce's values keep their JSON kinds; null is no value.
//!
//! ```toml
//! id_property = "crm_gateway_id"   # the unique property holding the gateway's id
//!
//! [booking]
//! object = "deals"                 # the API path segment (a name, or an id such as 2-1234)
//! object_type_id = "0-3"           # how webhooks name it
//! enabled = true
//! [booking.properties]             # gateway field = HubSpot property
//! totalPrice = "amount"
//! [booking.on_create]              # sent when the gateway creates the object
//! pipeline = "default"
//! [contact.defaults]                # read when HubSpot holds no value
//! role = "guest"
//! ```

use crate::crm::CrmRecord;
use crate::sync::mapping::{Field, Kind, RecordType};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;

/// The unique property that holds the gateway's id of a record in HubSpot, unless the file names
/// another.
pub const DEFAULT_ID_PROPERTY: &str = "crm_gateway_id";
/// Salesforce's external id field, unless the file names another.
pub const DEFAULT_SALESFORCE_ID_FIELD: &str = "Crm_Gateway_Id__c";

/// Whose names, defaults and value forms a mapping speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    HubSpot,
    Salesforce,
}

/// The whole mapping, every record type's entry filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub flavor: Flavor,
    pub id_property: String,
    objects: BTreeMap<RecordType, ObjectMap>,
}

/// One record type's object and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMap {
    pub record: RecordType,
    /// Whether this record type is synced at all.
    pub enabled: bool,
    /// The object in API paths: `contacts`, `deals`, `tickets`, `0-420`, `p_memberships`, `2-1234`.
    pub object: String,
    /// The object type id webhooks carry (`0-1`; `2-...` for a custom object); `None`: the
    /// object's webhooks cannot be told apart, and are recorded without being applied.
    pub object_type_id: Option<String>,
    /// The property searched for changes since a time (`lastmodifieddate` on contacts).
    pub modified_property: String,
    /// Gateway field → HubSpot property, in the order of the record type's fields.
    pub properties: Vec<(String, String)>,
    /// Properties sent when the gateway creates the object (a pipeline and stage, say).
    pub on_create: BTreeMap<String, String>,
    /// Gateway field → what a record created here takes when HubSpot holds no value (a contact
    /// made in HubSpot has no site role: it becomes a guest). Never applied to a record that
    /// exists here.
    pub defaults: BTreeMap<String, String>,
}

/// Why a mapping file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    id_property: Option<String>,
    contact: Option<ObjectFile>,
    property: Option<ObjectFile>,
    enquiry: Option<ObjectFile>,
    booking: Option<ObjectFile>,
    membership: Option<ObjectFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectFile {
    enabled: Option<bool>,
    object: Option<String>,
    object_type_id: Option<String>,
    modified_property: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    on_create: Option<BTreeMap<String, String>>,
    defaults: Option<BTreeMap<String, String>>,
}

/// The default object of each record type, and its standard (non-custom) properties.
fn standard(
    flavor: Flavor,
    t: RecordType,
) -> (&'static str, Option<&'static str>, &'static str, &'static [(&'static str, &'static str)]) {
    const MODIFIED: &str = "hs_lastmodifieddate";
    if flavor == Flavor::Salesforce {
        // Contacts are Salesforce's own; the rest are custom objects (`__c`), named by their
        // `Name` field where they have one worth showing.
        const SF_MODIFIED: &str = "LastModifiedDate";
        return match t {
            RecordType::Contact => (
                "Contact",
                None,
                SF_MODIFIED,
                &[("firstName", "FirstName"), ("lastName", "LastName"), ("email", "Email"), ("phone", "Phone")],
            ),
            RecordType::Property => ("Rental_Property__c", None, SF_MODIFIED, &[("title", "Name")]),
            RecordType::Enquiry => ("Enquiry__c", None, SF_MODIFIED, &[]),
            RecordType::Booking => ("Booking__c", None, SF_MODIFIED, &[]),
            RecordType::Membership => ("Membership__c", None, SF_MODIFIED, &[]),
        };
    }
    match t {
        RecordType::Contact => (
            "contacts",
            Some("0-1"),
            "lastmodifieddate",
            &[
                ("firstName", "firstname"),
                ("lastName", "lastname"),
                ("email", "email"),
                ("phone", "phone"),
                ("companyName", "company"),
            ],
        ),
        // HubSpot's listings object (it must be switched on in the account).
        RecordType::Property => ("0-420", Some("0-420"), MODIFIED, &[("title", "hs_name")]),
        RecordType::Enquiry => ("tickets", Some("0-5"), MODIFIED, &[("subject", "subject"), ("message", "content")]),
        RecordType::Booking => ("deals", Some("0-3"), MODIFIED, &[("guestName", "dealname"), ("totalPrice", "amount")]),
        // A custom object (Enterprise; off unless the file turns it on); its type id (2-...) is
        // the account's, so it has no default.
        RecordType::Membership => ("p_memberships", None, MODIFIED, &[]),
    }
}

fn default_values(t: RecordType) -> BTreeMap<String, String> {
    let pairs: &[(&str, &str)] = match t {
        RecordType::Contact => &[("role", "guest"), ("membershipStatus", "inactive")],
        _ => &[],
    };
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn default_on_create(flavor: Flavor, t: RecordType) -> BTreeMap<String, String> {
    let pairs: &[(&str, &str)] = match (flavor, t) {
        (Flavor::Salesforce, _) => &[],
        (Flavor::HubSpot, t) => match t {
            // A ticket needs a pipeline and a stage: the default support pipeline's first stage.
            RecordType::Enquiry => &[("hs_pipeline", "0"), ("hs_pipeline_stage", "1")],
            // A deal goes in the default sales pipeline's first stage.
            RecordType::Booking => &[("pipeline", "default"), ("dealstage", "appointmentscheduled")],
            _ => &[],
        },
    };
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The default property of a field with no standard one: `ownerContactId` →
/// `crm_gateway_owner_contact_id` in HubSpot, `Owner_Contact_Id__c` in Salesforce.
fn custom_name(flavor: Flavor, field: &str) -> String {
    let snake = crate::outbound::events::snake_case(field);
    match flavor {
        Flavor::HubSpot => format!("crm_gateway_{snake}"),
        Flavor::Salesforce => {
            let words: Vec<String> = snake.split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();
            format!("{}__c", words.join("_"))
        }
    }
}

/// The gateway's CRM fields of a record type, in order (`firstName` and `lastName` for a name).
fn crm_fields(t: RecordType) -> impl Iterator<Item = &'static str> {
    t.fields().iter().flat_map(|f| f.crm.iter().copied())
}

impl Default for Mapping {
    /// HubSpot's defaults.
    fn default() -> Self {
        Self::defaults(Flavor::HubSpot)
    }
}

impl Mapping {
    /// A flavour's defaults.
    pub fn defaults(flavor: Flavor) -> Self {
        Self::from_file(flavor, File::default()).expect("the default mapping is valid")
    }

    /// Reads a HubSpot mapping file; every key left out keeps its default.
    pub fn parse(text: &str) -> Result<Self, MappingError> {
        Self::parse_for(Flavor::HubSpot, text)
    }

    /// Reads a mapping file for a flavour; every key left out keeps its default.
    pub fn parse_for(flavor: Flavor, text: &str) -> Result<Self, MappingError> {
        let file: File = toml::from_str(text).map_err(|e| MappingError(e.to_string()))?;
        Self::from_file(flavor, file)
    }

    /// Reads the HubSpot mapping file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, MappingError> {
        Self::load_for(Flavor::HubSpot, path)
    }

    /// Reads the file at `path` for a flavour.
    pub fn load_for(flavor: Flavor, path: &std::path::Path) -> Result<Self, MappingError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| MappingError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse_for(flavor, &text).map_err(|MappingError(e)| MappingError(format!("{}: {e}", path.display())))
    }

    fn from_file(flavor: Flavor, mut file: File) -> Result<Self, MappingError> {
        let default_id = match flavor {
            Flavor::HubSpot => DEFAULT_ID_PROPERTY,
            Flavor::Salesforce => DEFAULT_SALESFORCE_ID_FIELD,
        };
        let id_property = file.id_property.take().unwrap_or_else(|| default_id.to_owned());
        check_name("id_property", &id_property)?;
        let mut objects = BTreeMap::new();
        for t in RecordType::ALL {
            let given = match t {
                RecordType::Contact => file.contact.take(),
                RecordType::Property => file.property.take(),
                RecordType::Enquiry => file.enquiry.take(),
                RecordType::Booking => file.booking.take(),
                RecordType::Membership => file.membership.take(),
            }
            .unwrap_or_default();
            let (object, type_id, modified, standard) = standard(flavor, t);
            let mut properties = Vec::new();
            for field in crm_fields(t) {
                let name = given
                    .properties
                    .get(field)
                    .cloned()
                    .or_else(|| standard.iter().find(|(f, _)| *f == field).map(|(_, p)| (*p).to_owned()))
                    .unwrap_or_else(|| custom_name(flavor, field));
                check_name(&format!("{}.properties.{field}", t.as_str()), &name)?;
                properties.push((field.to_owned(), name));
            }
            if let Some(unknown) = given.properties.keys().find(|k| !crm_fields(t).any(|f| f == k.as_str())) {
                let known: Vec<&str> = crm_fields(t).collect();
                return Err(MappingError(format!(
                    "{}.properties.{unknown}: not a field of a {}; the fields are {}",
                    t.as_str(),
                    t.as_str(),
                    known.join(", ")
                )));
            }
            let defaults = given.defaults.unwrap_or_else(|| default_values(t));
            if let Some(unknown) = defaults.keys().find(|k| !crm_fields(t).any(|f| f == k.as_str())) {
                return Err(MappingError(format!(
                    "{}.defaults.{unknown}: not a field of a {}",
                    t.as_str(),
                    t.as_str()
                )));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some((_, twice)) = properties.iter().find(|(_, p)| !seen.insert(p.as_str())) {
                return Err(MappingError(format!("{}: property {twice} is mapped to two fields", t.as_str())));
            }
            if properties.iter().any(|(_, p)| *p == id_property) {
                return Err(MappingError(format!("{}: {id_property} is the id property", t.as_str())));
            }
            let object = given.object.unwrap_or_else(|| object.to_owned());
            check_name(&format!("{}.object", t.as_str()), &object)?;
            // A changed object keeps the default type id only if it is the default object.
            let object_type_id = given.object_type_id.or_else(|| {
                (object == self::standard(flavor, t).0)
                    .then(|| type_id.map(str::to_owned))
                    .flatten()
                    .or_else(|| known_type_id(&object))
            });
            objects.insert(
                t,
                ObjectMap {
                    record: t,
                    // HubSpot's memberships need a custom object (an Enterprise feature): on when
                    // asked. Salesforce's custom objects come with every edition that has CDC.
                    enabled: given.enabled.unwrap_or(flavor == Flavor::Salesforce || t != RecordType::Membership),
                    object,
                    object_type_id,
                    modified_property: given.modified_property.unwrap_or_else(|| modified.to_owned()),
                    properties,
                    on_create: given.on_create.unwrap_or_else(|| default_on_create(flavor, t)),
                    defaults,
                },
            );
        }
        let mapping = Self { flavor, id_property, objects };
        // A record that refers to a switched-off type could never be sent.
        for t in RecordType::ALL.into_iter().filter(|t| mapping.object(*t).enabled) {
            for field in t.fields() {
                if let Kind::Ref(target) = field.kind
                    && !mapping.object(target).enabled
                {
                    return Err(MappingError(format!(
                        "{} is on but needs {}, which is off",
                        t.as_str(),
                        target.as_str()
                    )));
                }
            }
        }
        Ok(mapping)
    }

    pub fn object(&self, t: RecordType) -> &ObjectMap {
        &self.objects[&t]
    }

    /// The record types synced.
    pub fn enabled(&self) -> impl Iterator<Item = RecordType> + '_ {
        self.objects.values().filter(|o| o.enabled).map(|o| o.record)
    }

    /// The record type of a change's object: HubSpot's webhook name (`contact`, `deal`,
    /// `ticket`) or object type id; Salesforce's object API name (`entityName`).
    pub fn record_type_of(&self, object: &str) -> Option<RecordType> {
        if self.flavor == Flavor::Salesforce {
            return self.objects.values().find(|o| o.enabled && o.object == object).map(|o| o.record);
        }
        let type_id = match object {
            "contact" => "0-1",
            "company" => "0-2",
            "deal" => "0-3",
            "ticket" => "0-5",
            "listing" => "0-420",
            other => other,
        };
        self.objects.values().find(|o| o.enabled && o.object_type_id.as_deref() == Some(type_id)).map(|o| o.record)
    }

    /// Every HubSpot property to read for a record type, the id property first.
    pub fn read_properties(&self, t: RecordType) -> Vec<String> {
        std::iter::once(self.id_property.clone())
            .chain(self.object(t).properties.iter().map(|(_, p)| p.clone()))
            .collect()
    }

    /// The gateway field a HubSpot property holds.
    pub fn field_of(&self, t: RecordType, property: &str) -> Option<&str> {
        self.object(t).properties.iter().find(|(_, p)| p == property).map(|(f, _)| f.as_str())
    }

    /// The CRM's properties for gateway fields (`externalId` → the id property); HubSpot's values
    /// as strings, null as the empty string (its "no value"). Fields not mapped are left out.
    pub fn to_crm(&self, t: RecordType, fields: &Map<String, Value>) -> Map<String, Value> {
        let object = self.object(t);
        let mut out = Map::new();
        for (name, value) in fields {
            let property = if name == "externalId" {
                Some(self.id_property.as_str())
            } else {
                object.properties.iter().find(|(f, _)| f == name).map(|(_, p)| p.as_str())
            };
            if let Some(property) = property {
                let value = match self.flavor {
                    Flavor::HubSpot => Value::String(to_text(value)),
                    Flavor::Salesforce => value.clone(),
                };
                out.insert(property.to_owned(), value);
            }
        }
        out
    }

    /// A CRM object as the sync core reads a record: its gateway fields typed by their kind,
    /// `externalId` from the id property, stamped by `updatedAt` (no version: 0).
    pub fn from_crm(
        &self,
        t: RecordType,
        id: &str,
        properties: &Map<String, Value>,
        updated_at: Option<DateTime<Utc>>,
    ) -> CrmRecord {
        let object = self.object(t);
        let (mut fields, mut defaults) = (Map::new(), Map::new());
        for (name, property) in &object.properties {
            let kind = field_kind(t, name);
            let value = match properties.get(property) {
                None | Some(Value::Null) => Value::Null,
                Some(Value::String(text)) => from_text(kind, text),
                // A date as Change Data Capture may send it: days since 1970 (or milliseconds).
                Some(Value::Number(n)) if matches!(kind, Kind::Date | Kind::OptDate) => {
                    n.as_i64().and_then(date_of_epoch_number).map_or_else(|| Value::Number(n.clone()), Value::String)
                }
                // Salesforce's numbers and booleans are JSON already.
                Some(other) => other.clone(),
            };
            if value.is_null() && required(kind) {
                // No value in the CRM: unknown, not cleared. A record created here from this one
                // takes the mapping's default.
                if let Some(default) = object.defaults.get(name) {
                    defaults.insert(name.clone(), from_text(kind, default));
                }
                continue;
            }
            fields.insert(name.clone(), value);
        }
        let external_id =
            properties.get(&self.id_property).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(external_id) = &external_id {
            fields.insert("externalId".into(), Value::String(external_id.clone()));
        }
        fields.insert("id".into(), Value::String(id.to_owned()));
        CrmRecord {
            id: id.to_owned(),
            external_id,
            version: 0,
            updated_at,
            fields,
            changed_at: Default::default(),
            partial: true,
            defaults,
        }
    }

    /// One gateway field's value from a HubSpot property's text.
    pub fn value_of(&self, t: RecordType, field: &str, text: &str) -> Value {
        from_text(field_kind(t, field), text)
    }
}

/// `YYYY-MM-DD` of a day count since 1970, or of milliseconds since 1970 (a number too large to
/// be a day count).
fn date_of_epoch_number(n: i64) -> Option<String> {
    let date = if n.abs() < 1_000_000 {
        chrono::NaiveDate::from_num_days_from_ce_opt(i32::try_from(n).ok()? + 719_163)?
    } else {
        chrono::DateTime::from_timestamp_millis(n)?.date_naive()
    };
    Some(date.format("%Y-%m-%d").to_string())
}

/// Object type ids of HubSpot's standard objects, by their API names.
fn known_type_id(object: &str) -> Option<String> {
    let id = match object {
        "contacts" => "0-1",
        "companies" => "0-2",
        "deals" => "0-3",
        "tickets" => "0-5",
        "listings" => "0-420",
        o if o.starts_with("0-") || o.starts_with("2-") => o,
        _ => return None,
    };
    Some(id.to_owned())
}

/// A property or object name: letters, digits, `_` and `-`, as HubSpot's internal names are.
fn check_name(key: &str, name: &str) -> Result<(), MappingError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(MappingError(format!("{key}: {name:?} is not a HubSpot internal name (letters, digits, _ and -)")));
    }
    Ok(())
}

/// The kind of a gateway field (`firstName` and `lastName` are text).
fn field_kind(t: RecordType, name: &str) -> Kind {
    t.fields()
        .iter()
        .find(|f: &&Field| f.crm.contains(&name))
        .map_or(Kind::OptText, |f| if f.kind == Kind::Name { Kind::OptText } else { f.kind })
}

/// Whether a field of this kind must hold a value (an empty optional one is a cleared value).
fn required(kind: Kind) -> bool {
    matches!(kind, Kind::Text | Kind::Int | Kind::Money | Kind::Date | Kind::Bool | Kind::Enum(_) | Kind::Ref(_))
}

/// A JSON value as HubSpot's text.
fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// HubSpot's text as the JSON value of a field of kind `kind`. Text that does not parse stays
/// text, so that the sync core's checks refuse it with the field's name.
fn from_text(kind: Kind, text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    match kind {
        Kind::Int | Kind::Money => text
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)),
        Kind::Bool => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    }
    .unwrap_or_else(|| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_defaults_map_every_field_and_name_standard_objects() {
        let m = Mapping::default();
        assert_eq!(m.id_property, "crm_gateway_id");
        let contact = m.object(RecordType::Contact);
        assert_eq!((contact.object.as_str(), contact.object_type_id.as_deref()), ("contacts", Some("0-1")));
        assert_eq!(m.field_of(RecordType::Contact, "firstname"), Some("firstName"));
        assert_eq!(m.field_of(RecordType::Contact, "crm_gateway_membership_status"), Some("membershipStatus"));
        assert_eq!(m.field_of(RecordType::Property, "crm_gateway_owner_contact_id"), Some("ownerContactId"));
        assert_eq!(m.object(RecordType::Booking).object, "deals");
        assert_eq!(m.object(RecordType::Enquiry).object, "tickets");
        assert_eq!(m.record_type_of("deal"), Some(RecordType::Booking));
        assert_eq!(m.record_type_of("0-420"), Some(RecordType::Property));
        // A custom object's type id is the account's; memberships are off until asked for.
        assert_eq!(m.record_type_of("2-123"), None);
        assert!(!m.object(RecordType::Membership).enabled);
        for t in RecordType::ALL {
            assert_eq!(m.object(t).properties.len(), crm_fields(t).count(), "{t:?}");
        }
    }

    #[test]
    fn a_file_overrides_key_by_key() {
        let m = Mapping::parse(
            r#"
            id_property = "site_id"
            [membership]
            enabled = true
            object = "2-777"
            [booking.properties]
            status = "dealstage"
            [enquiry]
            enabled = false
            "#,
        )
        .unwrap();
        assert_eq!(m.id_property, "site_id");
        assert_eq!(m.object(RecordType::Membership).object_type_id.as_deref(), Some("2-777"));
        assert_eq!(m.record_type_of("2-777"), Some(RecordType::Membership));
        assert_eq!(m.field_of(RecordType::Booking, "dealstage"), Some("status"));
        // The rest keeps its defaults.
        assert_eq!(m.field_of(RecordType::Booking, "amount"), Some("totalPrice"));
        assert_eq!(m.enabled().collect::<Vec<_>>().len(), 4);
        assert_eq!(m.record_type_of("ticket"), None);
    }

    #[test]
    fn salesforces_defaults_name_its_objects_and_keep_values_typed() {
        let m = Mapping::defaults(Flavor::Salesforce);
        assert_eq!(m.id_property, "Crm_Gateway_Id__c");
        assert_eq!(m.object(RecordType::Contact).object, "Contact");
        assert_eq!(m.field_of(RecordType::Contact, "FirstName"), Some("firstName"));
        assert_eq!(m.field_of(RecordType::Contact, "Membership_Status__c"), Some("membershipStatus"));
        assert_eq!(m.field_of(RecordType::Property, "Price_Per_Night__c"), Some("pricePerNight"));
        assert_eq!(m.record_type_of("Booking__c"), Some(RecordType::Booking));
        assert_eq!(m.record_type_of("Membership__c"), Some(RecordType::Membership), "on by default");
        assert_eq!(m.record_type_of("Account"), None);
        let out = m.to_crm(
            RecordType::Membership,
            json!({"externalId": "31", "autoRenew": true, "endDate": null, "startDate": "2025-01-01"})
                .as_object()
                .unwrap(),
        );
        assert_eq!(
            Value::Object(out.clone()),
            json!({"Crm_Gateway_Id__c": "31", "Auto_Renew__c": true, "End_Date__c": null, "Start_Date__c": "2025-01-01"})
        );
        let mut dated = out.clone();
        dated.insert("Start_Date__c".into(), json!(20_000));
        let from_days = m.from_crm(RecordType::Membership, "a0B1", &dated, None);
        assert_eq!(from_days.fields["startDate"], "2024-10-04", "a day count, as Change Data Capture sends dates");
        dated.insert("Start_Date__c".into(), json!(1_764_000_000_000i64));
        assert_eq!(m.from_crm(RecordType::Membership, "a0B1", &dated, None).fields["startDate"], "2025-11-24");
        let back = m.from_crm(RecordType::Membership, "a0B1", &out, None);
        assert_eq!(back.fields["autoRenew"], json!(true));
        assert_eq!(back.fields["endDate"], Value::Null, "an optional field's null is a cleared value");
        assert!(!back.fields.contains_key("status"), "a required field without a value is unknown");
        assert_eq!(back.external_id.as_deref(), Some("31"));
    }

    #[test]
    fn a_bad_file_is_refused_with_the_key_at_fault() {
        let cases = [
            ("[contact.properties]\nnickname = \"x\"", "contact.properties.nickname: not a field"),
            ("[contact.properties]\nphone = \"email\"", "property email is mapped to two fields"),
            ("[contact]\nobjekt = \"contacts\"", "unknown field `objekt`"),
            ("[booking.properties]\nguests = \"no spaces\"", "booking.properties.guests"),
            ("[contact]\nenabled = false", "property is on but needs contact, which is off"),
            ("[contact.properties]\nemail = \"crm_gateway_id\"", "crm_gateway_id is the id property"),
        ];
        for (text, expected) in cases {
            let err = Mapping::parse(text).unwrap_err().0;
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn values_cross_as_text_and_come_back_typed() {
        let m = Mapping::default();
        let fields = json!({
            "externalId": "42", "ownerContactId": "901", "title": "Mill House", "bedrooms": 6,
            "pricePerNight": 120.5, "currency": null
        });
        let out = m.to_crm(RecordType::Property, fields.as_object().unwrap());
        assert_eq!(
            Value::Object(out.clone()),
            json!({
                "crm_gateway_id": "42", "crm_gateway_owner_contact_id": "901", "hs_name": "Mill House",
                "crm_gateway_bedrooms": "6", "crm_gateway_price_per_night": "120.5", "crm_gateway_currency": ""
            })
        );
        let back = m.from_crm(RecordType::Property, "7001", &out, None);
        assert_eq!(back.external_id.as_deref(), Some("42"));
        assert_eq!(back.fields["bedrooms"], json!(6));
        assert_eq!(back.fields["pricePerNight"], json!(120.5));
        assert_eq!(back.fields["currency"], Value::Null);
        assert_eq!(back.fields["ownerContactId"], json!("901"));
        // Not mapped to anything: left out.
        assert!(!m.to_crm(RecordType::Contact, json!({"nickname": "x"}).as_object().unwrap()).contains_key("x"));
        assert_eq!(m.value_of(RecordType::Membership, "autoRenew", "true"), json!(true));
        assert_eq!(m.value_of(RecordType::Membership, "autoRenew", "maybe"), json!("maybe"));
    }
}
