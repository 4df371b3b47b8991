//! The floor under the SQLite writer (BENCHMARKS.md, session 19): what the gateway's own
//! statements cost SQLite alone.
//!
//! Groups of TreadSoft deliveries (the load's synthetic contacts: each created, then updated) are
//! applied in-process through the gateway's code as the writer runs a group: `inbox::receive_all`
//! in a `BEGIN IMMEDIATE` transaction, on a thread pinned beside its connection's, sea-orm over
//! sqlx. That run is timed. The same kind of groups are then applied on a second database with
//! every statement caught, and those statements are replayed on a third, freshly migrated
//! database through rusqlite: each prepared once, bound, every row read; a group a transaction
//! with the one savepoint `receive_all` opens (the statement callback does not see `BEGIN`,
//! `SAVEPOINT`, `RELEASE` and `COMMIT`, so the replay adds them); `synchronous = FULL` in WAL
//! mode, as the gateway runs. The replay makes none of the gateway's decisions (they are in the
//! statements already): it is what today's statements cost SQLite with no ORM, no driver thread
//! and no logic of the gateway's. The replay's time by statement is printed too.
//!
//! ```text
//! cargo run --release -p bench --example writer_floor -- <events per delivery> <deliveries per group> <groups>
//! ```
//!
//! `1 16 1000` is the shape of the benchmark's `inbound-1` groups, `100 4 100` of `inbound-100`'s.

#[path = "../src/payload.rs"]
#[allow(dead_code)]
mod payload;
#[path = "../src/procfs.rs"]
#[allow(dead_code)]
mod procfs;

use anyhow::{Context, bail};
use chrono::SecondsFormat;
use crm_gateway::config::{DatabaseConfig, SqliteSynchronous, WriterCpu};
use crm_gateway::db::Db;
use crm_gateway::sync::apply::SyncContext;
use crm_gateway::sync::hlc::{Hlc, Stamp};
use crm_gateway::sync::inbox::{Incoming, receive_all};
use crm_gateway::sync::lww::Origin;
use payload::ContactStream;
use sea_orm::Statement;
use sea_orm::sea_query::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// This process's CPU time so far (all its threads: sqlx's connection threads included).
fn cpu_seconds() -> anyhow::Result<f64> {
    let ticks = procfs::cpu_ticks(std::process::id()).context("cannot read /proc/self/stat")?;
    Ok(procfs::ticks_to_duration(ticks).as_secs_f64())
}

/// `count` groups of `per_group` deliveries of `events` events each; delivery `w` of each group
/// continues contact stream `w`, as load worker `w` sends its stream in order.
fn groups(events: usize, per_group: usize, count: usize, tag: &str) -> Vec<Vec<Incoming>> {
    let mut streams: Vec<ContactStream> =
        (0..per_group).map(|w| ContactStream::new(format!("{tag}w{w:02}"), 1)).collect();
    (0..count)
        .map(|g| {
            streams
                .iter_mut()
                .enumerate()
                .map(|(w, stream)| Incoming {
                    delivery_id: format!("dlv_{tag}_{g}_{w}"),
                    events: Arc::new((0..events).map(|_| stream.next_event()).collect()),
                })
                .collect()
        })
        .collect()
}

/// A migrated SQLite database at `path`, opened as the gateway opens it.
async fn open(path: &Path) -> anyhow::Result<Db> {
    let config = DatabaseConfig {
        url: format!("sqlite:{}?mode=rwc", path.display()),
        max_connections: 2,
        sqlite_synchronous: SqliteSynchronous::Full,
        sqlite_writer_cpu: WriterCpu::default(),
    };
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    Ok(db)
}

/// Applies each group in a transaction as the writer does (`writer::begin_group`, then
/// `receive_all`, which opens a savepoint for the group); returns what `caught` holds after each
/// group.
async fn apply(
    db: &Db,
    groups: &[Vec<Incoming>],
    caught: &Mutex<Vec<Statement>>,
) -> anyhow::Result<Vec<Vec<Statement>>> {
    let ctx = SyncContext { precedence: Origin::Crm, hlc: Hlc::starting_after(Stamp::default()) };
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let txn = crm_gateway::writer::begin_group(db.writer()).await?;
        for result in receive_all(&txn, &ctx, group).await {
            result?;
        }
        txn.commit().await?;
        out.push(std::mem::take(&mut *caught.lock().unwrap_or_else(|e| e.into_inner())));
    }
    Ok(out)
}

