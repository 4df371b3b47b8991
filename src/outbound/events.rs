//! `POST /api/events`: the site reports changes it made. Each is applied locally with fresh
//! version stamps and its delivery to the CRM queued, in one transaction; `202` once committed.

use super::changes::{self, LocalChange, Rejected};
use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::apply::SyncContext;
use crate::sync::mapping::{NUL_MESSAGE, RecordType, nul_at};
use crate::sync::view::{View, Wanted};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use entity::app_events;
use sea_orm::{DatabaseTransaction, DbErr, Set, TransactionTrait};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Most events one request may carry.
pub const MAX_EVENTS: usize = 500;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/events", "POST").route(web::post().to(post_events)));
}

/// One validated event.
#[derive(Debug, Clone)]
pub struct AppEvent {
    pub id: String,
    pub event_type: String,
    pub change: LocalChange,
}

/// What a request came to: accepted (some may be repeats), or the event that was rejected.
pub type Outcome = Result<Accepted, (String, Rejected)>;

#[derive(Debug, Serialize)]
pub struct Accepted {
    accepted: Vec<String>,
    duplicates: Vec<String>,
}

async fn post_events(
    req: HttpRequest,
    body: web::Json<Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let events = std::sync::Arc::new(parse(body.into_inner(), key.as_deref())?);
    let outcome = state.writer.app_events(state.sync.clone(), events).await?;
    match outcome {
        Ok(answer) => {
            state.delivery.wake.notify_one();
            Ok(HttpResponse::Accepted().json(answer))
        }
        Err((id, rejected)) => Err(rejected.to_api_error(Some(&format!("event {id}")))),
    }
}

/// Records and applies the app-event requests of a writer group together, with a fixed number of
/// statements per table for the group (one [`View`]), each request all or nothing. When a request
/// is rejected or a statement fails, the group is rolled back and each request is done again
/// alone, in a savepoint of its own, so that it fails alone.
pub async fn record_all(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    requests: &[Arc<Vec<AppEvent>>],
) -> Vec<Result<Outcome, DbErr>> {
    let together = async {
        let savepoint = c.begin().await?;
        match record_set(&savepoint, ctx, requests).await {
            Ok(Some(outcomes)) => savepoint.commit().await.map(|()| Some(outcomes)),
            Ok(None) => savepoint.rollback().await.map(|()| None),
            Err(e) => {
                tracing::debug!(error = %e, requests = requests.len(), "a group of app events failed: one at a time");
                savepoint.rollback().await.map(|()| None)
            }
        }
    };
    if let Ok(Some(outcomes)) = together.await {
        return outcomes.into_iter().map(Ok).collect();
    }
    let mut out = Vec::with_capacity(requests.len());
    for events in requests {
        out.push(record_one(c, ctx, events).await);
    }
    out
}

/// The whole group in one view; `None` when a request was rejected.
async fn record_set(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    requests: &[Arc<Vec<AppEvent>>],
) -> Result<Option<Vec<Outcome>>, DbErr> {
    // The first event of each id in the group; a later one is its repeat.
    let mut first: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut rows = Vec::new();
    for (r, events) in requests.iter().enumerate() {
        for (e, event) in events.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = first.entry(event.id.as_str()) {
                slot.insert((r, e));
                rows.push(seen_row(event));
            }
        }
    }
    rows.sort_by(|a, b| a.id.as_ref().cmp(b.id.as_ref()));
    let new: HashSet<String> = crate::db::insert_absent(c, rows, app_events::Column::Id).await?.into_iter().collect();
    let is_new =
        |r: usize, e: usize, event: &AppEvent| first.get(event.id.as_str()) == Some(&(r, e)) && new.contains(&event.id);
    let mut wanted = Wanted::default();
    for (r, events) in requests.iter().enumerate() {
        for (_, event) in events.iter().enumerate().filter(|(e, event)| is_new(r, *e, event)) {
            changes::wanted(&event.change, &mut wanted);
        }
    }
    let mut view = View::new(c);
    view.prefetch(wanted).await?;
    let mut outcomes = Vec::with_capacity(requests.len());
    for (r, events) in requests.iter().enumerate() {
        let mut answer = Accepted { accepted: Vec::new(), duplicates: Vec::new() };
        for (e, event) in events.iter().enumerate() {
            if !is_new(r, e, event) {
                answer.duplicates.push(event.id.clone());
                continue;
            }
            if changes::apply_in(&mut view, ctx, event.change.clone(), Some(&event.id)).await?.is_err() {
                return Ok(None);
            }
            answer.accepted.push(event.id.clone());
        }
        outcomes.push(Ok(answer));
    }
    view.flush().await?;
    Ok(Some(outcomes))
}

/// One request alone, all or nothing: a rejected event rolls the whole request back.
async fn record_one(c: &DatabaseTransaction, ctx: &SyncContext, events: &[AppEvent]) -> Result<Outcome, DbErr> {
    let all = c.begin().await?;
    let mut answer = Accepted { accepted: Vec::new(), duplicates: Vec::new() };
    for event in events.iter().cloned() {
        if crate::db::insert_absent(&all, vec![seen_row(&event)], app_events::Column::Id).await?.is_empty() {
            answer.duplicates.push(event.id);
            continue;
        }
        if let Err(rejected) = changes::apply(&all, ctx, event.change, Some(&event.id)).await? {
            all.rollback().await?;
            return Ok(Err((event.id, rejected)));
        }
        answer.accepted.push(event.id);
    }
    all.commit().await?;
    Ok(Ok(answer))
}

