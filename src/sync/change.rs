//! The provider-neutral change: what the sync core applies, whichever CRM it came from.
//!
//! The inbox stores each change as this JSON. TreadSoft's webhook events are this shape as sent
//! (API.md §4.2), so they are stored untouched; other providers' events, and the records an import
//! lists, are turned into it: a record type and action (`contact.updated`), the CRM's id and the
//! gateway's (`externalId`), the changed fields (gateway field names, [`super::mapping`]) with one
//! stamp, a dedupe key (`id`) and what tells an echo of the gateway's own write (`changeSource`
//! with `requestId`, or `echoOf`).

use super::mapping::RecordType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One change of one CRM record. Unknown members are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The dedupe key: a change with an id seen before is a duplicate.
    pub id: String,
    /// `<record type>.<action>`: `created`, `updated`, `deleted`, `imported` (a listed record,
    /// applied as a creation is), `merged` (see `mergedIds`), or `ignored` (recorded, not
    /// applied: `reason` says why).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who made the change in the CRM: `api` (through the API), `import`, or the provider's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_source: Option<String>,
    /// TreadSoft's id of the API request that made an `api` change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The changed fields of an `updated` change (all of them for the other actions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_fields: Vec<String>,
    /// For a provider that does not tag its webhooks with the request that made them: the key of
    /// the value the gateway last sent for this (record, field), when the change's value equals
    /// it; such a change is the echo of the gateway's own write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_of: Option<String>,
    /// A `merged` change: the CRM records merged into `object` (which survives). Each is
    /// tombstoned; the local record linked to one of them is linked to the survivor instead, if
    /// no local record is linked to it already, and the others are deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_ids: Vec<String>,
    /// Whether a field absent from `object.data` is unknown (HubSpot holds no value for it)
    /// rather than missing: it is then neither compared nor written, and a record created from
    /// the change takes it from `defaults`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// What a record created from a partial change takes for its unknown fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub defaults: Map<String, Value>,
    /// The change holds too little to make a record (one reference, say): when no local record
    /// is linked to the CRM's record, it waits for one instead of creating it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_record: bool,
    /// Why an `ignored` change is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub object: ChangedObject,
}

/// The record a change is about, with its stamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangedObject {
    #[serde(rename = "type")]
    pub object_type: String,
    /// The CRM's id of the record.
    pub id: String,
    /// The gateway's id of the record, if the CRM holds it.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The CRM's own order of its changes of this record, if it has one (TreadSoft's `version`);
    /// 0 otherwise, and the changes are ordered by `updatedAt`.
    pub version: i64,
    /// The change's time in the CRM: its stamp.
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The record's fields (gateway field names); absent for a delete.
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

impl Change {
    /// A change recorded and answered, never applied (a subscription the gateway does not sync).
    pub fn ignored(id: String, what: &str, crm_id: String, at: DateTime<Utc>, reason: String) -> Self {
        Self { reason: Some(reason), ..Self::new(format!("{what}.ignored"), what, id, crm_id, at) }
    }

    /// A change of record type `t` with `action`, about the CRM's record `crm_id`.
    pub fn of(t: RecordType, action: &str, id: String, crm_id: String, at: DateTime<Utc>) -> Self {
        Self::new(format!("{}.{action}", t.as_str()), t.as_str(), id, crm_id, at)
    }

    fn new(event_type: String, object_type: &str, id: String, crm_id: String, at: DateTime<Utc>) -> Self {
        Self {
            id,
            event_type,
            change_source: None,
            request_id: None,
            changed_fields: Vec::new(),
            echo_of: None,
            merged_ids: Vec::new(),
            partial: false,
            defaults: Map::new(),
            needs_record: false,
            reason: None,
            object: ChangedObject {
                object_type: object_type.to_owned(),
                id: crm_id,
                external_id: None,
                version: 0,
                updated_at: at,
                created_at: None,
                deleted_at: None,
                data: None,
            },
        }
    }

    /// The record's id, fields and (for a CRM that leaves fields empty) what they default to.
    pub fn set_record(&mut self, record: &crate::crm::CrmRecord) {
        self.object.external_id = record.external_id.clone();
        self.object.data = Some(record.fields.clone());
        self.partial = record.partial;
        self.defaults = record.defaults.clone();
    }

    /// As the inbox stores it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| unreachable!("a change always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_treadsoft_event_reads_as_a_change_and_keeps_its_members() {
        let raw = serde_json::json!({
            "id": "evt_1", "type": "contact.updated", "occurredAt": "2026-12-01T10:00:00Z",
            "changeSource": "api", "requestId": "req_9", "changedFields": ["phone"],
            "object": {"type": "contact", "id": "crm_contact_1", "externalId": "user_1", "version": 4,
                "updatedAt": "2026-12-01T10:00:00.123Z", "data": {"phone": "+44 1"}}
        });
        let change: Change = serde_json::from_value(raw).unwrap();
        assert_eq!(change.event_type, "contact.updated");
        assert_eq!(change.request_id.as_deref(), Some("req_9"));
        assert_eq!(change.object.version, 4);
        assert_eq!(change.object.updated_at.timestamp_millis() % 1000, 123);
        let again: Change = serde_json::from_value(change.to_value()).unwrap();
        assert_eq!(again, change);
    }
}
