//! Connecting to the database and migrating it.
//!
//! SQLite gets two pools: one writer connection, through which every write goes, so writes are
//! serialized inside the gateway and no request ever sees "database is locked"; and a pool of
//! read-only connections that WAL mode lets read alongside the writer; plus one connection that
//! copies the writer's commits from the WAL into the database file ([`Db::start_checkpoints`]).
//! PostgreSQL gets one pool that serves both roles.

use crate::config::{DatabaseConfig, SqliteSynchronous};
use crate::ops::metrics::Metrics;
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous as Synchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DbErr, Statement};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Turns Nagle's algorithm off on this process's TCP connections to port `port` (PostgreSQL's).
///
/// sqlx 0.9.0 no longer sets `TCP_NODELAY` on its sockets (transact-rs/sqlx#4335; fixed upstream
/// by #4336, not released yet). With Nagle on, a statement larger than one TCP segment (a
/// multi-row insert) waits for the server's delayed ACK: 40 ms, two or three times per group
/// commit, measured in BENCHMARKS.md. sqlx gives no access to its socket, so the socket is found
/// among the process's open descriptors, by its peer's port, right after each connect.
fn no_delay_to(port: u16) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
        for fd in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            // SAFETY: the descriptor is only borrowed for two socket calls; if it was closed or
            // reused meanwhile, they fail (not a socket) or set TCP_NODELAY on another TCP
            // connection of this process to the same port, which is harmless.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let to_port = socket.peer_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port());
            if to_port == Some(port) && socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM) {
                let _ = socket.set_tcp_nodelay(true);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = port;
}

/// How long a SQLite connection waits for a lock held by another process (e.g. a `sqlite3` shell).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's database handles. Cloning is cheap (pools are shared).
#[derive(Clone, Debug)]
pub struct Db {
    writer: DatabaseConnection,
    reader: DatabaseConnection,
    /// SQLite: a writable connection of its own for [`Db::start_checkpoints`], opened on first use.
    checkpointer: Option<DatabaseConnection>,
    /// Whether [`Db::start_checkpoints`] ran: the checkpoints of one database run once.
    checkpoints_started: Arc<AtomicBool>,
    /// SQLite: the CPU the writer connection's thread is pinned to, and the writer's with it
    /// ([`crate::affinity`]).
    writer_cpu: Option<usize>,
    /// SQLite: the name of the writer connection's thread.
    writer_thread: WriterThread,
}

/// The name sqlx gave the thread of the writer's connection last (it names each one it opens).
type WriterThread = Arc<std::sync::Mutex<String>>;

/// SQLite's automatic checkpoint on the writer connection, in WAL frames (pages): the writer
/// copies the WAL into the database file itself once a commit leaves this many, and so bounds the
/// WAL (SQLite's default, set explicitly because [`Db::start_checkpoints`] counts on it).
const WAL_AUTOCHECKPOINT: i64 = 1000;

/// When SQLite starts the WAL over after it grew past this (a reader held an old snapshot, say),
/// it cuts the `-wal` file back to it, instead of keeping its largest size for good.
const WAL_SIZE_LIMIT: i64 = 32 * 1024 * 1024;

/// How long the checkpoints pause after one failed, leaving the work to the writer's own.
const CHECKPOINT_BACKOFF: Duration = Duration::from_secs(1);

/// What a WAL checkpoint found and did ([`Db::start_checkpoints`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalState {
    /// The number of the writer's commit signalled last before the checkpoint began: every page
    /// committed by then was in the WAL the checkpoint read.
    pub through_commit: u64,
    /// Frames in the WAL file.
    pub frames: i64,
    /// Of those, frames copied into the database file (by this checkpoint or earlier ones); fewer
    /// than `frames` while a reader still uses older pages.
    pub copied: i64,
}

/// The writer's side of the checkpoints: signals each commit.
#[derive(Debug)]
pub struct Checkpoints {
    commits: watch::Sender<u64>,
    state: watch::Receiver<WalState>,
}

impl Checkpoints {
    /// Says a commit happened: a checkpoint follows (one for several commits if it is busy).
    pub fn committed(&self) {
        self.commits.send_modify(|n| *n += 1);
    }

    /// What the checkpoints did, as they finish (a checkpoint that found another connection
    /// checkpointing did nothing and is not published).
    pub fn state(&self) -> watch::Receiver<WalState> {
        self.state.clone()
    }
}

