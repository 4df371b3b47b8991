//! The mock CRM (`CRM_ENABLED=false`): logs every operation and answers with generated ids. It
//! never touches the network and keeps nothing.

use super::{BatchItem, CrmClient, CrmError, CrmRecord, Page, Written};
use crate::sync::mapping::RecordType;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

#[derive(Debug, Default)]
pub struct MockCrm;

fn record(t: RecordType, id: String, fields: &Map<String, Value>) -> CrmRecord {
    CrmRecord {
        id,
        external_id: fields.get("externalId").and_then(Value::as_str).map(str::to_owned),
        version: 1,
        updated_at: Some(Utc::now()),
        fields: fields.clone(),
        changed_at: Default::default(),
        partial: false,
        defaults: Map::new(),
    }
    .with_type(t)
}

impl CrmRecord {
    fn with_type(mut self, t: RecordType) -> Self {
        self.fields.insert("type".into(), Value::String(t.as_str().into()));
        self
    }
}

fn new_id(t: RecordType) -> String {
    format!("crm_{}_mock_{}", t.as_str(), uuid::Uuid::new_v4().simple())
}

fn request_id() -> Option<String> {
    Some(format!("req_mock_{}", uuid::Uuid::new_v4().simple()))
}

#[async_trait::async_trait]
impl CrmClient for MockCrm {
    async fn create(
        &self,
        t: RecordType,
        fields: &Map<String, Value>,
        idempotency_key: &str,
    ) -> Result<Written, CrmError> {
        let id = new_id(t);
        tracing::info!(crm = "mock", record = t.as_str(), %id, idempotency_key, "create");
        Ok(Written { record: record(t, id, fields), request_id: request_id() })
    }

    async fn update(&self, t: RecordType, id: &str, fields: &Map<String, Value>) -> Result<Written, CrmError> {
        tracing::info!(crm = "mock", record = t.as_str(), id, fields = fields.len(), "update");
        Ok(Written { record: record(t, id.to_owned(), fields), request_id: request_id() })
    }

    async fn ping(&self) -> Result<(), CrmError> {
        Ok(())
    }

    async fn delete(&self, t: RecordType, id: &str) -> Result<Option<String>, CrmError> {
        tracing::info!(crm = "mock", record = t.as_str(), id, "delete");
        Ok(request_id())
    }

    async fn get(&self, t: RecordType, id: &str) -> Result<CrmRecord, CrmError> {
        tracing::info!(crm = "mock", record = t.as_str(), id, "get");
        Err(CrmError::NotFound { message: "the mock CRM keeps no records".into() })
    }

    fn keeps_records(&self) -> bool {
        false
    }

    /// The mock keeps no records: a receiver falls back to what the events themselves carry.
    async fn read_many(&self, _: RecordType, _: &[String]) -> Result<Vec<CrmRecord>, CrmError> {
        Ok(Vec::new())
    }

    async fn list_since(&self, t: RecordType, since: DateTime<Utc>, _: Option<&str>, _: u32) -> Result<Page, CrmError> {
        tracing::info!(crm = "mock", record = t.as_str(), %since, "list");
        Ok(Page { data: Vec::new(), next_cursor: None })
    }

    async fn batch_upsert(
        &self,
        t: RecordType,
        records: &[Map<String, Value>],
        idempotency_key: &str,
    ) -> Result<(Vec<BatchItem>, Option<String>), CrmError> {
        tracing::info!(crm = "mock", record = t.as_str(), count = records.len(), idempotency_key, "batch upsert");
        let items = records
            .iter()
            .map(|r| BatchItem {
                external_id: r.get("externalId").and_then(Value::as_str).unwrap_or_default().to_owned(),
                id: Some(new_id(t)),
                status: "created".into(),
                error: None,
            })
            .collect();
        Ok((items, request_id()))
    }
}
