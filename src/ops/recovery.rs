//! What an operator asks when something is wrong, without SQL: the sync logs and the failures
//! (filtered, newest first, keyset-paginated), and one record's whole sync state. The routes
//! (`GET /api/crm/logs`, `/api/crm/failures/outbound`, `/api/crm/failures/inbound`,
//! `/api/crm/records/{type}/{id}`), the CLI (`crm-gateway logs`, `failures`, `inspect`) and the
//! dashboard call the same functions.

use crate::error::{ApiError, resource};
use crate::state::AppState;
use crate::sync::mapping::RecordType;
use crate::sync::{records, stamps};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use entity::enums::OutboxStatus;
use entity::{crm_inbox, crm_outbox, crm_sync_logs, sync_tombstones};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Rows a page holds unless asked otherwise, and at most.
pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 500;

/// Which rows a list shows. Every part is optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub record_type: Option<RecordType>,
    /// The local id (`user_...`, a property's number).
    pub record_id: Option<String>,
    pub crm_id: Option<String>,
    /// Logs only: `success`, `failed` or `pending`.
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One page, newest first, and the cursor of the next (older) page if there is one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

fn page<T>(mut items: Vec<T>, limit: u64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(cursor_of) } else { None };
    Page { items, next_cursor }
}

/// A cursor that is not one this gateway gave.
#[derive(Debug, thiserror::Error)]
#[error("cursor: {0:?} is not a cursor this list gave")]
pub struct BadCursor(String);

/// A sync log row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub id: i64,
    pub record_type: String,
    pub record_id: String,
    pub crm_id: Option<String>,
    pub action: String,
    pub status: String,
    pub error: Option<String>,
    /// JSON text as logged (never credentials or signatures).
    pub request: Option<String>,
    pub response: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The sync logs matching `filter`, newest first, older than row `before` (a page's cursor).
pub async fn logs(
    c: &impl ConnectionTrait,
    filter: &Filter,
    before: Option<i64>,
    limit: u64,
) -> Result<Page<LogEntry>, DbErr> {
    use crm_sync_logs::Column as L;
    let mut which = Condition::all();
    if let Some(t) = filter.record_type {
        which = which.add(L::EntityType.eq(t.as_str()));
    }
    if let Some(id) = &filter.record_id {
        which = which.add(L::EntityId.eq(id.as_str()));
    }
    if let Some(status) = &filter.status {
        which = which.add(L::Status.eq(status.as_str()));
    }
    if let Some(since) = filter.since {
        which = which.add(L::CreatedAt.gte(since));
    }
    if let Some(until) = filter.until {
        which = which.add(L::CreatedAt.lt(until));
    }
    if let Some(before) = before {
        which = which.add(L::Id.lt(before));
    }
    if let Some(crm_id) = &filter.crm_id {
        which = with_crm_id(c, filter.record_type, crm_id, which).await?;
    }
    let rows = crm_sync_logs::Entity::find()
        .filter(which)
        .order_by_desc(L::Id)
        .limit(limit + 1)
        .all(c)
        .await?
        .into_iter()
        .map(|row| LogEntry {
            id: row.id,
            record_type: row.entity_type,
            record_id: row.entity_id,
            crm_id: row.crm_id,
            action: row.action,
            status: row.status,
            error: row.error_message,
            request: row.request_data,
            response: row.response_data,
            created_at: row.created_at,
        })
        .collect();
    Ok(page(rows, limit, |row: &LogEntry| row.id.to_string()))
}

/// The sync logs with CRM id `crm_id` (of record type `t`, if given) that also meet `rest`, as a
/// condition the indexes serve: those of the local records linked to it, or deleted or merged away
/// while it was theirs (their tombstones), through the index by record, and the failed ones, whose
/// record may not exist here, through the index of failed logs' CRM ids. `rest` goes into each
/// branch, so that SQLite reads each through its index rather than by type or status. The sync
/// log keeps no index of every row's CRM id: one keyed by such a random id took a page of its own
/// for each event written (BENCHMARKS.md, session 15). What this does not find: the successful
/// logs of a record that was linked to `crm_id` and is no more, once its tombstone has been
/// removed by retention (or when there was none: the site changed or removed the link itself).
async fn with_crm_id(
    c: &impl ConnectionTrait,
    t: Option<RecordType>,
    crm_id: &str,
    rest: Condition,
) -> Result<Condition, DbErr> {
    use crm_sync_logs::Column as L;
    use sea_orm::sea_query::{Expr, ExprTrait};
    // A constant, not a bound value, so that the partial index's condition is seen to hold.
    let failed = Expr::col((crm_sync_logs::Entity, L::Status)).eq(Expr::Constant("failed".into()));
    let mut any = Condition::any().add(Condition::all().add(failed).add(L::CrmId.eq(crm_id)).add(rest.clone()));
    let crm_ids = [crm_id.to_owned()];
    for t in t.map_or(RecordType::ALL.to_vec(), |t| vec![t]) {
        let mut linked: Vec<String> =
            records::read_by_crm_ids(c, t, &crm_ids).await?.into_iter().map(|l| l.id).collect();
        let tombstone = sync_tombstones::Entity::find_by_id((t.as_str().to_owned(), crm_id.to_owned())).one(c).await?;
        linked.extend(tombstone.and_then(|t| t.entity_id));
        linked.sort();
        linked.dedup();
        for id in linked {
            let of_record = Condition::all().add(L::EntityType.eq(t.as_str())).add(L::EntityId.eq(id));
            any = any.add(of_record.add(L::CrmId.eq(crm_id)).add(rest.clone()));
        }
    }
    Ok(any)
}

/// A dead-lettered delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundFailure {
    pub id: i64,
    pub record_type: String,
    pub record_id: String,
    pub operation: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub failed_at: DateTime<Utc>,
}