impl Db {
    /// Opens the database (creating a SQLite file when absent) with the pragmas the gateway needs.
    #[tracing::instrument(name = "db.connect", skip_all)]
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbErr> {
        if config.url.starts_with("sqlite:") {
            let writer_cpu = crate::affinity::choose(config.sqlite_writer_cpu)
                .map_err(|e| DbErr::Custom(format!("SQLITE_WRITER_CPU: {e}")))?;
            let writer_thread = WriterThread::default();
            let writer = connect_sqlite(config, Role::Writer(writer_cpu), &writer_thread).await?;
            let reader = connect_sqlite(config, Role::Reader, &writer_thread).await?;
            let checkpointer = Some(connect_sqlite(config, Role::Checkpointer, &writer_thread).await?);
            Ok(Self { writer, reader, checkpointer, checkpoints_started: Arc::default(), writer_cpu, writer_thread })
        } else {
            // The password goes to the driver on its own, not in the URL: sea-orm and sqlx log
            // their connect options (URL included) at trace level.
            let (url, password) = split_password(&config.url);
            let mut options = ConnectOptions::new(url);
            if let Some(password) = password {
                options.map_sqlx_postgres_opts(move |o| o.password(&password));
            }
            let port = url::Url::parse(&config.url).ok().and_then(|u| u.port()).unwrap_or(5432);
            options.map_sqlx_postgres_pool_opts(move |o| {
                o.after_connect(move |_, _| {
                    Box::pin(async move {
                        no_delay_to(port);
                        Ok(())
                    })
                })
            });
            options
                .max_connections(config.max_connections)
                .connect_timeout(Duration::from_secs(10))
                .acquire_timeout(Duration::from_secs(10))
                .sqlx_logging(false);
            let pool = Database::connect(options).await?;
            Ok(Self {
                writer: pool.clone(),
                reader: pool,
                checkpointer: None,
                checkpoints_started: Arc::default(),
                writer_cpu: None,
                writer_thread: WriterThread::default(),
            })
        }
    }

    /// The connection every write (and every transaction that writes) must use.
    pub fn writer(&self) -> &DatabaseConnection {
        &self.writer
    }

    /// SQLite: the CPU the writer's threads are pinned to (`SQLITE_WRITER_CPU`); `None` when they
    /// are not, and on PostgreSQL.
    pub fn writer_cpu(&self) -> Option<usize> {
        self.writer_cpu
    }

    /// SQLite: the name of the thread the writer's connection runs on (`sqlwr-N`, as `top -H`
    /// shows it); `None` on PostgreSQL.
    pub fn writer_thread(&self) -> Option<String> {
        let name = self.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (!name.is_empty()).then_some(name)
    }

    /// Calls `callback` after each statement run through [`Db::writer`] (to count them, say).
    pub fn on_write_statement(&mut self, callback: impl Fn(&sea_orm::metric::Info<'_>) + Send + Sync + 'static) {
        self.writer.set_metric_callback(callback);
    }

    /// Calls `callback` after each statement run through [`Db::reader`].
    pub fn on_read_statement(&mut self, callback: impl Fn(&sea_orm::metric::Info<'_>) + Send + Sync + 'static) {
        self.reader.set_metric_callback(callback);
    }

    /// A connection for reads that need not see the writer's open transaction.
    pub fn reader(&self) -> &DatabaseConnection {
        &self.reader
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.writer.get_database_backend()
    }

    /// Applies every pending migration.
    #[tracing::instrument(name = "db.migrate", skip_all)]
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.writer, None).await
    }

