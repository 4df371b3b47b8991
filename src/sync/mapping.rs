//! Field mapping between TreadSoft records (API.md §2, camelCase) and the local tables
//! (snake_case columns), both ways, in one table per record type.
//!
//! Local values are JSON in the shape the sea-orm models serialize to: text, integers, money as
//! integer minor units, dates as `YYYY-MM-DD`, enums as their stored strings.

use serde_json::{Map, Number, Value, json};

/// The five kinds of record that cross the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    Contact,
    Property,
    Enquiry,
    Booking,
    Membership,
}

impl RecordType {
    pub const ALL: [RecordType; 5] = [Self::Contact, Self::Property, Self::Enquiry, Self::Booking, Self::Membership];

    /// TreadSoft's name, also `crm_sync_logs.entity_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contact => "contact",
            Self::Property => "property",
            Self::Enquiry => "enquiry",
            Self::Booking => "booking",
            Self::Membership => "membership",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The REST collection: `/v1/<collection>`.
    pub fn collection(self) -> &'static str {
        match self {
            Self::Contact => "contacts",
            Self::Property => "properties",
            Self::Enquiry => "enquiries",
            Self::Booking => "bookings",
            Self::Membership => "memberships",
        }
    }

    /// The local table.
    pub fn table(self) -> &'static str {
        match self {
            Self::Contact => "user",
            Self::Property => "properties",
            Self::Enquiry => "enquiries",
            Self::Booking => "bookings",
            Self::Membership => "owner_memberships",
        }
    }

    /// Whether the local primary key is text (`user.id`) rather than an integer.
    pub fn has_text_id(self) -> bool {
        self == Self::Contact
    }

    /// The synced fields of this record type.
    pub fn fields(self) -> &'static [Field] {
        match self {
            Self::Contact => CONTACT,
            Self::Property => PROPERTY,
            Self::Enquiry => ENQUIRY,
            Self::Booking => BOOKING,
            Self::Membership => MEMBERSHIP,
        }
    }

    /// The local fields that TreadSoft fields (names as in `changedFields`) touch.
    pub fn local_fields_for<'a>(self, crm_fields: impl IntoIterator<Item = &'a str>) -> Vec<&'static Field> {
        let crm_fields: Vec<&str> = crm_fields.into_iter().collect();
        self.fields().iter().filter(|f| f.crm.iter().any(|c| crm_fields.contains(c))).collect()
    }
}

/// How a value is represented on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Required text.
    Text,
    /// Nullable text.
    OptText,
    Int,
    /// A major-units JSON number with at most 2 decimals in TreadSoft; integer minor units locally.
    Money,
    Date,
    OptDate,
    Bool,
    /// One of a closed set of strings, the same on both sides.
    Enum(&'static [&'static str]),
    /// A required reference to another record: a TreadSoft id there, a local id here.
    Ref(RecordType),
    /// A nullable reference.
    OptRef(RecordType),
    /// `firstName` + `lastName` there, one `name` here.
    Name,
    /// Text with a default when TreadSoft leaves it out (currency: `GBP`).
    TextOr(&'static str),
}

/// One synced local column and the TreadSoft field(s) it corresponds to.
#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    pub local: &'static str,
    pub crm: &'static [&'static str],
    pub kind: Kind,
}

