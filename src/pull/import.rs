//! Import and reconciliation: reading TreadSoft's listings (`GET /v1/R?updatedSince=&cursor=`)
//! and applying every record through the webhook path.
//!
//! Each listed record becomes an event of type `<record>.imported` (id
//! `import:<record>:<crm id>:v<version>`, `changeSource: "import"`) that goes through the inbox
//! and the same last-writer-wins apply as a webhook: the record is linked by `crm_id`, then
//! `externalId`, then (contacts) email; created here when nothing links to it, with its link-back
//! queued; each field replaced only when TreadSoft's stamp (`updatedAt`, `version`) is newer than
//! the stored one. The inbox key makes a record version apply once, however often it is listed.
//!
//! A page's events and the listing's position (the next cursor and the largest `updatedAt` seen,
//! in `crm_import_cursors`) are written in one transaction, so an interrupted pass (Ctrl-C,
//! `kill -9`, a TreadSoft outage) continues from the last page it committed. A listing only
//! holds live records, so a pass never deletes: deletes come from webhooks, or from the audit's
//! explicit `GET` answering 404.

use crate::crm::{CrmClient, CrmError, CrmRecord};
use crate::db::Db;
use crate::sync::apply::SyncContext;
use crate::sync::change::Change;
use crate::sync::inbox::{self, EventResult, Incoming, Outcome};
use crate::sync::mapping::RecordType;
use crate::writer::{WriteError, Writer};
use chrono::{DateTime, Utc};
use entity::crm_import_cursors as cursors;
use entity::crm_inbox;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QuerySelect, TransactionTrait};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Records per listing page (TreadSoft's largest).
pub const PAGE_SIZE: u32 = 200;
/// How far before the last `updatedAt` seen a new pass starts: a record written just before
/// a listing read it but committed after is read by the next pass.
pub const OVERLAP: chrono::Duration = chrono::Duration::minutes(5);
/// How often a listing call that TreadSoft refused for a while (429, 5xx, no answer) is tried
/// before the pass stops (to be resumed).
const FETCH_TRIES: u32 = 6;
/// Failed records listed in a summary (the rest are counted).
const FAILURES_SHOWN: usize = 20;

/// Where a pass starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The unfinished pass's next page; else [`OVERLAP`] before the last `updatedAt` seen; else
    /// the beginning.
    Resume,
    /// A new pass of the records changed since then, whatever is stored.
    Since(DateTime<Utc>),
}

/// What one pass over one record type read and did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub record_type: &'static str,
    /// The pass's `updatedSince`.
    pub since: DateTime<Utc>,
    /// Whether it continued an interrupted pass.
    pub resumed: bool,
    pub dry_run: bool,
    pub pages: u64,
    pub seen: u64,
    pub created: u64,
    pub updated: u64,
    /// Equal to what is stored, or already applied (listed again, or its webhook came first).
    pub unchanged: u64,
    /// Every differing field holds a newer local value.
    pub stale: u64,
    /// Refers to a record not here yet; applied when that one arrives.
    pub waiting: u64,
    pub failed: u64,
    /// The largest `updatedAt` read.
    pub through: Option<DateTime<Utc>>,
    /// The first failed records, with why.
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub crm_id: String,
    pub reason: String,
}

impl Summary {
    fn new(t: RecordType, since: DateTime<Utc>, resumed: bool, dry_run: bool) -> Self {
        Self {
            record_type: t.as_str(),
            since,
            resumed,
            dry_run,
            pages: 0,
            seen: 0,
            created: 0,
            updated: 0,
            unchanged: 0,
            stale: 0,
            waiting: 0,
            failed: 0,
            through: None,
            failures: Vec::new(),
        }
    }

    /// Counts `result`; `before`: the outcome the inbox holds for an event listed before, when
    /// it failed or waits.
    fn count(&mut self, record: &CrmRecord, result: &EventResult, before: Option<&(Outcome, String)>) {
        self.seen += 1;
        let result = match before {
            Some((outcome, reason)) if result.outcome == Outcome::Duplicate => &EventResult {
                outcome: *outcome,
                reason: Some(format!("{reason} (as when it was listed before)")),
                ..result.clone()
            },
            _ => result,
        };
        match result.outcome {
            Outcome::Applied if result.created => self.created += 1,
            Outcome::Applied => self.updated += 1,
            Outcome::Echo | Outcome::Duplicate | Outcome::Ignored => self.unchanged += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Waiting => self.waiting += 1,
            Outcome::Failed => {
                self.failed += 1;
                if self.failures.len() < FAILURES_SHOWN {
                    let reason = result.reason.clone().unwrap_or_default();
                    self.failures.push(Failure { crm_id: record.id.clone(), reason });
                }
            }
        }
    }
}