    /// A round trip to the database through both handles.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.reader.execute_unprepared("SELECT 1").await?;
        self.writer.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    /// SQLite: starts copying committed pages from the WAL into the database file on a connection
    /// of the gateway's own, after each commit the returned handle signals, until it is dropped
    /// (the task then ends). Left to the writer (SQLite's automatic checkpoint every
    /// [`WAL_AUTOCHECKPOINT`] frames), the copy and its `fsync` of the database file ran inside a
    /// commit every few groups, on the path every caller waits on (BENCHMARKS.md, session 12).
    /// Here it runs beside the writer: a `PASSIVE` checkpoint waits for no reader or writer, and
    /// the writer goes on appending to the WAL meanwhile.
    ///
    /// The WAL's bound stays the writer's: SQLite starts the WAL file over only when a write
    /// transaction begins with every frame copied, which a writer with work queued finds right
    /// after its own checkpoint (the same connection, nothing committed in between) and seldom
    /// after another connection's. So once a checkpoint here finds the WAL at the writer's
    /// threshold, it lets the next commit go by: the writer's own checkpoint then takes the lock
    /// uncontended (one connection at a time may checkpoint; the other is refused at once), copies
    /// the little left, and the WAL starts over at the next group. `None` on PostgreSQL, or when
    /// the checkpoints of this database run already.
    pub fn start_checkpoints(&self, metrics: Arc<Metrics>) -> Option<(Checkpoints, tokio::task::JoinHandle<()>)> {
        let connection = self.checkpointer.clone()?;
        if self.checkpoints_started.swap(true, Ordering::SeqCst) {
            return None;
        }
        let (commits, mut signalled) = watch::channel(0u64);
        let (publish, state) = watch::channel(WalState::default());
        let task = tokio::spawn(async move {
            let mut leave_next = false;
            let mut failed = Throttled::default();
            // Ends when the writer drops its handle (after the checkpoint of its last commit).
            while signalled.changed().await.is_ok() {
                let through_commit = *signalled.borrow_and_update();
                if std::mem::take(&mut leave_next) {
                    continue;
                }
                match checkpoint(&connection).await {
                    Ok(Some((frames, copied))) => {
                        metrics.sqlite_wal_frames.set(frames);
                        leave_next = frames >= WAL_AUTOCHECKPOINT;
                        publish.send_replace(WalState { through_commit, frames, copied });
                    }
                    // The writer's own checkpoint had the lock: it did the work.
                    Ok(None) => {}
                    Err(e) => {
                        metrics.sqlite_checkpoint_failures.inc();
                        failed.warn(&e);
                        // The writer's own checkpoints go on meanwhile, uncontended.
                        tokio::time::sleep(CHECKPOINT_BACKOFF).await;
                    }
                }
            }
        });
        Some((Checkpoints { commits, state }, task))
    }

    pub async fn close(self) -> Result<(), DbErr> {
        let same = self.backend() == DatabaseBackend::Postgres;
        self.reader.close().await?;
        if !same {
            self.writer.close().await?;
        }
        if let Some(checkpointer) = self.checkpointer {
            checkpointer.close().await?;
        }
        Ok(())
    }
}

/// The URL without its password, and the (decoded) password.
fn split_password(url: &str) -> (String, Option<String>) {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let password =
                parsed.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into());
            let _ = parsed.set_password(None);
            (parsed.to_string(), password)
        }
        _ => (url.to_owned(), None),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// With the CPU its thread is pinned to.
    Writer(Option<usize>),
    Reader,
    Checkpointer,
}

/// One `PASSIVE` checkpoint (it waits for no reader or writer): the WAL's frames, and how many of
/// them are in the database file now; `None` when another connection was checkpointing at that
/// moment (SQLite answers busy, and `-1` for both counts).
async fn checkpoint(c: &DatabaseConnection) -> Result<Option<(i64, i64)>, DbErr> {
    let row = c
        .query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, "PRAGMA wal_checkpoint(PASSIVE)"))
        .await?
        .ok_or_else(|| DbErr::Custom("PRAGMA wal_checkpoint answered no row".into()))?;
    if row.try_get_by_index::<i64>(0)? != 0 {
        return Ok(None);
    }
    Ok(Some((row.try_get_by_index::<i64>(1)?, row.try_get_by_index::<i64>(2)?)))
}

/// A failure that may repeat at every commit, logged at most once a minute, with the number of
/// failures since the last line.
#[derive(Default)]
struct Throttled {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

impl Throttled {
    fn warn(&mut self, e: &DbErr) {
        self.unlogged += 1;
        if self.last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(error = %e, failures = self.unlogged, "WAL checkpoint failed (the writer's own go on)");
            self.last = Some(std::time::Instant::now());
            self.unlogged = 0;
        }
    }
}