const fn f(local: &'static str, crm: &'static [&'static str], kind: Kind) -> Field {
    Field { local, crm, kind }
}

const CONTACT: &[Field] = &[
    f("name", &["firstName", "lastName"], Kind::Name),
    f("email", &["email"], Kind::Text),
    f("phone", &["phone"], Kind::OptText),
    f("company_name", &["companyName"], Kind::OptText),
    f("role", &["role"], Kind::Enum(&["owner", "guest"])),
    f("membership_status", &["membershipStatus"], Kind::Enum(&["active", "pending", "inactive"])),
];

const PROPERTY: &[Field] = &[
    f("owner_id", &["ownerContactId"], Kind::Ref(RecordType::Contact)),
    f("title", &["title"], Kind::Text),
    f("location", &["location"], Kind::Text),
    f("bedrooms", &["bedrooms"], Kind::Int),
    f("price_per_night", &["pricePerNight"], Kind::Money),
    f("currency", &["currency"], Kind::TextOr("GBP")),
    f("status", &["status"], Kind::Enum(&["draft", "active", "inactive"])),
];

const ENQUIRY: &[Field] = &[
    f("user_id", &["contactId"], Kind::OptRef(RecordType::Contact)),
    f("property_id", &["propertyId"], Kind::OptRef(RecordType::Property)),
    f("guest_name", &["guestName"], Kind::Text),
    f("guest_email", &["guestEmail"], Kind::Text),
    f("guest_phone", &["guestPhone"], Kind::OptText),
    f("subject", &["subject"], Kind::Text),
    f("message", &["message"], Kind::Text),
    f("status", &["status"], Kind::Enum(&["new", "open", "responded", "closed"])),
    f("source", &["source"], Kind::Enum(&["website", "phone", "email", "partner"])),
];

const BOOKING: &[Field] = &[
    f("property_id", &["propertyId"], Kind::Ref(RecordType::Property)),
    f("user_id", &["contactId"], Kind::OptRef(RecordType::Contact)),
    f("guest_name", &["guestName"], Kind::Text),
    f("guest_email", &["guestEmail"], Kind::Text),
    f("check_in", &["checkIn"], Kind::Date),
    f("check_out", &["checkOut"], Kind::Date),
    f("guests", &["guests"], Kind::Int),
    f("total_price", &["totalPrice"], Kind::Money),
    f("currency", &["currency"], Kind::TextOr("GBP")),
    f("status", &["status"], Kind::Enum(&["pending", "confirmed", "cancelled", "completed"])),
    f("payment_status", &["paymentStatus"], Kind::Enum(&["pending", "deposit_paid", "paid", "refunded", "failed"])),
];

const MEMBERSHIP: &[Field] = &[
    f("user_id", &["contactId"], Kind::Ref(RecordType::Contact)),
    f("membership_tier", &["tier"], Kind::Enum(&["basic", "standard", "premium"])),
    f("status", &["status"], Kind::Enum(&["pending", "active", "inactive", "cancelled"])),
    f("start_date", &["startDate"], Kind::Date),
    f("end_date", &["endDate"], Kind::OptDate),
    f("auto_renew", &["autoRenew"], Kind::Bool),
    f("payment_status", &["paymentStatus"], Kind::Enum(&["pending", "paid", "failed", "refunded"])),
];

/// A TreadSoft value turned local, or a reference still to be resolved to a local id.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Value(Value),
    /// The TreadSoft id of the referenced record (`None` for a null optional reference).
    Ref {
        target: RecordType,
        crm_id: Option<String>,
        required: bool,
    },
}

/// Why a TreadSoft value cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MapError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> MapError {
    MapError { field: field.to_owned(), message: message.into() }
}

/// Converts `field` of a TreadSoft record's `data` to its local value.
pub fn crm_to_local(field: &Field, data: &Map<String, Value>) -> Result<Mapped, MapError> {
    let name = field.crm[0];
    let raw = data.get(name).unwrap_or(&Value::Null);
    let text = |required: bool| -> Result<Value, MapError> {
        match raw {
            Value::String(s) if s.contains('\0') => Err(err(name, NUL_MESSAGE)),
            Value::String(s) if !(required && s.trim().is_empty()) => Ok(Value::String(s.clone())),
            Value::Null if !required => Ok(Value::Null),
            Value::Null | Value::String(_) => Err(err(name, "is required")),
            other => Err(err(name, format!("expected text, got {other}"))),
        }
    };
    let value = match field.kind {
        Kind::Text => text(true)?,
        Kind::OptText => text(false)?,
        Kind::TextOr(default) => match raw {
            Value::Null => Value::String(default.to_owned()),
            _ => text(true)?,
        },
        Kind::Int => match raw.as_i64() {
            Some(n) if n >= 0 && i32::try_from(n).is_ok() => json!(n),
            _ => return Err(err(name, format!("expected a whole number, not negative, got {raw}"))),
        },
        Kind::Money => json!(money_to_minor(raw).filter(|minor| *minor >= 0).ok_or_else(|| err(
            name,
            format!("expected an amount, not negative, with at most 2 decimals, got {raw}")
        ))?),
        Kind::Date | Kind::OptDate => match raw {
            Value::Null if field.kind == Kind::OptDate => Value::Null,
            Value::String(s) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => raw.clone(),
            _ => return Err(err(name, format!("expected a date YYYY-MM-DD, got {raw}"))),
        },
        Kind::Bool => match raw {
            Value::Bool(_) => raw.clone(),
            _ => return Err(err(name, format!("expected true or false, got {raw}"))),
        },
        Kind::Enum(allowed) => match raw.as_str() {
            Some(s) if allowed.contains(&s) => raw.clone(),
            _ => return Err(err(name, format!("expected one of {}, got {raw}", allowed.join(", ")))),
        },
        Kind::Ref(target) | Kind::OptRef(target) => {
            let required = matches!(field.kind, Kind::Ref(_));
            return match raw {
                Value::String(id) if !id.is_empty() => Ok(Mapped::Ref { target, crm_id: Some(id.clone()), required }),
                Value::Null if !required => Ok(Mapped::Ref { target, crm_id: None, required }),
                _ => Err(err(name, "is required")),
            };
        }
        Kind::Name => {
            let part = |key: &str| data.get(key).and_then(Value::as_str).map(str::trim).unwrap_or_default();
            let joined =
                [part("firstName"), part("lastName")].into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>();
            if joined.is_empty() {
                return Err(err("firstName", "a contact needs a first or last name"));
            }
            Value::String(joined.join(" "))
        }
    };
    Ok(Mapped::Value(value))
}