/// The row that marks app event `event` as seen.
fn seen_row(event: &AppEvent) -> app_events::ActiveModel {
    app_events::ActiveModel {
        id: Set(event.id.clone()),
        event_type: Set(event.event_type.clone()),
        record_type: Set(event.change.record_type.as_str().to_owned()),
        record_id: Set(event.change.id.clone()),
        received_at: Set(Utc::now()),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
}

/// One event, or `{"events": [...]}` with 1 to 500; an event without an `id` takes the
/// idempotency key (`<key>:<index>` in a batch). Pure: public for the fuzz target.
pub fn parse(body: Value, idempotency_key: Option<&str>) -> Result<Vec<AppEvent>, ApiError> {
    let (list, batch) = match body {
        Value::Object(mut o) if o.contains_key("events") => match o.remove("events") {
            Some(Value::Array(list)) => (list, true),
            _ => return Err(invalid("events: expected an array".into())),
        },
        single @ Value::Object(_) => (vec![single], false),
        _ => return Err(invalid("expected an event object or {\"events\": [...]}".into())),
    };
    if list.is_empty() || list.len() > MAX_EVENTS {
        return Err(invalid(format!("events: expected 1 to {MAX_EVENTS} events, got {}", list.len())));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, event)| {
            let at = if batch { format!("events[{i}].") } else { String::new() };
            parse_event(event, idempotency_key.map(|k| if batch { format!("{k}:{i}") } else { k.to_owned() }))
                .map_err(|message| invalid(format!("{at}{message}")))
        })
        .collect()
}

fn parse_event(event: Value, fallback_id: Option<String>) -> Result<AppEvent, String> {
    if let Some(path) = nul_at(&event) {
        return Err(format!("{path}: {NUL_MESSAGE}"));
    }
    let Value::Object(mut event) = event else { return Err("expected an object".into()) };
    let id = match event.remove("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id,
        None | Some(Value::Null) => fallback_id.ok_or("id: required (or send an Idempotency-Key header)")?,
        _ => return Err("id: expected a non-empty string".into()),
    };
    let event_type = match event.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err("type: required".into()),
    };
    let (record_type, action) = kind(&event_type).ok_or_else(|| format!("type: unknown event type {event_type:?}"))?;
    if let Some(at) = event.get("occurredAt")
        && at.as_str().is_none_or(|s| chrono::DateTime::parse_from_rfc3339(s).is_err())
    {
        return Err("occurredAt: expected an RFC 3339 time".into());
    }
    let Some(Value::Object(data)) = event.remove("data") else { return Err("data: expected an object".into()) };
    let mut values: Map<String, Value> = data.into_iter().map(|(k, v)| (snake_case(&k), v)).collect();
    let record_id = match values.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::Number(n)) if n.is_i64() => n.to_string(),
        _ => return Err("data.id: required".into()),
    };
    if action == "cancelled" {
        values.insert("status".into(), Value::String("cancelled".into()));
    }
    let change =
        LocalChange { record_type, id: record_id, values, create: action == "created", delete: action == "deleted" };
    Ok(AppEvent { id, event_type, change })
}

/// The record type and action of an event type the site may send.
fn kind(event_type: &str) -> Option<(RecordType, &'static str)> {
    Some(match event_type {
        "owner.registered" => (RecordType::Contact, "created"),
        "owner.updated" => (RecordType::Contact, "updated"),
        "property.created" => (RecordType::Property, "created"),
        "property.updated" => (RecordType::Property, "updated"),
        "property.deleted" => (RecordType::Property, "deleted"),
        "enquiry.created" => (RecordType::Enquiry, "created"),
        "enquiry.updated" => (RecordType::Enquiry, "updated"),
        "booking.created" => (RecordType::Booking, "created"),
        "booking.updated" => (RecordType::Booking, "updated"),
        "booking.cancelled" => (RecordType::Booking, "cancelled"),
        "membership.created" => (RecordType::Membership, "created"),
        "membership.updated" => (RecordType::Membership, "updated"),
        _ => return None,
    })
}

/// `pricePerNight` → `price_per_night`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn camel_case_columns_become_snake_case() {
        assert_eq!(snake_case("pricePerNight"), "price_per_night");
        assert_eq!(snake_case("crmLastSyncedAt"), "crm_last_synced_at");
        assert_eq!(snake_case("title"), "title");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let no_data = parse(json!({"id": "e1", "type": "owner.updated"}), None).unwrap_err();
        assert!(no_data.message.contains("data"), "{}", no_data.message);
        let bad_type =
            parse(json!({"events": [{"id": "e1", "type": "owner.exploded", "data": {"id": "u"}}]}), None).unwrap_err();
        assert!(bad_type.message.starts_with("events[0].type"), "{}", bad_type.message);
        let no_id = parse(json!({"type": "owner.updated", "data": {"id": "u"}}), None).unwrap_err();
        assert!(no_id.message.starts_with("id"), "{}", no_id.message);
        let keyed = parse(json!({"type": "owner.updated", "data": {"id": "u"}}), Some("k1")).unwrap();
        assert_eq!(keyed[0].id, "k1");
    }

    #[test]
    fn a_cancelled_booking_is_an_update_of_its_status() {
        let events = parse(json!({"id": "e", "type": "booking.cancelled", "data": {"id": 7}}), None).unwrap();
        assert_eq!(events[0].change.values.get("status"), Some(&json!("cancelled")));
        assert_eq!(events[0].change.id, "7");
        assert!(!events[0].change.delete);
    }
}
