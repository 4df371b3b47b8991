//! `GET /healthz` (the process answers) and `GET /readyz` (it can do its work: the database answers;
//! the CRM circuit breaker's state is shown too).

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
        Ok(()) => HttpResponse::Ok().json(json!({
            "status": "ready",
            "checks": {
                "database": {
                    "status": "ok",
                    "backend": backend,
                    "latencyMs": started.elapsed().as_secs_f64() * 1000.0,
                },
                "crm": state.delivery.circuit(),
            },
        })),
        Err(err) => {
            tracing::warn!(error = %err, "database is not reachable");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "checks": { "database": { "status": "error", "backend": backend, "error": err.to_string() } },
            }))
        }
    }
}