/// Why a text with U+0000 is refused: PostgreSQL cannot store it in text (SQLSTATE 22021).
pub const NUL_MESSAGE: &str = "contains a NUL character (U+0000), which cannot be stored";

/// Where the first NUL character in `value` is (in a string or an object key), as a path such as
/// `data.title` or `events[2].id`; `None` when there is none.
pub fn nul_at(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(members) => members.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\0"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then_some(path)
}

/// Checks a local value the site sends for `field`: counts and amounts are not negative.
pub fn check_local(field: &Field, value: &Value) -> Result<(), String> {
    match field.kind {
        Kind::Int | Kind::Money if value.as_i64().is_some_and(|n| n < 0) => Err("must not be negative".into()),
        _ => Ok(()),
    }
}

/// TreadSoft fields for a local `field` value. References need the other record's TreadSoft id,
/// which the caller passes as `ref_crm_id` (`None`: not linked yet, sent as null).
pub fn local_to_crm(field: &Field, value: &Value, ref_crm_id: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    let name = field.crm[0];
    match field.kind {
        Kind::Name => {
            let (first, last) = split_name(value.as_str().unwrap_or_default());
            out.insert("firstName".into(), Value::String(first));
            out.insert("lastName".into(), Value::String(last));
        }
        Kind::Money => {
            out.insert(name.into(), value.as_i64().map_or(Value::Null, minor_to_money));
        }
        Kind::Ref(_) | Kind::OptRef(_) => {
            out.insert(name.into(), ref_crm_id.map_or(Value::Null, |id| Value::String(id.to_owned())));
        }
        _ => {
            out.insert(name.into(), value.clone());
        }
    }
    out
}

/// "John Smith" → ("John", "Smith"); "Cher" → ("Cher", ""); "Mary Anne van Dyke" → ("Mary", "Anne van Dyke").
pub fn split_name(name: &str) -> (String, String) {
    let mut words = name.split_whitespace();
    let first = words.next().unwrap_or_default().to_owned();
    (first, words.collect::<Vec<_>>().join(" "))
}

/// Major units (a JSON number, at most 2 decimals) to integer minor units, exactly.
pub fn money_to_minor(value: &Value) -> Option<i64> {
    let number = value.as_number()?;
    if let Some(whole) = number.as_i64() {
        return whole.checked_mul(100);
    }
    let scaled = number.as_f64()? * 100.0;
    let rounded = scaled.round();
    ((scaled - rounded).abs() < 1e-6 && rounded.abs() < 9.0e15).then_some(rounded as i64)
}

