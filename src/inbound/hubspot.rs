//! `POST /api/crm/webhooks/hubspot`: HubSpot's deliveries (`hubspot.md` §2), verified by their v3
//! signature over the configured `CRM_WEBHOOK_URL`, turned into provider-neutral changes and
//! recorded and applied through the same inbox as TreadSoft's.
//!
//! A delivery is an array of up to 100 events, in no particular order, one property each. The
//! events are folded per object, the touched objects read in one batch read per record type (each
//! property with its history), and each event becomes one change: a property change stamped by
//! its property's own change time (else the event's `occurredAt`), a creation with every field, a
//! deletion, a merge (the merged records tombstoned, the local record linked to the survivor,
//! then the survivor's values applied). Associations and subscriptions of objects or properties
//! that are not mapped are recorded as `ignored` and answered 200, so that HubSpot does not send
//! them again.

use super::routes::{record, refusal};
use crate::config::{HubSpotInbound, Provider};
use crate::crm::CrmRecord;
use crate::crm::hubspot::events::{self, Event, Kind as EventKind};
use crate::crm::hubspot::signature;
use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::change::Change;
use crate::sync::echo;
use crate::sync::mapping::Kind;
use crate::sync::mapping::RecordType;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How long a delivery's reads may wait to be sent.
const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long after its creation an object HubSpot cannot read yet is waited for (503, sent again).
const READ_LAG: std::time::Duration = std::time::Duration::from_secs(120);

pub fn routes(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.service(
        resource("/api/crm/webhooks/hubspot", "POST")
            .app_data(web::PayloadConfig::new(body_limit))
            .route(web::post().to(receive)),
    );
}

#[tracing::instrument(name = "hubspot_webhook", skip_all, fields(events))]
async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Provider::HubSpot(inbound) = &state.config.provider else {
        return Err(ApiError::not_found("HubSpot is not the configured CRM (CRM_PROVIDER)"));
    };
    let refused = |e| refusal(&state, e);
    authenticate(&req, &body, &state, inbound).map_err(refused)?;
    let events = events::parse(&body).map_err(|e| refused(ApiError::bad_request("invalid_delivery", e.to_string())))?;
    tracing::Span::current().record("events", events.len());
    let started = std::time::Instant::now();
    let changes = changes_of(&state, inbound, &events).await?;
    record(&state, delivery_id(&body), changes, started).await
}

/// HubSpot gives a delivery no id: the body's hash names it in logs and answers.
fn delivery_id(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("hs-{}", hex::encode(&Sha256::digest(body)[..12]))
}

fn authenticate(req: &HttpRequest, body: &[u8], state: &AppState, inbound: &HubSpotInbound) -> Result<(), ApiError> {
    let secrets = &state.config.webhook_secrets;
    if secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook_secret_not_configured",
            "CRM_WEBHOOK_SECRET (the HubSpot app's client secret) is not set, so no webhook can be verified",
        ));
    }
    let Some(url) = &inbound.webhook_url else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook_url_not_configured",
            "CRM_WEBHOOK_URL (the public URL HubSpot calls, which its signature covers) is not set",
        ));
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let now_ms = Utc::now().timestamp_millis();
    signature::verify(
        header(signature::SIGNATURE_V3),
        header(signature::TIMESTAMP),
        req.method().as_str(),
        url,
        body,
        secrets,
        now_ms,
    )
    .map_err(|e| {
        tracing::warn!(code = e.code(), "refused an unverified HubSpot webhook");
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    })
}

/// The record type of an event's object, if it is mapped and on.
fn record_type(inbound: &HubSpotInbound, event: &Event) -> Option<RecordType> {
    let (object, _) = event.kind();
    let object = if object == "object" { event.object_type_id.as_deref().unwrap_or(object) } else { object };
    inbound.mapping.record_type_of(object)
}

