//! The outbox's recovery routes: retrying dead letters (`failed` rows), one, one record's, or
//! all (of a type). The work is [`outbox::retry_one`] and [`outbox::retry_failed`], which the
//! CLI and the dashboard use too.

use super::outbox::{self, RetryOne};
use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::mapping::RecordType;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/crm/outbox/retry-failed", "POST").route(web::post().to(retry_failed_route)))
        .service(resource("/crm/outbox/{id}/retry", "POST").route(web::post().to(retry_route)));
}

async fn retry_route(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let id: i64 = raw.parse().map_err(|_| ApiError::not_found(format!("no outbox row {raw}")))?;
    match outbox::retry_one(&state.writer, id).await? {
        RetryOne::Queued => {
            state.delivery.wake.notify_one();
            Ok(HttpResponse::Ok().json(json!({ "id": id, "status": "pending" })))
        }
        RetryOne::NotFound => Err(ApiError::not_found(format!("no outbox row {id}"))),
        RetryOne::NotRetryable(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_retryable",
            format!("outbox row {id} is {status}; only failed or pending rows can be retried"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryFilter {
    record_type: Option<String>,
    /// With `recordType`: only this record's failed rows.
    record_id: Option<String>,
}

async fn retry_failed_route(
    query: web::Query<RetryFilter>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let record_type = match query.record_type.as_deref() {
        None => None,
        Some(name) => Some(RecordType::parse(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("recordType: expected contact, property, enquiry, booking or membership, got {name:?}"),
            )
        })?),
    };
    if query.record_id.is_some() && record_type.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "recordId needs recordType: a record id is only unique within its type",
        ));
    }
    let count = outbox::retry_failed(&state.writer, record_type, query.record_id).await?;
    state.delivery.wake.notify_one();
    Ok(HttpResponse::Ok().json(json!({ "retried": count })))
}
