//! The in-project benchmark (BENCHMARKS.md): the gateway and its two anchors, each in a process of
//! its own, under closed-loop load from this process; one table of medians.
//!
//! ```sh
//! cargo run --release -p bench -- [--seconds 10] [--runs 3] [--connections 32]
//!                                 [--database sqlite|postgres|both] [--only SCENARIO,...] [--smoke]
//! ```

mod anchor;
mod load;
mod payload;
mod preload;
mod procfs;
mod report;
mod server;
mod standin;

use anchor::{AnchorArgs, AnchorKind, WEBHOOK_PATH};
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use load::Sample;
use report::{Row, Summary};
use sea_orm::{ConnectionTrait, Database};
use server::LogSummary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Benchmarks crm-gateway against its anchors and prints one table (see BENCHMARKS.md).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one anchor and print its address on stdout (the benchmark runs this itself).
    Anchor(AnchorArgs),
}

#[derive(Args, Clone)]
struct Options {
    /// Seconds of load per run of each scenario (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Runs of each scenario; the table shows medians. Runs are interleaved (run 1 of every
    /// scenario, then run 2, ...), so a change in the machine's load touches all of them alike.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Concurrent connections for the single-event scenarios and the outbound one.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Concurrent connections for inbound-100.
    #[arg(long, default_value_t = 4)]
    batch_connections: usize,
    /// The gateway's database.
    #[arg(long, value_enum, default_value_t = DatabaseChoice::Sqlite)]
    database: DatabaseChoice,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// A short pass (2 s, 1 run, SQLite) over every scenario that fails only on errors (non-2xx
    /// answers, unexpected outcomes, lost or repeated events), never on speed.
    #[arg(long)]
    smoke: bool,
    /// Seconds of load before each measured window of the delivery scenarios (not counted).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// `contact.updated` events per contact after its `contact.created`.
    #[arg(long, default_value_t = 1)]
    updates: u32,
    /// Seconds to wait, after the last app event was sent, for the outbox to drain.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// PostgreSQL server for --database postgres|both: the benchmark creates and drops one
    /// database per run there (the URL's own database is only used to connect).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// The gateway binary; default `crm-gateway` next to this binary, built first if it is
    /// missing or older than the sources.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// `CRM_DELIVERY_WORKERS` for the outbound scenario (default: the gateway's own default).
    #[arg(long)]
    delivery_workers: Option<usize>,
    /// Before each gateway run, fill its database with this many users (linked, synced) and as
    /// many inbox rows, to see whether the cost per event stays flat as data grows.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Keep the work directory (databases and logs); it is kept anyway when something failed or
    /// a gateway logged ERROR or WARN lines.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatabaseChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    #[value(name = "anchor-plain")]
    AnchorPlain,
    #[value(name = "anchor-commit")]
    AnchorCommit,
    #[value(name = "inbound-1")]
    Inbound1,
    #[value(name = "inbound-100")]
    Inbound100,
    #[value(name = "outbound")]
    Outbound,
}

impl Scenario {
    const ALL: [Self; 5] = [Self::AnchorPlain, Self::AnchorCommit, Self::Inbound1, Self::Inbound100, Self::Outbound];

    fn name(self) -> &'static str {
        match self {
            Self::AnchorPlain => "anchor-plain",
            Self::AnchorCommit => "anchor-commit",
            Self::Inbound1 => "inbound-1",
            Self::Inbound100 => "inbound-100",
            Self::Outbound => "outbound",
        }
    }

    fn is_gateway(self) -> bool {
        !matches!(self, Self::AnchorPlain | Self::AnchorCommit)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// One line of the table: a scenario on a database (the anchors: none, or their own SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Case {
    scenario: Scenario,
    db: Option<Db>,
}

impl Case {
    fn label(self) -> String {
        match self.db {
            Some(db) => format!("{} {}", self.scenario.name(), db.name()),
            None => self.scenario.name().to_owned(),
        }
    }

    fn slug(self) -> String {
        match self.db {
            Some(db) => format!("{}-{}", self.scenario.name(), db.name().to_ascii_lowercase()),
            None => self.scenario.name().to_owned(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Anchor(args)) => anchor::run(args).map(|()| ExitCode::SUCCESS),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(bench(cli.options))),
    };
    result.unwrap_or_else(|e| {
        eprintln!("bench: {e:#}");
        ExitCode::from(2)
    })
}