async fn connect_sqlite(
    config: &DatabaseConfig,
    role: Role,
    writer_thread: &WriterThread,
) -> Result<DatabaseConnection, DbErr> {
    let synchronous = match config.sqlite_synchronous {
        SqliteSynchronous::Full => Synchronous::Full,
        SqliteSynchronous::Normal => Synchronous::Normal,
    };
    let (writer_thread, named) = (writer_thread.clone(), writer_thread.clone());
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(if role == Role::Reader { config.max_connections } else { 1 })
        .min_connections(if matches!(role, Role::Writer(_)) { 1 } else { 0 })
        // The checkpoint connection opens when the checkpoints first run: one-shot commands and
        // `migrate` never start them.
        .connect_lazy(role == Role::Checkpointer)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            let o = o
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                // The group's IN lists and RETURNING clauses use SQLite's temporary tables; in
                // a file (the default) each one created, written and unlinked a file in
                // /var/tmp. In memory: 8-12 % less CPU per event, the same RSS (BENCHMARKS.md).
                .pragma("temp_store", "memory");
            match role {
                Role::Writer(_) => {
                    let slot = writer_thread.clone();
                    o.create_if_missing(true)
                        // Named, so that its thread can be found and pinned below.
                        .thread_name(move |id| {
                            let name = crate::affinity::writer_connection_thread(id);
                            *slot.lock().unwrap_or_else(|e| e.into_inner()) = name.clone();
                            name
                        })
                        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT.to_string())
                        .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
                }
                Role::Reader => o.read_only(true),
                Role::Checkpointer => o,
            }
        });
    if let Role::Writer(Some(cpu)) = role {
        // Each connection the pool opens (the first, and any that replaces it) has its thread
        // pinned beside the writer's ([`crate::affinity`]).
        options.map_sqlx_sqlite_pool_opts(move |o| {
            let named = named.clone();
            o.after_connect(move |_, _| {
                let name = named.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Box::pin(async move {
                    match crate::affinity::pin_named(&name, cpu) {
                        Ok(n) if n > 0 => tracing::debug!(thread = %name, cpu, "SQLite writer connection pinned"),
                        Ok(_) => tracing::warn!(thread = %name, "cannot find the SQLite writer connection's thread to pin it"),
                        Err(e) => tracing::warn!(thread = %name, cpu, error = %e, "cannot pin the SQLite writer connection's thread"),
                    }
                    Ok(())
                })
            })
        });
    }
    Database::connect(options).await
}

/// Whether `e` is the data of one piece of work breaking a rule of the database: a data exception
/// (SQLSTATE class 22, such as a NUL character in text or a number out of range) or an integrity
/// constraint (class 23: unique, foreign key, not null, check), or SQLite's equivalents. Trying the
/// same data again fails the same way, so such an error fails that piece of work alone; any other
/// error (a lost connection, a lock or statement timeout) fails the whole batch, to be tried again.
pub fn is_data_error(e: &DbErr) -> bool {
    if matches!(e, DbErr::Json(_)) || e.sql_err().is_some() {
        return true;
    }
    let Some(e) = database_error(e) else { return false };
    let Some(code) = e.code() else { return false };
    if e.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>().is_some() {
        return code.starts_with("22") || code.starts_with("23");
    }
    // SQLite's extended result codes carry the primary code in their low byte: 18 TOOBIG,
    // 19 CONSTRAINT, 20 MISMATCH, 25 RANGE.
    code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 18 | 19 | 20 | 25))
}

/// Whether `e` is a unique index refusing a key another row has.
pub fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// The error the database itself answered with, if `e` is one.
fn database_error(e: &DbErr) -> Option<&dyn sea_orm::sqlx::error::DatabaseError> {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else { return None };
    match &**e {
        sea_orm::sqlx::Error::Database(e) => Some(&**e),
        _ => None,
    }
}

/// Whether `e` is two transactions getting in each other's way (a deadlock the database broke,
/// a serialization failure, a lock wait over [`PG_LOCK_TIMEOUT`]): the same work, tried again in
/// a new transaction, normally succeeds. Group commit makes these possible between instances on
/// PostgreSQL: each instance's transaction holds the locks of every piece of work in its group.
pub fn is_conflict(e: &DbErr) -> bool {
    let Some(e) = database_error(e) else { return false };
    e.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>().is_some()
        && e.code().is_some_and(|code| matches!(code.as_ref(), "40P01" | "40001" | "55P03"))
}

/// Takes a transaction-scoped advisory lock named `name` on PostgreSQL, held until the transaction
/// ends, so that transactions of several gateway instances that must not interleave take turns.
/// Nothing on SQLite, where one write transaction runs at a time anyway.
pub async fn lock_named(c: &impl ConnectionTrait, name: &str) -> Result<(), DbErr> {
    if c.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    let sql = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
    c.query_one_raw(Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, [name.into()])).await?;
    Ok(())
}

/// [`lock_named`] for many names in one statement, taken in sorted order (so two transactions
/// locking overlapping sets cannot deadlock on them).
pub async fn lock_names(c: &impl ConnectionTrait, names: &[String]) -> Result<(), DbErr> {
    if c.get_database_backend() != DatabaseBackend::Postgres || names.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&String> = names.iter().collect();
    names.sort();
    names.dedup();
    for chunk in names.chunks(MAX_PARAMS) {
        let values: Vec<String> = (1..=chunk.len()).map(|i| format!("(${i}, {i})")).collect();
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended(v.n, 0)) FROM (VALUES {}) AS v(n, i) ORDER BY v.i",
            values.join(", ")
        );
        let values = chunk.iter().map(|n| sea_orm::Value::from(n.as_str()));
        c.query_all_raw(Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)).await?;
    }
    Ok(())
}

