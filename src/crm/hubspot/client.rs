//! The HubSpot CRM v3 objects client (`hubspot.md` §3): a private app's token as Bearer, every
//! write an upsert by the unique id property (HubSpot has no `Idempotency-Key`: repeating an upsert
//! is what makes a retry safe), batches of at most `batch_size`, 207 partial answers per record,
//! references written as v4 default associations as well as held in a property, and HubSpot's rate
//! limit kept (the client-side limiter, `Retry-After`, and a pause when
//! `X-HubSpot-RateLimit-Remaining` reaches 0).

use super::errors::{self, RateLimit as LimitHeaders};
use super::mapping::Mapping;
use crate::crm::rate_limit::RateLimit;
use crate::crm::{BatchItem, CrmClient, CrmError, CrmRecord, ErrorBody, Page, Written};
use crate::ops::metrics::Metrics;
use crate::sync::mapping::{Kind, RecordType};
use chrono::{DateTime, Utc};
use governor::DefaultDirectRateLimiter;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Where and how to reach a HubSpot account.
#[derive(Debug, Clone)]
pub struct HubSpotConfig {
    pub api_url: Url,
    /// A private app's access token.
    pub access_token: SecretString,
    /// Most records in one batch call.
    pub batch_size: usize,
    pub mapping: Arc<Mapping>,
}

impl PartialEq for HubSpotConfig {
    fn eq(&self, other: &Self) -> bool {
        self.api_url == other.api_url
            && self.access_token.expose_secret() == other.access_token.expose_secret()
            && self.batch_size == other.batch_size
            && self.mapping == other.mapping
    }
}
impl Eq for HubSpotConfig {}

/// Most results one search reads, however it is paged.
const SEARCH_CAP: u64 = 10_000;

#[derive(Debug)]
pub struct HubSpotClient {
    http: reqwest::Client,
    config: HubSpotConfig,
    limiter: Arc<DefaultDirectRateLimiter>,
    metrics: Option<Arc<Metrics>>,
    /// No request before this instant: HubSpot said its window's requests are used up.
    paused: crate::crm::Pause,
}

/// An object as HubSpot answers it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub id: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Each property's changes, newest first, when asked for.
    #[serde(default)]
    pub properties_with_history: BTreeMap<String, Vec<HistoryEntry>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub archived: bool,
}

/// One change of one property.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    #[serde(default)]
    pub value: Option<String>,
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub source_type: Option<String>,
}

impl Object {
    /// When `property` took its current value: its newest history entry.
    pub fn changed_at(&self, property: &str) -> Option<DateTime<Utc>> {
        self.properties_with_history.get(property).and_then(|h| h.iter().map(|e| e.timestamp).max())
    }
}

struct Answer {
    status: u16,
    body: Value,
}