/// Told of a pass's progress (a progress bar, log lines, nothing).
pub trait Progress: Send + Sync {
    fn started(&self, _summary: &Summary) {}
    fn page(&self, _summary: &Summary) {}
    /// A listing call is waited on before it is tried again.
    fn waiting(&self, _t: RecordType, _why: &str, _wait: Duration) {}
    fn finished(&self, _summary: &Summary) {}
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// Why a pass stopped before its end. What it committed stays, and the next pass resumes there.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("TreadSoft's listing of {record}s failed: {source}")]
    Crm {
        record: &'static str,
        #[source]
        source: CrmError,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// What a pass works with.
#[derive(Clone)]
pub struct Importer {
    pub db: Db,
    pub writer: Writer,
    pub crm: Arc<dyn CrmClient>,
    pub sync: Arc<SyncContext>,
    /// How far before the last `updatedAt` seen a new pass starts ([`OVERLAP`]).
    pub overlap: chrono::Duration,
}

impl Importer {
    /// Reads every record of `t` changed since the start, applies it (or, with `dry_run`, applies
    /// each page in a transaction that is rolled back and moves no cursor), and returns the counts.
    pub async fn pass(
        &self,
        t: RecordType,
        start: Start,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Summary, PassError> {
        let stored = cursors::Entity::find_by_id(t.as_str()).one(self.db.reader()).await?;
        let (since, mut cursor, resumed) = starting_point(stored.as_ref(), start, self.overlap);
        let mut position = Position {
            pass_since: since,
            last_updated_at: stored.as_ref().and_then(|s| s.last_updated_at),
            started_at: match (&stored, resumed) {
                (Some(s), true) => s.started_at,
                _ => Utc::now(),
            },
            pages: if resumed { stored.as_ref().map_or(0, |s| s.pages) } else { 0 },
            records: if resumed { stored.as_ref().map_or(0, |s| s.records) } else { 0 },
        };
        let mut summary = Summary::new(t, since, resumed, dry_run);
        progress.started(&summary);
        let run = Utc::now().timestamp_millis();
        loop {
            let page = match self.fetch(t, since, cursor.as_deref(), progress).await {
                Ok(page) => page,
                // A stored cursor TreadSoft no longer takes (400, or 422 naming the cursor): the
                // interrupted pass is read again from its start; what it applied already comes
                // back as duplicates.
                Err(PassError::Crm { source: CrmError::Permanent { status: 400 | 422, .. }, .. })
                    if resumed && summary.pages == 0 && cursor.is_some() =>
                {
                    tracing::warn!(
                        record = t.as_str(),
                        %since,
                        "the stored listing cursor was refused: reading the interrupted pass again from its start"
                    );
                    return Box::pin(self.pass(t, Start::Since(since), dry_run, progress)).await;
                }
                Err(e) => return Err(e),
            };
            let events: Vec<Value> = page.data.iter().map(|r| event_of(t, r)).collect();
            let through = page.data.iter().filter_map(|r| r.updated_at).max();
            position.last_updated_at = position.last_updated_at.max(through);
            position.pages += 1;
            position.records += page.data.len() as i64;
            let incoming = Incoming {
                delivery_id: format!("import-{}-{run}-{}", t.as_str(), summary.pages + 1),
                events: Arc::new(events),
            };
            // An empty page ends the pass, whatever cursor it carries.
            let next = page.next_cursor.clone().filter(|_| !page.data.is_empty());
            let row = position.row(t, next.clone());
            let results = if dry_run { self.try_page(incoming).await? } else { self.apply_page(incoming, row).await? };
            let before = self.earlier_outcomes(&results).await?;
            for (record, result) in page.data.iter().zip(&results) {
                summary.count(record, result, before.get(&result.event_id));
            }
            summary.pages += 1;
            summary.through = summary.through.max(through);
            progress.page(&summary);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        progress.finished(&summary);
        Ok(summary)
    }

    /// What became of the events a page found already in the inbox (listed before), where that
    /// was not to be applied: an event that failed or waits still does, and is counted so.
    async fn earlier_outcomes(&self, results: &[EventResult]) -> Result<HashMap<String, (Outcome, String)>, DbErr> {
        let ids: Vec<&str> =
            results.iter().filter(|r| r.outcome == Outcome::Duplicate).map(|r| r.event_id.as_str()).collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, String, Option<String>)> = crm_inbox::Entity::find()
            .select_only()
            .columns([crm_inbox::Column::EventId, crm_inbox::Column::Outcome, crm_inbox::Column::Reason])
            .filter(crm_inbox::Column::EventId.is_in(ids))
            .filter(crm_inbox::Column::Outcome.is_in([Outcome::Failed.as_str(), Outcome::Waiting.as_str()]))
            .into_tuple()
            .all(self.db.reader())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, outcome, reason)| {
                let outcome = if outcome == Outcome::Failed.as_str() { Outcome::Failed } else { Outcome::Waiting };
                (id, (outcome, reason.unwrap_or_default()))
            })
            .collect())
    }

