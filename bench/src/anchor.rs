//! The anchors: what the gateway is measured against, served by this binary in a process of its
//! own (`bench anchor plain|commit --port 0 --db FILE`, which prints its address on stdout).
//!
//! - `plain`: actix-web reads the body and answers `200 {}`.
//! - `commit`: actix-web checks the TreadSoft signature with the gateway's own function, then
//!   queues the body for one SQLite writer thread (WAL, `synchronous=FULL`) that takes everything
//!   queued, inserts each body into one table in one transaction, commits, and only then lets each
//!   waiting request answer `200 {}`: a group commit with nothing else around it.

use crate::payload::WEBHOOK_SECRET;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use clap::{Args, ValueEnum};
use crm_gateway::inbound::verify::{self, SignedHeaders};
use secrecy::SecretString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Where the anchors and the gateway take deliveries.
pub const WEBHOOK_PATH: &str = "/api/crm/webhooks/treadsoft";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnchorKind {
    Plain,
    Commit,
}

impl AnchorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Commit => "commit",
        }
    }
}

/// `bench anchor ...`: serve one anchor until SIGINT/SIGTERM.
#[derive(Debug, Args)]
pub struct AnchorArgs {
    /// Which anchor.
    #[arg(value_enum)]
    pub kind: AnchorKind,
    /// Port on 127.0.0.1; 0 picks a free one. The address is printed on stdout.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The SQLite file the commit anchor writes (created when absent).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The webhook signing secret the commit anchor checks.
    #[arg(long, default_value = WEBHOOK_SECRET)]
    pub secret: String,
    /// HTTP worker threads; default one per core, as the gateway's HTTP_WORKERS.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Runs the anchor on its own actix system (the calling thread blocks until it stops).
pub fn run(args: AnchorArgs) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(serve(args))
}

/// One delivery waiting for the writer, and where to tell its request how the commit went.
struct Job {
    body: web::Bytes,
    done: oneshot::Sender<Result<(), String>>,
}

struct CommitState {
    secrets: Vec<SecretString>,
    jobs: mpsc::Sender<Job>,
}

async fn serve(args: AnchorArgs) -> anyhow::Result<()> {
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let bind = ("127.0.0.1", args.port);
    let (addr, server) = match args.kind {
        AnchorKind::Plain => {
            let server = HttpServer::new(|| {
                App::new().app_data(web::PayloadConfig::new(1024 * 1024)).route(WEBHOOK_PATH, web::post().to(plain))
            })
            .workers(workers)
            .bind(bind)?;
            (server.addrs().first().copied(), server.run())
        }
        AnchorKind::Commit => {
            let db = args.db.context("the commit anchor needs --db FILE")?;
            let (jobs, queue) = mpsc::channel();
            let connection = open(&db)?;
            std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || write_groups(connection, queue))?;
            let state = web::Data::new(CommitState { secrets: vec![SecretString::from(args.secret)], jobs });
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .app_data(web::PayloadConfig::new(1024 * 1024))
                    .route(WEBHOOK_PATH, web::post().to(commit))
            })
            .workers(workers)
            .bind(bind)?;
            (server.addrs().first().copied(), server.run())
        }
    };
    announce(addr.context("the server has no address")?)?;
    Ok(server.await?)
}

async fn plain(body: web::Bytes) -> HttpResponse {
    drop(body);
    HttpResponse::Ok().content_type("application/json").body("{}")
}

async fn commit(req: HttpRequest, body: web::Bytes, state: web::Data<CommitState>) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = SignedHeaders::TreadSoft {
        timestamp: header(verify::TREADSOFT_TIMESTAMP),
        signature: header(verify::TREADSOFT_SIGNATURE),
    };
    if let Err(e) = verify::verify(headers, &body, &state.secrets, chrono::Utc::now().timestamp(), 300) {
        return HttpResponse::Unauthorized()
            .content_type("application/json")
            .body(format!(r#"{{"error":"{}"}}"#, e.code()));
    }
    let (done, committed) = oneshot::channel();
    if state.jobs.send(Job { body, done }).is_err() {
        return HttpResponse::ServiceUnavailable().body("the writer stopped");
    }
    match committed.await {
        Ok(Ok(())) => HttpResponse::Ok().content_type("application/json").body("{}"),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(e),
        Err(_) => HttpResponse::ServiceUnavailable().body("the writer stopped"),
    }
}

fn open(path: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mode: String = connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "SQLite refused WAL mode ({mode})");
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS deliveries (
             id INTEGER PRIMARY KEY,
             received_at INTEGER NOT NULL,
             body BLOB NOT NULL
         )",
    )?;
    Ok(connection)
}

/// The writer: waits for a delivery, takes every other one queued by then, and commits them all
/// in one transaction before answering any of them.
fn write_groups(mut connection: rusqlite::Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter());
        let result = commit_group(&mut connection, &group).map_err(|e| e.to_string());
        for job in group {
            let _ = job.done.send(result.clone());
        }
    }
}

fn commit_group(connection: &mut rusqlite::Connection, group: &[Job]) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare("INSERT INTO deliveries (received_at, body) VALUES (?1, ?2)")?;
        let now = chrono::Utc::now().timestamp_millis();
        for job in group {
            insert.execute(rusqlite::params![now, &job.body[..]])?;
        }
    }
    transaction.commit()
}

/// Prints the address on stdout (the benchmark reads it), flushed.
fn announce(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{addr}")?;
    out.flush()
}
