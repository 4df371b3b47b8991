//! The inbox's recovery routes: replaying one stored event (`POST /api/crm/inbox/{eventId}/replay`)
//! or every failed one (`POST /api/crm/inbox/replay-failed?since=`). The work is
//! [`sync_inbox::replay_one`] and [`sync_inbox::replay_failed`], which the CLI and the dashboard
//! use too.

use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::inbox as sync_inbox;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/crm/inbox/replay-failed", "POST").route(web::post().to(replay_failed_route)))
        .service(resource("/crm/inbox/{event_id}/replay", "POST").route(web::post().to(replay_route)));
}

async fn replay_route(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let event_id = path.into_inner();
    match sync_inbox::replay_one(&state.writer, state.sync.clone(), event_id.clone()).await? {
        Some(result) => Ok(HttpResponse::Ok().json(result)),
        None => Err(ApiError::not_found(format!("the inbox has no event {event_id}"))),
    }
}

#[derive(Deserialize)]
struct Since {
    /// Only events received at or after this time (RFC 3339); all failed events without it.
    since: Option<String>,
}

async fn replay_failed_route(query: web::Query<Since>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let since = match query.into_inner().since {
        None => None,
        Some(text) => Some(text.parse::<DateTime<Utc>>().map_err(|e| {
            ApiError::new(
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("since: expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got {text:?} ({e})"),
            )
        })?),
    };
    let summary = sync_inbox::replay_failed(&state.writer, state.db.reader(), state.sync.clone(), since).await?;
    Ok(HttpResponse::Ok().json(summary))
}
