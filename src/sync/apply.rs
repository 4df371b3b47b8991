//! Applying TreadSoft webhook events to the local tables: the inbox, last-writer-wins per field,
//! deletes and tombstones, echoes, records that wait for their parent, link-backs and the sync log.
//!
//! Everything for one event happens inside the caller's transaction; an event whose apply fails
//! is rolled back to its savepoint and recorded as `failed`, so it fails alone.

use super::hlc::{Hlc, Stamp};
use super::log::SyncLog;
use super::lww::{self, Origin, Version};
use super::mapping::{Field, Mapped, RecordType, crm_to_local};
use super::records::{self, Local};
use super::stamps;
use crate::outbound::outbox;
use chrono::{DateTime, Utc};
use entity::{crm_inbox, crm_outbox, crm_requests};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;

/// What the apply rules need besides the database.
#[derive(Debug)]
pub struct SyncContext {
    /// Which side wins a tie between a CRM change and a local one.
    pub precedence: Origin,
    /// The clock local writes are stamped with; it observes every stamp applied here.
    pub hlc: Hlc,
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Duplicate,
    Stale,
    Echo,
    Failed,
    Waiting,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Echo => "echo",
            Self::Failed => "failed",
            Self::Waiting => "waiting",
        }
    }
}

/// One line of a delivery's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResult {
    pub event_id: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A webhook event as TreadSoft sends it (API.md §4.2). Unknown members are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    change_source: Option<String>,
    request_id: Option<String>,
    #[serde(default)]
    changed_fields: Vec<String>,
    object: Object,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    #[serde(rename = "type")]
    object_type: String,
    id: String,
    external_id: Option<String>,
    version: i64,
    updated_at: DateTime<Utc>,
    created_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    data: Option<Map<String, Value>>,
}

/// The decision for one event, before it is written to the inbox.
#[derive(Debug)]
struct Decision {
    outcome: Outcome,
    reason: Option<String>,
    waiting_for: Option<String>,
    /// A TreadSoft record that now has a local record: events waiting for it can go ahead.
    linked: Option<(RecordType, String)>,
}

impl Decision {
    fn new(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self { outcome, reason: Some(reason.into()), waiting_for: None, linked: None }
    }

    fn applied(linked: Option<(RecordType, String)>) -> Self {
        Self { outcome: Outcome::Applied, reason: None, waiting_for: None, linked }
    }
}

/// Records event `raw` of delivery `delivery_id` in the inbox and applies it.
pub async fn receive(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    delivery_id: &str,
    raw: &Value,
) -> Result<EventResult, DbErr> {
    let event_id = raw.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let now = Utc::now();
    let event_type = raw.get("type").and_then(Value::as_str).unwrap_or_default();
    let object = raw.get("object");
    let row = crm_inbox::ActiveModel {
        event_id: Set(event_id.clone()),
        delivery_id: Set(delivery_id.to_owned()),
        event_type: Set(event_type.to_owned()),
        record_type: Set(object.and_then(|o| o.get("type")).and_then(Value::as_str).map(str::to_owned)),
        crm_id: Set(object.and_then(|o| o.get("id")).and_then(Value::as_str).map(str::to_owned)),
        received_at: Set(now),
        payload: Set(raw.to_string()),
        outcome: Set("received".to_owned()),
        reason: Set(None),
        waiting_for: Set(None),
        attempts: Set(1),
        processed_at: Set(now),
    };
    let inserted = crm_inbox::Entity::insert(row)
        .on_conflict_do_nothing_on([crm_inbox::Column::EventId])
        .exec_without_returning(txn)
        .await?;
    if !matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        return Ok(EventResult { event_id, outcome: Outcome::Duplicate, reason: None });
    }

    let decision = apply_guarded(txn, ctx, raw).await?;
    let result = EventResult { event_id: event_id.clone(), outcome: decision.outcome, reason: decision.reason.clone() };
    record_outcome(txn, &event_id, &decision, false).await?;
    release_waiting(txn, ctx, decision.linked).await?;
    Ok(result)
}

