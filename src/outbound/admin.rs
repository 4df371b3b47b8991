//! Operating the outbox: retrying dead letters (`failed` rows), one or all.

use super::outbox;
use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::mapping::RecordType;
use crate::writer::{WriteError, Writer};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use entity::crm_outbox;
use sea_orm::{ColumnTrait, Condition, EntityTrait};
use serde::Deserialize;
use serde_json::json;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/crm/outbox/retry-failed", "POST").route(web::post().to(retry_failed_route)))
        .service(resource("/crm/outbox/{id}/retry", "POST").route(web::post().to(retry_route)));
}

/// What retrying one row came to.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryOne {
    Queued,
    NotFound,
    /// The row is delivered or being delivered; its status is given.
    NotRetryable(String),
}

/// Makes a `failed` (or waiting `pending`) row due now, with a fresh attempt count.
pub async fn retry_one(writer: &Writer, id: i64) -> Result<RetryOne, WriteError> {
    writer
        .run(move |txn| {
            Box::pin(async move {
                let Some(row) = crm_outbox::Entity::find_by_id(id).one(txn).await? else {
                    return Ok(RetryOne::NotFound);
                };
                // Guarded by status in the update itself: a row another instance claims between
                // the read and the update stays in flight instead of going out twice at once.
                let retryable = Condition::all()
                    .add(crm_outbox::Column::Id.eq(id))
                    .add(crm_outbox::Column::Status.is_in(["failed", "pending"]));
                if outbox::make_due(txn, retryable).await? == 0 {
                    return Ok(RetryOne::NotRetryable(row.status));
                }
                Ok(RetryOne::Queued)
            })
        })
        .await
}

/// Makes every `failed` row (of one record type, if given) due now; returns how many.
pub async fn retry_failed(writer: &Writer, record_type: Option<RecordType>) -> Result<u64, WriteError> {
    writer
        .run(move |txn| {
            Box::pin(async move {
                let mut which = Condition::all().add(crm_outbox::Column::Status.eq("failed"));
                if let Some(t) = record_type {
                    which = which.add(crm_outbox::Column::RecordType.eq(t.as_str()));
                }
                outbox::make_due(txn, which).await
            })
        })
        .await
}

async fn retry_route(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let id: i64 = raw.parse().map_err(|_| ApiError::not_found(format!("no outbox row {raw}")))?;
    match retry_one(&state.writer, id).await? {
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
}

async fn retry_failed_route(
    query: web::Query<RetryFilter>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
    let count = retry_failed(&state.writer, record_type).await?;
    state.delivery.wake.notify_one();
    Ok(HttpResponse::Ok().json(json!({ "retried": count })))
}
