//! The CRM service layer: one [`CrmClient`] trait, a TreadSoft implementation and a mock, chosen
//! at start-up by the configuration (as the seed's factory does).

pub mod hubspot;
pub mod mapping;
pub mod mock;
pub mod rate_limit;
pub mod salesforce;
pub mod signing;
pub mod treadsoft;

use crate::config::{Config, CrmProvider};
use crate::ops::metrics::Metrics;
use crate::sync::mapping::RecordType;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// A TreadSoft record as the API returns it (API.md §1-2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrmRecord {
    pub id: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// Every field of the record, the common ones included.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
    /// When each field took its current value, where the CRM says (HubSpot's property history);
    /// the others are stamped by `updated_at`.
    #[serde(skip)]
    pub changed_at: std::collections::BTreeMap<String, DateTime<Utc>>,
    /// Whether fields the CRM holds no value for are left out of `fields` (HubSpot), so that
    /// they are not taken as cleared.
    #[serde(skip)]
    pub partial: bool,
    /// What those fields become in a record created here from this one.
    #[serde(skip)]
    pub defaults: Map<String, Value>,
}

/// A record TreadSoft wrote, and the `X-TreadSoft-Request-Id` of the call that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub record: CrmRecord,
    pub request_id: Option<String>,
}

/// One page of `GET /v1/R?updatedSince=`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub data: Vec<CrmRecord>,
    pub next_cursor: Option<String>,
}

/// One record's answer in a batch upsert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    pub external_id: String,
    #[serde(default)]
    pub id: Option<String>,
    /// `created`, `updated` or `error`.
    pub status: String,
    #[serde(default)]
    pub error: Option<ErrorBody>,
}

/// TreadSoft's error object (API.md §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub existing_id: Option<String>,
    /// The HTTP status of this record's failure within a batch answer, when the CRM gives one.
    #[serde(default)]
    pub status: Option<u16>,
}

/// Why a CRM call failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    /// Try again later (429, 5xx, timeout, connection error); `retry_after` when TreadSoft said.
    #[error("{message}")]
    Transient { status: Option<u16>, message: String, retry_after: Option<Duration> },
    /// Trying again will not help until something is fixed (400, 401, 412, 422).
    #[error("{status} {code}: {message}")]
    Permanent { status: u16, code: String, message: String },
    /// 409: a contact with that email exists already, as `existing_id`.
    #[error("a contact with that email exists already ({existing_id})")]
    Duplicate { existing_id: String },
    /// 404: no such record (or it was deleted).
    #[error("404 not_found: {message}")]
    NotFound { message: String },
    /// Not sent at all: the caller's deadline ([`send_by`]) passed while the request waited for
    /// the rate limiter. Nothing reached the CRM; the caller releases the work for later.
    #[error("not sent: {message}")]
    NotSent { message: String },
    /// Not sent, for good: a record it refers to was dead-lettered, so it cannot be sent until
    /// that one is retried.
    #[error("not sent: {message}")]
    ParentFailed { message: String },
}

tokio::task_local! {
    static SEND_BY: std::time::Instant;
}

/// Runs `work`, whose CRM requests are not sent after `deadline` (they fail with
/// [`CrmError::NotSent`]): a delivery worker's lease must still hold when a request leaves,
/// however long the rate limiter kept it waiting.
pub async fn send_by<F: Future>(deadline: std::time::Instant, work: F) -> F::Output {
    SEND_BY.scope(deadline, work).await
}

/// Whether the deadline of the [`send_by`] around this task has passed.
pub fn past_send_by() -> bool {
    SEND_BY.try_with(|deadline| std::time::Instant::now() > *deadline).unwrap_or(false)
}

impl CrmError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// The HTTP status TreadSoft answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Transient { status, .. } => *status,
            Self::Permanent { status, .. } => Some(*status),
            Self::Duplicate { .. } => Some(409),
            Self::NotFound { .. } => Some(404),
            Self::NotSent { .. } | Self::ParentFailed { .. } => None,
        }
    }
}

/// What every CRM client does around a request: waits for the rate limiter, refuses to send once
/// the caller's deadline ([`send_by`]) has passed, and counts the call's wait, latency and status.
pub(crate) async fn paced<T>(
    limiter: &governor::DefaultDirectRateLimiter,
    metrics: Option<&Metrics>,
    operation: &'static str,
    status_of: impl Fn(&T) -> u16,
    send: impl Future<Output = Result<T, CrmError>>,
) -> Result<T, CrmError> {
    let waited = std::time::Instant::now();
    limiter.until_ready().await;
    if let Some(metrics) = metrics {
        metrics.rate_limit_wait_seconds.observe(waited.elapsed().as_secs_f64());
    }
    if past_send_by() {
        return Err(CrmError::NotSent { message: "the deadline passed while waiting for the rate limit".into() });
    }
    let started = std::time::Instant::now();
    let answer = send.await;
    if let Some(metrics) = metrics {
        let status = match &answer {
            Ok(answer) => Some(status_of(answer)),
            Err(e) => e.status(),
        };
        metrics.crm_call(operation, status, started.elapsed(), answer.as_ref().err().map(ToString::to_string));
    }
    answer
}