/// Everything a run needs.
struct Bench {
    options: Options,
    gateway: PathBuf,
    workdir: PathBuf,
    postgres: Option<Postgres>,
    standin: Option<standin::Running>,
    client: reqwest::Client,
    batch_client: reqwest::Client,
}

async fn bench(mut options: Options) -> anyhow::Result<ExitCode> {
    if options.smoke {
        options.seconds = 2;
        options.runs = 1;
        options.warmup = 0;
        options.database = DatabaseChoice::Sqlite;
        options.drain_timeout = options.drain_timeout.min(60);
    }
    anyhow::ensure!(options.seconds > 0 && options.runs > 0, "--seconds and --runs must be above 0");
    anyhow::ensure!(options.connections > 0 && options.batch_connections > 0, "connections must be above 0");
    let scenarios: Vec<Scenario> =
        Scenario::ALL.into_iter().filter(|s| options.only.is_empty() || options.only.contains(s)).collect();
    let databases: Vec<Db> = match options.database {
        DatabaseChoice::Sqlite => vec![Db::Sqlite],
        DatabaseChoice::Postgres => vec![Db::Postgres],
        DatabaseChoice::Both => vec![Db::Sqlite, Db::Postgres],
    };
    let mut cases = Vec::new();
    for scenario in &scenarios {
        match scenario {
            Scenario::AnchorPlain => cases.push(Case { scenario: *scenario, db: None }),
            Scenario::AnchorCommit => cases.push(Case { scenario: *scenario, db: Some(Db::Sqlite) }),
            _ => {}
        }
    }
    for db in &databases {
        cases.extend(scenarios.iter().filter(|s| s.is_gateway()).map(|s| Case { scenario: *s, db: Some(*db) }));
    }

    let needs_gateway = cases.iter().any(|c| c.scenario.is_gateway());
    let (gateway, built) = if needs_gateway {
        let (path, note) = server::gateway_binary(options.gateway.clone())?;
        (path, note)
    } else {
        (PathBuf::new(), None)
    };
    let postgres = if cases.iter().any(|c| c.db == Some(Db::Postgres)) {
        let postgres = Postgres { admin_url: options.postgres_url.clone() };
        postgres.check().await?;
        Some(postgres)
    } else {
        None
    };
    let workdir = tempfile::Builder::new().prefix("crm-bench-").tempdir().context("cannot make a work directory")?;
    let started_at = chrono::Utc::now();
    let load_before = procfs::loadavg();
    let (ticks, assumed) = procfs::clock_ticks();
    let per_run = options.warmup + options.seconds + 2;
    eprintln!(
        "bench: {} scenario(s) × {} run(s), about {} s of load plus start-up and outbound drains; work dir {}",
        cases.len(),
        options.runs,
        cases.len() as u64 * options.runs as u64 * per_run,
        workdir.path().display()
    );

    let mut context = Bench {
        client: load::client(options.connections)?,
        batch_client: load::client(options.batch_connections)?,
        options: options.clone(),
        gateway,
        workdir: workdir.path().to_owned(),
        postgres,
        standin: None,
    };
    let mut samples: BTreeMap<Case, Vec<Sample>> = BTreeMap::new();
    let mut logs: BTreeMap<Case, LogSummary> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    for run in 1..=options.runs {
        for (index, case) in cases.iter().enumerate() {
            let tag = format!("{:x}{index}r{run}", std::process::id());
            let began = Instant::now();
            match run_case(&mut context, *case, run, &tag).await {
                Ok((sample, log, stop_problem)) => {
                    eprintln!(
                        "bench: run {run}/{} {:<24} {:>8} events/s  p50 {:>8}  p99 {:>8}  CPU/event {:>9}  RSS {:>5.1} MiB  written/event {:>8}  busy {:>4} (other {:>4})  [{:.0} s]",
                        options.runs,
                        case.label(),
                        report::thousands(sample.rate()),
                        report::latency(sample.percentile(50.0).map(|d| d.as_secs_f64())),
                        report::latency(sample.percentile(99.0).map(|d| d.as_secs_f64())),
                        report::micros(sample.cpu_per_event().map(|d| d.as_secs_f64())),
                        sample.peak_rss_kib as f64 / 1024.0,
                        report::kilobytes(sample.written_per_event()),
                        report::percent(Some(sample.machine_busy)),
                        report::percent(Some(sample.other_busy)),
                        began.elapsed().as_secs_f64(),
                    );
                    for (what, count) in &sample.problems {
                        failures.push(format!("{} run {run}: {count} × {what}", case.label()));
                    }
                    if sample.events == 0 {
                        failures.push(format!("{} run {run}: no event was counted", case.label()));
                    }
                    if let Some(problem) = stop_problem {
                        failures.push(format!("{} run {run}: {problem}", case.label()));
                    }
                    if let Some(log) = log {
                        let total = logs.entry(*case).or_default();
                        total.errors += log.errors;
                        total.warnings += log.warnings;
                        total.error_lines.extend(log.error_lines.into_iter().take(5 - total.error_lines.len().min(5)));
                        total
                            .warning_lines
                            .extend(log.warning_lines.into_iter().take(5 - total.warning_lines.len().min(5)));
                    }
                    samples.entry(*case).or_default().push(sample);
                }
                Err(e) => {
                    eprintln!("bench: run {run}/{} {}: {e:#}", options.runs, case.label());
                    failures.push(format!("{} run {run}: {e:#}", case.label()));
                }
            }
        }
    }
    if let Some(standin) = context.standin.take() {
        standin.stop().await;
    }

    // The report.
    let anchor = samples.get(&Case { scenario: Scenario::AnchorCommit, db: Some(Db::Sqlite) }).map(|s| Summary::of(s));
    let rows: Vec<Row> = cases
        .iter()
        .filter_map(|case| {
            let runs = samples.get(case)?;
            let summary = Summary::of(runs);
            Some(Row {
                scenario: case.scenario.name().to_owned(),
                database: match (case.scenario, case.db) {
                    (Scenario::AnchorCommit, _) => "SQLite (own)".into(),
                    (_, Some(db)) => db.name().into(),
                    (_, None) => "–".into(),
                },
                notes: notes(&options, *case, &summary, runs.len()),
                compare: case.scenario.is_gateway(),
                summary,
            })
        })
        .collect();
    let mut command = vec!["cargo run --release -p bench --".to_owned()];
    command.extend(std::env::args().skip(1));
    println!("crm-gateway benchmark, {}", started_at.format("%Y-%m-%d %H:%M UTC"));
    println!();
    println!("- command: `{}`", command.join(" "));
    println!(
        "- medians of {} run(s) per row, {} s of load each{}; {} connections ({} for inbound-100)",
        options.runs,
        options.seconds,
        if options.warmup > 0 {
            format!(" after {} s of warm-up (delivery scenarios)", options.warmup)
        } else {
            String::new()
        },
        options.connections,
        options.batch_connections
    );
    println!("- machine: {}", procfs::machine());
    println!(
        "- work directory (SQLite files): {} on {}",
        context.workdir.display(),
        procfs::filesystem_of(&context.workdir)
    );
    println!(
        "- CPU: utime+stime from /proc/<pid>/stat at {ticks} ticks/s ({}); RSS: VmHWM from /proc/<pid>/status; written: write_bytes from /proc/<pid>/io (the server's, with PostgreSQL's processes' when it ran; – when one could not be read)",
        if assumed { "assumed: sysconf(_SC_CLK_TCK) failed" } else { "sysconf(_SC_CLK_TCK)" }
    );
    println!("- load average (1, 5, 15 min) at start: {load_before}; at end: {}", procfs::loadavg());
    if needs_gateway {
        println!("- gateway: {} ({})", context.gateway.display(), git_describe());
    }
    if let Some(note) = built {
        println!("- {note}");
    }
    println!();
    print!("{}", report::table(&rows, anchor.as_ref()));
    println!();
    println!(
        "machine busy: share of both cores busy during the window; (other): the part used by neither the server, \
         the benchmark process nor PostgreSQL, i.e. whatever else ran (builds)."
    );

    let mut keep = options.keep;
    if logs.values().all(|l| l.errors == 0 && l.warnings == 0) {
        if needs_gateway {
            println!("gateway logs: no ERROR or WARN lines.");
        }
    } else {
        keep = true;
        for (case, log) in &logs {
            if log.errors == 0 && log.warnings == 0 {
                continue;
            }
            println!("gateway log, {}: {} ERROR and {} WARN lines; the first:", case.label(), log.errors, log.warnings);
            for line in log.error_lines.iter().chain(&log.warning_lines) {
                println!("    {}", line.chars().take(400).collect::<String>());
            }
        }
    }
    if !failures.is_empty() {
        keep = true;
        for failure in &failures {
            println!("FAIL: {failure}");
        }
    }
    if keep {
        let kept = workdir.keep();
        println!("work directory kept (logs, databases): {}", kept.display());
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn notes(options: &Options, case: Case, summary: &Summary, runs: usize) -> String {
    let rps = summary.requests_per_s.map(report::thousands).unwrap_or_default();
    let client = report::micros(summary.bench_cpu);
    let mut note = match case.scenario {
        Scenario::AnchorPlain | Scenario::AnchorCommit | Scenario::Inbound1 => {
            format!("{} conn, 1 event/delivery", options.connections)
        }
        Scenario::Inbound100 => format!("{} conn, 100 events/delivery, {rps} deliveries/s", options.batch_connections),
        Scenario::Outbound => format!(
            "{} conn; accepted {}/s; end to end (send → stand-in); bench incl. stand-in",
            options.connections,
            summary.accepted.map(report::thousands).unwrap_or_default()
        ),
    };
    note.push_str(&format!("; bench CPU/event {client}"));
    if options.preload > 0 && case.scenario.is_gateway() {
        note.push_str(&format!("; preloaded {} users + inbox rows", report::thousands(options.preload as f64)));
    }
    if runs < options.runs {
        note.push_str(&format!("; only {runs} of {} runs succeeded", options.runs));
    }
    note
}

/// `git rev-parse --short HEAD` of the workspace, and whether the tree has changes.
fn git_describe() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            format!("commit {head}{}", if dirty { " with uncommitted changes" } else { "" })
        }
        None => "not a git checkout".into(),
    }
}

