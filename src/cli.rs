//! The command line: `serve` (the default), `migrate`, and the operator's commands.

use crate::config::{Config, Settings};
use crate::db::Db;
use crate::inbound::verify::treadsoft_signature;
use crate::outbound::outbox::{self, RetryOne};
use crate::startup::{Application, shutdown_signal};
use crate::sync::apply::SyncContext;
use crate::sync::hlc::Hlc;
use crate::sync::mapping::RecordType;
use crate::sync::stamps;
use crate::telemetry;
use crate::writer::Writer;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

/// crm-gateway keeps the Group Escape Houses site and the TreadSoft CRM in sync, both ways.
///
/// Every option can also be set by the environment variable named beside it, or in a `.env`
/// file in the working directory. With no configuration at all the gateway serves on
/// 127.0.0.1:8080 with a SQLite file `crm-gateway.db` and the mock CRM.
#[derive(Parser)]
#[command(name = "crm-gateway", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand)]
pub enum Command {
    /// Migrate the database, then serve HTTP until SIGINT or SIGTERM (the default command).
    Serve,
    /// Apply every pending database migration, then exit.
    Migrate,
    /// Print the headers TreadSoft would send with the delivery read from standard input, so it
    /// can be sent with curl: `crm-gateway sign --secret S < delivery.json > headers.txt`. With
    /// CRM_PROVIDER=hubspot, HubSpot's v3 headers for a POST to CRM_WEBHOOK_URL.
    Sign {
        /// The webhook signing secret (default: the first of CRM_WEBHOOK_SECRET).
        #[arg(long)]
        secret: Option<String>,
        /// Unix seconds to sign for (HubSpot: milliseconds; default: now).
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// HubSpot's account: `hubspot setup` creates the properties the mapping needs.
    Hubspot {
        #[command(subcommand)]
        command: HubSpotCommand,
    },
    /// Work with the webhook inbox.
    Inbox {
        #[command(subcommand)]
        command: InboxCommand,
    },
    /// Work with the outbox of deliveries to the CRM.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// List sync logs (one per CRM call or applied webhook change), newest first.
    Logs(ListArgs),
    /// List failures: deliveries given up on (outbound) and webhook events that failed (inbound).
    Failures {
        /// Only deliveries to the CRM.
        #[arg(long, conflicts_with = "inbound")]
        outbound: bool,
        /// Only webhook events.
        #[arg(long)]
        inbound: bool,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Delete rows past their keep time now (the gateway also does it daily), in small batches,
    /// and print what was removed.
    Prune {
        /// Count what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read TreadSoft's records and apply them here as webhooks are applied (last-writer-wins,
    /// linked by crm_id, externalId, then email), parents before children. Resumable: an
    /// interrupted import goes on from the last page it applied; a finished one, run again,
    /// reads what changed since (with a 5-minute overlap).
    Import {
        /// contact (or user), property, enquiry, booking, membership, or all.
        #[arg(long = "type", default_value = "all")]
        record_type: String,
        /// Read the records changed since this time (RFC 3339) instead of going on from where
        /// the last import stopped.
        #[arg(long)]
        since: Option<String>,
        /// Apply each page in a transaction that is rolled back: print what it would do.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON (and no progress) instead of a progress bar and a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare every record with TreadSoft field by field and report the differences; exits 1
    /// when there are any (after --fix: when some are left).
    Audit {
        /// contact (or user), property, enquiry, booking, membership, or all.
        #[arg(long = "type", default_value = "all")]
        record_type: String,
        /// Resolve each difference by last-writer-wins: apply TreadSoft's newer values here,
        /// queue the newer local ones for delivery. Without it nothing is changed.
        #[arg(long)]
        fix: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Show one record's sync state: its row, field stamps, outbox rows not delivered yet, webhook events and logs.
    Inspect {
        /// contact (or user), property, enquiry, booking, membership.
        record_type: String,
        /// The local id.
        id: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Make failed deliveries (dead letters) due again: one by id, or all with --all.
    Retry {
        /// The outbox row id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every failed row (of --record-type, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only rows of this record type (contact, property, enquiry, booking, membership).
        #[arg(long, requires = "all")]
        record_type: Option<String>,
        /// With --all and --record-type: only this record's rows.
        #[arg(long, requires = "record_type")]
        record_id: Option<String>,
    },
}

/// Which rows a list shows (the same filters as the `/api/crm/logs` and `/api/crm/failures` routes).
#[derive(clap::Args, Debug, Default)]
pub struct ListArgs {
    /// contact (or user), property, enquiry, booking, membership.
    #[arg(long)]
    pub record_type: Option<String>,
    /// The local record id (logs and outbound failures).
    #[arg(long)]
    pub record_id: Option<String>,
    /// The TreadSoft id (logs and inbound failures).
    #[arg(long)]
    pub crm_id: Option<String>,
    /// Logs only: success, failed or pending.
    #[arg(long)]
    pub status: Option<String>,
    /// From this time on (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Rows per page (1 to 500).
    #[arg(long, default_value_t = crate::ops::recovery::DEFAULT_LIMIT)]
    pub limit: u64,
    /// The next page: the cursor the previous one printed.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print JSON (the routes' answer) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum HubSpotCommand {
    /// Create in HubSpot the properties the mapping needs and the account lacks (the unique id
    /// property of each object, and the custom ones), and print what exists and what was created.
    Setup {
        /// Check only: print what would be created, create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum InboxCommand {
    /// Apply a stored event again (e.g. one that failed), and print what became of it.
    Replay {
        /// The event id (`evt_...`).
        event_id: String,
    },
    /// Apply every failed event again (received since a time, if given), and count the outcomes.
    ReplayFailed {
        /// Only events received at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

/// Runs the parsed command line. Errors are for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Sign { secret, timestamp } = &command {
        return sign(&cli.settings, secret.clone(), *timestamp);
    }
    let config = cli.settings.validate()?;
    telemetry::init(&config.log_filter, config.log_format);
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::Hubspot { command: HubSpotCommand::Setup { dry_run, json } } => {
            crate::crm::hubspot::setup::command(&config, dry_run, json).await
        }
        Command::Inbox { command: InboxCommand::Replay { event_id } } => replay(config, event_id).await,
        Command::Inbox { command: InboxCommand::ReplayFailed { since } } => replay_failed(config, since).await,
        Command::Outbox { command: OutboxCommand::Retry { id, all: _, record_type, record_id } } => {
            outbox_retry(config, id, record_type, record_id).await
        }
        Command::Logs(list) => crate::ops::report::logs(config, list).await,
        Command::Failures { outbound, inbound, list } => {
            crate::ops::report::failures(config, !inbound, !outbound, list).await
        }
        Command::Prune { dry_run, json } => crate::ops::report::prune(config, dry_run, json).await,
        Command::Inspect { record_type, id, json } => crate::ops::report::inspect(config, record_type, id, json).await,
        Command::Import { record_type, since, dry_run, json } => {
            let types = crate::pull::commands::types_arg(&record_type)?;
            let since = since.as_deref().map(|text| rfc3339("--since", text)).transpose()?;
            crate::pull::commands::import(config, types, since, dry_run, json).await
        }
        Command::Audit { record_type, fix, json } => {
            let types = crate::pull::commands::types_arg(&record_type)?;
            if crate::pull::commands::audit(config, types, fix, json).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Sign { .. } => unreachable!("handled above"),
    }
}

fn sign(settings: &Settings, secret: Option<String>, timestamp: Option<i64>) -> anyhow::Result<()> {
    use std::io::Read;
    let secret = secret
        .or_else(|| {
            settings.crm_webhook_secret.as_deref().and_then(|s| s.split(',').next()).map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .context("give --secret or set CRM_WEBHOOK_SECRET")?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).context("cannot read the delivery from standard input")?;
    if settings.crm_provider.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("hubspot")) {
        // HubSpot's v3: over the public URL, in milliseconds.
        let url = settings
            .crm_webhook_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .context("set CRM_WEBHOOK_URL: HubSpot signs the URL it calls")?;
        let timestamp = timestamp.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()).to_string();
        let signature = crate::crm::hubspot::signature::v3(&secret, "POST", url, &body, &timestamp);
        println!("Content-Type: application/json");
        println!("X-HubSpot-Request-Timestamp: {timestamp}");
        println!("X-HubSpot-Signature-v3: {signature}");
        return Ok(());
    }
    let timestamp = timestamp.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let delivery_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("deliveryId").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    println!("Content-Type: application/json");
    println!("User-Agent: TreadSoft-Webhooks/1.0");
    println!("X-TreadSoft-Delivery: {delivery_id}");
    println!("X-TreadSoft-Timestamp: {timestamp}");
    println!("X-TreadSoft-Signature: {}", treadsoft_signature(&secret, timestamp, &body));
    Ok(())
}

/// The database and writer a one-shot command works through.
pub(crate) async fn open(config: &Config) -> anyhow::Result<(Db, Writer)> {
    let db = Db::connect(&config.database)
        .await
        .with_context(|| format!("cannot open the database {}", config.database.redacted_url()))?;
    db.migrate().await.context("cannot migrate the database")?;
    let (writer, _task) = Writer::start(&db, Arc::new(crate::ops::metrics::Metrics::new()));
    Ok((db, writer))
}

async fn outbox_retry(
    config: Config,
    id: Option<i64>,
    record_type: Option<String>,
    record_id: Option<String>,
) -> anyhow::Result<()> {
    let record_type = match record_type.as_deref() {
        None => None,
        Some(name) => Some(RecordType::parse(name).with_context(|| {
            format!("--record-type: expected contact, property, enquiry, booking or membership, got {name:?}")
        })?),
    };
    let (_db, writer) = open(&config).await?;
    match id {
        Some(id) => match outbox::retry_one(&writer, id).await? {
            RetryOne::Queued => println!("outbox row {id} is due again"),
            RetryOne::NotFound => anyhow::bail!("no outbox row {id}"),
            RetryOne::NotRetryable(status) => {
                anyhow::bail!("outbox row {id} is {status}; only failed or pending rows can be retried")
            }
        },
        None => {
            println!("{} failed row(s) are due again", outbox::retry_failed(&writer, record_type, record_id).await?)
        }
    }
    Ok(())
}

/// The sync context a one-shot command applies events with: its clock after every stamp stored.
pub(crate) async fn sync_context(config: &Config, db: &Db) -> anyhow::Result<Arc<SyncContext>> {
    let floor = stamps::max_stamp(db.reader()).await?;
    Ok(Arc::new(SyncContext { precedence: config.tie_winner, hlc: Hlc::starting_after(floor) }))
}

/// A time given as option `name`, in RFC 3339.
fn rfc3339(name: &str, text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    text.parse::<chrono::DateTime<chrono::Utc>>()
        .with_context(|| format!("{name}: expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got {text:?}"))
}

async fn replay_failed(config: Config, since: Option<String>) -> anyhow::Result<()> {
    let since = since.as_deref().map(|text| rfc3339("--since", text)).transpose()?;
    let (db, writer) = open(&config).await?;
    let sync = sync_context(&config, &db).await?;
    let summary = crate::sync::inbox::replay_failed(&writer, db.reader(), sync, since).await?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

async fn replay(config: Config, event_id: String) -> anyhow::Result<()> {
    let (db, writer) = open(&config).await?;
    let sync = sync_context(&config, &db).await?;
    match crate::sync::inbox::replay_one(&writer, sync, event_id.clone()).await? {
        Some(result) => println!("{}", serde_json::to_string_pretty(&result)?),
        None => anyhow::bail!("the inbox has no event {event_id}"),
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(crm = config.crm_name(), "starting crm-gateway {}", env!("CARGO_PKG_VERSION"));
    if config.webhook_secrets.is_empty() {
        tracing::warn!("CRM_WEBHOOK_SECRET is not set: CRM webhooks will be refused");
    }
    if config.api_token.is_none() {
        tracing::warn!(
            "GATEWAY_API_TOKEN is not set: the /api routes serve only clients on this machine, and refuse \
             requests that came through a proxy (Forwarded, X-Forwarded-For, X-Real-IP) and requests a \
             browser sends from another site (Origin, Sec-Fetch-Site); set a token to serve the site"
        );
    }
    if config.delivery_workers == 0 {
        tracing::warn!("CRM_DELIVERY_WORKERS=0: changes are queued but not sent to the CRM");
    }
    let app = Application::build(config).await?;
    app.run_until(shutdown_signal()).await.context("the HTTP server failed")?;
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config.database)
        .await
        .with_context(|| format!("cannot open the database {}", config.database.redacted_url()))?;
    db.migrate().await.context("cannot migrate the database")?;
    tracing::info!("database is up to date");
    db.close().await?;
    Ok(())
}
