//! The TreadSoft REST client (API.md §3): signs every request, sends an `Idempotency-Key` on every
//! POST, has connect and request timeouts, keeps under the rate limit, and sorts failures into
//! transient and permanent.

use super::rate_limit::RateLimit;
use super::signing::request_signature;
use super::{BatchItem, CrmClient, CrmError, CrmRecord, ErrorBody, Page, Written};
use crate::config::TreadSoftConfig;
use crate::ops::metrics::Metrics;
use crate::sync::mapping::RecordType;
use chrono::{DateTime, Utc};
use governor::DefaultDirectRateLimiter;
use reqwest::{Method, StatusCode, header::HeaderMap};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Longest `Retry-After` honoured; a larger one is clamped so a bad header cannot park work for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct TreadSoftClient {
    http: reqwest::Client,
    config: TreadSoftConfig,
    limiter: Arc<DefaultDirectRateLimiter>,
    metrics: Option<Arc<Metrics>>,
}

/// A successful answer: status, headers and body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn request_id(&self) -> Option<String> {
        self.headers.get("x-treadsoft-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    fn record(self) -> Result<Written, CrmError> {
        let request_id = self.request_id();
        let record = serde_json::from_value(self.body).map_err(|e| CrmError::Transient {
            status: None,
            message: format!("TreadSoft answered with a record this client cannot read: {e}"),
            retry_after: None,
        })?;
        Ok(Written { record, request_id })
    }
}

impl TreadSoftClient {
    pub fn new(config: TreadSoftConfig, timeout: Duration, rate_limit: RateLimit) -> anyhow::Result<Self> {
        let http = crate::crm::http_client(timeout)?;
        Ok(Self { http, config, limiter: Arc::new(rate_limit.limiter()), metrics: None })
    }

