//! The inbox of webhook events: recording each by id (a repeat is a duplicate), applying them a
//! group at a time, writing their outcomes, replaying one, and releasing events that waited for a
//! parent.

use super::apply::{Decision, SyncContext, apply_event};
use super::log::SyncLog;
use super::mapping::RecordType;
use super::stamps::Key;
use super::view::{View, Wanted};
use crate::writer::{WriteError, Writer};
use chrono::Utc;
use entity::crm_inbox;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

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
    /// Recorded and answered, not applied: a subscription the gateway does not sync.
    Ignored,
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
            Self::Ignored => "ignored",
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
    /// Whether applying it created the local record (not part of the answer TreadSoft reads).
    #[serde(skip)]
    pub created: bool,
}

/// The events of one delivery, as the writer groups them.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub delivery_id: String,
    pub events: Arc<Vec<Value>>,
}

/// `outcome <> 'applied'`, with `'applied'` written into the statement as a constant: the
/// condition of the partial index of events by record (`idx_crm_inbox_record`), which a plan can
/// use only where the query holds this very term (SQLite proves nothing else implies it; a
/// cached generic plan on PostgreSQL cannot see bound values). Applied events are not indexed by
/// record: a record's applied events are named by its sync logs.
pub fn not_applied() -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::ExprTrait;
    Expr::col((crm_inbox::Entity, crm_inbox::Column::Outcome)).ne(Expr::Constant(Outcome::Applied.as_str().into()))
}

/// Records and applies the events of several deliveries together, with a fixed number of
/// statements per table for the whole group ([`View`]), and answers per delivery, per event.
/// When a statement of the group fails, the group is rolled back and each delivery is done again
/// alone, event by event in savepoints ([`receive`]), so that one bad event fails alone. A group
/// that failed only because another transaction (another instance) recorded some of its events
/// meanwhile is done again as a group once, those events now its duplicates.
pub async fn receive_all(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    deliveries: &[Incoming],
) -> Vec<Result<Vec<EventResult>, DbErr>> {
    let together = match receive_group(c, ctx, deliveries).await {
        Err(e) if is_raced(&e) => receive_group(c, ctx, deliveries).await,
        other => other,
    };
    match together {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::debug!(error = %e, deliveries = deliveries.len(), "a group of events failed: one at a time");
            let mut out = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                let alone = match c.begin().await {
                    Ok(savepoint) => match receive_each(&savepoint, ctx, delivery).await {
                        Ok(results) => savepoint.commit().await.map(|()| results),
                        Err(e) => savepoint.rollback().await.and(Err(e)),
                    },
                    Err(e) => Err(e),
                };
                out.push(alone);
            }
            out
        }
    }
}

/// [`receive_set`] in a savepoint, rolled back when it fails.
async fn receive_group(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    deliveries: &[Incoming],
) -> Result<Vec<Vec<EventResult>>, DbErr> {
    let savepoint = c.begin().await?;
    match receive_set(&savepoint, ctx, deliveries, true).await {
        Ok((results, _)) => savepoint.commit().await.map(|()| results),
        Err(e) => savepoint.rollback().await.and(Err(e)),
    }
}

/// How [`Outcomes::write`] says that another transaction recorded some of a group's new events
/// while the group was applying them.
const RACED: &str = "recorded by another transaction meanwhile";

/// Whether a group failed only because another transaction recorded some of its events meanwhile.
fn is_raced(e: &DbErr) -> bool {
    matches!(e, DbErr::Custom(message) if message.ends_with(RACED))
}