/// Runs one case once: starts its server, loads it, stops it. Returns the sample, the gateway's
/// log summary and a problem with stopping it.
async fn run_case(
    context: &mut Bench,
    case: Case,
    run: usize,
    tag: &str,
) -> anyhow::Result<(Sample, Option<LogSummary>, Option<String>)> {
    let options = context.options.clone();
    let dir = context.workdir.join(format!("{}-r{run}", case.slug()));
    std::fs::create_dir_all(&dir)?;
    let seconds = Duration::from_secs(options.seconds);
    let warmup = Duration::from_secs(options.warmup);
    let deliveries = |url: String, per_delivery: usize, connections: usize, gateway: bool| load::Deliveries {
        url,
        connections,
        per_delivery,
        gateway,
        updates: options.updates,
        tag: tag.to_owned(),
        warmup,
        seconds,
    };
    let (server, sample, pg_database) = match case.scenario {
        Scenario::AnchorPlain | Scenario::AnchorCommit => {
            let kind = if case.scenario == Scenario::AnchorPlain { AnchorKind::Plain } else { AnchorKind::Commit };
            let server = server::spawn_anchor(kind, &dir.join("anchor.db"), &dir)?;
            let url = format!("http://{}{WEBHOOK_PATH}", server.addr);
            let sample = deliveries(url, 1, options.connections, false).run(&context.client, &server, false).await;
            (server, sample, None)
        }
        scenario => {
            let postgres = case.db == Some(Db::Postgres);
            let (database_url, pg_database) = if postgres {
                let pg = context.postgres.as_ref().context("PostgreSQL is not set up")?;
                let name = format!("crm_bench_{tag}");
                (pg.create(&name).await?, Some(name))
            } else {
                (format!("sqlite://{}", dir.join("gateway.db").display()), None)
            };
            let mut env: Vec<(&str, String)> = vec![
                ("CRM_WEBHOOK_SECRET", payload::WEBHOOK_SECRET.to_owned()),
                ("DATABASE_URL", database_url),
                ("BIND_ADDR", "127.0.0.1:0".into()),
                (
                    "RUST_LOG",
                    // BENCH_GATEWAY_LOG: another filter, e.g. `warn,crm_gateway::startup=info,crm_gateway::writer=debug`
                    // to see each group commit (it must keep `crm_gateway::startup=info`).
                    std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn,crm_gateway::startup=info".into()),
                ),
                ("LOG_FORMAT", "human".into()),
                ("NO_COLOR", "1".into()),
                // As the site would call it; without a token the gateway serves loopback only and
                // warns at start-up.
                ("GATEWAY_API_TOKEN", load::API_TOKEN.into()),
            ];
            if scenario == Scenario::Outbound {
                if context.standin.is_none() {
                    context.standin = Some(standin::Running::start()?);
                }
                let standin = context.standin.as_ref().context("no stand-in")?;
                env.extend([
                    ("CRM_ENABLED", "true".to_owned()),
                    ("CRM_API_URL", format!("http://{}", standin.addr)),
                    ("CRM_API_KEY", "k".into()),
                    ("CRM_API_SECRET", "s".into()),
                    ("CRM_RATE_LIMIT", "1000000/1s".into()),
                ]);
                if let Some(workers) = options.delivery_workers {
                    env.push(("CRM_DELIVERY_WORKERS", workers.to_string()));
                }
            } else {
                env.push(("CRM_ENABLED", "false".into()));
            }
            if options.preload > 0 {
                let url = env.iter().find(|(k, _)| *k == "DATABASE_URL").map(|(_, v)| v.clone()).unwrap_or_default();
                server::migrate_gateway(&context.gateway, &env, &dir)?;
                preload::fill(&url, options.preload).await?;
            }
            let started = server::spawn_gateway(&context.gateway, &env, &dir, dir.join("gateway.log"));
            let server = match started {
                Ok(server) => server,
                Err(e) => {
                    if let (Some(pg), Some(name)) = (&context.postgres, &pg_database) {
                        pg.drop_database(name).await;
                    }
                    return Err(e);
                }
            };
            let sample = match scenario {
                Scenario::Inbound1 => {
                    let url = format!("http://{}{WEBHOOK_PATH}", server.addr);
                    deliveries(url, 1, options.connections, true).run(&context.client, &server, postgres).await
                }
                Scenario::Inbound100 => {
                    let url = format!("http://{}{WEBHOOK_PATH}", server.addr);
                    deliveries(url, 100, options.batch_connections, true)
                        .run(&context.batch_client, &server, postgres)
                        .await
                }
                _ => {
                    let standin = context.standin.as_ref().context("no stand-in")?;
                    load::AppEvents {
                        url: format!("http://{}/api/events", server.addr),
                        connections: options.connections,
                        tag: tag.to_owned(),
                        seconds,
                        drain: Duration::from_secs(options.drain_timeout),
                    }
                    .run(&context.client, &server, postgres, &standin.state)
                    .await
                }
            };
            (server, sample, pg_database)
        }
    };
    let log_path = server.log_path().to_owned();
    let is_gateway = case.scenario.is_gateway();
    let (log, problem) = tokio::task::spawn_blocking(move || server.stop()).await?;
    if let (Some(pg), Some(name)) = (&context.postgres, &pg_database) {
        pg.drop_database(name).await;
    }
    if !options.keep {
        // The databases can be large; the logs stay until the end.
        for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
            let path = entry.path();
            if path != log_path && path.extension().is_none_or(|e| e != "log") {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    Ok((sample, is_gateway.then_some(log), problem))
}

/// A PostgreSQL server where each run gets a database of its own, created and dropped here.
struct Postgres {
    admin_url: String,
}

impl Postgres {
    async fn check(&self) -> anyhow::Result<()> {
        let db = Database::connect(&self.admin_url)
            .await
            .with_context(|| format!("PostgreSQL at {} does not answer (or use --database sqlite)", self.admin_url))?;
        db.execute_unprepared("SELECT 1").await?;
        db.close().await?;
        Ok(())
    }

    /// Creates database `name` and returns its URL.
    async fn create(&self, name: &str) -> anyhow::Result<String> {
        let db = Database::connect(&self.admin_url).await?;
        db.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
        db.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await?;
        db.close().await?;
        let mut url = url::Url::parse(&self.admin_url)?;
        url.set_path(&format!("/{name}"));
        Ok(url.to_string())
    }

    async fn drop_database(&self, name: &str) {
        let dropped = async {
            let db = Database::connect(&self.admin_url).await?;
            db.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
            db.close().await
        };
        if let Err(e) = dropped.await {
            eprintln!("bench: could not drop PostgreSQL database {name}: {e}");
        }
    }
}