impl From<crm_outbox::Model> for OutboundFailure {
    fn from(row: crm_outbox::Model) -> Self {
        Self {
            id: row.id,
            record_type: row.record_type,
            record_id: row.record_id,
            operation: row.operation.to_string(),
            attempts: row.attempts,
            error: row.last_error,
            failed_at: row.updated_at,
        }
    }
}

/// The dead-lettered deliveries matching `filter` (its `crm_id` and `status` do not apply),
/// newest row first.
pub async fn outbound_failures(
    c: &impl ConnectionTrait,
    filter: &Filter,
    before: Option<i64>,
    limit: u64,
) -> Result<Page<OutboundFailure>, DbErr> {
    use crm_outbox::Column as O;
    // The statuses as constants: with a record, through the index of open rows by record.
    let mut which = Condition::all().add(crate::outbound::outbox::status_in(&[OutboxStatus::Failed]));
    if let Some(t) = filter.record_type {
        which = which.add(O::RecordType.eq(t.as_str()));
    }
    if let Some(id) = &filter.record_id {
        which = which.add(O::RecordId.eq(id.as_str()));
    }
    if let Some(since) = filter.since {
        which = which.add(O::UpdatedAt.gte(since));
    }
    if let Some(until) = filter.until {
        which = which.add(O::UpdatedAt.lt(until));
    }
    if let Some(before) = before {
        which = which.add(O::Id.lt(before));
    }
    let rows = crm_outbox::Entity::find().filter(which).order_by_desc(O::Id).limit(limit + 1).all(c).await?;
    let rows = rows.into_iter().map(OutboundFailure::from).collect();
    Ok(page(rows, limit, |row: &OutboundFailure| row.id.to_string()))
}

/// A webhook event that failed to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundFailure {
    pub event_id: String,
    pub event_type: String,
    pub record_type: Option<String>,
    pub crm_id: Option<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub received_at: DateTime<Utc>,
}

impl From<crm_inbox::Model> for InboundFailure {
    fn from(row: crm_inbox::Model) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            record_type: row.record_type,
            crm_id: row.crm_id,
            attempts: row.attempts,
            error: row.reason,
            received_at: row.received_at,
        }
    }
}

/// Where a page of inbox rows ends: the received time and event id of its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxCursor {
    pub received_at: DateTime<Utc>,
    pub event_id: String,
}

impl std::fmt::Display for InboxCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nanoseconds: SQLite keeps them, and a cursor must compare equal to the row it names.
        write!(f, "{}.{}", self.received_at.timestamp_nanos_opt().unwrap_or_default(), self.event_id)
    }
}

impl std::str::FromStr for InboxCursor {
    type Err = BadCursor;

