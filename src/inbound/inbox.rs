//! Operating the inbox: replaying a stored event (`POST /api/crm/inbox/{eventId}/replay`).

use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::apply::SyncContext;
use crate::sync::inbox::{self as sync_inbox, EventResult};
use crate::writer::{WriteError, Writer};
use actix_web::{HttpResponse, web};
use std::sync::Arc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/crm/inbox/{event_id}/replay", "POST").route(web::post().to(replay_route)));
}

/// Applies stored event `event_id` again; `None` if the inbox has no such event.
pub async fn replay(
    writer: &Writer,
    sync: Arc<SyncContext>,
    event_id: String,
) -> Result<Option<EventResult>, WriteError> {
    writer.run(move |txn| Box::pin(async move { sync_inbox::replay(txn, &sync, &event_id).await })).await
}

async fn replay_route(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let event_id = path.into_inner();
    match replay(&state.writer, state.sync.clone(), event_id.clone()).await {
        Ok(Some(result)) => Ok(HttpResponse::Ok().json(result)),
        Ok(None) => Err(ApiError::not_found(format!("the inbox has no event {event_id}"))),
        Err(e) => Err(e.into()),
    }
}