impl HubSpotClient {
    pub fn new(config: HubSpotConfig, timeout: Duration, rate_limit: RateLimit) -> anyhow::Result<Self> {
        let http = crate::crm::http_client(timeout)?;
        Ok(Self {
            http,
            config,
            limiter: Arc::new(rate_limit.limiter()),
            metrics: None,
            paused: crate::crm::Pause::default(),
        })
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn mapping(&self) -> &Mapping {
        &self.config.mapping
    }

    fn objects(&self, t: RecordType) -> String {
        format!("/crm/v3/objects/{}", self.config.mapping.object(t).object)
    }

    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CrmError> {
        self.paused.wait().await;
        crate::crm::paced(&self.limiter, self.metrics.as_deref(), operation, |a: &Answer| a.status, async {
            self.send(method, path, body).await
        })
        .await
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, CrmError> {
        let mut url = self.config.api_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        let (path_only, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
        url.set_path(&format!("{base}{path_only}"));
        url.set_query(query);
        let mut request = self.http.request(method.clone(), url).bearer_auth(self.config.access_token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| crate::crm::unanswered("HubSpot", &method, path_only, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let limit = LimitHeaders::read(header);
        if let Some(wait) = pause_after(&limit) {
            self.paused.set(wait);
        }
        let bytes = response.bytes().await.map_err(|e| CrmError::Transient {
            status: Some(status),
            message: format!("{method} {path_only}: the answer broke off: {e}"),
            retry_after: None,
        })?;
        if (200..300).contains(&status) {
            let body =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
            return Ok(Answer { status, body });
        }
        Err(errors::classify(status, &bytes, header("retry-after"), limit))
    }

    fn unreadable(what: &str, e: impl std::fmt::Display) -> CrmError {
        CrmError::Transient {
            status: None,
            message: format!("HubSpot answered {what} this client cannot read: {e}"),
            retry_after: None,
        }
    }

    fn record(&self, t: RecordType, object: &Object) -> CrmRecord {
        let mapping = &self.config.mapping;
        let mut record = mapping.from_crm(t, &object.id, &object.properties, object.updated_at);
        for (field, property) in &mapping.object(t).properties {
            if let Some(at) = object.changed_at(property) {
                record.changed_at.insert(field.clone(), at);
            }
        }
        record
    }

    /// Reads objects by HubSpot id, each with its properties' history (one call per
    /// `batch_size` ids); ids HubSpot does not have (or has archived) are left out.
    pub async fn batch_read(&self, t: RecordType, ids: &[String]) -> Result<Vec<Object>, CrmError> {
        let properties = self.config.mapping.read_properties(t);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.config.batch_size.max(1)) {
            let body = json!({
                "properties": properties,
                "propertiesWithHistory": properties,
                "inputs": chunk.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
            });
            let answer =
                self.call("batch_read", Method::POST, &format!("{}/batch/read", self.objects(t)), Some(&body)).await?;
            #[derive(Deserialize)]
            struct Results {
                #[serde(default)]
                results: Vec<Object>,
            }
            let results: Results =
                serde_json::from_value(answer.body).map_err(|e| Self::unreadable("a batch read", e))?;
            out.extend(results.results.into_iter().filter(|o| !o.archived));
        }
        Ok(out)
    }

    /// Every property of an object type (the properties API).
    pub async fn property_list(&self, object: &str) -> Result<Vec<Value>, CrmError> {
        let answer = self.call("property_list", Method::GET, &format!("/crm/v3/properties/{object}"), None).await?;
        Ok(answer.body["results"].as_array().cloned().unwrap_or_default())
    }

    /// Creates a property of an object type.
    pub async fn create_property(&self, object: &str, body: &Value) -> Result<(), CrmError> {
        self.call("create_property", Method::POST, &format!("/crm/v3/properties/{object}"), Some(body)).await.map(drop)
    }

    /// Creates a property group, unless it exists (HubSpot answers 409 for one that does).
    pub async fn create_property_group(&self, object: &str, name: &str, label: &str) -> Result<(), CrmError> {
        let body = json!({ "name": name, "label": label });
        let path = format!("/crm/v3/properties/{object}/groups");
        match self.call("create_property_group", Method::POST, &path, Some(&body)).await {
            Ok(_) | Err(CrmError::Permanent { status: 409, .. } | CrmError::Duplicate { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The HubSpot properties of a write: the mapped fields, and on a create the mapping's
    /// `on_create` properties.
    fn properties(&self, t: RecordType, fields: &Map<String, Value>, creating: bool) -> Map<String, Value> {
        let mut properties = Map::new();
        if creating {
            for (k, v) in &self.config.mapping.object(t).on_create {
                properties.insert(k.clone(), Value::String(v.clone()));
            }
        }
        properties.extend(self.config.mapping.to_crm(t, fields));
        properties
    }

    /// Writes each reference in `fields` as HubSpot's default association too (safe to repeat).
    /// The reference itself is in its property, written with the record: an association that
    /// fails is logged and made again with the record's next write, and never fails the write.
    async fn associate(&self, t: RecordType, id: &str, fields: &Map<String, Value>) {
        for field in t.fields() {
            let (Kind::Ref(target) | Kind::OptRef(target)) = field.kind else { continue };
            let Some(to) = fields.get(field.crm[0]).and_then(Value::as_str).filter(|s| !s.is_empty()) else { continue };
            let mapping = &self.config.mapping;
            if !mapping.object(target).enabled {
                continue;
            }
            let path = format!(
                "/crm/v4/objects/{}/{id}/associations/default/{}/{to}",
                mapping.object(t).object,
                mapping.object(target).object
            );
            if let Err(e) = self.call("associate", Method::PUT, &path, None).await {
                tracing::warn!(record = t.as_str(), id, field = field.crm[0], error = %e, "an association was not made");
            }
        }
    }

    /// Upserts up to `batch_size` records by the id property.
    async fn upsert_chunk(&self, t: RecordType, records: &[Map<String, Value>]) -> Result<Vec<BatchItem>, CrmError> {
        let id_property = self.config.mapping.id_property.clone();
        let inputs: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({
                    "idProperty": id_property,
                    "id": r.get("externalId").and_then(Value::as_str).unwrap_or_default(),
                    "properties": self.properties(t, r, true),
                })
            })
            .collect();
        let answer = self
            .call(
                "batch_upsert",
                Method::POST,
                &format!("{}/batch/upsert", self.objects(t)),
                Some(&json!({ "inputs": inputs })),
            )
            .await?;
        #[derive(Deserialize)]
        struct Upserted {
            #[serde(default)]
            results: Vec<UpsertResult>,
            #[serde(default)]
            errors: Vec<Value>,
        }
        #[derive(Deserialize)]
        struct UpsertResult {
            #[serde(flatten)]
            object: Object,
            #[serde(default)]
            new: bool,
        }
        let upserted: Upserted =
            serde_json::from_value(answer.body).map_err(|e| Self::unreadable("a batch upsert", e))?;
        let mut items = Vec::with_capacity(records.len());
        let mut unanswered = Vec::new();
        for record in records {
            let external_id = record.get("externalId").and_then(Value::as_str).unwrap_or_default().to_owned();
            let result = upserted
                .results
                .iter()
                .find(|r| r.object.properties.get(&id_property).and_then(Value::as_str) == Some(external_id.as_str()))
                // A result that does not show the id property is only surely this record's when
                // the call had no other (HubSpot does not promise the inputs' order).
                .or_else(|| (records.len() == 1 && upserted.results.len() == 1).then(|| &upserted.results[0]));
            match result {
                Some(result) => {
                    self.associate(t, &result.object.id, record).await;
                    items.push(BatchItem {
                        external_id,
                        id: Some(result.object.id.clone()),
                        status: if result.new { "created" } else { "updated" }.into(),
                        error: None,
                    });
                }
                None => {
                    unanswered.push(items.len());
                    items.push(BatchItem { external_id, id: None, status: "error".into(), error: None });
                }
            }
        }
        let alone = unanswered.len() == 1 && upserted.errors.len() == 1;
        for i in unanswered {
            let item = &mut items[i];
            item.error = Some(item_error(&upserted.errors, &item.external_id, alone));
        }
        Ok(items)
    }
}

/// How long to send nothing after an answer: the rest of the window (at most a minute) once
/// HubSpot says no request of it remains; `None` while some do.
fn pause_after(limit: &LimitHeaders) -> Option<Duration> {
    (limit.remaining == Some(0)).then(|| limit.interval.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(60)))
}

/// The cursor of a search's next page: HubSpot's `after` within the search, or, when the next page
/// would pass the 10,000 results a search reads, a new search from the last time read (its records
/// come again, and are recognised as already applied). A whole cap of records changed in one
/// millisecond would not move on: then the new search starts just past it.
fn next_cursor(from_ms: i64, after: &str, last_ms: Option<i64>, limit: u32) -> String {
    match (after.parse::<u64>(), last_ms) {
        (Ok(n), Some(last)) if n + u64::from(limit) > SEARCH_CAP => {
            format!("{}:0", if last > from_ms { last } else { last + 1 })
        }
        _ => format!("{from_ms}:{after}"),
    }
}

/// Whether a refusal of a batch may be one of its records' fault (so the records are tried one by
/// one): a 400, 409 or 422. An authorization, a missing object or a transient failure is every
/// record's.
fn one_records_fault(e: &CrmError) -> bool {
    matches!(e, CrmError::Duplicate { .. } | CrmError::Permanent { status: 400 | 409 | 422, .. })
}

/// A whole batch refused (a 400 for one bad record, a 409 for a duplicate email): the refusal,
/// as the answer of the one record it was about.
fn refused_item(record: &Map<String, Value>, e: &CrmError) -> BatchItem {
    let external_id = record.get("externalId").and_then(Value::as_str).unwrap_or_default().to_owned();
    let error = match e {
        CrmError::Duplicate { existing_id } => ErrorBody {
            code: "duplicate".into(),
            message: e.to_string(),
            existing_id: Some(existing_id.clone()),
            status: Some(409),
        },
        CrmError::Permanent { status, code, message } => {
            ErrorBody { code: code.clone(), message: message.clone(), existing_id: None, status: Some(*status) }
        }
        CrmError::NotFound { message } => {
            ErrorBody { code: "not_found".into(), message: message.clone(), existing_id: None, status: Some(404) }
        }
        // Not sent, or not answered: sent again later (an upsert by its id is safe to repeat).
        other => ErrorBody {
            code: "not_sent".into(),
            message: other.to_string(),
            existing_id: None,
            status: Some(other.status().filter(|s| *s == 429 || *s >= 500).unwrap_or(503)),
        },
    };
    BatchItem { external_id, id: None, status: "error".into(), error: Some(error) }
}

/// The error of one input of a 207: the error naming its id, or the only error when this is the
/// only input left unanswered. Otherwise the record's fate is unknown: it is sent again (an upsert
/// by its id is safe to repeat). A 429 or 5xx status makes an error worth retrying.
fn item_error(errors: &[Value], external_id: &str, alone: bool) -> ErrorBody {
    let names = |e: &&Value| e.to_string().contains(&format!("\"{external_id}\""));
    let Some(error) = errors.iter().find(names).or(errors.first().filter(|_| alone)) else {
        return ErrorBody {
            code: "unanswered".into(),
            message: "HubSpot's answer did not say what became of this record".into(),
            existing_id: None,
            status: Some(503),
        };
    };
    let body = errors::ErrorBody::read(error.to_string().as_bytes());
    let status = error.get("status").and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|s| s.parse().ok())));
    ErrorBody {
        code: body.category.clone().or(body.error.clone()).unwrap_or_else(|| "error".into()),
        message: body.message.clone().unwrap_or_default(),
        existing_id: body.existing_id(),
        status: status.and_then(|s| u16::try_from(s).ok()),
    }
}

#[async_trait::async_trait]
impl CrmClient for HubSpotClient {
    /// A create is an upsert by the id property: a retry after a lost answer finds the record it
    /// created instead of making a second.
    async fn create(
        &self,
        t: RecordType,
        fields: &Map<String, Value>,
        _idempotency_key: &str,
    ) -> Result<Written, CrmError> {
        let items = self.upsert_chunk(t, std::slice::from_ref(fields)).await?;
        let item = items.into_iter().next().unwrap_or_else(|| unreachable!("one item per record"));
        match (item.id, item.error) {
            (Some(id), _) => {
                let mut record_fields = fields.clone();
                record_fields.insert("id".into(), Value::String(id.clone()));
                Ok(Written {
                    record: CrmRecord {
                        id,
                        external_id: Some(item.external_id),
                        version: 0,
                        updated_at: None,
                        fields: record_fields,
                        changed_at: Default::default(),
                        partial: false,
                        defaults: Map::new(),
                    },
                    request_id: None,
                })
            }
            (None, Some(e)) => Err(match (e.existing_id, e.status) {
                (Some(existing_id), _) => CrmError::Duplicate { existing_id },
                (None, Some(s)) if s == 429 || s >= 500 => {
                    CrmError::Transient { status: Some(s), message: e.message, retry_after: None }
                }
                (None, s) => CrmError::Permanent { status: s.unwrap_or(422), code: e.code, message: e.message },
            }),
            (None, None) => Err(Self::unreadable("an upsert", "no id")),
        }
    }

    async fn update(&self, t: RecordType, id: &str, fields: &Map<String, Value>) -> Result<Written, CrmError> {
        let body = json!({ "properties": self.properties(t, fields, false) });
        let answer = self.call("update", Method::PATCH, &format!("{}/{id}", self.objects(t)), Some(&body)).await?;
        let object: Object = serde_json::from_value(answer.body).map_err(|e| Self::unreadable("an update", e))?;
        self.associate(t, &object.id, fields).await;
        let mut record = self.record(t, &object);
        // The answer holds the properties sent; the others are not read back.
        record.fields.retain(|k, _| fields.contains_key(k) || k == "id" || k == "externalId");
        Ok(Written { record, request_id: None })
    }

    async fn delete(&self, t: RecordType, id: &str) -> Result<Option<String>, CrmError> {
        self.call("delete", Method::DELETE, &format!("{}/{id}", self.objects(t)), None).await?;
        Ok(None)
    }

    async fn get(&self, t: RecordType, id: &str) -> Result<CrmRecord, CrmError> {
        let properties = self.config.mapping.read_properties(t).join(",");
        let answer =
            self.call("get", Method::GET, &format!("{}/{id}?properties={properties}", self.objects(t)), None).await?;
        let object: Object = serde_json::from_value(answer.body).map_err(|e| Self::unreadable("an object", e))?;
        Ok(self.record(t, &object))
    }

    /// A search for objects modified at or after `since`, oldest first, paged by HubSpot's
    /// `after` and, past its 10,000 results a search, by a new search from the last time read.
    async fn list_since(
        &self,
        t: RecordType,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, CrmError> {
        let object = self.config.mapping.object(t);
        // The cursor is `<from ms>:<after>`: a search reads at most 10,000 results, so a long
        // listing goes on with a new search from the last time read.
        let (from_ms, after) = match cursor.and_then(|c| c.split_once(':')) {
            Some((from, after)) => (from.parse().unwrap_or(since.timestamp_millis()), after.to_owned()),
            None => (since.timestamp_millis(), cursor.unwrap_or_default().to_owned()),
        };
        let limit = limit.clamp(1, 200);
        let mut body = json!({
            "filterGroups": [{ "filters": [{
                "propertyName": object.modified_property,
                "operator": "GTE",
                "value": from_ms.to_string(),
            }]}],
            "sorts": [{ "propertyName": object.modified_property, "direction": "ASCENDING" }],
            "properties": self.config.mapping.read_properties(t),
            "limit": limit,
        });
        if !after.is_empty() && after != "0" {
            body["after"] = Value::String(after);
        }
        let answer = self.call("list", Method::POST, &format!("{}/search", self.objects(t)), Some(&body)).await?;
        #[derive(Deserialize)]
        struct Found {
            #[serde(default)]
            results: Vec<Object>,
            #[serde(default)]
            paging: Option<Value>,
        }
        let found: Found = serde_json::from_value(answer.body).map_err(|e| Self::unreadable("a search", e))?;
        let next_after = found
            .paging
            .as_ref()
            .and_then(|p| p.pointer("/next/after"))
            .and_then(|a| a.as_str().map(str::to_owned).or_else(|| a.as_i64().map(|n| n.to_string())));
        let last_ms = found.results.iter().filter_map(|o| o.updated_at).map(|at| at.timestamp_millis()).max();
        let next_cursor = next_after.map(|after| next_cursor(from_ms, &after, last_ms, limit));
        Ok(Page { data: found.results.iter().map(|o| self.record(t, o)).collect(), next_cursor })
    }

    async fn ping(&self) -> Result<(), CrmError> {
        let path = format!("{}?limit=1", self.objects(RecordType::Contact));
        self.call("ping", Method::GET, &path, None).await.map(drop)
    }

    fn syncs(&self, t: RecordType) -> bool {
        self.config.mapping.object(t).enabled
    }

    /// One batch read per `batch_size` ids, each property with its history: every field is
    /// stamped by its own change time.
    async fn read_many(&self, t: RecordType, ids: &[String]) -> Result<Vec<CrmRecord>, CrmError> {
        Ok(self.batch_read(t, ids).await?.iter().map(|o| self.record(t, o)).collect())
    }

    async fn batch_upsert(
        &self,
        t: RecordType,
        records: &[Map<String, Value>],
        _idempotency_key: &str,
    ) -> Result<(Vec<BatchItem>, Option<String>), CrmError> {
        // Once anything is written, a failure no longer fails the call: what was written is
        // answered, and each record not written carries its own error.
        let mut items = Vec::with_capacity(records.len());
        for chunk in records.chunks(self.config.batch_size.max(1)) {
            match self.upsert_chunk(t, chunk).await {
                Ok(answered) => items.extend(answered),
                Err(e) if items.is_empty() && !one_records_fault(&e) => return Err(e),
                // A refusal of the whole batch may be one record's fault: each alone, so that
                // only that one fails (and a duplicate email is linked).
                Err(e) if chunk.len() == 1 || !one_records_fault(&e) => {
                    items.extend(chunk.iter().map(|r| refused_item(r, &e)));
                }
                Err(_) => {
                    let mut stopped = None;
                    for record in chunk {
                        match (&stopped, self.upsert_chunk(t, std::slice::from_ref(record)).await) {
                            (None, Ok(answered)) => items.extend(answered),
                            (None, Err(e)) if one_records_fault(&e) => items.push(refused_item(record, &e)),
                            (None, Err(e)) => {
                                items.push(refused_item(record, &e));
                                stopped = Some(e);
                            }
                            (Some(e), _) => items.push(refused_item(record, e)),
                        }
                    }
                }
            }
        }
        Ok((items, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_pauses_for_the_window_once_none_of_its_requests_remain() {
        let limit = |remaining, interval_ms| LimitHeaders {
            max: Some(100),
            remaining: Some(remaining),
            interval: Some(Duration::from_millis(interval_ms)),
        };
        assert_eq!(pause_after(&limit(3, 10_000)), None);
        assert_eq!(pause_after(&limit(0, 10_000)), Some(Duration::from_secs(10)));
        assert_eq!(pause_after(&limit(0, 86_400_000)), Some(Duration::from_secs(60)), "at most a minute");
        assert_eq!(pause_after(&LimitHeaders::default()), None, "no headers, no pause");
    }

    #[test]
    fn a_listing_longer_than_a_search_goes_on_from_the_last_time_read() {
        assert_eq!(next_cursor(1_000, "200", Some(5_000), 200), "1000:200");
        assert_eq!(next_cursor(1_000, "9800", Some(5_000), 200), "1000:9800", "the last page within the cap");
        assert_eq!(next_cursor(1_000, "9900", Some(5_000), 200), "5000:0", "past it: a new search");
        assert_eq!(next_cursor(5_000, "9900", Some(5_000), 200), "5001:0", "one millisecond full: past it");
    }

    #[test]
    fn an_error_is_only_a_records_own_when_it_names_it_or_is_the_only_one() {
        let errors = [json!({"status": "error", "message": "Existing ID: 42", "context": {"ids": ["user_2"]}})];
        assert_eq!(item_error(&errors, "user_2", false).existing_id.as_deref(), Some("42"));
        let unnamed = [json!({"status": "error", "message": "Contact already exists. Existing ID: 42"})];
        assert_eq!(item_error(&unnamed, "user_1", true).existing_id.as_deref(), Some("42"));
        let unknown = item_error(&unnamed, "user_1", false);
        assert_eq!((unknown.existing_id, unknown.status), (None, Some(503)), "not another record's id");
    }
}
