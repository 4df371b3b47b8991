//! Group commit: one writer task per database drains the work queued into a single transaction
//! (up to [`MAX_BATCH`] pieces and [`MAX_GROUP_EVENTS`] events), commits once, then answers every
//! caller.
//!
//! Each piece of work runs in its own savepoint, so one that fails is rolled back alone while the
//! others commit. Webhook deliveries and app-event requests are the exception: all those of a
//! group are applied together, with a few statements per table for the whole group
//! ([`inbox::receive_all`], [`events::record_all`], which fall back to one savepoint per request
//! when a statement of the group fails or, for app events, a request is rejected). A caller's answer comes only after the commit that holds its work: what it is
//! told was written is durably written. This turns N fsyncs into one under load without adding a
//! waiting window: an idle writer starts a transaction as soon as one piece of work arrives.

use crate::db::{Checkpoints, Db, WalState};
use crate::ops::metrics::Metrics;
use crate::outbound::events::{self, AppEvent};
use crate::sync::apply::SyncContext;
use crate::sync::inbox::{self, EventResult, Incoming};
use futures_util::future::BoxFuture;
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Most pieces of work one transaction takes.
const MAX_BATCH: usize = 256;

/// Most events one transaction takes (a delivery's or an app request's events count one each,
/// other work one): a group holds all its events, their records and rows in memory at once, so
/// this bounds the writer's memory, whatever the backlog (up to 256 deliveries of 100 events
/// before). Four full TreadSoft deliveries fit: a cap of 100 (one delivery a group) measured
/// 43 % fewer events/s for 100-event deliveries on PostgreSQL (BENCHMARKS.md, session 8). A job
/// is never split: one larger than this is a group alone.
const MAX_GROUP_EVENTS: usize = 400;

type Completion = Box<dyn FnOnce(Result<(), Arc<DbErr>>) + Send>;
type EachJob = Box<dyn for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Completion> + Send>;

enum Job {
    /// Work of its own, run in its own savepoint.
    Each(EachJob),
    /// A webhook delivery's events: every delivery of a group is applied together.
    Events { incoming: Incoming, ctx: Arc<SyncContext>, reply: oneshot::Sender<Result<Vec<EventResult>, WriteError>> },
    /// An app-event request: every request of a group is applied together.
    AppEvents {
        events: Arc<Vec<AppEvent>>,
        ctx: Arc<SyncContext>,
        reply: oneshot::Sender<Result<events::Outcome, WriteError>>,
    },
}

impl Job {
    /// What the job weighs against [`MAX_GROUP_EVENTS`].
    fn events(&self) -> usize {
        match self {
            Job::Each(_) => 1,
            Job::Events { incoming, .. } => incoming.events.len(),
            Job::AppEvents { events, .. } => events.len(),
        }
    }
}

/// Why a piece of work was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The work itself failed; its savepoint was rolled back, the rest of the batch committed.
    #[error("the write failed: {0}")]
    Work(#[source] DbErr),
    /// The batch's transaction could not be opened or committed; nothing of it was written.
    #[error("the database transaction failed: {0}")]
    Transaction(#[source] Arc<DbErr>),
    /// The work never ran: the database could not start a transaction, or the gateway is stopping.
    #[error("the database is unavailable or the gateway is stopping")]
    Unavailable,
}

/// A handle to the writer task. Cloning is cheap.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    wal: Option<watch::Receiver<WalState>>,
}

impl Writer {
    /// Starts the writer task over `db`'s single writer connection, and on SQLite the WAL
    /// checkpoints that follow its commits ([`Db::start_checkpoints`]). The size of each group is
    /// counted in `metrics`.
    pub fn start(db: &Db, metrics: Arc<Metrics>) -> (Self, WriterTask) {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        let (stop, stopped) = watch::channel(false);
        let (checkpoints, checkpointing) = db.start_checkpoints(metrics.clone()).unzip();
        let wal = checkpoints.as_ref().map(Checkpoints::state);
        let work = run(db.writer().clone(), checkpoints, queue, stopped, metrics);
        let handle = match db.writer_cpu() {
            Some(cpu) => on_own_thread(work, cpu),
            None => tokio::spawn(work),
        };
        (Self { jobs, wal }, WriterTask { stop, handle, checkpointing })
    }

    /// SQLite: what the WAL checkpoints after this writer's commits did, as they finish.
    pub fn wal_checkpoints(&self) -> Option<watch::Receiver<WalState>> {
        self.wal.clone()
    }