    /// One listing page, tried again while TreadSoft is refusing for a while.
    pub(crate) async fn fetch(
        &self,
        t: RecordType,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<crate::crm::Page, PassError> {
        self.patiently(t, progress, || self.crm.list_since(t, since, cursor, PAGE_SIZE)).await
    }

    /// Runs the TreadSoft call `call` makes, again after a wait while TreadSoft refuses for a
    /// while (429, 5xx, no answer: its `Retry-After`, else 2, 4, 8, ... s), at most [`FETCH_TRIES`] times.
    pub(crate) async fn patiently<T, F, Fut>(
        &self,
        t: RecordType,
        progress: &dyn Progress,
        mut call: F,
    ) -> Result<T, PassError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CrmError>>,
    {
        let mut tries = 0;
        loop {
            match call().await {
                Ok(answer) => return Ok(answer),
                Err(CrmError::Transient { status, message, retry_after }) if tries + 1 < FETCH_TRIES => {
                    tries += 1;
                    let wait =
                        retry_after.unwrap_or(Duration::from_secs(1 << tries.min(5))).min(Duration::from_secs(60));
                    let why = match status {
                        Some(status) => format!("TreadSoft answered {status}: {message}"),
                        None => message,
                    };
                    tracing::info!(record = t.as_str(), tries, ?wait, %why, "calling TreadSoft again after a wait");
                    progress.waiting(t, &why, wait);
                    tokio::time::sleep(wait).await;
                }
                Err(source) => return Err(PassError::Crm { record: t.as_str(), source }),
            }
        }
    }

    /// Applies a page's events and saves the listing's position, in one transaction.
    async fn apply_page(&self, incoming: Incoming, row: cursors::Model) -> Result<Vec<EventResult>, PassError> {
        let ctx = self.sync.clone();
        let results = self
            .writer
            .run_retrying(|| {
                let (incoming, row, ctx) = (incoming.clone(), row.clone(), ctx.clone());
                move |txn: &DatabaseTransaction| {
                    Box::pin(async move {
                        let results = apply(txn, &ctx, incoming).await?;
                        save(txn, row).await?;
                        Ok(results)
                    }) as futures_util::future::BoxFuture<'_, Result<Vec<EventResult>, DbErr>>
                }
            })
            .await?;
        Ok(results)
    }

    /// Applies events as a webhook delivery is applied (no listing position saved).
    pub async fn apply_events(&self, incoming: Incoming) -> Result<Vec<EventResult>, PassError> {
        let ctx = self.sync.clone();
        let results = self
            .writer
            .run_retrying(|| {
                let (incoming, ctx) = (incoming.clone(), ctx.clone());
                move |txn: &DatabaseTransaction| {
                    Box::pin(async move { apply(txn, &ctx, incoming).await })
                        as futures_util::future::BoxFuture<'_, Result<Vec<EventResult>, DbErr>>
                }
            })
            .await?;
        Ok(results)
    }

    /// Applies a page's events in a transaction that is rolled back: what they would come to.
    async fn try_page(&self, incoming: Incoming) -> Result<Vec<EventResult>, PassError> {
        let txn = self.db.writer().begin().await?;
        let results = apply(&txn, &self.sync, incoming).await;
        txn.rollback().await?;
        Ok(results?)
    }
}

async fn apply(txn: &DatabaseTransaction, ctx: &SyncContext, incoming: Incoming) -> Result<Vec<EventResult>, DbErr> {
    inbox::receive_all(txn, ctx, std::slice::from_ref(&incoming)).await.pop().unwrap_or_else(|| Ok(Vec::new()))
}

/// The `updatedSince`, cursor, and whether it resumes, of a pass starting at `start`.
fn starting_point(
    stored: Option<&cursors::Model>,
    start: Start,
    overlap: chrono::Duration,
) -> (DateTime<Utc>, Option<String>, bool) {
    match (start, stored) {
        (Start::Since(since), _) => (since, None, false),
        (Start::Resume, Some(s)) if s.cursor.is_some() => (s.pass_since, s.cursor.clone(), true),
        (Start::Resume, Some(s)) => (s.last_updated_at.map_or(s.pass_since, |last| last - overlap), None, false),
        (Start::Resume, None) => (DateTime::UNIX_EPOCH, None, false),
    }
}

/// A pass's position in the listing, as saved after each page.
struct Position {
    pass_since: DateTime<Utc>,
    last_updated_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    pages: i64,
    records: i64,
}

impl Position {
    fn row(&self, t: RecordType, next_cursor: Option<String>) -> cursors::Model {
        let now = Utc::now();
        cursors::Model {
            record_type: t.as_str().to_owned(),
            pass_since: self.pass_since,
            finished_at: next_cursor.is_none().then_some(now),
            cursor: next_cursor,
            last_updated_at: self.last_updated_at,
            pages: self.pages,
            records: self.records,
            started_at: self.started_at,
            updated_at: now,
        }
    }
}

async fn save(txn: &DatabaseTransaction, row: cursors::Model) -> Result<(), DbErr> {
    use cursors::Column as C;
    let active: cursors::ActiveModel = row.into();
    cursors::Entity::insert(active)
        .on_conflict(
            OnConflict::column(C::RecordType)
                .update_columns([
                    C::PassSince,
                    C::Cursor,
                    C::LastUpdatedAt,
                    C::Pages,
                    C::Records,
                    C::StartedAt,
                    C::UpdatedAt,
                    C::FinishedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// The listing positions stored, one per record type read so far.
pub async fn positions(c: &impl sea_orm::ConnectionTrait) -> Result<Vec<cursors::Model>, DbErr> {
    cursors::Entity::find().all(c).await
}

/// The inbox event a listed record is applied as.
/// Its id names the record's version (its time, for a CRM without versions), so a record listed
/// again unchanged is a duplicate, and changed, a new event.
pub fn event_of(t: RecordType, record: &CrmRecord) -> Value {
    let version = match record.version {
        0 => format!("t{}", record.updated_at.map_or(0, |at| at.timestamp_millis())),
        n => format!("v{n}"),
    };
    event_with_id(t, record, format!("import:{}:{}:{version}", t.as_str(), record.id))
}

/// [`event_of`] with another event id (the audit's fixes use their own, so they always apply).
pub fn event_with_id(t: RecordType, record: &CrmRecord, id: String) -> Value {
    let mut change = Change::of(t, "imported", id, record.id.clone(), record.updated_at.unwrap_or_default());
    change.change_source = Some("import".into());
    change.set_record(record);
    change.object.version = record.version;
    change.object.created_at = record.fields.get("createdAt").and_then(|v| serde_json::from_value(v.clone()).ok());
    let mut value = change.to_value();
    if record.updated_at.is_none() {
        // A record without its time cannot be ordered: the apply refuses it, saying so.
        value["object"]["updatedAt"] = Value::Null;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(cursor: Option<&str>, last: Option<DateTime<Utc>>) -> cursors::Model {
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        cursors::Model {
            record_type: "contact".into(),
            pass_since: t0,
            cursor: cursor.map(str::to_owned),
            last_updated_at: last,
            pages: 3,
            records: 600,
            started_at: t0,
            updated_at: t0,
            finished_at: None,
        }
    }

    #[test]
    fn a_pass_resumes_an_unfinished_one_else_starts_before_the_last_record_seen() {
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let last = DateTime::from_timestamp(2_000_000, 0).unwrap();
        assert_eq!(starting_point(None, Start::Resume, OVERLAP), (DateTime::UNIX_EPOCH, None, false));
        assert_eq!(
            starting_point(Some(&stored(Some("c4"), Some(last))), Start::Resume, OVERLAP),
            (t0, Some("c4".into()), true),
            "an unfinished pass goes on from its cursor, with its own updatedSince"
        );
        assert_eq!(
            starting_point(Some(&stored(None, Some(last))), Start::Resume, OVERLAP),
            (last - OVERLAP, None, false)
        );
        assert_eq!(starting_point(Some(&stored(None, None)), Start::Resume, OVERLAP), (t0, None, false));
        assert_eq!(
            starting_point(Some(&stored(Some("c4"), Some(last))), Start::Since(last), OVERLAP),
            (last, None, false)
        );
    }
}
