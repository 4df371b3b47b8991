//! `GET /healthz` (the process answers) and `GET /readyz` (it can do its work: the database answers;
//! the outbox backlog, dead letters, the CRM circuit breaker and the last CRM call are shown too).

use crate::error::resource;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;
use std::time::Instant;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Registers both routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(readyz)));
}

#[tracing::instrument(name = "readyz", skip_all)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let started = Instant::now();
    let backend = format!("{:?}", state.db.backend()).to_ascii_lowercase();
    match state.db.ping().await {
        // An open circuit does not make the gateway unready: it still takes and stores every
        // webhook and change; delivery resumes by itself once the CRM answers.
        Ok(()) => {
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            // Still ready when the CRM is down: the gateway stores every webhook and change, and
            // delivery resumes by itself. The outbox figures tell an operator how far behind it is.
            let depth = crate::ops::status::outbox_depth(state.db.reader(), chrono::Utc::now()).await;
            let outbox = match depth {
                Ok(depth) => {
                    let outbox = crate::ops::status::OutboxSummary::of(depth);
                    json!({
                        "backlog": outbox.pending + outbox.in_flight,
                        "deadLetters": outbox.failed,
                        "oldestPendingAgeSeconds": outbox.oldest_pending_age_seconds,
                    })
                }
                Err(e) => json!({ "status": "error", "error": e.to_string() }),
            };
            let mut crm = serde_json::to_value(state.delivery.circuit()).unwrap_or_default();
            if let Some(object) = crm.as_object_mut() {
                // No error text here: /readyz is public, and a CRM's error can quote customer
                // data. The error is on /api/crm/status, behind the token.
                let last = state.metrics.last_crm_call();
                object.insert("lastCallOk".into(), json!(last.as_ref().map(|c| c.ok)));
                object.insert("lastCallAt".into(), json!(last.as_ref().map(|c| c.at)));
                object.insert("lastSuccessAt".into(), json!(last.and_then(|c| c.last_success_at)));
            }
            HttpResponse::Ok().json(json!({
                "status": "ready",
                "checks": {
                    "database": { "status": "ok", "backend": backend, "latencyMs": latency_ms },
                    "outbox": outbox,
                    "crm": crm,
                },
            }))
        }
        Err(err) => {
            tracing::warn!(error = %err, "database is not reachable");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "checks": { "database": { "status": "error", "backend": backend, "error": err.to_string() } },
            }))
        }
    }
}