    fn from_str(cursor: &str) -> Result<Self, BadCursor> {
        let bad = || BadCursor(cursor.to_owned());
        let (nanos, event_id) = cursor.split_once('.').ok_or_else(bad)?;
        let received_at = DateTime::from_timestamp_nanos(nanos.parse().map_err(|_| bad())?);
        Ok(Self { received_at, event_id: event_id.to_owned() })
    }
}

/// A row-id cursor (logs, outbox rows).
pub fn id_cursor(cursor: &str) -> Result<i64, BadCursor> {
    cursor.parse().map_err(|_| BadCursor(cursor.to_owned()))
}

/// The webhook events that failed, matching `filter` (`crm_id` is the event's record; the
/// local `record_id` and `status` do not apply), newest first.
pub async fn inbound_failures(
    c: &impl ConnectionTrait,
    filter: &Filter,
    before: Option<InboxCursor>,
    limit: u64,
) -> Result<Page<InboundFailure>, DbErr> {
    use crm_inbox::Column as I;
    let mut which = Condition::all().add(I::Outcome.eq("failed"));
    if let Some(t) = filter.record_type {
        which = which.add(I::RecordType.eq(t.as_str()));
    }
    if let Some(crm_id) = &filter.crm_id {
        which = which.add(I::CrmId.eq(crm_id.as_str()));
    }
    if let Some(since) = filter.since {
        which = which.add(I::ReceivedAt.gte(since));
    }
    if let Some(until) = filter.until {
        which = which.add(I::ReceivedAt.lt(until));
    }
    if let Some(InboxCursor { received_at: at, event_id }) = before {
        which = which.add(
            Condition::any()
                .add(I::ReceivedAt.lt(at))
                .add(Condition::all().add(I::ReceivedAt.eq(at)).add(I::EventId.lt(event_id))),
        );
    }
    let rows = crm_inbox::Entity::find()
        .filter(which)
        .order_by_desc(I::ReceivedAt)
        .order_by_desc(I::EventId)
        .limit(limit + 1)
        .all(c)
        .await?;
    let rows = rows.into_iter().map(InboundFailure::from).collect();
    Ok(page(rows, limit, |row: &InboundFailure| {
        InboxCursor { received_at: row.received_at, event_id: row.event_id.clone() }.to_string()
    }))
}

/// One field's last-writer-wins stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldStamp {
    pub field: String,
    /// When the field's value was written, in milliseconds, and the sequence within that.
    pub stamp_ms: i64,
    pub stamp_seq: i64,
    /// Who wrote it: `crm`, `local`, ...
    pub origin: String,
    /// The event that wrote it.
    pub event_id: String,
}

/// An outbox row of the record not delivered yet: pending, in flight or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    pub id: i64,
    pub operation: String,
    pub status: String,
    pub fields: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook event as received and what became of it: a record's events (`inspect`) and the
/// status's recent ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxEvent {
    pub event_id: String,
    pub event_type: String,
    pub record_type: Option<String>,
    pub crm_id: Option<String>,
    /// The record's name as the event carries it (a contact's first and last name, a property's
    /// title, ...), so an operator recognises it; exactly as TreadSoft sent it.
    pub name: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub received_at: DateTime<Utc>,
}

impl From<crm_inbox::Model> for InboxEvent {
    fn from(row: crm_inbox::Model) -> Self {
        Self {
            name: record_name(&row.payload),
            event_id: row.event_id,
            event_type: row.event_type,
            record_type: row.record_type,
            crm_id: row.crm_id,
            outcome: row.outcome,
            reason: row.reason,
            received_at: row.received_at,
        }
    }
}

/// The name an event's record goes by, from its stored payload.
fn record_name(payload: &str) -> Option<String> {
    let event: Value = serde_json::from_str(payload).ok()?;
    let data = event.pointer("/object/data")?;
    let text = |key: &str| data.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (text("firstName"), text("lastName")) {
        (Some(first), Some(last)) => return Some(format!("{first} {last}")),
        (Some(one), None) | (None, Some(one)) => return Some(one.to_owned()),
        (None, None) => {}
    }
    ["name", "title", "guestName", "email"].into_iter().find_map(text).map(str::to_owned)
}