    /// How many pieces of work wait for the next group transaction (in the queue: a piece held
    /// over from a full group is not counted).
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Runs `work` in the next group transaction and returns its result once that has committed.
    pub async fn run<T, F>(&self, work: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, DbErr>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, WriteError>>();
        let job: EachJob = Box::new(move |txn: &DatabaseTransaction| {
            Box::pin(async move {
                let outcome = in_savepoint(txn, work).await;
                Box::new(move |committed: Result<(), Arc<DbErr>>| {
                    let result = match committed {
                        Err(e) => Err(WriteError::Transaction(e)),
                        Ok(()) => outcome.map_err(WriteError::Work),
                    };
                    let _ = reply.send(result);
                }) as Completion
            })
        });
        self.jobs.send(Job::Each(job)).await.map_err(|_| WriteError::Unavailable)?;
        answer.await.map_err(|_| WriteError::Unavailable)?
    }

    /// Records and applies an app-event request (`POST /api/events`) in the next group
    /// transaction, together with the other requests of that group ([`events::record_all`]), and
    /// returns what it came to once that has committed; conflicts are run again.
    pub async fn app_events(
        &self,
        ctx: Arc<SyncContext>,
        events: Arc<Vec<AppEvent>>,
    ) -> Result<events::Outcome, WriteError> {
        self.grouped(|reply| Job::AppEvents { events: events.clone(), ctx: ctx.clone(), reply }).await
    }

    /// Records and applies a webhook delivery's events in the next group transaction, together
    /// with the other deliveries of that group ([`inbox::receive_all`]), and returns each event's
    /// result once that has committed. Work that lost a conflict is run again, as
    /// [`Writer::run_retrying`] does.
    pub async fn receive(&self, ctx: Arc<SyncContext>, incoming: Incoming) -> Result<Vec<EventResult>, WriteError> {
        self.grouped(|reply| Job::Events { incoming: incoming.clone(), ctx: ctx.clone(), reply }).await
    }

    /// Queues the job `job` makes (with the sender of its answer) and waits for the answer;
    /// work that lost a conflict is queued again.
    async fn grouped<T>(&self, job: impl Fn(oneshot::Sender<Result<T, WriteError>>) -> Job) -> Result<T, WriteError> {
        retrying(|| async {
            let (reply, answer) = oneshot::channel();
            self.jobs.send(job(reply)).await.map_err(|_| WriteError::Unavailable)?;
            answer.await.map_err(|_| WriteError::Unavailable)?
        })
        .await
    }

    /// Like [`Writer::run`], for work that can be built again: work that lost a conflict with
    /// another instance's transaction ([`crate::db::is_conflict`]) was rolled back alone, and is
    /// run again in a later group, up to [`CONFLICT_RETRIES`] times, before its error is returned.
    pub async fn run_retrying<T, F, B>(&self, build: B) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, DbErr>> + Send + 'static,
        B: Fn() -> F,
    {
        retrying(|| self.run(build())).await
    }
}

/// Runs `attempt` until it succeeds, fails otherwise than by a conflict, or has lost
/// [`CONFLICT_RETRIES`] conflicts (or one unique key race).
async fn retrying<T, A, Fut>(mut attempt: A) -> Result<T, WriteError>
where
    A: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, WriteError>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(WriteError::Work(e)) if crate::db::is_conflict(&e) && tries < CONFLICT_RETRIES => {
                tries += 1;
                tracing::info!(error = %e, tries, "the write lost a conflict with another instance: trying again");
            }
            // Another instance wrote the same key (an email, an id) first, unseen by this
            // transaction's checks: run once more, and the checks see it and answer.
            Err(WriteError::Work(e)) if crate::db::is_unique_violation(&e) && tries == 0 => {
                tries += 1;
                tracing::info!(error = %e, "another instance wrote the same key first: trying again");
            }
            other => return other,
        }
    }
}

/// The running writer task. Dropping it leaves the task running until every [`Writer`] is gone.
pub struct WriterTask {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    /// SQLite: the WAL checkpoints after the writer's commits; they end after the writer does.
    checkpointing: Option<tokio::task::JoinHandle<()>>,
}

impl WriterTask {
    /// Stops taking work, writes and commits what is queued already, and waits for that (and for
    /// the checkpoint of the last commit).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "the writer task failed");
        }
        if let Some(checkpointing) = self.checkpointing
            && let Err(e) = checkpointing.await
        {
            tracing::error!(error = %e, "the WAL checkpoint task failed");
        }
    }
}

