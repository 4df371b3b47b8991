//! The sync's state at a glance: what `GET /api/crm/status` answers, the dashboard shows and
//! `/metrics` and `/readyz` take their outbox figures from.

use crate::crm::CrmClient;
use crate::error::{ApiError, resource};
use crate::ops::metrics::{CrmCall, Metrics};
use crate::ops::recovery::{Filter, InboundFailure, InboxEvent, OutboundFailure, inbound_failures, outbound_failures};
use crate::state::AppState;
use crate::sync::mapping::RecordType;
use crate::sync::records;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use entity::enums::CrmSyncStatus;
use entity::{crm_inbox, crm_outbox};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failures listed on the status, newest first, of each direction.
pub const RECENT_FAILURES: u64 = 50;
/// Webhook events listed on the status, newest first.
pub const RECENT_EVENTS: u64 = 20;
/// How long a CRM health check (`GET /v1/me`) is reused: the dashboard polls every few seconds,
/// and TreadSoft's rate limit is shared with delivery.
pub const HEALTH_TTL: Duration = Duration::from_secs(30);

/// Undelivered outbox rows of one record type and status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DepthRow {
    pub record_type: String,
    pub status: String,
    pub rows: i64,
    /// For `pending` and `in_flight`: the age of the oldest change, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_age_seconds: Option<f64>,
}

/// The outbox rows not delivered yet, by record type and status, oldest first.
pub async fn outbox_depth(c: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<Vec<DepthRow>, DbErr> {
    let rows: Vec<(String, String, i64, Option<DateTime<Utc>>)> = crm_outbox::Entity::find()
        .select_only()
        .column(crm_outbox::Column::RecordType)
        .column(crm_outbox::Column::Status)
        .column_as(crm_outbox::Column::Id.count(), "rows")
        .column_as(crm_outbox::Column::CreatedAt.min(), "oldest")
        .filter(crate::outbound::outbox::status_in(&crate::outbound::outbox::OPEN))
        .group_by(crm_outbox::Column::RecordType)
        .group_by(crm_outbox::Column::Status)
        .into_tuple()
        .all(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(record_type, status, rows, oldest)| {
            let oldest_age_seconds =
                oldest.filter(|_| status != "failed").map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
            DepthRow { record_type, status, rows, oldest_age_seconds }
        })
        .collect())
}

/// Live records of one type, by sync status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordCounts {
    pub record_type: &'static str,
    pub synced: i64,
    pub pending: i64,
    pub failed: i64,
}

/// The outbox as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxSummary {
    pub pending: i64,
    pub in_flight: i64,
    pub failed: i64,
    /// Age of the oldest undelivered change (pending or in flight), in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    pub by_type: Vec<DepthRow>,
}

impl OutboxSummary {
    /// The totals of [`outbox_depth`]'s rows.
    pub fn of(by_type: Vec<DepthRow>) -> Self {
        let total = |status: &str| by_type.iter().filter(|r| r.status == status).map(|r| r.rows).sum();
        Self {
            pending: total("pending"),
            in_flight: total("in_flight"),
            failed: total("failed"),
            oldest_pending_age_seconds: by_type.iter().filter_map(|r| r.oldest_age_seconds).reduce(f64::max),
            by_type,
        }
    }
}

/// Webhook events by outcome over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCounts {
    pub applied: i64,
    /// Counted by this instance (the inbox keeps no row for a duplicate).
    pub duplicate: i64,
    pub stale: i64,
    pub echo: i64,
    pub waiting: i64,
    pub failed: i64,
    /// Recorded, not applied: subscriptions the gateway does not sync.
    pub ignored: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhooks {
    pub last_hour: WebhookCounts,
    pub last_day: WebhookCounts,
    pub last_received_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failures {
    pub outbound: Vec<OutboundFailure>,
    pub inbound: Vec<InboundFailure>,
}

/// The answer of `GET /v1/me`, as last checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrmStatus {
    /// `treadsoft`, or `mock` when `CRM_ENABLED=false`.
    pub provider: &'static str,
    pub health: Health,
    /// This instance's last call to the CRM, if it made one.
    pub last_call: Option<CrmCall>,
    pub circuit: crate::outbound::worker::breaker::Status,
}