    /// The path as sent and signed: the base URL's own path, then `/v1/...`.
    fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.config.api_url.path().trim_end_matches('/'))
    }

    /// Counts every call's wait for the rate limiter, latency and status in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Waits for the rate limiter, then sends; `operation` names the call in the metrics.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        rest: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, CrmError> {
        super::paced(&self.limiter, self.metrics.as_deref(), operation, |a: &Answer| a.status, async {
            self.send(method, rest, body, idempotency_key).await
        })
        .await
    }

    async fn send(
        &self,
        method: Method,
        rest: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, CrmError> {
        let path = self.path(rest);
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        let timestamp = Utc::now().timestamp();
        let signature =
            request_signature(self.config.api_secret.expose_secret(), timestamp, method.as_str(), &path, &body);
        let mut url = self.config.api_url.clone();
        let (path_only, query) = path.split_once('?').map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
        url.set_path(path_only);
        url.set_query(query);
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("X-TreadSoft-Key", self.config.api_key.expose_secret())
            .header("X-TreadSoft-Timestamp", timestamp.to_string())
            .header("X-TreadSoft-Request-Signature", signature);
        if !body.is_empty() {
            request = request.header("Content-Type", "application/json").body(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| crate::crm::unanswered("TreadSoft", &method, path_only, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| CrmError::Transient {
            status: Some(status.as_u16()),
            message: format!("{method} {path_only}: the answer broke off: {e}"),
            retry_after: None,
        })?;
        if status.is_success() {
            let body =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
            return Ok(Answer { status: status.as_u16(), headers, body });
        }
        Err(classify(status, &headers, &bytes))
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// Sorts a failed answer: 429 and 5xx are transient; 409 `duplicate` names the existing contact;
/// everything else is permanent.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> CrmError {
    let error = serde_json::from_slice::<ErrorEnvelope>(body).map(|e| e.error).unwrap_or_default();
    let message = if error.message.is_empty() {
        String::from_utf8_lossy(body).chars().take(500).collect()
    } else {
        error.message.clone()
    };
    match status.as_u16() {
        429 | 500..=599 => CrmError::Transient {
            status: Some(status.as_u16()),
            message: format!(
                "{} {}: {message}",
                status.as_u16(),
                if error.code.is_empty() { "server_error" } else { &error.code }
            ),
            retry_after: retry_after(headers),
        },
        409 if error.existing_id.is_some() => {
            CrmError::Duplicate { existing_id: error.existing_id.unwrap_or_default() }
        }
        404 => CrmError::NotFound { message },
        s => CrmError::Permanent { status: s, code: error.code, message },
    }
}

/// `Retry-After: <seconds>` (or an HTTP date), clamped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn collection(t: RecordType) -> String {
    format!("/v1/{}", t.collection())
}

#[async_trait::async_trait]
impl CrmClient for TreadSoftClient {
    async fn create(
        &self,
        t: RecordType,
        fields: &Map<String, Value>,
        idempotency_key: &str,
    ) -> Result<Written, CrmError> {
        let body = Value::Object(fields.clone());
        self.call("create", Method::POST, &collection(t), Some(&body), Some(idempotency_key)).await?.record()
    }

    async fn update(&self, t: RecordType, id: &str, fields: &Map<String, Value>) -> Result<Written, CrmError> {
        let body = Value::Object(fields.clone());
        self.call("update", Method::PATCH, &format!("{}/{id}", collection(t)), Some(&body), None).await?.record()
    }

    async fn delete(&self, t: RecordType, id: &str) -> Result<Option<String>, CrmError> {
        Ok(self.call("delete", Method::DELETE, &format!("{}/{id}", collection(t)), None, None).await?.request_id())
    }

    async fn ping(&self) -> Result<(), CrmError> {
        self.call("ping", Method::GET, "/v1/me", None, None).await.map(drop)
    }

    async fn get(&self, t: RecordType, id: &str) -> Result<CrmRecord, CrmError> {
        Ok(self.call("get", Method::GET, &format!("{}/{id}", collection(t)), None, None).await?.record()?.record)
    }

    async fn list_since(
        &self,
        t: RecordType,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, CrmError> {
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("updatedSince", &since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            query.append_pair("limit", &limit.clamp(1, 200).to_string());
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
            query.finish()
        };
        let answer = self.call("list", Method::GET, &format!("{}?{query}", collection(t)), None, None).await?;
        serde_json::from_value(answer.body).map_err(|e| CrmError::Transient {
            status: None,
            message: format!("TreadSoft answered with a page this client cannot read: {e}"),
            retry_after: None,
        })
    }

    async fn batch_upsert(
        &self,
        t: RecordType,
        records: &[Map<String, Value>],
        idempotency_key: &str,
    ) -> Result<(Vec<BatchItem>, Option<String>), CrmError> {
        let body = json!({ "records": records });
        let answer = self
            .call(
                "batch_upsert",
                Method::POST,
                &format!("{}/batch/upsert", collection(t)),
                Some(&body),
                Some(idempotency_key),
            )
            .await?;
        let request_id = answer.request_id();
        #[derive(Deserialize)]
        struct Results {
            results: Vec<BatchItem>,
        }
        let results: Results = serde_json::from_value(answer.body).map_err(|e| CrmError::Transient {
            status: None,
            message: format!("TreadSoft answered a batch this client cannot read: {e}"),
            retry_after: None,
        })?;
        Ok((results.results, request_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn failures_are_sorted_into_transient_and_permanent() {
        let retry = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "7")]),
            br#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        );
        assert_eq!(
            retry,
            CrmError::Transient {
                status: Some(429),
                message: "429 rate_limited: slow down".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"").is_transient());
        for status in [400, 401, 412, 422] {
            let e = classify(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                br#"{"error":{"code":"validation_failed","message":"no"}}"#,
            );
            assert!(matches!(e, CrmError::Permanent { .. }), "{status}");
        }
        assert_eq!(
            classify(
                StatusCode::CONFLICT,
                &HeaderMap::new(),
                br#"{"error":{"code":"duplicate","message":"exists","existingId":"crm_contact_9"}}"#
            ),
            CrmError::Duplicate { existing_id: "crm_contact_9".into() }
        );
        assert!(matches!(classify(StatusCode::NOT_FOUND, &HeaderMap::new(), b""), CrmError::NotFound { .. }));
    }

    #[test]
    fn a_huge_retry_after_is_clamped() {
        assert_eq!(retry_after(&headers(&[("retry-after", "999999")])), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    }
}