/// Reads the objects the delivery creates or changes, once each, and turns every event into a
/// change. A read HubSpot cannot answer now is a 503: nothing is stored, and HubSpot sends the
/// delivery again.
async fn changes_of(
    state: &AppState,
    inbound: &HubSpotInbound,
    events: &[(Event, Value)],
) -> Result<Vec<Value>, ApiError> {
    let mut wanted: BTreeMap<RecordType, Vec<String>> = BTreeMap::new();
    // A merge's survivor is read too: its values come with the merge.
    for (event, _) in events.iter().filter(|(e, _)| e.kind().1 == EventKind::Merge) {
        if let (Some(t), Some(survivor)) = (record_type(inbound, event), survivor(event)) {
            wanted.entry(t).or_default().push(survivor.to_string());
        }
    }
    // Ids are unique per object type only: the fold keeps them apart.
    let mut deleted: HashSet<(RecordType, String)> = HashSet::new();
    for ((object, id), touched) in events::fold(events.iter().map(|(e, _)| e)) {
        let Some(t) = inbound.mapping.record_type_of(&object) else { continue };
        if touched.created_at.is_some() || !touched.properties.is_empty() {
            wanted.entry(t).or_default().push(id.to_string());
        }
        if touched.deleted_at.is_some() {
            deleted.insert((t, id.to_string()));
        }
    }
    for (event, _) in events.iter().filter(|(e, _)| e.kind().1 == EventKind::Merge) {
        if let Some(t) = record_type(inbound, event) {
            for id in merged_ids(event) {
                deleted.insert((t, id));
            }
        }
    }
    for ids in wanted.values_mut() {
        ids.sort();
        ids.dedup();
    }
    let crm = state.delivery.crm();
    let mut read: HashMap<(RecordType, String), CrmRecord> = HashMap::new();
    let unavailable = |why: String| {
        tracing::warn!(why, "could not read the objects of a HubSpot delivery");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "crm_unavailable",
            format!("the changed objects could not be read from HubSpot ({why}); send the delivery again"),
        )
    };
    // HubSpot waits 5 s for an answer: reads that cannot leave within READ_DEADLINE (the rate
    // limiter busy with deliveries, say) are not sent, and the delivery is answered 503.
    let deadline = std::time::Instant::now() + READ_DEADLINE;
    for (t, ids) in &wanted {
        let records = crate::crm::send_by(deadline, crm.read_many(*t, ids)).await;
        for record in records.map_err(|e| unavailable(e.to_string()))? {
            read.insert((*t, record.id.clone()), record);
        }
        // A creation HubSpot cannot show yet (its reads lag its writes) is sent again, for a
        // while: one older than READ_LAG is gone (deleted or merged since), and only recorded.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let missing = ids.iter().find(|id| {
            !read.contains_key(&(*t, (*id).clone()))
                && !deleted.contains(&(*t, (*id).clone()))
                && events.iter().any(|(e, _)| {
                    e.kind().1 == EventKind::Creation
                        && e.object_id.map(|o| o.to_string()).as_ref() == Some(*id)
                        && record_type(inbound, e) == Some(*t)
                        && now_ms - e.occurred_at < READ_LAG.as_millis() as i64
                })
        });
        if let Some(id) = missing
            && crm.keeps_records()
        {
            return Err(unavailable(format!("{} {id} was created but cannot be read yet", t.as_str())));
        }
    }
    let mut changes = Vec::with_capacity(events.len());
    for (event, _) in events {
        let change = change_of(inbound, event, &read);
        let survivor_values = survivor_change(&change, &read);
        changes.push(change.to_value());
        changes.extend(survivor_values.map(|c| c.to_value()));
    }
    Ok(changes)
}

/// An association added in HubSpot as the reference it stands for: the record it is from, the
/// reference field and the referenced record's id. Only the direction from the referring record
/// counts (`DEAL_TO_CONTACT` for a booking's guest; HubSpot sends the reverse too).
fn association(inbound: &HubSpotInbound, t: RecordType, event: &Event) -> Result<(String, String, Value), String> {
    let kind = event.association_type.as_deref().unwrap_or_default();
    let not_synced = || format!("association {kind:?} is not a reference the gateway syncs");
    let (_, to) = kind.split_once("_TO_").ok_or_else(not_synced)?;
    let target = inbound.mapping.record_type_of(&to.to_ascii_lowercase()).ok_or_else(not_synced)?;
    let field = t
        .fields()
        .iter()
        .find(|f| matches!(f.kind, Kind::Ref(x) | Kind::OptRef(x) if x == target))
        .ok_or_else(not_synced)?;
    let (Some(from), Some(to)) = (event.from_object_id, event.to_object_id) else {
        return Err("an association event without its two objects".into());
    };
    if event.association_removed.unwrap_or(false) {
        // Moving a deal to another contact is an addition and a removal, in either order: the
        // removal of one association does not say the reference is gone.
        return Err(format!(
            "an association removed: {}'s {} stays what it is (it changes when another is added)",
            t.as_str(),
            field.crm[0]
        ));
    }
    Ok((from.to_string(), field.crm[0].to_owned(), Value::String(to.to_string())))
}