/// Runs `work` on a thread of its own (named `crm-writer`, with a runtime of its own) pinned to
/// `cpu`, beside its SQLite connection's thread ([`crate::affinity`]); the handle returned ends
/// when the work does, and fails with the work's panic if it panicked.
fn on_own_thread(
    work: impl std::future::Future<Output = ()> + Send + 'static,
    cpu: usize,
) -> tokio::task::JoinHandle<()> {
    let (done, finished) = oneshot::channel::<Result<(), String>>();
    // As `std::thread::spawn` and `tokio::spawn` do, fail loudly when the system has no thread
    // left to give.
    std::thread::Builder::new()
        .name(WRITER_THREAD.into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match crate::affinity::pin_current(cpu) {
                    Ok(()) => tracing::info!(cpu, "the SQLite writer runs on CPU {cpu}"),
                    Err(e) => {
                        tracing::warn!(cpu, error = %e, "cannot pin the SQLite writer's thread: it runs unpinned")
                    }
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build the SQLite writer's runtime");
                runtime.block_on(work);
                // What the work left behind (its connection, handed back to the pool by a task
                // queued when the last transaction was dropped) finishes before the runtime goes.
                runtime.block_on(async {
                    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                    let handle = tokio::runtime::Handle::current();
                    while handle.metrics().num_alive_tasks() > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                });
            }));
            let _ = done.send(ran.map_err(|panic| {
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned())
            }));
        })
        .expect("cannot start the SQLite writer's thread");
    tokio::spawn(async move {
        match finished.await {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => panic!("the SQLite writer's thread panicked: {panic}"),
            Err(_) => panic!("the SQLite writer's thread ended without finishing its work"),
        }
    })
}

/// Opens a group's transaction on `connection`, the writer connection. `IMMEDIATE`: on SQLite
/// the write lock is taken at `BEGIN`, so another process writing the same file makes this one
/// wait (busy timeout) instead of failing with "database is locked"; on PostgreSQL its waits are
/// bounded ([`crate::db::bound_waits`]).
pub async fn begin_group(connection: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let options =
        TransactionOptions { sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate), ..Default::default() };
    let txn = connection.begin_with_options(options).await?;
    crate::db::bound_waits(&txn).await?;
    Ok(txn)
}

/// The name of the SQLite writer's thread (as `top -H` and `/proc` show it).
pub const WRITER_THREAD: &str = "crm-writer";

/// How often [`Writer::run_retrying`] tries work again after a conflict.
pub const CONFLICT_RETRIES: usize = 3;

async fn in_savepoint<T, F>(txn: &DatabaseTransaction, work: F) -> Result<T, DbErr>
where
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, DbErr>>,
{
    let savepoint = txn.begin().await?;
    match work(&savepoint).await {
        Ok(value) => {
            savepoint.commit().await?;
            Ok(value)
        }
        Err(e) => {
            savepoint.rollback().await?;
            Err(e)
        }
    }
}

/// Answers `reply` with `outcome` once the group's commit is known.
fn answer_after_commit<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, WriteError>>,
    outcome: Result<T, DbErr>,
) -> Completion {
    Box::new(move |committed: Result<(), Arc<DbErr>>| {
        let result = match committed {
            Err(e) => Err(WriteError::Transaction(e)),
            Ok(()) => outcome.map_err(WriteError::Work),
        };
        let _ = reply.send(result);
    })
}