/// Everything `GET /api/crm/status` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub generated_at: DateTime<Utc>,
    pub records: Vec<RecordCounts>,
    pub outbox: OutboxSummary,
    pub webhooks: Webhooks,
    pub crm: CrmStatus,
    pub failures: Failures,
    /// The last webhook events received, newest first.
    pub recent_events: Vec<InboxEvent>,
    /// The last consistency audit (`crm-gateway audit`), if one ran.
    pub last_audit: Option<crate::pull::audit::LastAudit>,
    /// How far the import and reconciliation have read each record type's listing.
    pub import: Vec<ImportPosition>,
    /// Change streams read (Salesforce's Change Data Capture channel): where each stands and
    /// which instance reads it.
    pub streams: Vec<StreamPosition>,
}

/// Where a change stream stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPosition {
    pub channel: String,
    /// Events applied from it so far.
    pub events: i64,
    /// When its position was last stored (an event applied, or a keepalive).
    pub updated_at: DateTime<Utc>,
    /// The instance reading it, while its lease holds.
    pub reader: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// How far the import has read one record type's TreadSoft listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportPosition {
    pub record_type: String,
    /// The newest `updatedAt` applied.
    pub through: Option<DateTime<Utc>>,
    /// When the last pass ended; `None` while one is under way (or was interrupted).
    pub finished_at: Option<DateTime<Utc>>,
    pub records: i64,
}

/// Checks the CRM's health at most once per [`HEALTH_TTL`], whoever asks. While a check is under
/// way (a hanging CRM can take the request timeout), others get the last result at once.
pub struct CrmHealth {
    crm: Arc<dyn CrmClient>,
    provider: &'static str,
    last: std::sync::Mutex<Option<(Instant, Health)>>,
    checking: tokio::sync::Mutex<()>,
}

impl CrmHealth {
    pub fn new(crm: Arc<dyn CrmClient>, provider: &'static str) -> Self {
        Self { crm, provider, last: std::sync::Mutex::new(None), checking: tokio::sync::Mutex::new(()) }
    }

    fn cached(&self, younger_than: Option<Duration>) -> Option<Health> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref().filter(|(at, _)| younger_than.is_none_or(|ttl| at.elapsed() < ttl)).map(|(_, h)| h.clone())
    }

    /// The last check if it is recent, else a new one.
    pub async fn check(&self) -> Health {
        if let Some(fresh) = self.cached(Some(HEALTH_TTL)) {
            return fresh;
        }
        let _checking = match self.checking.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.cached(None) {
                Some(last) => return last,
                // The very first check is under way: wait for it.
                None => self.checking.lock().await,
            },
        };
        if let Some(fresh) = self.cached(Some(HEALTH_TTL)) {
            return fresh;
        }
        let result = self.crm.ping().await;
        let health = Health { ok: result.is_ok(), error: result.err().map(|e| e.to_string()), checked_at: Utc::now() };
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), health.clone()));
        health
    }
}

/// The last status, shared by every caller for [`STATUS_TTL`]: many open dashboards cost the
/// database no more than one.
#[derive(Default)]
pub struct StatusCache(tokio::sync::Mutex<Option<(Instant, Arc<Status>)>>);

/// How long a computed status is served again.
pub const STATUS_TTL: Duration = Duration::from_secs(1);

/// Webhook events by outcome over the last hour and the last day, in one pass over the day's
/// rows (the hour is part of the day).
async fn webhook_counts(
    c: &impl ConnectionTrait,
    now: DateTime<Utc>,
    metrics: &Metrics,
) -> Result<(WebhookCounts, WebhookCounts), DbErr> {
    let (hour, day) = (now - TimeDelta::hours(1), now - TimeDelta::days(1));
    let in_the_hour = Expr::case(crm_inbox::Column::ReceivedAt.gte(hour), 1).finally(0);
    let rows: Vec<(String, i64, i64)> = crm_inbox::Entity::find()
        .select_only()
        .column(crm_inbox::Column::Outcome)
        .column_as(Expr::from(Func::sum(in_the_hour)), "last_hour")
        .column_as(crm_inbox::Column::EventId.count(), "last_day")
        .filter(crm_inbox::Column::ReceivedAt.gte(day))
        .group_by(crm_inbox::Column::Outcome)
        .into_tuple()
        .all(c)
        .await?;
    let mut last_hour = WebhookCounts { duplicate: metrics.duplicates_since(hour) as i64, ..Default::default() };
    let mut last_day = WebhookCounts { duplicate: metrics.duplicates_since(day) as i64, ..Default::default() };
    for (outcome, hour_n, day_n) in rows {
        for (counts, n) in [(&mut last_hour, hour_n), (&mut last_day, day_n)] {
            match outcome.as_str() {
                "applied" => counts.applied = n,
                "stale" => counts.stale = n,
                "echo" => counts.echo = n,
                "waiting" => counts.waiting = n,
                "failed" => counts.failed = n,
                "ignored" => counts.ignored = n,
                _ => {}
            }
        }
    }
    Ok((last_hour, last_day))
}