/// Integer minor units to a JSON number in major units: 145050 → 1450.5, 150000 → 1500.
pub fn minor_to_money(minor: i64) -> Value {
    if minor % 100 == 0 {
        Value::Number(Number::from(minor / 100))
    } else {
        Number::from_f64(minor as f64 / 100.0).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn field(t: RecordType, local: &str) -> &'static Field {
        t.fields().iter().find(|f| f.local == local).unwrap()
    }

    #[test]
    fn names_join_and_split_for_one_several_and_non_ascii_words() {
        for (first, last, local) in [
            ("John", "Smith", "John Smith"),
            ("Cher", "", "Cher"),
            ("Mary", "Anne van Dyke", "Mary Anne van Dyke"),
            ("Zoë", "Brontë-Ångström", "Zoë Brontë-Ångström"),
            ("", "Madonna", "Madonna"),
        ] {
            let d = data(json!({ "firstName": first, "lastName": last }));
            let mapped = crm_to_local(field(RecordType::Contact, "name"), &d).unwrap();
            assert_eq!(mapped, Mapped::Value(json!(local)));
            let back = local_to_crm(field(RecordType::Contact, "name"), &json!(local), None);
            let rejoined = crm_to_local(field(RecordType::Contact, "name"), &back).unwrap();
            assert_eq!(rejoined, Mapped::Value(json!(local)), "round trip of {local}");
        }
    }

    #[test]
    fn nul_characters_are_found_with_their_path() {
        assert_eq!(nul_at(&json!({"data": {"title": "ok"}, "list": ["a", 1]})), None);
        assert_eq!(nul_at(&json!({"data": {"title": "Hall\u{0}"}})).as_deref(), Some("data.title"));
        assert_eq!(nul_at(&json!({"events": [{"id": "a"}, {"id": "\u{0}"}]})).as_deref(), Some("events[1].id"));
        assert!(nul_at(&json!({"ke\u{0}y": 1})).is_some(), "a key counts too");
        let d = data(json!({ "title": "Hall\u{0}" }));
        let refused = crm_to_local(field(RecordType::Property, "title"), &d).unwrap_err();
        assert_eq!(refused.message, NUL_MESSAGE);
    }

    #[test]
    fn negative_counts_and_amounts_are_refused_both_ways() {
        let d = data(json!({ "bedrooms": -1, "pricePerNight": -10.5 }));
        assert!(crm_to_local(field(RecordType::Property, "bedrooms"), &d).is_err());
        assert!(crm_to_local(field(RecordType::Property, "price_per_night"), &d).is_err());
        assert!(check_local(field(RecordType::Booking, "guests"), &json!(-2)).is_err());
        assert!(check_local(field(RecordType::Booking, "total_price"), &json!(-1)).is_err());
        assert!(check_local(field(RecordType::Booking, "total_price"), &json!(0)).is_ok());
    }

    #[test]
    fn money_is_exact_both_ways() {
        for (major, minor) in
            [(json!(1450.5), 145_050), (json!(1500), 150_000), (json!(0.1), 10), (json!(1450.55), 145_055)]
        {
            assert_eq!(money_to_minor(&major), Some(minor), "{major}");
            assert_eq!(minor_to_money(minor), major);
        }
        assert_eq!(money_to_minor(&json!(1.005)), None, "three decimals are refused");
        assert_eq!(money_to_minor(&json!("12")), None);
    }

    #[test]
    fn property_fields_map_to_columns() {
        let d = data(json!({
            "title": "Château Brontë — Haworth 🏡", "location": "Haworth", "bedrooms": 12,
            "pricePerNight": 1450.5, "status": "active", "ownerContactId": "crm_contact_1"
        }));
        let mapped: Vec<_> =
            RecordType::Property.fields().iter().map(|f| (f.local, crm_to_local(f, &d).unwrap())).collect();
        assert!(mapped.contains(&("price_per_night", Mapped::Value(json!(145_050)))));
        assert!(mapped.contains(&("currency", Mapped::Value(json!("GBP")))), "currency defaults to GBP");
        assert!(mapped.contains(&(
            "owner_id",
            Mapped::Ref { target: RecordType::Contact, crm_id: Some("crm_contact_1".into()), required: true }
        )));
    }

    #[test]
    fn dates_and_booleans_pass_through_and_bad_values_name_the_field() {
        let d = data(json!({ "checkIn": "2025-07-01", "autoRenew": true, "checkOut": "01/07/2025" }));
        assert_eq!(
            crm_to_local(field(RecordType::Booking, "check_in"), &d).unwrap(),
            Mapped::Value(json!("2025-07-01"))
        );
        assert_eq!(crm_to_local(field(RecordType::Membership, "auto_renew"), &d).unwrap(), Mapped::Value(json!(true)));
        let e = crm_to_local(field(RecordType::Booking, "check_out"), &d).unwrap_err();
        assert_eq!(e.field, "checkOut");
        let e = crm_to_local(field(RecordType::Contact, "role"), &data(json!({"role": "admin"}))).unwrap_err();
        assert_eq!(e.field, "role");
    }

    #[test]
    fn local_values_go_back_to_treadsoft_names() {
        let price = local_to_crm(field(RecordType::Property, "price_per_night"), &json!(150_000), None);
        assert_eq!(Value::Object(price), json!({ "pricePerNight": 1500 }));
        let owner = local_to_crm(field(RecordType::Property, "owner_id"), &json!("user_1"), Some("crm_contact_1"));
        assert_eq!(Value::Object(owner), json!({ "ownerContactId": "crm_contact_1" }));
        let status = local_to_crm(field(RecordType::Booking, "payment_status"), &json!("deposit_paid"), None);
        assert_eq!(Value::Object(status), json!({ "paymentStatus": "deposit_paid" }));
    }

    #[test]
    fn changed_fields_select_local_columns() {
        let cols: Vec<_> =
            RecordType::Contact.local_fields_for(["lastName", "phone", "externalId"]).iter().map(|f| f.local).collect();
        assert_eq!(cols, ["name", "phone"]);
    }
}