/// A pause the CRM asked for (its window's requests used up, its daily allocation nearly): no
/// request of this client leaves before it ends.
#[derive(Debug, Default)]
pub(crate) struct Pause(std::sync::Mutex<Option<std::time::Instant>>);

impl Pause {
    /// Waits for the pause, if any.
    pub(crate) async fn wait(&self) {
        let until = *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Pauses for `wait` from now.
    pub(crate) fn set(&self, wait: std::time::Duration) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now() + wait);
    }
}

/// The HTTP client every CRM client sends with: connect and request timeouts, and its name.
pub(crate) fn http_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("crm-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A request that got no answer (a timeout, a connection refused): worth retrying.
pub(crate) fn unanswered(crm: &str, method: &reqwest::Method, path: &str, e: &reqwest::Error) -> CrmError {
    CrmError::Transient {
        status: None,
        message: if e.is_timeout() {
            format!("{method} {path}: {crm} did not answer in time")
        } else {
            format!("{method} {path}: cannot reach {crm}: {e}")
        },
        retry_after: None,
    }
}

/// What the gateway asks of a CRM, for each record type.
#[async_trait::async_trait]
pub trait CrmClient: Send + Sync + std::fmt::Debug {
    /// `POST /v1/R`; `idempotency_key` makes a retry return the first answer instead of a second record.
    async fn create(
        &self,
        t: RecordType,
        fields: &Map<String, Value>,
        idempotency_key: &str,
    ) -> Result<Written, CrmError>;
    /// `PATCH /v1/R/{id}` with the fields given.
    async fn update(&self, t: RecordType, id: &str, fields: &Map<String, Value>) -> Result<Written, CrmError>;
    /// `DELETE /v1/R/{id}`; returns the request id.
    async fn delete(&self, t: RecordType, id: &str) -> Result<Option<String>, CrmError>;
    /// `GET /v1/R/{id}`.
    async fn get(&self, t: RecordType, id: &str) -> Result<CrmRecord, CrmError>;
    /// `GET /v1/R?updatedSince=&limit=&cursor=`.
    async fn list_since(
        &self,
        t: RecordType,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, CrmError>;
    /// `GET /v1/me`: whether the CRM answers and takes the credentials (the circuit breaker's probe).
    async fn ping(&self) -> Result<(), CrmError>;
    /// Whether records of type `t` are synced with this CRM at all (a mapping may switch a type
    /// off): changes of a type that is not are not sent, listed or compared.
    fn syncs(&self, _t: RecordType) -> bool {
        true
    }
    /// Whether the client reads records that exist (the mock keeps none).
    fn keeps_records(&self) -> bool {
        true
    }
    /// Reads records by CRM id; ids the CRM does not have are left out. By default one `get`
    /// each; a CRM with a batch read overrides it.
    async fn read_many(&self, t: RecordType, ids: &[String]) -> Result<Vec<CrmRecord>, CrmError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.get(t, id).await {
                Ok(record) => out.push(record),
                Err(CrmError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    /// `POST /v1/R/batch/upsert` with 1 to 100 records, each with an `externalId`.
    async fn batch_upsert(
        &self,
        t: RecordType,
        records: &[Map<String, Value>],
        idempotency_key: &str,
    ) -> Result<(Vec<BatchItem>, Option<String>), CrmError>;
}

/// The client the configuration asks for; its calls are counted in `metrics`.
pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<dyn CrmClient>> {
    Ok(match &config.crm {
        CrmProvider::Mock => Arc::new(mock::MockCrm),
        CrmProvider::TreadSoft(treadsoft) => Arc::new(
            treadsoft::TreadSoftClient::new(treadsoft.clone(), config.crm_request_timeout, config.crm_rate_limit)?
                .with_metrics(metrics),
        ),
        CrmProvider::Salesforce(salesforce) => Arc::new(
            salesforce::client::SalesforceClient::new(
                salesforce.clone(),
                config.crm_request_timeout,
                config.crm_rate_limit,
            )?
            .with_metrics(metrics.clone()),
        ),
        CrmProvider::HubSpot(hubspot) => Arc::new(
            hubspot::client::HubSpotClient::new(hubspot.clone(), config.crm_request_timeout, config.crm_rate_limit)?
                .with_metrics(metrics),
        ),
    })
}

/// The provider's name, as the status shows it.
pub fn provider_name(config: &Config) -> &'static str {
    config.crm_name()
}
