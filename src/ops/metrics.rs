//! Prometheus metrics (`GET /metrics`, text format), through `prometheus-client`.
//!
//! One [`Metrics`] per running application, no global registry: every in-process test server has
//! its own. Counters and histograms are counted where things happen (this instance, since it
//! started); the outbox gauges are read from the database at each scrape, so every instance
//! reports the same figures for the shared queue (alert on `max`, not `sum`).

use crate::state::AppState;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxLabels {
    pub record_type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordTypeLabel {
    pub record_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub outcome: String,
    /// The CRM's HTTP status, or `none` when it did not answer (or was not asked).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrmCallLabels {
    pub operation: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route pattern (`/api/crm/outbox/{id}/retry`), never the raw path, so that
    /// ids do not make a series each; `unmatched` for paths no route serves.
    pub route: String,
    pub method: String,
    pub status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub webhook_events: Family<OutcomeLabel, Counter>,
    pub webhook_refusals: Family<ReasonLabel, Counter>,
    pub apply_seconds: Histogram,
    pub group_jobs: Histogram,
    pub outbox_rows: Family<OutboxLabels, Gauge>,
    pub outbox_oldest_pending_seconds: Family<RecordTypeLabel, FloatGauge>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub crm_request_seconds: Family<CrmCallLabels, Histogram>,
    pub retries: Counter,
    pub dead_letters: Counter,
    pub rate_limit_wait_seconds: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_seconds: Histogram,
    pub crm_circuit_open: Gauge,
    pub crm_last_call_ok: Gauge,
    pub sqlite_wal_frames: Gauge,
    pub sqlite_checkpoint_failures: Counter,
    last_crm_call: Mutex<Option<CrmCall>>,
    /// Duplicate webhook events per minute over the last day: the inbox keeps no row for a
    /// duplicate, so the dashboard's windows count them here (this instance only).
    recent_duplicates: Mutex<VecDeque<(i64, u64)>>,
}

/// The last CRM call this instance made, for `/readyz` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrmCall {
    pub at: DateTime<Utc>,
    pub operation: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last call that succeeded (this one, if it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
}

fn seconds_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("crm_gateway");
        let webhook_events = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_events",
            "Webhook events answered, by outcome (applied, duplicate, stale, echo, waiting, failed, ignored)",
            webhook_events.clone(),
        );
        // Every outcome from the start, at 0: a series that first appears at 1 counts as no
        // increase, and alert sums over absent series are empty.
        for outcome in ["applied", "duplicate", "stale", "echo", "waiting", "failed", "ignored"] {
            let _ = webhook_events.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() });
        }
        let webhook_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "webhook_refusals",
            "Webhook deliveries refused before storing, by reason (the error code answered)",
            webhook_refusals.clone(),
        );
        let apply_seconds = seconds_buckets();
        registry.register(
            "webhook_apply_seconds",
            "Time from a verified delivery to the commit that applied it",
            apply_seconds.clone(),
        );
        let group_jobs = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "writer_group_jobs",
            "Pieces of work (deliveries, app requests, outcomes) per group commit",
            group_jobs.clone(),
        );
        let outbox_rows = Family::<OutboxLabels, Gauge>::default();
        registry.register(
            "outbox_rows",
            "Outbox rows not delivered, by record type and status (read from the database at each scrape)",
            outbox_rows.clone(),
        );
        let outbox_oldest_pending_seconds = Family::<RecordTypeLabel, FloatGauge>::default();
        registry.register(
            "outbox_oldest_pending_seconds",
            "Age of the oldest undelivered change (pending or in flight), by record type",
            outbox_oldest_pending_seconds.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Outbox rows sent, by outcome (delivered, skipped, retry, dead_letter, released) and CRM status",
            deliveries.clone(),
        );
        let crm_request_seconds = Family::<CrmCallLabels, Histogram>::new_with_constructor(seconds_buckets);
        registry.register(
            "crm_request_seconds",
            "CRM API calls, by operation and HTTP status (none: no answer), rate-limit wait excluded",
            crm_request_seconds.clone(),
        );
        let retries = Counter::default();
        registry.register("delivery_retries", "Failed deliveries scheduled to be tried again", retries.clone());
        let dead_letters = Counter::default();
        registry.register("dead_letters", "Deliveries given up on (outbox rows turned failed)", dead_letters.clone());
        let rate_limit_wait_seconds = seconds_buckets();
        registry.register(
            "rate_limit_wait_seconds",
            "Time CRM calls waited for the rate limiter",
            rate_limit_wait_seconds.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_request_seconds = seconds_buckets();
        registry.register("http_request_seconds", "Time to answer HTTP requests", http_request_seconds.clone());
        let crm_circuit_open = Gauge::default();
        registry.register(
            "crm_circuit_open",
            "1 while delivery is paused because the CRM is down (the circuit breaker is open), else 0",
            crm_circuit_open.clone(),
        );
        let crm_last_call_ok = Gauge::default();
        registry.register(
            "crm_last_call_ok",
            "1 if this instance's last CRM call succeeded, 0 if it failed, -1 before the first call",
            crm_last_call_ok.clone(),
        );
        let sqlite_wal_frames = Gauge::default();
        registry.register(
            "sqlite_wal_frames",
            "SQLite: pages in the WAL file at the last checkpoint beside the writer; growing while a reader holds an old snapshot",
            sqlite_wal_frames.clone(),
        );
        let sqlite_checkpoint_failures = Counter::default();
        registry.register(
            "sqlite_checkpoint_failures",
            "SQLite: checkpoints beside the writer that failed (the writer's own go on)",
            sqlite_checkpoint_failures.clone(),
        );
        Self {
            registry,
            webhook_events,
            webhook_refusals,
            apply_seconds,
            group_jobs,
            outbox_rows,
            outbox_oldest_pending_seconds,
            deliveries,
            crm_request_seconds,
            retries,
            dead_letters,
            rate_limit_wait_seconds,
            http_requests,
            http_request_seconds,
            crm_circuit_open,
            crm_last_call_ok,
            sqlite_wal_frames,
            sqlite_checkpoint_failures,
            last_crm_call: Mutex::new(None),
            recent_duplicates: Mutex::new(VecDeque::new()),
        }
    }

    /// Counts the outcomes of one delivery's events.
    pub fn webhook_results(&self, results: &[crate::sync::inbox::EventResult]) {
        let mut duplicates = 0;
        for result in results {
            let outcome = result.outcome.as_str();
            self.webhook_events.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
            if result.outcome == crate::sync::inbox::Outcome::Duplicate {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            let minute = Utc::now().timestamp().div_euclid(60);
            let mut recent = self.recent_duplicates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match recent.back_mut() {
                Some((m, n)) if *m == minute => *n += duplicates,
                _ => recent.push_back((minute, duplicates)),
            }
            while recent.front().is_some_and(|(m, _)| *m < minute - 24 * 60) {
                recent.pop_front();
            }
        }
    }

    /// Duplicate webhook events this instance answered since `since` (to the minute).
    pub fn duplicates_since(&self, since: DateTime<Utc>) -> u64 {
        let from = since.timestamp().div_euclid(60);
        let recent = self.recent_duplicates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().filter(|(m, _)| *m >= from).map(|(_, n)| n).sum()
    }

    /// Counts one CRM call.
    pub fn crm_call(&self, operation: &'static str, status: Option<u16>, took: Duration, error: Option<String>) {
        let labels = CrmCallLabels {
            operation: operation.to_owned(),
            status: status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
        };
        self.crm_request_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        let now = Utc::now();
        let mut last = self.last_crm_call.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ok = error.is_none();
        let last_success_at = if ok { Some(now) } else { last.as_ref().and_then(|c| c.last_success_at) };
        *last = Some(CrmCall { at: now, operation, ok, error, last_success_at });
    }

    /// The last CRM call this instance made, if any.
    pub fn last_crm_call(&self) -> Option<CrmCall> {
        self.last_crm_call.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Counts one HTTP request; `route` is the pattern that matched (`None`: no route did).
    pub fn http_request(&self, route: Option<&str>, method: &str, status: u16, took: Duration) {
        let labels = HttpLabels {
            route: route.unwrap_or("unmatched").to_owned(),
            // Any token is a method: only the standard ones get a series of their own.
            method: match method {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method.to_owned(),
                _ => "other".to_owned(),
            },
            status: status.to_string(),
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_request_seconds.observe(took.as_secs_f64());
    }

    /// Counts one delivery attempt's outcome.
    pub fn delivery(&self, outcome: &str, status: Option<u16>) {
        let labels = DeliveryLabels {
            outcome: outcome.to_owned(),
            status: status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
        };
        self.deliveries.get_or_create(&labels).inc();
        match outcome {
            "retry" => {
                self.retries.inc();
            }
            "dead_letter" => {
                self.dead_letters.inc();
            }
            _ => {}
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// `GET /metrics` (behind the same token as the app routes).
pub async fn metrics_route(state: web::Data<AppState>) -> Result<HttpResponse, crate::error::ApiError> {
    let depth = crate::ops::status::outbox_depth(state.db.reader(), Utc::now()).await?;
    let metrics = &state.metrics;
    // Series of record types that drained since the last scrape disappear instead of keeping
    // their last value.
    metrics.outbox_rows.clear();
    metrics.outbox_oldest_pending_seconds.clear();
    for row in depth {
        metrics
            .outbox_rows
            .get_or_create(&OutboxLabels { record_type: row.record_type.clone(), status: row.status.clone() })
            .set(row.rows);
        if let Some(age) = row.oldest_age_seconds {
            let gauge = metrics
                .outbox_oldest_pending_seconds
                .get_or_create(&RecordTypeLabel { record_type: row.record_type.clone() });
            gauge.set(gauge.get().max(age));
        }
    }
    metrics.crm_circuit_open.set(i64::from(state.delivery.circuit().circuit == "open"));
    metrics.crm_last_call_ok.set(metrics.last_crm_call().map_or(-1, |call| i64::from(call.ok)));
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8"))
        .body(metrics.encode()))
}