/// Records and applies `deliveries` together; with `release`, also the events that waited for a
/// record they linked, and otherwise returns those records (for [`release_waiting`]).
async fn receive_set(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    deliveries: &[Incoming],
    release: bool,
) -> Result<(Vec<Vec<EventResult>>, Vec<Key>), DbErr> {
    let now = Utc::now();
    // The first event of each id in the group; a later one is its duplicate.
    let mut first: HashMap<String, (usize, usize)> = HashMap::new();
    let mut rows = Vec::new();
    for (d, delivery) in deliveries.iter().enumerate() {
        for (e, raw) in delivery.events.iter().enumerate() {
            let row = inbox_row(&delivery.delivery_id, raw, now);
            if let std::collections::hash_map::Entry::Vacant(slot) = first.entry(row.event_id.clone()) {
                slot.insert((d, e));
                rows.push((row, raw.clone()));
            }
        }
    }
    // Their inbox rows are written once, with their outcomes, at the end ([`Outcomes::write`]);
    // one recorded meanwhile by another transaction fails the group, which [`receive_all`] then
    // does again as a group, that event now found here.
    let stored = stored_ids(c, rows.iter().map(|(row, _)| row.event_id.as_str())).await?;
    rows.retain(|(row, _)| !stored.contains(&row.event_id));
    let (applied, linked) = apply_rows(c, ctx, rows, Rows::New, Vec::new(), release).await?;
    let mut applied: HashMap<String, EventResult> = applied.into_iter().map(|r| (r.event_id.clone(), r)).collect();
    let results = deliveries
        .iter()
        .enumerate()
        .map(|(d, delivery)| {
            delivery
                .events
                .iter()
                .enumerate()
                .map(|(e, raw)| {
                    let event_id = event_id(raw);
                    match applied.remove(&event_id).filter(|_| first.get(&event_id) == Some(&(d, e))) {
                        Some(result) => result,
                        None => EventResult { event_id, outcome: Outcome::Duplicate, reason: None, created: false },
                    }
                })
                .collect()
        })
        .collect();
    Ok((results, linked))
}

/// [`receive`] for each event of a delivery, in order.
async fn receive_each(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    delivery: &Incoming,
) -> Result<Vec<EventResult>, DbErr> {
    let mut results = Vec::with_capacity(delivery.events.len());
    for raw in delivery.events.iter() {
        results.push(receive(c, ctx, &delivery.delivery_id, raw).await?);
    }
    Ok(results)
}

/// Records event `raw` of delivery `delivery_id` in the inbox and applies it, alone: as a group of
/// one ([`receive_set`]), so that its records are locked before its inbox row is written, as a
/// group does (an event recorded first and applied after, against a group of another transaction
/// that had locked the same record and was to record the same event, was a deadlock on
/// PostgreSQL). Across the events of a delivery done this way, records are still locked in event
/// order and held to the end, not in a group's order: two instances can still deadlock over two
/// records, and PostgreSQL then fails one delivery, which TreadSoft sends again. A database error
/// rolls it back and it is tried once more (another gateway instance may have created the same
/// record, or recorded the same event, meanwhile; an event recorded meanwhile is tried once more
/// still, and found a duplicate); when the last attempt's error is data the database refuses, the
/// event is recorded as `failed`.
pub async fn receive(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    delivery_id: &str,
    raw: &Value,
) -> Result<EventResult, DbErr> {
    let alone = [Incoming { delivery_id: delivery_id.to_owned(), events: Arc::new(vec![raw.clone()]) }];
    let mut last_error = None;
    for attempt in 0..3 {
        if attempt == 2 && !last_error.as_ref().is_some_and(is_raced) {
            break;
        }
        let savepoint = c.begin().await?;
        match receive_set(&savepoint, ctx, &alone, false).await {
            Ok((results, linked)) => {
                savepoint.commit().await?;
                let result = results.into_iter().flatten().next();
                let result = result.ok_or_else(|| DbErr::Custom("a group of one event answered nothing".into()))?;
                release_waiting(c, ctx, linked).await?;
                return Ok(result);
            }
            Err(e) => {
                savepoint.rollback().await?;
                last_error = Some(e);
            }
        }
    }
    let row = inbox_row(delivery_id, raw, Utc::now());
    match last_error {
        Some(e) if crate::db::is_data_error(&e) => record_failure(c, row, raw, &e, Rows::New).await,
        Some(e) => Err(e),
        None => Err(DbErr::Custom("no attempt was made".into())),
    }
}