async fn run(
    connection: DatabaseConnection,
    checkpoints: Option<Checkpoints>,
    mut queue: mpsc::Receiver<Job>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // A job that did not fit in the last group: the first of the next.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => {
                // Stopping while a backlog keeps every group full: refuse new work all the same.
                if stop.has_changed().unwrap_or(false) && *stop.borrow_and_update() {
                    queue.close();
                }
                Some(job)
            }
            None => tokio::select! {
                job = queue.recv() => job,
                // Stopping: refuse new work (callers get `Unavailable`), then drain what is queued.
                Ok(()) = stop.changed() => {
                    queue.close();
                    queue.recv().await
                }
            },
        };
        let Some(first) = first else { return };
        let mut events = first.events();
        batch.push(first);
        while batch.len() < MAX_BATCH && events < MAX_GROUP_EVENTS {
            let Ok(job) = queue.try_recv() else { break };
            if events + job.events() > MAX_GROUP_EVENTS {
                held = Some(job);
                break;
            }
            events += job.events();
            batch.push(job);
        }
        let started = std::time::Instant::now();
        let txn = match begin_group(&connection).await {
            Ok(txn) => txn,
            Err(e) => {
                // Dropping the work answers its callers with `Unavailable`.
                tracing::error!(error = %e, jobs = batch.len(), "cannot open a write transaction");
                batch.clear();
                continue;
            }
        };
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let mut deliveries = Vec::new();
        let mut requests = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Each(job) => completions.push(job(&txn).await),
                Job::Events { incoming, ctx, reply } => deliveries.push((incoming, ctx, reply)),
                Job::AppEvents { events, ctx, reply } => requests.push((events, ctx, reply)),
            }
        }
        if let Some((_, ctx, _)) = requests.first() {
            let ctx = ctx.clone();
            let all: Vec<Arc<Vec<AppEvent>>> = requests.iter().map(|(events, _, _)| events.clone()).collect();
            let outcomes = events::record_all(&txn, &ctx, &all).await;
            for ((_, _, reply), outcome) in requests.into_iter().zip(outcomes) {
                completions.push(answer_after_commit(reply, outcome));
            }
        }
        if let Some((_, ctx, _)) = deliveries.first() {
            // One gateway has one sync context: every delivery of the group carries the same.
            let ctx = ctx.clone();
            let incoming: Vec<Incoming> = deliveries.iter().map(|(incoming, _, _)| incoming.clone()).collect();
            let results = inbox::receive_all(&txn, &ctx, &incoming).await;
            for ((_, _, reply), outcome) in deliveries.into_iter().zip(results) {
                completions.push(answer_after_commit(reply, outcome));
            }
        }
        let applied = started.elapsed();
        let committed = txn.commit().await.map_err(Arc::new);
        tracing::debug!(jobs = completions.len(), ?applied, total = ?started.elapsed(), "group committed");
        metrics.group_jobs.observe(completions.len() as f64);
        match (&committed, &checkpoints) {
            (Err(e), _) => tracing::error!(error = %e, jobs = completions.len(), "group commit failed"),
            (Ok(()), Some(checkpoints)) => checkpoints.committed(),
            (Ok(()), None) => {}
        }
        completions.into_iter().for_each(|complete| complete(committed.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatabaseConfig, SqliteSynchronous};
    use crate::sync::hlc::{Hlc, Stamp};
    use crate::sync::lww::Origin;

    /// The groups' sizes as the metric counts them: (groups, jobs).
    fn groups(metrics: &Metrics) -> (u64, u64) {
        let text = metrics.encode();
        let value = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or_default() as u64
        };
        (value("crm_gateway_writer_group_jobs_count "), value("crm_gateway_writer_group_jobs_sum "))
    }

    /// A delivery of `n` events the gateway does not sync (each recorded, answered `ignored`).
    fn delivery(name: &str, n: usize) -> Incoming {
        let events = (0..n).map(|i| {
                serde_json::json!({"id": format!("evt_{name}_{i}"), "type": "note.ignored", "object": {"type": "note", "id": format!("n_{i}"), "version": 1, "updatedAt": "2026-12-03T00:00:00Z"}})
            }).collect();
        Incoming { delivery_id: name.to_owned(), events: Arc::new(events) }
    }

    /// Deliveries queued together are grouped up to [`MAX_GROUP_EVENTS`] events, in order, and a
    /// delivery is never split: one larger than the cap is a group alone.
    #[tokio::test(flavor = "current_thread")]
    async fn a_group_takes_at_most_max_group_events_and_never_splits_a_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("writer.db").display());
        // Not pinned: the writer shares this test's one thread, so every delivery is queued
        // before it first runs.
        let config = DatabaseConfig {
            url,
            max_connections: 2,
            sqlite_synchronous: SqliteSynchronous::Full,
            sqlite_writer_cpu: crate::config::WriterCpu::Off,
        };
        let db = crate::db::Db::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let (writer, task) = Writer::start(&db, metrics.clone());
        let ctx = Arc::new(SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) });
        let m = MAX_GROUP_EVENTS;

        // One thread: all five are queued before the writer task first runs.
        let sizes = [("a", m * 6 / 10), ("b", m * 4 / 10), ("c", m * 6 / 10), ("d", m * 3 / 2), ("e", 1)];
        let answers =
            futures_util::future::join_all(sizes.map(|(name, n)| writer.receive(ctx.clone(), delivery(name, n)))).await;

        for ((name, n), answer) in sizes.iter().zip(answers) {
            let results = answer.unwrap_or_else(|e| panic!("delivery {name}: {e}"));
            assert_eq!(results.len(), *n, "delivery {name} answered for each of its events");
            assert!(results.iter().all(|r| r.outcome == inbox::Outcome::Ignored), "{name}: {:?}", results[0]);
        }
        // a + b (exactly m: a group may be full); c (0.6 m, as c + d is over); d (1.5 m, alone); e.
        assert_eq!(groups(&metrics), (4, 5));
        task.stop().await;
    }
}