/// Applies a stored event again (after a fix): `crm-gateway inbox replay` and the replay route.
pub async fn replay(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    event_id: &str,
) -> Result<Option<EventResult>, DbErr> {
    let Some(row) = crm_inbox::Entity::find_by_id(event_id).one(txn).await? else { return Ok(None) };
    let raw: Value = serde_json::from_str(&row.payload).map_err(|e| DbErr::Json(e.to_string()))?;
    let decision = apply_guarded(txn, ctx, &raw).await?;
    record_outcome(txn, event_id, &decision, true).await?;
    let result =
        EventResult { event_id: event_id.to_owned(), outcome: decision.outcome, reason: decision.reason.clone() };
    release_waiting(txn, ctx, decision.linked).await?;
    Ok(Some(result))
}

/// Applies events that waited for a record that now exists, and those that waited for them.
pub async fn release_waiting(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    linked: Option<(RecordType, String)>,
) -> Result<(), DbErr> {
    let mut queue: VecDeque<(RecordType, String)> = linked.into_iter().collect();
    while let Some((t, crm_id)) = queue.pop_front() {
        let waiting = crm_inbox::Entity::find()
            .filter(crm_inbox::Column::Outcome.eq(Outcome::Waiting.as_str()))
            .filter(crm_inbox::Column::WaitingFor.eq(waiting_key(t, &crm_id)))
            .all(txn)
            .await?;
        for row in waiting {
            let Ok(raw) = serde_json::from_str::<Value>(&row.payload) else { continue };
            let decision = apply_guarded(txn, ctx, &raw).await?;
            record_outcome(txn, &row.event_id, &decision, true).await?;
            queue.extend(decision.linked);
        }
    }
    Ok(())
}

fn waiting_key(t: RecordType, crm_id: &str) -> String {
    format!("{}:{crm_id}", t.as_str())
}

async fn record_outcome(
    txn: &DatabaseTransaction,
    event_id: &str,
    decision: &Decision,
    again: bool,
) -> Result<(), DbErr> {
    let Some(row) = crm_inbox::Entity::find_by_id(event_id).one(txn).await? else { return Ok(()) };
    let attempts = row.attempts + i32::from(again);
    let mut row: crm_inbox::ActiveModel = row.into();
    row.outcome = Set(decision.outcome.as_str().to_owned());
    row.reason = Set(decision.reason.clone());
    row.waiting_for = Set(decision.waiting_for.clone());
    row.attempts = Set(attempts);
    row.processed_at = Set(Utc::now());
    row.update(txn).await?;
    Ok(())
}