/// Everything the gateway knows of one record's sync.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub record_type: &'static str,
    pub record_id: String,
    /// The row as stored (column names as in the database), deleted or not.
    pub record: Option<Value>,
    pub crm_id: Option<String>,
    pub field_stamps: Vec<FieldStamp>,
    /// When TreadSoft's record was deleted here, if it was (a tombstone).
    pub tombstoned_at: Option<DateTime<Utc>>,
    /// Its deliveries not done yet: pending, in flight or dead-lettered. Those delivered are in
    /// `logs`; one skipped (a record the mapping does not sync, say) is not listed.
    pub outbox: Vec<OutboxEntry>,
    pub inbox: Vec<InboxEvent>,
    pub logs: Vec<LogEntry>,
}

/// Rows of each kind an inspection lists, newest first.
pub const INSPECT_ROWS: u64 = 50;

/// One record's row, stamps, undelivered outbox rows, inbox events and logs; `None` if the gateway
/// has never heard of it (no row, no undelivered outbox row, no log).
pub async fn inspect(c: &impl ConnectionTrait, t: RecordType, id: &str) -> Result<Option<Inspection>, DbErr> {
    let local = records::find_by_id(c, t, id).await?;
    let crm_id = local.as_ref().and_then(|l| l.crm_id().map(str::to_owned));
    let mut field_stamps: Vec<FieldStamp> = stamps::field_versions(c, t, id)
        .await?
        .into_iter()
        .map(|(field, v)| FieldStamp {
            field,
            stamp_ms: v.stamp.ms,
            stamp_seq: v.stamp.seq,
            origin: v.origin.as_str().to_owned(),
            event_id: v.event_id,
        })
        .collect();
    field_stamps.sort_by(|a, b| a.field.cmp(&b.field));
    // Its deliveries not done (through the index of open rows); those delivered are in its logs.
    let outbox: Vec<OutboxEntry> = crm_outbox::Entity::find()
        .filter(crm_outbox::Column::RecordType.eq(t.as_str()))
        .filter(crm_outbox::Column::RecordId.eq(id))
        .filter(crate::outbound::outbox::status_in(&crate::outbound::outbox::OPEN))
        .order_by_desc(crm_outbox::Column::Id)
        .limit(INSPECT_ROWS)
        .all(c)
        .await?
        .into_iter()
        .map(|row| OutboxEntry {
            id: row.id,
            operation: row.operation.to_string(),
            status: row.status.to_string(),
            fields: row.fields,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
        .collect();
    let filter = Filter { record_type: Some(t), record_id: Some(id.to_owned()), ..Default::default() };
    let logs = logs(c, &filter, None, INSPECT_ROWS).await?.items;
    let inbox = inbox_of(c, t, crm_id.as_deref(), &logs).await?;
    let tombstoned_at = match &crm_id {
        None => None,
        Some(crm_id) => {
            let tombstone = sync_tombstones::Entity::find_by_id((t.as_str().to_owned(), crm_id.clone())).one(c).await?;
            tombstone.map(|t| t.created_at)
        }
    };
    if local.is_none() && outbox.is_empty() && logs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Inspection {
        record_type: t.as_str(),
        record_id: id.to_owned(),
        record: local.map(|l| Value::Object(l.values)),
        crm_id,
        field_stamps,
        tombstoned_at,
        outbox,
        inbox,
        logs,
    }))
}

/// A record's webhook events, newest first: those its logs name (an applied event logs its
/// payload under the record; logs are kept longer than inbox rows) and, when it has a TreadSoft
/// id, those of that id not applied, which log nothing under it (through the partial index of
/// events not applied, `idx_crm_inbox_record`: applied events are not indexed by record).
async fn inbox_of(
    c: &impl ConnectionTrait,
    t: RecordType,
    crm_id: Option<&str>,
    logs: &[LogEntry],
) -> Result<Vec<InboxEvent>, DbErr> {
    let named: Vec<String> = logs
        .iter()
        .filter_map(|log| serde_json::from_str::<Value>(log.request.as_deref()?).ok())
        .filter(|request| request.get("object").is_some_and(Value::is_object))
        .filter_map(|request| Some(request.get("id")?.as_str()?.to_owned()))
        .collect();
    let mut rows = Vec::new();
    if !named.is_empty() {
        rows.extend(crm_inbox::Entity::find().filter(crm_inbox::Column::EventId.is_in(named)).all(c).await?);
    }
    if let Some(crm_id) = crm_id {
        let unapplied = crm_inbox::Entity::find()
            .filter(crm_inbox::Column::RecordType.eq(t.as_str()))
            .filter(crm_inbox::Column::CrmId.eq(crm_id))
            .filter(crate::sync::inbox::not_applied())
            .order_by_desc(crm_inbox::Column::ReceivedAt)
            .order_by_desc(crm_inbox::Column::EventId)
            .limit(INSPECT_ROWS)
            .all(c)
            .await?;
        rows.extend(unapplied);
    }
    rows.sort_by(|a, b| (b.received_at, &b.event_id).cmp(&(a.received_at, &a.event_id)));
    rows.dedup_by(|a, b| a.event_id == b.event_id);
    rows.truncate(INSPECT_ROWS as usize);
    Ok(rows.into_iter().map(InboxEvent::from).collect())
}

