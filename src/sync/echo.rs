//! Echoes from a CRM whose webhooks do not say which request made a change (HubSpot): the gateway
//! keeps, per record and field, a hash of the value it last sent (a `crm_requests` row keyed
//! `sent:<type>:<crm id>:<field>`, replaced by each later send), and a change carries
//! `echoOf: "<that key>#<hash of its value>"`. A change whose value is the one last sent is the
//! echo of the gateway's own write, and is not applied; a later change back to an earlier value
//! is not mistaken for one, as only the last value sent is kept.

use super::mapping::RecordType;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The key of the last value sent for one field of one CRM record.
pub fn sent_key(t: RecordType, crm_id: &str, field: &str) -> String {
    format!("sent:{}:{crm_id}:{field}", t.as_str())
}

/// A value's hash, alike however the CRM wrote the number (`6`, `6.0`) or the text.
pub fn value_hash(value: &Value) -> String {
    let text = match value {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

/// A change's `echoOf`: the field's key and the hash of the value the change sets.
pub fn echo_of(t: RecordType, crm_id: &str, field: &str, value: &Value) -> String {
    format!("{}#{}", sent_key(t, crm_id, field), value_hash(value))
}

/// `echoOf` split into the key and the hash.
pub fn split(echo_of: &str) -> Option<(&str, &str)> {
    echo_of.rsplit_once('#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_hash_alike_however_written_and_text_differs_from_numbers() {
        assert_eq!(value_hash(&json!(6)), value_hash(&json!(6.0)));
        assert_eq!(value_hash(&json!(120.5)), value_hash(&json!(120.50)));
        assert_ne!(value_hash(&json!(6)), value_hash(&json!("6")));
        assert_ne!(value_hash(&json!("Ann")), value_hash(&json!("Anne")));
        let key = echo_of(RecordType::Contact, "901", "phone", &json!("+44 1"));
        let (sent, hash) = split(&key).unwrap();
        assert_eq!(sent, "sent:contact:901:phone");
        assert_eq!(hash, value_hash(&json!("+44 1")));
    }
}