/// The event's id as its inbox row has it.
fn event_id(raw: &Value) -> String {
    raw.pointer("/id").and_then(Value::as_str).map(|s| s.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// The inbox row of event `raw` as received, before it is applied.
fn inbox_row(delivery_id: &str, raw: &Value, now: chrono::DateTime<Utc>) -> crm_inbox::Model {
    // Text columns cannot hold U+0000 on PostgreSQL: such an event is stored with U+FFFD in its
    // columns (the payload keeps it, escaped) and then fails to apply, alone.
    let text = |pointer: &str| raw.pointer(pointer).and_then(Value::as_str).map(|s| s.replace('\0', "\u{FFFD}"));
    crm_inbox::Model {
        event_id: event_id(raw),
        delivery_id: delivery_id.replace('\0', "\u{FFFD}"),
        event_type: text("/type").unwrap_or_default(),
        record_type: text("/object/type"),
        crm_id: text("/object/id"),
        received_at: now,
        payload: raw.to_string(),
        outcome: "received".to_owned(),
        reason: None,
        waiting_for: None,
        attempts: 1,
        processed_at: now,
    }
}

/// Which of `ids` the inbox holds.
async fn stored_ids<'i>(
    c: &DatabaseTransaction,
    ids: impl IntoIterator<Item = &'i str>,
) -> Result<HashSet<String>, DbErr> {
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut stored = HashSet::new();
    for chunk in ids.chunks(crate::db::MAX_PARAMS) {
        let found: Vec<String> = crm_inbox::Entity::find()
            .select_only()
            .column(crm_inbox::Column::EventId)
            .filter(crm_inbox::Column::EventId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(c)
            .await?;
        stored.extend(found);
    }
    Ok(stored)
}

/// Inserts those of `rows` whose event id is not in the inbox yet (in event id order, so that
/// two instances inserting overlapping groups take turns); returns how many it inserted.
async fn insert_new(c: &DatabaseTransaction, mut rows: Vec<crm_inbox::Model>) -> Result<usize, DbErr> {
    rows.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let models = rows.into_iter().map(|row| crm_inbox::ActiveModel::from(row).reset_all()).collect();
    Ok(crate::db::insert_absent(c, models, crm_inbox::Column::EventId).await?.len())
}

/// Where the inbox rows given to [`apply_rows`] stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Not in the inbox yet: each is inserted with its outcome.
    New,
    /// Applied before (a replay, a release), which counts an attempt.
    Again,
}

/// Applies events `rows` (with their payloads) against one [`View`] of the group, then (with
/// `release`) the events that waited for a record they linked, and for those of `linked`; writes
/// everything, the inbox outcomes included. Returns each row's result and, without `release`,
/// the linked records whose waiting events are still to be released.
async fn apply_rows(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    rows: Vec<(crm_inbox::Model, Value)>,
    stand: Rows,
    linked: Vec<Key>,
    release: bool,
) -> Result<(Vec<EventResult>, Vec<Key>), DbErr> {
    let mut view = View::new(c);
    let mut wanted = Wanted::default();
    for (_, raw) in &rows {
        wanted.event(raw);
    }
    view.prefetch(wanted).await?;
    let mut outcomes = Outcomes::default();
    let mut results = Vec::with_capacity(rows.len());
    let mut queue: VecDeque<Key> = linked.into();
    for (row, raw) in rows {
        let decision = apply_event(&mut view, ctx, &raw).await?;
        results.push(EventResult {
            event_id: row.event_id.clone(),
            outcome: decision.outcome,
            reason: decision.reason.clone(),
            created: decision.created,
        });
        queue.extend(decision.linked.clone());
        if stand == Rows::New {
            outcomes.fresh.insert(row.event_id.clone());
        }
        outcomes.record(&mut view, row, &decision, stand == Rows::Again);
    }
    if release {
        release_in(&mut view, ctx, &mut outcomes, &mut queue).await?;
    }
    view.flush().await?;
    outcomes.write(c).await?;
    Ok((results, queue.into()))
}

/// Applies, in the view, the events waiting for each record in `queue`, and those waiting for
/// the records they link in turn: a round at a time, each round's waiting events read (after
/// their advisory locks, taken together and in order) with one query.
async fn release_in(
    view: &mut View<'_, DatabaseTransaction>,
    ctx: &SyncContext,
    outcomes: &mut Outcomes,
    queue: &mut VecDeque<Key>,
) -> Result<(), DbErr> {
    while !queue.is_empty() {
        let keys: Vec<String> = queue.drain(..).map(|(t, crm_id)| waiting_key(t, &crm_id)).collect();
        view.load_waiting_for(&keys).await?;
        let mut rows: Vec<(crm_inbox::Model, Value)> = Vec::new();
        for key in &keys {
            for row in view.take_waiting(key).await? {
                if let Ok(raw) = serde_json::from_str(&row.payload) {
                    rows.push((outcomes.latest(row), raw));
                }
            }
        }
        let mut wanted = Wanted::default();
        rows.iter().for_each(|(_, raw)| wanted.event(raw));
        view.prefetch(wanted).await?;
        for (row, raw) in rows {
            let decision = apply_event(view, ctx, &raw).await?;
            queue.extend(decision.linked.clone());
            outcomes.record(view, row, &decision, true);
        }
    }
    Ok(())
}

/// The inbox rows whose outcome a group changed, written together at its end.
#[derive(Default)]
struct Outcomes {
    rows: Vec<crm_inbox::Model>,
    at: HashMap<String, usize>,
    /// The events whose rows are not in the inbox yet.
    fresh: HashSet<String>,
}

impl Outcomes {
    /// Notes `decision` as the outcome of `row`.
    fn record(
        &mut self,
        view: &mut View<'_, DatabaseTransaction>,
        mut row: crm_inbox::Model,
        decision: &Decision,
        again: bool,
    ) {
        row.outcome = decision.outcome.as_str().to_owned();
        row.reason = decision.reason.clone();
        row.waiting_for = decision.waiting_for.clone();
        row.attempts += i32::from(again);
        if let Some(key) = &decision.waiting_for {
            view.wait(key.clone(), row.clone());
        }
        match self.at.get(&row.event_id) {
            Some(&i) => self.rows[i] = row,
            None => {
                self.at.insert(row.event_id.clone(), self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// The row as this group last noted it.
    fn latest(&self, row: crm_inbox::Model) -> crm_inbox::Model {
        self.at.get(&row.event_id).map_or(row, |&i| self.rows[i].clone())
    }

    /// The fresh rows inserted together (failing if another transaction recorded one of them
    /// meanwhile), then one `UPDATE` for each distinct outcome of the others (most groups have
    /// one or two).
    async fn write(self, c: &DatabaseTransaction) -> Result<(), DbErr> {
        let now = Utc::now();
        let (fresh, stored): (Vec<_>, Vec<_>) =
            self.rows.into_iter().partition(|row| self.fresh.contains(&row.event_id));
        if !fresh.is_empty() {
            let expected = fresh.len();
            let fresh = fresh.into_iter().map(|row| crm_inbox::Model { processed_at: now, ..row }).collect();
            let inserted = insert_new(c, fresh).await?;
            if inserted != expected {
                return Err(DbErr::Custom(format!("{} of {expected} events were {RACED}", expected - inserted)));
            }
        }
        // (outcome, reason, waiting for, attempts) → the events that have it.
        type Same = (String, Option<String>, Option<String>, i32);
        let mut by_outcome: HashMap<Same, Vec<String>> = HashMap::new();
        for row in stored {
            by_outcome.entry((row.outcome, row.reason, row.waiting_for, row.attempts)).or_default().push(row.event_id);
        }
        for ((outcome, reason, waiting_for, attempts), ids) in by_outcome {
            for chunk in ids.chunks(crate::db::MAX_PARAMS - 8) {
                crm_inbox::Entity::update_many()
                    .col_expr(crm_inbox::Column::Outcome, Expr::value(outcome.clone()))
                    .col_expr(crm_inbox::Column::Reason, Expr::value(reason.clone()))
                    .col_expr(crm_inbox::Column::WaitingFor, Expr::value(waiting_for.clone()))
                    .col_expr(crm_inbox::Column::Attempts, Expr::value(attempts))
                    .col_expr(crm_inbox::Column::ProcessedAt, Expr::value(now))
                    .filter(crm_inbox::Column::EventId.is_in(chunk.iter().map(String::as_str)))
                    .exec(c)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Applies a stored event again (after a fix): `crm-gateway inbox replay` and the replay route.
pub async fn replay(
    txn: &DatabaseTransaction,
    ctx: &SyncContext,
    event_id: &str,
) -> Result<Option<EventResult>, DbErr> {
    let Some(row) = crm_inbox::Entity::find_by_id(event_id).one(txn).await? else { return Ok(None) };
    let raw: Value = serde_json::from_str(&row.payload).map_err(|e| DbErr::Json(e.to_string()))?;
    let (result, linked) = apply_guarded(txn, ctx, row, raw).await?;
    release_waiting(txn, ctx, linked).await?;
    Ok(Some(result))
}

/// [`replay`] in the next group transaction: `crm-gateway inbox replay`, the replay route and the
/// dashboard's button. `None` if the inbox has no such event.
pub async fn replay_one(
    writer: &Writer,
    ctx: Arc<SyncContext>,
    event_id: String,
) -> Result<Option<EventResult>, WriteError> {
    writer.run(move |txn| Box::pin(async move { replay(txn, &ctx, &event_id).await })).await
}

/// What replaying the failed events came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySummary {
    pub replayed: usize,
    /// Each outcome's count, e.g. `{"applied": 3, "failed": 1}`.
    pub outcomes: std::collections::BTreeMap<&'static str, usize>,
}

/// Replays every event that failed (received at or after `since`, if given), oldest first, each
/// in its own savepoint (one that fails again stays failed, the others apply). Events that fail
/// again are not tried twice in one call.
pub async fn replay_failed(
    writer: &Writer,
    reader: &impl ConnectionTrait,
    ctx: Arc<SyncContext>,
    since: Option<chrono::DateTime<Utc>>,
) -> Result<ReplaySummary, WriteError> {
    let mut query = crm_inbox::Entity::find()
        .select_only()
        .column(crm_inbox::Column::EventId)
        .filter(crm_inbox::Column::Outcome.eq(Outcome::Failed.as_str()))
        .order_by_asc(crm_inbox::Column::ReceivedAt)
        .order_by_asc(crm_inbox::Column::EventId);
    if let Some(since) = since {
        query = query.filter(crm_inbox::Column::ReceivedAt.gte(since));
    }
    let ids: Vec<String> = query.into_tuple().all(reader).await.map_err(WriteError::Work)?;
    let mut summary = ReplaySummary::default();
    // A few hundred per group transaction: the writer's other work is not held up for long.
    for chunk in ids.chunks(REPLAY_CHUNK) {
        let chunk = chunk.to_vec();
        let ctx = ctx.clone();
        let results = writer
            .run(move |txn| {
                Box::pin(async move {
                    let mut results = Vec::with_capacity(chunk.len());
                    for id in &chunk {
                        let savepoint = txn.begin().await?;
                        match replay(&savepoint, &ctx, id).await {
                            Ok(result) => {
                                savepoint.commit().await?;
                                results.extend(result);
                            }
                            Err(e) => {
                                savepoint.rollback().await?;
                                tracing::error!(event_id = %id, error = %e, "cannot replay an event");
                            }
                        }
                    }
                    Ok(results)
                })
            })
            .await?;
        for result in results {
            summary.replayed += 1;
            *summary.outcomes.entry(result.outcome.as_str()).or_default() += 1;
        }
    }
    Ok(summary)
}

/// Failed events replayed per group transaction by [`replay_failed`].
const REPLAY_CHUNK: usize = 200;

/// Applies events that waited for a record that now exists (each of `linked`), and those that
/// waited for them: together, or, when that fails, one at a time so that a bad one fails alone.
pub async fn release_waiting(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    linked: impl IntoIterator<Item = Key>,
) -> Result<(), DbErr> {
    let linked: Vec<Key> = linked.into_iter().collect();
    // Most links release nothing: looked for first, without a savepoint of its own.
    let keys: Vec<String> = linked.iter().map(|(t, crm_id)| waiting_key(*t, crm_id)).collect();
    if !any_waiting(c, &keys).await? {
        return Ok(());
    }
    let savepoint = c.begin().await?;
    match apply_rows(&savepoint, ctx, Vec::new(), Rows::Again, linked.clone(), true).await {
        Ok(_) => return savepoint.commit().await,
        Err(e) => {
            savepoint.rollback().await?;
            if !crate::db::is_data_error(&e) {
                return Err(e);
            }
        }
    }
    let mut queue: VecDeque<Key> = linked.into();
    while let Some((t, crm_id)) = queue.pop_front() {
        let key = waiting_key(t, &crm_id);
        crate::db::lock_named(c, &key).await?;
        let waiting = waiting_for_any(std::slice::from_ref(&key)).all(c).await?;
        for row in waiting.into_iter().filter(still_waiting) {
            let Ok(raw) = serde_json::from_str::<Value>(&row.payload) else { continue };
            let (_, linked) = apply_guarded(c, ctx, row, raw).await?;
            queue.extend(linked);
        }
    }
    Ok(())
}

/// Whether an event waits for any of `keys`, read after their advisory locks (whichever of a
/// waiting event and its parent's release comes second sees what the first one committed).
async fn any_waiting(c: &DatabaseTransaction, keys: &[String]) -> Result<bool, DbErr> {
    crate::db::lock_names(c, keys).await?;
    for chunk in keys.chunks(crate::db::MAX_PARAMS / 2) {
        let found = waiting_for_any(chunk)
            .select_only()
            .column(crm_inbox::Column::EventId)
            .limit(1)
            .into_tuple::<String>()
            .one(c)
            .await?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The stored events waiting for any of `keys`: those whose `waiting_for` is one of them, read
/// through the partial index of the rows that wait (`idx_crm_inbox_waiting_for`). Only
/// [`Outcomes::write`] sets an event's outcome, and it writes `waiting_for` with it, cleared for
/// any outcome but `waiting`; the callers that apply the rows keep only those still waiting
/// ([`still_waiting`]) as a safeguard. The outcome is left out of the statement: given
/// `outcome = 'waiting'` as well, SQLite's planner read every waiting event through the index by
/// outcome, however many wait for other records (PostgreSQL's planner makes its own choice).
pub(crate) fn waiting_for_any(keys: &[String]) -> sea_orm::Select<crm_inbox::Entity> {
    crm_inbox::Entity::find().filter(crm_inbox::Column::WaitingFor.is_in(keys.iter().map(String::as_str)))
}

/// Whether stored event `row` still waits for its parent (not released yet).
pub(crate) fn still_waiting(row: &crm_inbox::Model) -> bool {
    row.outcome == Outcome::Waiting.as_str()
}

/// Most parents one sweep releases for each record type.
const SWEEP_LIMIT: usize = 500;

/// Applies events still `waiting` for a parent that exists by now (a release that missed them:
/// a crash between two steps, or an older gateway). Returns how many parents it released.
pub async fn sweep_waiting(txn: &DatabaseTransaction, ctx: &SyncContext) -> Result<usize, DbErr> {
    let mut parents = Vec::new();
    for t in RecordType::ALL {
        // Only the keys whose parent exists: however many events wait for parents that never
        // come, these are found. Names come from the code, never from input.
        let prefix = format!("{}:", t.as_str());
        let sql = format!(
            r#"SELECT DISTINCT i.waiting_for FROM crm_inbox i
               WHERE i.outcome = 'waiting' AND i.waiting_for LIKE '{prefix}%'
                 AND EXISTS (SELECT 1 FROM "{table}" x
                             WHERE x.crm_id = SUBSTR(i.waiting_for, {start}) AND x.deleted_at IS NULL)
               LIMIT {SWEEP_LIMIT}"#,
            table = t.table(),
            start = prefix.len() + 1,
        );
        let rows = txn.query_all_raw(Statement::from_string(txn.get_database_backend(), sql)).await?;
        for row in rows {
            let key: String = row.try_get("", "waiting_for")?;
            parents.push((t, key[prefix.len()..].to_owned()));
        }
    }
    let released = parents.len();
    release_waiting(txn, ctx, parents).await?;
    Ok(released)
}

pub(super) fn waiting_key(t: RecordType, crm_id: &str) -> String {
    format!("{}:{crm_id}", t.as_str())
}

/// Applies stored event `row` again, alone in a savepoint (without releasing what waits for it):
/// a replay or a release. A database error rolls it back and it is tried once more (another gateway
/// instance may have created the same record meanwhile), then recorded as `failed`. Returns its
/// result and the records it linked.
async fn apply_guarded(
    c: &DatabaseTransaction,
    ctx: &SyncContext,
    row: crm_inbox::Model,
    raw: Value,
) -> Result<(EventResult, Vec<Key>), DbErr> {
    let mut last_error = None;
    for _ in 0..2 {
        let savepoint = c.begin().await?;
        match apply_rows(&savepoint, ctx, vec![(row.clone(), raw.clone())], Rows::Again, Vec::new(), false).await {
            Ok((mut results, linked)) => {
                savepoint.commit().await?;
                return Ok((results.remove(0), linked));
            }
            Err(e) => {
                savepoint.rollback().await?;
                last_error = Some(e);
            }
        }
    }
    // Data the database refuses (a constraint, a data exception) fails this event alone; anything else (a lost
    // connection, a lock timeout) fails the delivery, so TreadSoft sends it again.
    let Some(last_error) = last_error else { return Err(DbErr::Custom("no attempt was made".into())) };
    if !crate::db::is_data_error(&last_error) {
        return Err(last_error);
    }
    Ok((record_failure(c, row, &raw, &last_error, Rows::Again).await?, Vec::new()))
}

/// Records event `row` (`raw`) as `failed`, with a sync log, because the database refused its
/// data with `error` (a constraint, a data exception). `stand` says whether the row is to be
/// inserted ([`Rows::New`]: one another transaction recorded meanwhile makes the event a
/// duplicate, with no log) or updated, counting an attempt ([`Rows::Again`]).
async fn record_failure(
    c: &DatabaseTransaction,
    row: crm_inbox::Model,
    raw: &Value,
    error: &DbErr,
    stand: Rows,
) -> Result<EventResult, DbErr> {
    let error = error.to_string();
    tracing::warn!(%error, "an inbound event failed");
    let decision = Decision::new(Outcome::Failed, format!("database error: {error}"));
    let result = EventResult {
        event_id: row.event_id.clone(),
        outcome: decision.outcome,
        reason: decision.reason.clone(),
        created: decision.created,
    };
    let mut outcomes = Outcomes::default();
    outcomes.record(&mut View::new(c), row, &decision, stand == Rows::Again);
    if stand == Rows::New {
        let rows = std::mem::take(&mut outcomes.rows);
        if insert_new(c, rows).await? == 0 {
            return Ok(EventResult { outcome: Outcome::Duplicate, reason: None, ..result });
        }
    } else {
        outcomes.write(c).await?;
    }
    let entity_id = raw.pointer("/object/externalId").and_then(Value::as_str).unwrap_or_default();
    SyncLog {
        entity_type: raw.pointer("/object/type").and_then(Value::as_str).unwrap_or("unknown"),
        entity_id,
        crm_id: raw.pointer("/object/id").and_then(Value::as_str),
        action: "update",
        status: "failed",
        request_data: Some(raw.to_string()),
        error_message: Some(error),
        ..Default::default()
    }
    .write(c)
    .await?;
    Ok(result)
}