/// The records a merge folds into its survivor, the primary first, in the event's order.
fn merged_ids(event: &Event) -> Vec<String> {
    let kept = survivor(event);
    let mut out: Vec<String> = Vec::new();
    for id in event.primary_object_id.iter().chain(event.object_id.iter()).chain(event.merged_object_ids.iter()) {
        let id = id.to_string();
        if Some(id.as_str()) != kept.map(|k| k.to_string()).as_deref() && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// The record a merge leaves: the new object when HubSpot made one, else the primary.
fn survivor(event: &Event) -> Option<i64> {
    event.new_object_id.or(event.primary_object_id).or(event.object_id)
}

/// After a merge, the survivor's values as read, applied (every field compared) once the merge
/// has linked the local record to it.
fn survivor_change(merge: &Change, read: &HashMap<(RecordType, String), CrmRecord>) -> Option<Change> {
    let (type_name, "merged") = merge.event_type.split_once('.')? else { return None };
    let t = RecordType::parse(type_name)?;
    let record = read.get(&(t, merge.object.id.clone()))?;
    let at = record.updated_at.unwrap_or(merge.object.updated_at);
    let mut change = Change::of(t, "created", format!("{}:survivor", merge.id), record.id.clone(), at);
    change.set_record(record);
    Some(change)
}

/// One event as a change.
fn change_of(inbound: &HubSpotInbound, event: &Event, read: &HashMap<(RecordType, String), CrmRecord>) -> Change {
    let key = event.key();
    let at = DateTime::<Utc>::from_timestamp_millis(event.occurred_at).unwrap_or_default();
    let crm_id = event.object_id.map(|id| id.to_string()).unwrap_or_default();
    let (object, kind) = event.kind();
    let ignored = |reason: String| Change::ignored(key.clone(), "hubspot", crm_id.clone(), at, reason);
    let Some(t) = record_type(inbound, event) else {
        return ignored(format!("{}: no synced record type is mapped to this object", event.subscription_type));
    };
    let mapping = &inbound.mapping;
    let record = read.get(&(t, crm_id.clone()));
    let mut change = match kind {
        EventKind::Creation | EventKind::Restore => {
            let Some(record) = record else {
                return ignored(format!("{} {crm_id} is gone from HubSpot (deleted or merged since)", object));
            };
            let mut change = Change::of(t, "created", key, crm_id, record.updated_at.unwrap_or(at));
            change.object.created_at = Some(at);
            change.set_record(record);
            change
        }
        EventKind::PropertyChange => {
            let property = event.property_name.as_deref().unwrap_or_default();
            let Some(field) = mapping.field_of(t, property) else {
                return ignored(format!("property {property:?} of {object} is not mapped"));
            };
            let field = field.to_owned();
            let (data, stamp) = match record {
                Some(record) => (record.fields.clone(), record.changed_at.get(&field).copied().unwrap_or(at)),
                // A name is one field here: a part alone would lose the other.
                None if matches!(field.as_str(), "firstName" | "lastName") => {
                    return ignored(format!(
                        "{property} changed, but {object} {crm_id} could not be read for the whole name"
                    ));
                }
                // Not readable (the mock CRM, or gone since): the event's own value and time.
                None => {
                    let text = event.property_value.as_deref().unwrap_or_default();
                    (Map::from_iter([(field.clone(), mapping.value_of(t, &field, text))]), at)
                }
            };
            let value = data.get(&field).cloned().unwrap_or(Value::Null);
            let mut change = Change::of(t, "updated", key, crm_id.clone(), stamp);
            change.echo_of = Some(echo::echo_of(t, &crm_id, &field, &value));
            change.changed_fields = vec![field];
            match record {
                Some(record) => change.set_record(record),
                None => {
                    // One field alone cannot make a record: it waits for the record to be here.
                    change.needs_record = true;
                    change.object.data = Some(data);
                }
            }
            change
        }
        EventKind::Deletion => {
            let mut change = Change::of(t, "deleted", key, crm_id, at);
            change.object.deleted_at = Some(at);
            change
        }
        EventKind::Merge => {
            let Some(kept) = survivor(event) else { return ignored("a merge that names no record".into()) };
            let mut change = Change::of(t, "merged", key, kept.to_string(), at);
            change.merged_ids = merged_ids(event);
            // The survivor's gateway id, when read, names the local record that stays.
            change.object.external_id = read.get(&(t, kept.to_string())).and_then(|r| r.external_id.clone());
            change
        }
        EventKind::Association => match association(inbound, t, event) {
            Ok((crm_id, field, value)) => {
                let mut change = Change::of(t, "updated", key, crm_id.clone(), at);
                change.needs_record = true;
                change.echo_of = Some(echo::echo_of(t, &crm_id, &field, &value));
                change.object.data = Some(Map::from_iter([(field.clone(), value)]));
                change.changed_fields = vec![field];
                change
            }
            Err(reason) => return ignored(reason),
        },
        EventKind::Unknown => return ignored(format!("subscription type {} is not synced", event.subscription_type)),
    };
    change.change_source = event.change_source.as_deref().map(|source| match source {
        // Changes made through the API may be the gateway's own: `api` keeps local changes still
        // on their way from being overwritten (a hint; HubSpot does not say which app wrote).
        "API" | "INTEGRATION" => "api".to_owned(),
        other => format!("hubspot:{}", other.to_ascii_lowercase()),
    });
    change
}