/// The query string of the list routes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    pub record_type: Option<String>,
    pub record_id: Option<String>,
    pub crm_id: Option<String>,
    pub status: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
}

/// A record type by its name, or `user` for contacts (as the site calls them).
pub fn record_type(name: &str) -> Option<RecordType> {
    match name {
        "user" | "owner" => Some(RecordType::Contact),
        other => RecordType::parse(other),
    }
}

impl ListQuery {
    /// The filter, the cursor and the page size, or what is wrong with them.
    pub fn parse(self) -> Result<(Filter, Option<String>, u64), String> {
        let time = |name: &str, value: Option<String>| -> Result<Option<DateTime<Utc>>, String> {
            value
                .map(|text| {
                    text.parse::<DateTime<Utc>>().map_err(|e| {
                        format!("{name}: expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got {text:?} ({e})")
                    })
                })
                .transpose()
        };
        let record_type = match self.record_type {
            None => None,
            Some(name) => Some(record_type(&name).ok_or_else(|| {
                format!("recordType: expected contact, property, enquiry, booking or membership, got {name:?}")
            })?),
        };
        if let Some(status) = &self.status
            && !matches!(status.as_str(), "success" | "failed" | "pending")
        {
            return Err(format!("status: expected success, failed or pending, got {status:?}"));
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("limit: expected 1 to {MAX_LIMIT}, got {limit}"));
        }
        let filter = Filter {
            record_type,
            record_id: self.record_id,
            crm_id: self.crm_id,
            status: self.status,
            since: time("since", self.since)?,
            until: time("until", self.until)?,
        };
        Ok((filter, self.cursor, limit))
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/crm/logs", "GET").route(web::get().to(logs_route)))
        .service(resource("/crm/failures/outbound", "GET").route(web::get().to(outbound_route)))
        .service(resource("/crm/failures/inbound", "GET").route(web::get().to(inbound_route)))
        .service(resource("/crm/records/{record_type}/{id}", "GET").route(web::get().to(inspect_route)));
}

fn query(raw: &str) -> Result<(Filter, Option<String>, u64), ApiError> {
    let query = web::Query::<ListQuery>::from_query(raw).map_err(|e| invalid(format!("the query string: {e}")))?;
    query.into_inner().parse().map_err(invalid)
}

fn cursor<T>(cursor: Option<String>, parse: impl Fn(&str) -> Result<T, BadCursor>) -> Result<Option<T>, ApiError> {
    cursor.map(|c| parse(&c)).transpose().map_err(|e| invalid(e.to_string()))
}

async fn logs_route(req: actix_web::HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (filter, after, limit) = query(req.query_string())?;
    let before = cursor(after, id_cursor)?;
    Ok(HttpResponse::Ok().json(logs(state.db.reader(), &filter, before, limit).await?))
}

async fn outbound_route(req: actix_web::HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (filter, after, limit) = query(req.query_string())?;
    let before = cursor(after, id_cursor)?;
    Ok(HttpResponse::Ok().json(outbound_failures(state.db.reader(), &filter, before, limit).await?))
}

async fn inbound_route(req: actix_web::HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (filter, after, limit) = query(req.query_string())?;
    let before = cursor(after, str::parse::<InboxCursor>)?;
    Ok(HttpResponse::Ok().json(inbound_failures(state.db.reader(), &filter, before, limit).await?))
}

async fn inspect_route(
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let t = record_type(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no record type {name:?}: contact (or user), property, enquiry, booking, membership"
        ))
    })?;
    match inspect(state.db.reader(), t, &id).await? {
        Some(inspection) => Ok(HttpResponse::Ok().json(inspection)),
        None => Err(ApiError::not_found(format!("the gateway knows no {} {id}", t.as_str()))),
    }
}