/// Applies in a savepoint; a database error rolls the event back and is tried once more (another
/// gateway instance may have created the same record meanwhile), then recorded as `failed`.
async fn apply_guarded(txn: &DatabaseTransaction, ctx: &SyncContext, raw: &Value) -> Result<Decision, DbErr> {
    let mut last_error = None;
    for _ in 0..2 {
        let savepoint = txn.begin().await?;
        match apply_event(&savepoint, ctx, raw).await {
            Ok(decision) => {
                savepoint.commit().await?;
                return Ok(decision);
            }
            Err(e) => {
                savepoint.rollback().await?;
                last_error = Some(e);
            }
        }
    }
    // A constraint the event's data breaks fails this event alone; anything else (a lost
    // connection, a lock timeout) fails the delivery, so TreadSoft sends it again.
    let Some(last_error) = last_error else { return Err(DbErr::Custom("no attempt was made".into())) };
    if last_error.sql_err().is_none() {
        return Err(last_error);
    }
    let error = last_error.to_string();
    tracing::warn!(%error, "an inbound event failed");
    let entity_id = raw.pointer("/object/externalId").and_then(Value::as_str).unwrap_or_default();
    SyncLog {
        entity_type: raw.pointer("/object/type").and_then(Value::as_str).unwrap_or("unknown"),
        entity_id,
        crm_id: raw.pointer("/object/id").and_then(Value::as_str),
        action: "update",
        status: "failed",
        request_data: Some(raw.to_string()),
        error_message: Some(error.clone()),
        ..Default::default()
    }
    .write(txn)
    .await?;
    Ok(Decision::new(Outcome::Failed, format!("database error: {error}")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Updated,
    Deleted,
}

/// How the local record was found.
enum Found {
    ByCrmId(Local),
    /// By `externalId` or (contacts) by email: not linked to this TreadSoft record yet.
    Unlinked(Local, bool),
    Nothing,
}

async fn apply_event(c: &DatabaseTransaction, ctx: &SyncContext, raw: &Value) -> Result<Decision, DbErr> {
    let event: Event = match serde_json::from_value(raw.clone()) {
        Ok(event) => event,
        Err(e) => return Ok(Decision::new(Outcome::Failed, format!("not a valid event: {e}"))),
    };
    let Some((type_name, action)) = event.event_type.split_once('.') else {
        return Ok(Decision::new(Outcome::Failed, format!("unknown event type {:?}", event.event_type)));
    };
    let Some(t) = RecordType::parse(type_name).filter(|_| event.object.object_type == type_name) else {
        return Ok(Decision::new(Outcome::Failed, format!("unknown record type in {:?}", event.event_type)));
    };
    let action = match action {
        "created" => Action::Created,
        "updated" => Action::Updated,
        "deleted" => Action::Deleted,
        other => return Ok(Decision::new(Outcome::Failed, format!("unknown action {other:?}"))),
    };
    let object = &event.object;
    let version = Version {
        stamp: Stamp { ms: object.updated_at.timestamp_millis(), seq: object.version },
        origin: Origin::Crm,
        event_id: event.id.clone(),
    };
    let tombstone = stamps::tombstone(c, t, &object.id).await?;
    let found = match locate(c, t, object).await? {
        Ok(found) => found,
        Err(conflict) => return Ok(Decision::new(Outcome::Failed, conflict)),
    };

    if action == Action::Deleted {
        return delete(c, ctx, t, object, &version, tombstone, found, raw).await;
    }
    if let Some(tombstone) = &tombstone {
        let why = if lww::deleted_after(&version, tombstone) { "a later delete" } else { "a delete" };
        return Ok(Decision::new(Outcome::Stale, format!("the record was deleted in TreadSoft ({why} wins)")));
    }
    let Some(data) = &object.data else {
        return Ok(Decision::new(Outcome::Failed, "object.data is missing"));
    };

    let (local, linking, link_back) = match found {
        Found::Nothing => return create(c, ctx, t, object, data, &version, raw).await,
        Found::ByCrmId(local) => (local, false, false),
        Found::Unlinked(local, link_back) => (local, true, link_back),
    };
    if local.is_deleted() {
        return Ok(Decision::new(Outcome::Stale, "the record was deleted locally"));
    }

    let mut candidates: Vec<&'static Field> = if action == Action::Created || linking {
        t.fields().iter().collect()
    } else {
        t.local_fields_for(event.changed_fields.iter().map(String::as_str))
    };
    let mut echo_reason = "no synced field changed";
    if let Some(sent) = own_request_fields(c, &event).await? {
        candidates.retain(|f| !f.crm.iter().all(|name| sent.iter().any(|s| s == name)));
        echo_reason = "an echo of the gateway's own request";
    } else if event.change_source.as_deref() == Some("api") {
        // An API change to a field whose local change is still on its way to the CRM may be the
        // echo of a request whose id is not recorded yet: the local change stands.
        match outbox::unconfirmed_fields(c, t, &local.id).await? {
            None => candidates.clear(),
            Some(fields) => candidates.retain(|f| !fields.contains(f.local)),
        }
        echo_reason = "a local change to these fields is still being delivered";
    }

    let mapped = match map_fields(c, &candidates, data).await? {
        Ok(mapped) => mapped,
        Err(decision) => return Ok(decision),
    };
    let stored = stamps::field_versions(c, t, &local.id).await?;
    let fallback =
        Version { stamp: Stamp { ms: local.updated_at_ms(), seq: 0 }, origin: Origin::Local, event_id: String::new() };
    let (mut changes, mut changed, mut equal, mut stale) = (Map::new(), Vec::new(), 0, 0);
    for (field, value) in mapped {
        let stored_version = stored.get(field.local).unwrap_or(&fallback);
        if !lww::wins(&version, Some(stored_version), ctx.precedence) {
            stale += 1;
        } else if local.values.get(field.local) == Some(&value) {
            equal += 1;
        } else {
            changes.insert(field.local.to_owned(), value);
            changed.push(field.local);
        }
    }

    if changes.is_empty() && !linking {
        return Ok(match (equal, stale) {
            (0, 0) => Decision::new(Outcome::Echo, echo_reason),
            (0, _) => Decision::new(Outcome::Stale, "every changed field holds a newer value"),
            _ => Decision::new(Outcome::Echo, "the values equal what is stored"),
        });
    }
    // Fields never stamped keep the stamp they had implicitly (the row's updated_at).
    let unstamped: Vec<&str> =
        t.fields().iter().map(|f| f.local).filter(|f| !stored.contains_key(*f) && !changed.contains(f)).collect();
    stamps::set_field_versions(c, t, &local.id, &unstamped, &fallback).await?;
    stamps::set_field_versions(c, t, &local.id, &changed, &version).await?;
    mark_synced(&mut changes, &object.id, outbox::sync_status(c, t, &local.id, None).await?);
    records::update(c, t, &local, changes).await?;
    if link_back {
        queue_link_back(c, t, &local.id, &object.id).await?;
    }
    log_applied(c, t, &local.id, &object.id, "update", raw).await?;
    ctx.hlc.observe(version.stamp);
    Ok(Decision::applied(linking.then(|| (t, object.id.clone()))))
}

/// Finds the local record for a TreadSoft record: by `crm_id`, then `externalId`, then (contacts) email.
async fn locate(c: &DatabaseTransaction, t: RecordType, object: &Object) -> Result<Result<Found, String>, DbErr> {
    if let Some(local) = records::find_by_crm_id(c, t, &object.id).await? {
        return Ok(Ok(Found::ByCrmId(local)));
    }
    if let Some(external_id) = object.external_id.as_deref()
        && let Some(local) = records::find_by_id(c, t, external_id).await?
    {
        return Ok(match local.crm_id() {
            None => Ok(Found::Unlinked(local, false)),
            Some(other) => Err(format!("externalId {external_id} is linked to TreadSoft record {other}")),
        });
    }
    if t == RecordType::Contact
        && let Some(email) = object.data.as_ref().and_then(|d| d.get("email")).and_then(Value::as_str)
        && let Some(local) = records::find_user_by_email(c, email).await?
    {
        return Ok(match local.crm_id() {
            None => Ok(Found::Unlinked(local, true)),
            Some(other) => Err(format!("user {} with this email is linked to TreadSoft record {other}", local.id)),
        });
    }
    Ok(Ok(Found::Nothing))
}

/// The TreadSoft fields the gateway's own request set, when this event is the echo of one.
async fn own_request_fields(c: &DatabaseTransaction, event: &Event) -> Result<Option<Vec<String>>, DbErr> {
    let (Some("api"), Some(request_id)) = (event.change_source.as_deref(), event.request_id.as_deref()) else {
        return Ok(None);
    };
    let Some(request) = crm_requests::Entity::find_by_id(request_id).one(c).await? else { return Ok(None) };
    Ok(Some(serde_json::from_str(&request.fields).unwrap_or_default()))
}

/// Maps fields to local values, resolving references to local ids. `Err` is the decision for an
/// event that cannot be applied yet (`waiting`) or at all (`failed`).
async fn map_fields(
    c: &DatabaseTransaction,
    fields: &[&'static Field],
    data: &Map<String, Value>,
) -> Result<Result<Vec<(&'static Field, Value)>, Decision>, DbErr> {
    let mut out = Vec::with_capacity(fields.len());
    for field in fields {
        let value = match crm_to_local(field, data) {
            Err(e) => return Ok(Err(Decision::new(Outcome::Failed, e.to_string()))),
            Ok(Mapped::Value(value)) => value,
            Ok(Mapped::Ref { crm_id: None, .. }) => Value::Null,
            Ok(Mapped::Ref { target, crm_id: Some(crm_id), .. }) => {
                match records::find_by_crm_id(c, target, &crm_id).await?.filter(|l| !l.is_deleted()) {
                    Some(parent) => parent.values.get("id").cloned().unwrap_or(Value::Null),
                    None => {
                        let mut decision = Decision::new(
                            Outcome::Waiting,
                            format!("waiting for {} {crm_id}, which is not known here yet", target.as_str()),
                        );
                        decision.waiting_for = Some(waiting_key(target, &crm_id));
                        return Ok(Err(decision));
                    }
                }
            }
        };
        out.push((*field, value));
    }
    Ok(Ok(out))
}

/// Creates the local record for a TreadSoft record no local record links to.
async fn create(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    t: RecordType,
    object: &Object,
    data: &Map<String, Value>,
    version: &Version,
    raw: &Value,
) -> Result<Decision, DbErr> {
    let fields: Vec<&'static Field> = t.fields().iter().collect();
    let mapped = match map_fields(c, &fields, data).await? {
        Ok(mapped) => mapped,
        Err(decision) => return Ok(decision),
    };
    let mut values: Map<String, Value> = mapped.into_iter().map(|(f, v)| (f.local.to_owned(), v)).collect();
    if t == RecordType::Contact {
        let id = object.external_id.clone().unwrap_or_else(|| format!("user_{}", uuid::Uuid::now_v7().simple()));
        values.insert("id".into(), Value::String(id));
    }
    values.insert(
        "created_at".into(),
        serde_json::to_value(object.created_at.unwrap_or(object.updated_at)).unwrap_or_default(),
    );
    values.insert("deleted_at".into(), Value::Null);
    mark_synced(&mut values, &object.id, "synced");
    let local = records::insert(c, t, values).await?;
    let fields: Vec<&str> = t.fields().iter().map(|f| f.local).collect();
    stamps::set_field_versions(c, t, &local.id, &fields, version).await?;
    if object.external_id.as_deref() != Some(local.id.as_str()) {
        queue_link_back(c, t, &local.id, &object.id).await?;
    }
    log_applied(c, t, &local.id, &object.id, "create", raw).await?;
    ctx.hlc.observe(version.stamp);
    Ok(Decision::applied(Some((t, object.id.clone()))))
}

#[allow(clippy::too_many_arguments)]
async fn delete(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    t: RecordType,
    object: &Object,
    version: &Version,
    tombstone: Option<Version>,
    found: Found,
    raw: &Value,
) -> Result<Decision, DbErr> {
    if tombstone.as_ref().is_some_and(|stored| !lww::wins(version, Some(stored), ctx.precedence)) {
        return Ok(Decision::new(Outcome::Echo, "already deleted"));
    }
    let local = match found {
        Found::ByCrmId(local) | Found::Unlinked(local, _) => Some(local),
        Found::Nothing => None,
    };
    stamps::set_tombstone(c, t, &object.id, local.as_ref().map(|l| l.id.as_str()), version).await?;
    ctx.hlc.observe(version.stamp);
    let Some(local) = local else {
        return Ok(Decision::new(
            Outcome::Applied,
            "no local record; the delete is kept so older changes cannot create it",
        ));
    };
    if local.is_deleted() {
        return Ok(Decision::new(Outcome::Echo, "already deleted locally"));
    }
    let mut changes = Map::new();
    changes.insert(
        "deleted_at".into(),
        serde_json::to_value(object.deleted_at.unwrap_or(object.updated_at)).unwrap_or_default(),
    );
    mark_synced(&mut changes, &object.id, outbox::sync_status(c, t, &local.id, None).await?);
    records::update(c, t, &local, changes).await?;
    log_applied(c, t, &local.id, &object.id, "delete", raw).await?;
    Ok(Decision::applied(None))
}

/// Adds `updated_at` and the three `crm_*` columns of a record the CRM just synced. The status
/// stays `pending` or `failed` while a local change of the record has not reached the CRM.
fn mark_synced(values: &mut Map<String, Value>, crm_id: &str, status: &str) {
    let now = Utc::now();
    values.insert("updated_at".into(), serde_json::to_value(now).unwrap_or_default());
    values.insert("crm_id".into(), Value::String(crm_id.to_owned()));
    values.insert("crm_sync_status".into(), Value::String(status.to_owned()));
    values.insert("crm_last_synced_at".into(), Value::from(now.timestamp_millis()));
}

/// Queues setting `externalId` on the TreadSoft record, so TreadSoft knows the local id too.
async fn queue_link_back(c: &DatabaseTransaction, t: RecordType, local_id: &str, crm_id: &str) -> Result<(), DbErr> {
    let now = Utc::now();
    crm_outbox::ActiveModel {
        record_type: Set(t.as_str().to_owned()),
        record_id: Set(local_id.to_owned()),
        operation: Set("link".to_owned()),
        fields: Set(Some(r#"["externalId"]"#.to_owned())),
        event_id: Set(None),
        status: Set("pending".to_owned()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        last_error: Set(None),
        idempotency_key: Set(format!("link-{}-{local_id}-{crm_id}", t.as_str())),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(c)
    .await?;
    Ok(())
}

async fn log_applied(
    c: &impl ConnectionTrait,
    t: RecordType,
    local_id: &str,
    crm_id: &str,
    action: &str,
    raw: &Value,
) -> Result<(), DbErr> {
    SyncLog {
        entity_type: t.as_str(),
        entity_id: local_id,
        crm_id: Some(crm_id),
        action,
        status: "success",
        request_data: Some(raw.to_string()),
        ..Default::default()
    }
    .write(c)
    .await
}