/// Reads the whole status from the database (`c`, a reader) and this instance's state.
pub async fn status(
    c: &impl ConnectionTrait,
    metrics: &Metrics,
    health: &CrmHealth,
    circuit: crate::outbound::worker::breaker::Status,
) -> Result<Status, DbErr> {
    let now = Utc::now();
    let mut records = Vec::with_capacity(RecordType::ALL.len());
    for t in RecordType::ALL {
        let mut counts = RecordCounts { record_type: t.as_str(), ..Default::default() };
        for (status, n) in records::sync_status_counts(c, t).await? {
            match status {
                CrmSyncStatus::Synced => counts.synced = n,
                CrmSyncStatus::Pending => counts.pending = n,
                CrmSyncStatus::Failed => counts.failed = n,
            }
        }
        records.push(counts);
    }

    let outbox = OutboxSummary::of(outbox_depth(c, now).await?);

    let last_received_at: Option<Option<DateTime<Utc>>> = crm_inbox::Entity::find()
        .select_only()
        .column_as(crm_inbox::Column::ReceivedAt.max(), "last")
        .into_tuple()
        .one(c)
        .await?;
    let (last_hour, last_day) = webhook_counts(c, now, metrics).await?;
    let webhooks = Webhooks { last_hour, last_day, last_received_at: last_received_at.flatten() };

    let everything = Filter::default();
    let outbound = outbound_failures(c, &everything, None, RECENT_FAILURES).await?.items;
    let inbound = inbound_failures(c, &everything, None, RECENT_FAILURES).await?.items;

    let recent_events = crm_inbox::Entity::find()
        .order_by_desc(crm_inbox::Column::ReceivedAt)
        .order_by_desc(crm_inbox::Column::EventId)
        .limit(RECENT_EVENTS)
        .all(c)
        .await?
        .into_iter()
        .map(InboxEvent::from)
        .collect();

    let crm = CrmStatus {
        provider: health.provider,
        health: health.check().await,
        last_call: metrics.last_crm_call(),
        circuit,
    };
    Ok(Status {
        generated_at: now,
        records,
        outbox,
        webhooks,
        crm,
        failures: Failures { outbound, inbound },
        recent_events,
        last_audit: crate::pull::audit::last(c).await?,
        import: crate::pull::import::positions(c)
            .await?
            .into_iter()
            .map(|p| ImportPosition {
                record_type: p.record_type,
                through: p.last_updated_at,
                finished_at: p.finished_at,
                records: p.records,
            })
            .collect(),
        streams: streams(c).await?,
    })
}

async fn streams(c: &impl ConnectionTrait) -> Result<Vec<StreamPosition>, DbErr> {
    let leases = entity::crm_leases::Entity::find().all(c).await?;
    Ok(entity::crm_stream_positions::Entity::find()
        .all(c)
        .await?
        .into_iter()
        .map(|p| {
            let lease = leases.iter().find(|l| l.name.ends_with(&format!(":{}", p.channel)));
            StreamPosition {
                reader: lease.map(|l| l.holder.clone()),
                lease_expires_at: lease.map(|l| l.expires_at),
                channel: p.channel,
                events: p.events,
                updated_at: p.updated_at,
            }
        })
        .collect())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/crm/status", "GET").route(web::get().to(status_route)));
}

async fn status_route(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut cache = state.status_cache.0.lock().await;
    let status = match cache.as_ref().filter(|(at, _)| at.elapsed() < STATUS_TTL) {
        Some((_, status)) => status.clone(),
        None => {
            let fresh =
                Arc::new(status(state.db.reader(), &state.metrics, &state.health, state.delivery.circuit()).await?);
            *cache = Some((Instant::now(), fresh.clone()));
            fresh
        }
    };
    drop(cache);
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(&*status))
}
