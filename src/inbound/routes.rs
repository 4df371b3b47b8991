//! `POST /api/crm/webhooks/treadsoft`: verify, record every event durably, apply, answer per event.

use super::verify::{self, SignedHeaders, VerifyError};
use crate::error::{ApiError, resource};
use crate::ops::metrics::ReasonLabel;
use crate::state::AppState;
use crate::sync::inbox::{EventResult, Incoming};
use crate::writer::WriteError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most events TreadSoft puts in one delivery.
const MAX_EVENTS: usize = 100;

pub fn routes(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.service(
        resource("/api/crm/webhooks/treadsoft", "POST")
            .app_data(web::PayloadConfig::new(body_limit))
            .route(web::post().to(receive_webhook)),
    );
}

/// A webhook delivery, as [`parse_delivery_body`] takes it from a verified body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub delivery_id: Option<String>,
    pub events: Vec<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryResults {
    delivery_id: String,
    results: Vec<EventResult>,
}

#[tracing::instrument(name = "webhook", skip_all, fields(delivery_id, events))]
async fn receive_webhook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let refused = |e| refusal(&state, e);
    if state.config.provider != crate::config::Provider::TreadSoft {
        return Err(ApiError::not_found("TreadSoft is not the configured CRM (CRM_PROVIDER)"));
    }
    authenticate(&req, &body, &state).map_err(refused)?;
    let delivery = parse_delivery(&req, &body).map_err(refused)?;
    let started = std::time::Instant::now();
    let span = tracing::Span::current();
    span.record("delivery_id", delivery.delivery_id.as_deref().unwrap_or_default());
    span.record("events", delivery.events.len());

    record(&state, delivery.delivery_id.unwrap_or_default(), delivery.events, started).await
}

/// A delivery refused before anything of it was stored, counted by its reason.
pub(super) fn refusal(state: &AppState, e: ApiError) -> ApiError {
    state.metrics.webhook_refusals.get_or_create(&ReasonLabel { reason: e.code.to_owned() }).inc();
    e
}

/// Every receiver's end: the delivery's changes recorded and applied through the writer, counted,
/// and answered per event (`started`: when its application began, for the apply latency).
pub(super) async fn record(
    state: &AppState,
    delivery_id: String,
    events: Vec<Value>,
    started: std::time::Instant,
) -> Result<HttpResponse, ApiError> {
    let incoming = Incoming { delivery_id: delivery_id.clone(), events: std::sync::Arc::new(events) };
    let results = state.writer.receive(state.sync.clone(), incoming).await.map_err(unavailable)?;
    state.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
    state.metrics.webhook_results(&results);
    Ok(HttpResponse::Ok().json(DeliveryResults { delivery_id, results }))
}

/// Checks the signature before anything of the body is read.
fn authenticate(req: &HttpRequest, body: &[u8], state: &AppState) -> Result<(), ApiError> {
    let secrets = &state.config.webhook_secrets;
    if secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook_secret_not_configured",
            "CRM_WEBHOOK_SECRET is not set, so no webhook can be verified",
        ));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = if header(verify::STANDARD_SIGNATURE).is_some() {
        SignedHeaders::Standard {
            id: header(verify::STANDARD_ID),
            timestamp: header(verify::STANDARD_TIMESTAMP),
            signature: header(verify::STANDARD_SIGNATURE),
        }
    } else {
        SignedHeaders::TreadSoft {
            timestamp: header(verify::TREADSOFT_TIMESTAMP),
            signature: header(verify::TREADSOFT_SIGNATURE),
        }
    };
    let now = chrono::Utc::now().timestamp();
    verify::verify(headers, body, secrets, now, state.config.webhook_tolerance_secs).map_err(|e: VerifyError| {
        tracing::warn!(code = e.code(), "refused an unverified webhook");
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    })
}

/// A verified body must be a delivery: `{"deliveryId", "events": [1..=100 objects with an "id"]}`.
/// A delivery without a `deliveryId` takes the one in its headers.
fn parse_delivery(req: &HttpRequest, body: &[u8]) -> Result<Delivery, ApiError> {
    let mut delivery = parse_delivery_body(body)?;
    if delivery.delivery_id.as_deref().is_none_or(str::is_empty) {
        let header = [verify::TREADSOFT_DELIVERY, verify::STANDARD_ID]
            .into_iter()
            .find_map(|name| req.headers().get(name).and_then(|v| v.to_str().ok()));
        delivery.delivery_id = Some(header.unwrap_or_default().to_owned());
    }
    Ok(delivery)
}

/// The body's part of [`parse_delivery`], which needs no request (public for the fuzz target):
/// the delivery as sent, its `deliveryId` possibly missing or empty.
pub fn parse_delivery_body(body: &[u8]) -> Result<Delivery, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_delivery", message);
    let delivery: Delivery =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not a delivery: {e}")))?;
    if delivery.events.is_empty() || delivery.events.len() > MAX_EVENTS {
        return Err(invalid(format!("a delivery holds 1 to {MAX_EVENTS} events, not {}", delivery.events.len())));
    }
    for (i, event) in delivery.events.iter().enumerate() {
        if event.get("id").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(invalid(format!("events[{i}] has no string id")));
        }
    }
    Ok(delivery)
}

fn unavailable(e: WriteError) -> ApiError {
    tracing::error!(error = %crate::error::ErrorChain(&e), "a delivery could not be recorded");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the delivery could not be stored; nothing of it was applied, send it again",
    )
}