/// Most bound values one statement carries (SQLite allows 32,766, PostgreSQL 65,535): multi-row
/// statements are cut into chunks below it.
pub const MAX_PARAMS: usize = 30_000;

/// How many rows of `columns` values each fit in one statement.
pub fn rows_per_statement(columns: usize) -> usize {
    (MAX_PARAMS / columns.max(1)).max(1)
}

/// Inserts `models` (all with the same columns set) in as few multi-row statements as
/// [`MAX_PARAMS`] allows, with `on_conflict` on each. Nothing is sent for none.
pub async fn insert_all<A>(
    c: &impl ConnectionTrait,
    models: Vec<A>,
    on_conflict: Option<sea_orm::sea_query::OnConflict>,
) -> Result<(), DbErr>
where
    A: sea_orm::ActiveModelTrait + Send,
{
    use sea_orm::{EntityTrait, Iterable};
    let columns = <<A::Entity as EntityTrait>::Column as Iterable>::iter().count();
    let per = rows_per_statement(columns);
    let mut models = models.into_iter().peekable();
    while models.peek().is_some() {
        let mut insert = <A::Entity as EntityTrait>::insert_many(models.by_ref().take(per));
        if let Some(on_conflict) = &on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        insert.exec_without_returning(c).await?;
    }
    Ok(())
}

/// Inserts those of `models` whose primary key (`key`) is not stored yet, in as few statements
/// as [`MAX_PARAMS`] allows; returns the keys of the rows inserted.
pub async fn insert_absent<A>(
    c: &impl ConnectionTrait,
    models: Vec<A>,
    key: <A::Entity as sea_orm::EntityTrait>::Column,
) -> Result<Vec<<<A::Entity as sea_orm::EntityTrait>::PrimaryKey as sea_orm::PrimaryKeyTrait>::ValueType>, DbErr>
where
    A: sea_orm::ActiveModelTrait + Send,
    <A::Entity as sea_orm::EntityTrait>::Model: sea_orm::IntoActiveModel<A>,
{
    use sea_orm::{EntityTrait, Iterable};
    let columns = <<A::Entity as EntityTrait>::Column as Iterable>::iter().count();
    let per = rows_per_statement(columns);
    let mut inserted = Vec::new();
    let mut models = models.into_iter().peekable();
    while models.peek().is_some() {
        let chunk = <A::Entity as EntityTrait>::insert_many(models.by_ref().take(per));
        if let sea_orm::TryInsertResult::Inserted(keys) =
            chunk.on_conflict_do_nothing_on([key]).exec_with_returning_keys(c).await?
        {
            inserted.extend(keys);
        }
    }
    Ok(inserted)
}

/// How long a write transaction on PostgreSQL waits for a lock, and how long one statement may
/// run, before it gives up: one stuck lock must not stall every write of every instance.
pub const PG_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
pub const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets [`PG_LOCK_TIMEOUT`] and [`PG_STATEMENT_TIMEOUT`] for the rest of the transaction `c`.
pub async fn bound_waits(c: &impl ConnectionTrait) -> Result<(), DbErr> {
    if c.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    c.execute_unprepared(&format!(
        "SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'",
        PG_LOCK_TIMEOUT.as_millis(),
        PG_STATEMENT_TIMEOUT.as_millis()
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_password;

    #[cfg(target_os = "linux")]
    #[test]
    fn connections_to_the_database_port_get_tcp_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let to_it = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_it.nodelay().unwrap(), "Nagle is on by default");

        super::no_delay_to(port);

        assert!(to_it.nodelay().unwrap());
        assert!(!to_other.nodelay().unwrap(), "connections elsewhere are left alone");
    }

    #[test]
    fn the_password_is_taken_out_of_the_url_and_decoded() {
        let (url, password) = split_password("postgres://gw:p%40ss%2Fword@db.example:5432/crm");
        assert_eq!((url.as_str(), password.as_deref()), ("postgres://gw@db.example:5432/crm", Some("p@ss/word")));
        assert_eq!(split_password("postgres://gw@db/crm"), ("postgres://gw@db/crm".to_owned(), None));
    }
}