/// Binds `values` as sqlx binds them on SQLite (times as RFC 3339 text, JSON as text).
fn bind(stmt: &mut rusqlite::Statement<'_>, values: &[Value]) -> anyhow::Result<()> {
    use rusqlite::types::Value as V;
    for (i, value) in values.iter().enumerate() {
        let v = match value {
            Value::Bool(b) => b.map_or(V::Null, |b| V::Integer(b.into())),
            Value::Int(x) => x.map_or(V::Null, |x| V::Integer(x.into())),
            Value::BigInt(x) => x.map_or(V::Null, V::Integer),
            Value::Double(x) => x.map_or(V::Null, V::Real),
            Value::String(s) => s.clone().map_or(V::Null, V::Text),
            Value::Json(j) => j.as_ref().map_or(V::Null, |j| V::Text(j.to_string())),
            Value::ChronoDateTimeUtc(t) => {
                t.map_or(V::Null, |t| V::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false)))
            }
            Value::ChronoDate(d) => d.map_or(V::Null, |d| V::Text(d.format("%F").to_string())),
            other => bail!("a value this replay does not bind: {other:?}"),
        };
        stmt.raw_bind_parameter(i + 1, v)?;
    }
    Ok(())
}

/// Seconds spent in each kind of statement (the start of its SQL; the commits as `COMMIT`), and
/// how many ran.
type Spent = BTreeMap<String, (f64, usize)>;

/// Replays `groups` on the database at `path`; returns the rows read, and where the time went.
fn replay(path: &Path, groups: &[Vec<Statement>]) -> anyhow::Result<(usize, Spent)> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA temp_store=memory;",
    )?;
    let mut prepared: HashMap<&str, rusqlite::Statement<'_>> = HashMap::new();
    let mut rows = 0;
    let mut spent = Spent::new();
    let mut count = |key: String, started: Instant| {
        let entry = spent.entry(key).or_default();
        entry.0 += started.elapsed().as_secs_f64();
        entry.1 += 1;
    };
    for group in groups {
        conn.execute_batch("BEGIN IMMEDIATE; SAVEPOINT g")?;
        for statement in group {
            let started = Instant::now();
            let stmt = match prepared.entry(&statement.sql) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(conn.prepare(&statement.sql)?),
            };
            bind(stmt, statement.values.as_ref().map(|v| v.0.as_slice()).unwrap_or_default())?;
            let columns = stmt.column_count();
            let mut result = stmt.raw_query();
            while let Some(row) = result.next()? {
                for c in 0..columns {
                    let _: rusqlite::types::Value = row.get(c)?;
                }
                rows += 1;
            }
            count(statement.sql.chars().take(60).collect(), started);
        }
        let started = Instant::now();
        conn.execute_batch("RELEASE g; COMMIT")?;
        count("COMMIT".into(), started);
    }
    Ok((rows, spent))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let [events, per_group, count] = args[..] else {
        bail!("usage: writer_floor <events per delivery> <deliveries per group> <groups>");
    };
    let dir = tempfile::tempdir()?;
    let total = (events * per_group * count) as f64;

    let db = open(&dir.path().join("timed.db")).await?;
    // Pinned beside the writer connection's thread, as the gateway's writer is.
    if let Some(cpu) = db.writer_cpu() {
        crm_gateway::affinity::pin_current(cpu)?;
    }
    let work = groups(events, per_group, count, "t");
    let (wall, cpu) = (Instant::now(), cpu_seconds()?);
    apply(&db, &work, &Mutex::default()).await?;
    let (gateway_wall, gateway_cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds()? - cpu);

    let mut db = open(&dir.path().join("caught.db")).await?;
    let caught: Arc<Mutex<Vec<Statement>>> = Arc::default();
    let sink = caught.clone();
    let failed = Arc::new(AtomicUsize::new(0));
    let failures = failed.clone();
    db.on_write_statement(move |info| {
        if info.failed {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(info.statement.clone())
    });
    let statements = apply(&db, &groups(events, per_group, count, "c"), &caught).await?;
    // A failed statement means a group fell back to a savepoint per delivery: work the replay
    // would not reproduce.
    match failed.load(Ordering::Relaxed) {
        0 => {}
        n => bail!("{n} caught statements failed: the replay would not run the same work"),
    }
    open(&dir.path().join("replayed.db")).await?.close().await?;
    let (wall, cpu) = (Instant::now(), cpu_seconds()?);
    let (rows, spent) = replay(&dir.path().join("replayed.db"), &statements)?;
    let (replay_wall, replay_cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds()? - cpu);

    let per_group_statements = statements.iter().map(Vec::len).sum::<usize>() as f64 / count as f64;
    println!(
        "{events} events a delivery, {per_group} deliveries a group, {count} groups: \
         {per_group_statements:.1} statements a group, {rows} rows read in the replay"
    );
    for (what, wall, cpu) in
        [("gateway (sea-orm, sqlx)", gateway_wall, gateway_cpu), ("replay (rusqlite)", replay_wall, replay_cpu)]
    {
        println!(
            "{what:<24} {:7.1} us wall, {:7.1} us CPU an event, {:7.0} events/s",
            wall / total * 1e6,
            cpu / total * 1e6,
            total / wall
        );
    }
    let mut spent: Vec<_> = spent.into_iter().collect();
    spent.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("the replay's time by statement:");
    for (sql, (secs, n)) in spent {
        println!("{:9.1} us an event {n:6}x  {sql}", secs / total * 1e6);
    }
    Ok(())
}
