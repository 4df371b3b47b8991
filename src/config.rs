//! Every setting the gateway reads, its default and its validation.
//!
//! Settings come from the command line or the environment (a `.env` file is loaded first, if
//! present). Raw values are collected by clap, then [`Settings::validate`] checks all of them at
//! once and reports every problem, each naming its variable, so a bad deployment fails in one go.

use crate::crm::hubspot::client::HubSpotConfig;
use crate::crm::mapping::{Flavor, Mapping};
use crate::crm::rate_limit::RateLimit;
use crate::crm::salesforce::client::SalesforceConfig;
use crate::outbound::retry::RetrySchedule;
use crate::sync::lww::Origin;
use clap::Args;
use secrecy::SecretString;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The default database: a SQLite file in the working directory, created when absent.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://crm-gateway.db";

/// Raw settings as given on the command line or in the environment; see [`Config`] for meanings.
#[derive(Args, Clone, Default)]
pub struct Settings {
    /// Talk to a real CRM (`true`) or to the built-in mock that only logs (`false`, the default).
    #[arg(long, env = "CRM_ENABLED", global = true)]
    pub crm_enabled: Option<String>,
    /// Which CRM the gateway syncs with: `treadsoft` (default) or `hubspot` (`mock`: TreadSoft's
    /// webhooks, the mock client). CRM_ENABLED=false always uses the mock client.
    #[arg(long, env = "CRM_PROVIDER", global = true)]
    pub crm_provider: Option<String>,
    /// Base URL of the CRM's REST API, e.g. https://api.treadsoft.com. Required for TreadSoft when
    /// CRM_ENABLED=true; HubSpot's default is https://api.hubapi.com.
    #[arg(long, env = "CRM_API_URL", global = true)]
    pub crm_api_url: Option<String>,
    /// HubSpot: the exact public URL HubSpot sends webhooks to (its v3 signature covers it).
    #[arg(long, env = "CRM_WEBHOOK_URL", global = true)]
    pub crm_webhook_url: Option<String>,
    /// HubSpot: a TOML file mapping record types to objects and fields to properties; every key
    /// left out keeps its documented default.
    #[arg(long, env = "CRM_MAPPING_FILE", global = true)]
    pub crm_mapping_file: Option<String>,
    /// Salesforce: the Pub/Sub API endpoint. Default https://api.pubsub.salesforce.com:7443
    /// (http:// only for a loopback address).
    #[arg(long, env = "CRM_PUBSUB_URL", global = true)]
    pub crm_pubsub_url: Option<String>,
    /// Salesforce: the Change Data Capture channel read. Default /data/ChangeEvents.
    #[arg(long, env = "CRM_CDC_CHANNEL", global = true)]
    pub crm_cdc_channel: Option<String>,
    /// Salesforce: seconds an instance's hold on the channel lasts unless renewed (another
    /// instance takes over that long after the reader died). Default 30.
    #[arg(long, env = "CRM_CDC_LEASE_SECS", global = true)]
    pub crm_cdc_lease_secs: Option<String>,
    /// Salesforce: a PEM file with the private key of the certificate uploaded to the connected
    /// app; set, the token comes by the JWT bearer flow instead of client credentials.
    #[arg(long, env = "CRM_JWT_KEY_FILE", global = true)]
    pub crm_jwt_key_file: Option<String>,
    /// Salesforce, JWT bearer flow: the integration user's username.
    #[arg(long, env = "CRM_JWT_USERNAME", global = true)]
    pub crm_jwt_username: Option<String>,
    /// Salesforce, JWT bearer flow: the audience. Default https://login.salesforce.com
    /// (https://test.salesforce.com for a sandbox).
    #[arg(long, env = "CRM_JWT_AUDIENCE", global = true)]
    pub crm_jwt_audience: Option<String>,
    /// HubSpot: most records in one batch call. Default 100.
    #[arg(long, env = "CRM_BATCH_SIZE", global = true)]
    pub crm_batch_size: Option<String>,
    /// The CRM API key (HubSpot: a private app's access token). Required when CRM_ENABLED=true.
    #[arg(long, env = "CRM_API_KEY", hide_env_values = true, global = true)]
    pub crm_api_key: Option<String>,
    /// The CRM API secret that signs each request. Required when CRM_ENABLED=true.
    #[arg(long, env = "CRM_API_SECRET", hide_env_values = true, global = true)]
    pub crm_api_secret: Option<String>,
    /// Secret(s) that CRM webhooks are signed with; several, comma-separated, during a rotation.
    #[arg(long, env = "CRM_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub crm_webhook_secret: Option<String>,
    /// How far (seconds) a webhook's timestamp may be from the gateway's clock. Default 300.
    #[arg(long, env = "CRM_WEBHOOK_TOLERANCE_SECS", global = true)]
    pub crm_webhook_tolerance_secs: Option<String>,
    /// Largest webhook body accepted, in bytes. Default 1048576 (1 MiB).
    #[arg(long, env = "CRM_WEBHOOK_MAX_BYTES", global = true)]
    pub crm_webhook_max_bytes: Option<String>,
    /// Who wins a tie between a CRM change and a local one with the same stamp: `crm` (default) or `local`.
    #[arg(long, env = "SYNC_TIE_WINNER", global = true)]
    pub sync_tie_winner: Option<String>,
    /// Client-side limit on TreadSoft requests, REQUESTS/PERIOD. Default 100/10s (TreadSoft's own limit).
    #[arg(long, env = "CRM_RATE_LIMIT", global = true)]
    pub crm_rate_limit: Option<String>,
    /// Seconds a TreadSoft request may take before it counts as failed (and is retried). Default 10.
    #[arg(long, env = "CRM_REQUEST_TIMEOUT_SECS", global = true)]
    pub crm_request_timeout_secs: Option<String>,
    /// Delivery tasks sending the outbox to the CRM. Default 2 (one sends while the other claims and
    /// records); 0 turns delivery off.
    #[arg(long, env = "CRM_DELIVERY_WORKERS", global = true)]
    pub crm_delivery_workers: Option<String>,
    /// Seconds a claimed delivery stays reserved before another instance may take it over. Default 60.
    #[arg(long, env = "CRM_DELIVERY_LEASE_SECS", global = true)]
    pub crm_delivery_lease_secs: Option<String>,
    /// Delays between delivery attempts; after the last, a delivery is failed (dead letter).
    /// Default 10s,1m,5m,30m,2h,5h,10h,10h.
    #[arg(long, env = "CRM_RETRY_SCHEDULE", global = true)]
    pub crm_retry_schedule: Option<String>,
    /// Days sync logs are kept (deleted daily in small batches). Default 90.
    #[arg(long, env = "CRM_LOG_RETENTION_DAYS", global = true)]
    pub crm_log_retention_days: Option<String>,
    /// Days webhook events that were applied, stale or echoes are kept in the inbox (for
    /// duplicate detection; failed and waiting ones are kept until resolved). Default 30.
    #[arg(long, env = "CRM_INBOX_RETENTION_DAYS", global = true)]
    pub crm_inbox_retention_days: Option<String>,
    /// Days delivered outbox rows and the request ids kept for echo detection are kept. Default 7.
    #[arg(long, env = "CRM_OUTBOX_RETENTION_DAYS", global = true)]
    pub crm_outbox_retention_days: Option<String>,
    /// Days a deleted TreadSoft record's tombstone is kept (at least 7). Default 30.
    #[arg(long, env = "CRM_TOMBSTONE_RETENTION_DAYS", global = true)]
    pub crm_tombstone_retention_days: Option<String>,
    /// Make dead-lettered deliveries due again this often (e.g. 30m, 1h), so a fixed outage
    /// heals without a person. Off by default.
    #[arg(long, env = "CRM_AUTO_RETRY_INTERVAL", global = true)]
    pub crm_auto_retry_interval: Option<String>,
    /// Read TreadSoft's records changed since the last pass this often (e.g. 15m, 1h) and apply
    /// them, so a change whose webhook never came still lands. Off by default.
    #[arg(long, env = "CRM_RECONCILE_INTERVAL", global = true)]
    pub crm_reconcile_interval: Option<String>,
    /// Database: sqlite://PATH (default sqlite://crm-gateway.db) or postgres://USER@HOST/DB.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections (PostgreSQL; SQLite readers). Default 10.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", global = true)]
    pub database_max_connections: Option<String>,
    /// SQLite durability: FULL (default; an acknowledged write survives power loss) or NORMAL
    /// (faster; the last transactions before a power loss may be lost, never corrupted).
    #[arg(long, env = "SQLITE_SYNCHRONOUS", global = true)]
    pub sqlite_synchronous: Option<String>,
    /// The CPU the SQLite writer and its connection's thread are pinned to: auto (default: the
    /// last CPU the process may run on, when it may run on two or more), off, or a CPU number.
    #[arg(long, env = "SQLITE_WRITER_CPU", global = true)]
    pub sqlite_writer_cpu: Option<String>,
    /// Address the HTTP server listens on. Default 127.0.0.1:8080; port 0 picks a free port.
    #[arg(long, env = "BIND_ADDR", global = true)]
    pub bind_addr: Option<String>,
    /// Bearer token the site sends to the /api routes. Unset: only loopback clients are served.
    #[arg(long, env = "GATEWAY_API_TOKEN", hide_env_values = true, global = true)]
    pub gateway_api_token: Option<String>,
    /// Log filter in tracing's syntax, e.g. `info` or `crm_gateway=debug,info`. Default `info`.
    #[arg(long, env = "RUST_LOG", global = true)]
    pub rust_log: Option<String>,
    /// Log format: `human` (default) or `json` (one object per line, for log shippers).
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// HTTP worker threads. Default: one per CPU core.
    #[arg(long, env = "HTTP_WORKERS", global = true)]
    pub http_workers: Option<String>,
}

/// Which CRM client serves the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrmProvider {
    /// Logs every operation and answers with generated ids; never touches the network.
    Mock,
    /// TreadSoft's partner API, with its credentials.
    TreadSoft(TreadSoftConfig),
    /// HubSpot's CRM objects API, with a private app's token.
    HubSpot(HubSpotConfig),
    /// Salesforce's REST API, with a connected app's client credentials.
    Salesforce(SalesforceConfig),
}

/// Whose webhooks the gateway takes and whose field names it maps (`CRM_PROVIDER`): the only
/// webhook route that answers is this provider's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    TreadSoft,
    HubSpot(HubSpotInbound),
    /// Salesforce: no webhooks; its changes come by Change Data Capture (a subscriber not built
    /// yet: until it is, by reconciliation, `CRM_RECONCILE_INTERVAL`).
    Salesforce(SalesforceInbound),
}

/// Where Salesforce's Change Data Capture is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesforceInbound {
    /// `CRM_PUBSUB_URL`: the Pub/Sub API endpoint.
    pub pubsub_url: Url,
    /// `CRM_CDC_CHANNEL`: the channel read, e.g. `/data/ChangeEvents`.
    pub channel: String,
    pub mapping: Arc<Mapping>,
    /// How long an instance's hold on the channel lasts unless renewed (30 s): another instance
    /// takes over that long after the reader died.
    pub lease: Duration,
    /// Silence after which the stream is taken as dead (the server sends a keepalive within
    /// 270 s: 300 s).
    pub silence: Duration,
    /// The first wait before a failed subscription is opened again (1 s, doubling to a minute).
    pub retry_base: Duration,
}

impl SalesforceInbound {
    /// The defaults for a channel.
    pub fn new(pubsub_url: Url, channel: String, mapping: Arc<Mapping>) -> Self {
        Self {
            pubsub_url,
            channel,
            mapping,
            lease: Duration::from_secs(30),
            silence: Duration::from_secs(300),
            retry_base: Duration::from_secs(1),
        }
    }
}

/// What HubSpot's webhook receiver needs, whether the client is HubSpot's or the mock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpotInbound {
    /// `CRM_WEBHOOK_URL` as written (HubSpot signs the URL exactly as configured in HubSpot);
    /// `None` refuses every delivery (503).
    pub webhook_url: Option<String>,
    pub mapping: Arc<Mapping>,
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Self::TreadSoft => "treadsoft",
            Self::HubSpot(_) => "hubspot",
            Self::Salesforce(_) => "salesforce",
        }
    }
}

/// Credentials and address of a TreadSoft account.
#[derive(Debug, Clone)]
pub struct TreadSoftConfig {
    pub api_url: Url,
    pub api_key: SecretString,
    pub api_secret: SecretString,
}

impl PartialEq for TreadSoftConfig {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.api_url == other.api_url
            && self.api_key.expose_secret() == other.api_key.expose_secret()
            && self.api_secret.expose_secret() == other.api_secret.expose_secret()
    }
}
impl Eq for TreadSoftConfig {}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// SQLite's `synchronous` pragma, as the user may choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSynchronous {
    Full,
    Normal,
}

/// Where the SQLite writer runs (`SQLITE_WRITER_CPU`, [`crate::affinity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriterCpu {
    /// The last CPU the process may run on, when it may run on two or more.
    #[default]
    Auto,
    /// Not pinned: the writer shares the gateway's runtime.
    Off,
    /// This CPU.
    Cpu(usize),
}

/// Validated configuration. Secrets are [`SecretString`]s: `Debug` shows `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct Config {
    pub provider: Provider,
    pub crm: CrmProvider,
    /// Webhook signing secrets, newest first; empty when unset.
    pub webhook_secrets: Vec<SecretString>,
    /// Largest accepted distance between a webhook's timestamp and the clock, in seconds.
    pub webhook_tolerance_secs: i64,
    /// Largest accepted webhook body, in bytes.
    pub webhook_max_bytes: usize,
    /// Which side wins a tie between stamps.
    pub tie_winner: Origin,
    /// Client-side limit on CRM requests.
    pub crm_rate_limit: RateLimit,
    /// Timeout of one CRM request.
    pub crm_request_timeout: Duration,
    /// Delivery tasks (0: none).
    pub delivery_workers: usize,
    /// How long a claimed delivery is reserved.
    pub delivery_lease: Duration,
    pub retry_schedule: RetrySchedule,
    /// How long each kind of row is kept.
    pub retention: Retention,
    /// How often dead letters are made due again; `None`: never by themselves.
    pub auto_retry_interval: Option<Duration>,
    /// `None`: no scheduled reconciliation.
    pub reconcile_interval: Option<Duration>,
    pub database: DatabaseConfig,
    pub bind_addr: SocketAddr,
    pub api_token: Option<SecretString>,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub http_workers: usize,
}

/// How long rows are kept before the daily prune deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub sync_logs: Duration,
    /// Webhook events applied, stale or echoes (failed and waiting ones stay).
    pub inbox: Duration,
    /// Delivered outbox rows, and request ids kept for echo detection.
    pub outbox: Duration,
    pub tombstones: Duration,
}

/// Tombstones are kept at least this long: longer than TreadSoft retries a webhook (about 27 h),
/// so a late retry of an old event cannot bring a deleted record back.
pub const MIN_TOMBSTONE_DAYS: u32 = 7;

const DAY: Duration = Duration::from_secs(24 * 3600);
/// The longest keep time a retention variable takes: a century is "forever" enough.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// Where the data lives and how the pool behaves.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The connection URL; may hold a password, so `Debug` prints only its scheme.
    pub url: String,
    pub max_connections: u32,
    pub sqlite_synchronous: SqliteSynchronous,
    /// SQLite: the CPU of the writer's threads.
    pub sqlite_writer_cpu: WriterCpu,
}

impl DatabaseConfig {
    /// The URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        match Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.url.split(':').next().unwrap_or_default();
        f.debug_struct("DatabaseConfig")
            .field("url", &format_args!("{scheme}://[REDACTED]"))
            .field("max_connections", &self.max_connections)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .field("sqlite_writer_cpu", &self.sqlite_writer_cpu)
            .finish()
    }
}

impl Config {
    /// The CRM's name for logs: `mock`, `treadsoft` or `hubspot`.
    pub fn crm_name(&self) -> &'static str {
        match self.crm {
            CrmProvider::Mock => "mock",
            CrmProvider::TreadSoft(_) => "treadsoft",
            CrmProvider::HubSpot(_) => "hubspot",
            CrmProvider::Salesforce(_) => "salesforce",
        }
    }
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub variable: &'static str,
    pub message: String,
}

/// Every problem found, in the order the variables are listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  {}: {}", problem.variable, problem.message)?;
        }
        Ok(())
    }
}

/// Collects problems while values are parsed.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, variable: &'static str, message: impl Into<String>) {
        self.0.push(ConfigProblem { variable, message: message.into() });
    }

    /// Parses `raw` with `parse`, or records its error and yields `fallback` so checking goes on.
    fn parse<T>(
        &mut self,
        variable: &'static str,
        raw: Option<&str>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T
    where
        T: Clone,
    {
        match raw.map(str::trim).filter(|s| !s.is_empty()) {
            None => default,
            Some(value) => parse(value).unwrap_or_else(|message| {
                self.add(variable, message);
                default
            }),
        }
    }
}

fn non_empty(raw: &Option<String>) -> Option<&str> {
    raw.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {value:?}")),
    }
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(value: &str) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("expected a whole number above 0, got {value:?}")),
    }
}

/// `auto`, `off`, or a CPU this process may run on.
fn parse_writer_cpu(v: &str) -> Result<WriterCpu, String> {
    let choice = match v.to_ascii_lowercase().as_str() {
        "auto" => WriterCpu::Auto,
        "off" | "none" => WriterCpu::Off,
        n => WriterCpu::Cpu(n.parse().map_err(|_| format!("expected auto, off or a CPU number, got {v:?}"))?),
    };
    Ok(choice)
}

/// An interval of at least a minute (`30m`, `1h`), or `off`.
fn interval_or_off(v: &str) -> Result<Option<Duration>, String> {
    match v.to_ascii_lowercase().as_str() {
        "off" | "0" | "false" | "never" => Ok(None),
        _ => crate::crm::rate_limit::parse_duration(v)
            .filter(|d| *d >= Duration::from_secs(60))
            .map(Some)
            .ok_or_else(|| format!("expected an interval of at least a minute such as 30m or 1h, or off, got {v:?}")),
    }
}

fn parse_database_url(value: &str) -> Result<String, String> {
    let scheme = value.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" if value.contains(":memory:") || value.contains("mode=memory") => Err(
            "an in-memory SQLite database would lose every acknowledged write; name a file, e.g. sqlite://crm-gateway.db"
                .into(),
        ),
        "sqlite" => Ok(value.to_owned()),
        "postgres" | "postgresql" => Url::parse(value)
            .map(|_| value.to_owned())
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}")),
        _ => Err("expected sqlite://PATH or postgres://USER@HOST/DATABASE".into()),
    }
}

impl Settings {
    /// Checks every value and returns the configuration, or all problems at once.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();

        let enabled = problems.parse("CRM_ENABLED", self.crm_enabled.as_deref(), false, parse_bool);
        let name = non_empty(&self.crm_provider).map(str::to_ascii_lowercase);
        let name = name.as_deref().unwrap_or("treadsoft");
        let (provider, crm) = match name {
            "treadsoft" if enabled => (Provider::TreadSoft, self.treadsoft(&mut problems)),
            "treadsoft" | "mock" => (Provider::TreadSoft, CrmProvider::Mock),
            "hubspot" => self.hubspot(enabled, &mut problems),
            "salesforce" => self.salesforce(enabled, &mut problems),
            other => {
                problems.add(
                    "CRM_PROVIDER",
                    format!("unknown provider {other:?}; expected treadsoft, hubspot or salesforce"),
                );
                (Provider::TreadSoft, CrmProvider::Mock)
            }
        };

        let webhook_secrets = non_empty(&self.crm_webhook_secret)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| SecretString::from(s.to_owned()))
                    .collect()
            })
            .unwrap_or_default();

        let webhook_tolerance_secs = problems.parse(
            "CRM_WEBHOOK_TOLERANCE_SECS",
            self.crm_webhook_tolerance_secs.as_deref(),
            300,
            parse_positive,
        );
        let webhook_max_bytes =
            problems.parse("CRM_WEBHOOK_MAX_BYTES", self.crm_webhook_max_bytes.as_deref(), 1024 * 1024, parse_positive);
        let tie_winner = problems.parse("SYNC_TIE_WINNER", self.sync_tie_winner.as_deref(), Origin::Crm, |v| {
            match v.to_ascii_lowercase().as_str() {
                "crm" => Ok(Origin::Crm),
                "local" => Ok(Origin::Local),
                _ => Err(format!("expected crm or local, got {v:?}")),
            }
        });
        let crm_rate_limit = problems.parse(
            "CRM_RATE_LIMIT",
            self.crm_rate_limit.as_deref(),
            RateLimit { requests: 100, period: Duration::from_secs(10) },
            RateLimit::parse,
        );
        let crm_request_timeout = Duration::from_secs(problems.parse(
            "CRM_REQUEST_TIMEOUT_SECS",
            self.crm_request_timeout_secs.as_deref(),
            10,
            parse_positive,
        ));
        let delivery_workers = problems.parse("CRM_DELIVERY_WORKERS", self.crm_delivery_workers.as_deref(), 2, |v| {
            v.parse::<usize>().map_err(|_| format!("expected a whole number, got {v:?}"))
        });
        let delivery_lease = Duration::from_secs(problems.parse(
            "CRM_DELIVERY_LEASE_SECS",
            self.crm_delivery_lease_secs.as_deref(),
            60,
            parse_positive,
        ));
        let retry_schedule = problems.parse(
            "CRM_RETRY_SCHEDULE",
            self.crm_retry_schedule.as_deref(),
            RetrySchedule::default(),
            RetrySchedule::parse,
        );
        let days = |problems: &mut Problems, variable: &'static str, raw: &Option<String>, default: u32| {
            DAY * problems.parse(variable, raw.as_deref(), default, |v| {
                parse_positive::<u32>(v).and_then(|n| {
                    if n <= MAX_RETENTION_DAYS {
                        Ok(n)
                    } else {
                        Err(format!("expected at most {MAX_RETENTION_DAYS} days (100 years), got {n}"))
                    }
                })
            })
        };
        let retention = Retention {
            sync_logs: days(&mut problems, "CRM_LOG_RETENTION_DAYS", &self.crm_log_retention_days, 90),
            inbox: days(&mut problems, "CRM_INBOX_RETENTION_DAYS", &self.crm_inbox_retention_days, 30),
            outbox: days(&mut problems, "CRM_OUTBOX_RETENTION_DAYS", &self.crm_outbox_retention_days, 7),
            tombstones: days(&mut problems, "CRM_TOMBSTONE_RETENTION_DAYS", &self.crm_tombstone_retention_days, 30),
        };
        if retention.tombstones < DAY * MIN_TOMBSTONE_DAYS {
            problems.add(
                "CRM_TOMBSTONE_RETENTION_DAYS",
                format!("must be at least {MIN_TOMBSTONE_DAYS}, longer than TreadSoft retries a webhook"),
            );
        }
        let auto_retry_interval =
            problems.parse("CRM_AUTO_RETRY_INTERVAL", self.crm_auto_retry_interval.as_deref(), None, interval_or_off);
        let reconcile_interval =
            problems.parse("CRM_RECONCILE_INTERVAL", self.crm_reconcile_interval.as_deref(), None, interval_or_off);
        if delivery_lease <= crm_request_timeout * 2 {
            problems.add(
                "CRM_DELIVERY_LEASE_SECS",
                format!(
                    "must be more than twice CRM_REQUEST_TIMEOUT_SECS ({} s), so a claimed delivery can be sent within its lease",
                    crm_request_timeout.as_secs()
                ),
            );
        }
        let database = DatabaseConfig {
            url: problems.parse(
                "DATABASE_URL",
                self.database_url.as_deref(),
                DEFAULT_DATABASE_URL.to_owned(),
                parse_database_url,
            ),
            max_connections: problems.parse(
                "DATABASE_MAX_CONNECTIONS",
                self.database_max_connections.as_deref(),
                10,
                parse_positive,
            ),
            sqlite_synchronous: problems.parse(
                "SQLITE_SYNCHRONOUS",
                self.sqlite_synchronous.as_deref(),
                SqliteSynchronous::Full,
                |v| match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ok(SqliteSynchronous::Full),
                    "NORMAL" => Ok(SqliteSynchronous::Normal),
                    _ => Err(format!("expected FULL or NORMAL, got {v:?}")),
                },
            ),
            sqlite_writer_cpu: problems.parse(
                "SQLITE_WRITER_CPU",
                self.sqlite_writer_cpu.as_deref(),
                WriterCpu::Auto,
                parse_writer_cpu,
            ),
        };
        // Only SQLite has a writer thread to pin: elsewhere the setting is not read.
        if database.url.starts_with("sqlite:")
            && let Err(e) = crate::affinity::choose(database.sqlite_writer_cpu)
        {
            problems.add("SQLITE_WRITER_CPU", e);
        }

        let bind_addr =
            problems.parse("BIND_ADDR", self.bind_addr.as_deref(), SocketAddr::from(([127, 0, 0, 1], 8080)), |v| {
                v.parse().map_err(|_| format!("expected HOST:PORT such as 127.0.0.1:8080, got {v:?}"))
            });
        let log_format = problems.parse("LOG_FORMAT", self.log_format.as_deref(), LogFormat::Human, |v| {
            match v.to_ascii_lowercase().as_str() {
                "human" | "text" | "pretty" => Ok(LogFormat::Human),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("expected human or json, got {v:?}")),
            }
        });
        let log_filter = problems.parse("RUST_LOG", self.rust_log.as_deref(), "info".to_owned(), |v| {
            tracing_subscriber::EnvFilter::try_new(v)
                .map(|_| v.to_owned())
                .map_err(|e| format!("not a valid log filter: {e}"))
        });
        let default_workers = std::thread::available_parallelism().map_or(2, usize::from);
        let http_workers =
            problems.parse("HTTP_WORKERS", self.http_workers.as_deref(), default_workers, parse_positive);

        if !problems.0.is_empty() {
            return Err(ConfigError(problems.0));
        }
        Ok(Config {
            provider,
            crm,
            webhook_secrets,
            webhook_tolerance_secs,
            webhook_max_bytes,
            tie_winner,
            crm_rate_limit,
            crm_request_timeout,
            delivery_workers,
            delivery_lease,
            retry_schedule,
            retention,
            auto_retry_interval,
            reconcile_interval,
            database,
            bind_addr,
            api_token: non_empty(&self.gateway_api_token).map(|t| SecretString::from(t.to_owned())),
            log_filter,
            log_format,
            http_workers,
        })
    }

    fn treadsoft(&self, problems: &mut Problems) -> CrmProvider {
        const WHY: &str = "required when CRM_ENABLED=true";
        let api_url = match non_empty(&self.crm_api_url) {
            None => {
                problems.add("CRM_API_URL", WHY);
                None
            }
            Some(raw) => http_url(problems, "CRM_API_URL", raw),
        };
        let mut secret = |variable: &'static str, raw: &Option<String>| {
            let value = non_empty(raw).map(|s| SecretString::from(s.to_owned()));
            if value.is_none() {
                problems.add(variable, WHY);
            }
            value
        };
        let api_key = secret("CRM_API_KEY", &self.crm_api_key);
        let api_secret = secret("CRM_API_SECRET", &self.crm_api_secret);
        match (api_url, api_key, api_secret) {
            (Some(api_url), Some(api_key), Some(api_secret)) => {
                CrmProvider::TreadSoft(TreadSoftConfig { api_url, api_key, api_secret })
            }
            _ => CrmProvider::Mock,
        }
    }

    /// HubSpot: the receiver's URL and mapping, and (when enabled) the client's token.
    fn hubspot(&self, enabled: bool, problems: &mut Problems) -> (Provider, CrmProvider) {
        let webhook_url = non_empty(&self.crm_webhook_url).and_then(|raw| {
            let url = http_url(problems, "CRM_WEBHOOK_URL", raw)?;
            if url.query().is_some() || url.fragment().is_some() {
                problems.add("CRM_WEBHOOK_URL", "the URL HubSpot calls takes no query string or fragment");
                return None;
            }
            Some(raw.to_owned())
        });
        let mapping = match non_empty(&self.crm_mapping_file) {
            None => Mapping::default(),
            Some(path) => Mapping::load(std::path::Path::new(path)).unwrap_or_else(|e| {
                problems.add("CRM_MAPPING_FILE", e.0);
                Mapping::default()
            }),
        };
        let mapping = Arc::new(mapping);
        let batch_size = problems.parse("CRM_BATCH_SIZE", self.crm_batch_size.as_deref(), 100, |v| {
            parse_positive::<usize>(v)
                .and_then(|n| if n <= 1000 { Ok(n) } else { Err(format!("expected at most 1000, got {n}")) })
        });
        let inbound = Provider::HubSpot(HubSpotInbound { webhook_url, mapping: mapping.clone() });
        if !enabled {
            return (inbound, CrmProvider::Mock);
        }
        let api_url =
            http_url(problems, "CRM_API_URL", non_empty(&self.crm_api_url).unwrap_or("https://api.hubapi.com"));
        let access_token = non_empty(&self.crm_api_key).map(|s| SecretString::from(s.to_owned()));
        if access_token.is_none() {
            problems.add("CRM_API_KEY", "required when CRM_ENABLED=true: the private app's access token");
        }
        let crm = match (api_url, access_token) {
            (Some(api_url), Some(access_token)) => {
                CrmProvider::HubSpot(HubSpotConfig { api_url, access_token, batch_size, mapping })
            }
            _ => CrmProvider::Mock,
        };
        (inbound, crm)
    }
}

impl Settings {
    /// Salesforce: the Pub/Sub endpoint and channel, the mapping, and (when enabled) the
    /// connected app's credentials at the org's My Domain.
    fn salesforce(&self, enabled: bool, problems: &mut Problems) -> (Provider, CrmProvider) {
        let mapping = match non_empty(&self.crm_mapping_file) {
            None => Mapping::defaults(Flavor::Salesforce),
            Some(path) => Mapping::load_for(Flavor::Salesforce, std::path::Path::new(path)).unwrap_or_else(|e| {
                problems.add("CRM_MAPPING_FILE", e.0);
                Mapping::defaults(Flavor::Salesforce)
            }),
        };
        let mapping = Arc::new(mapping);
        let raw = non_empty(&self.crm_pubsub_url).unwrap_or("https://api.pubsub.salesforce.com:7443");
        let pubsub_url = http_url(problems, "CRM_PUBSUB_URL", raw).filter(|url| {
            let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                || url.host_str() == Some("localhost");
            let plain = url.scheme() == "http" && !loopback;
            if plain {
                problems.add("CRM_PUBSUB_URL", "http:// is for a loopback address only (a local fake): use https://");
            }
            !plain
        });
        let channel = non_empty(&self.crm_cdc_channel).unwrap_or("/data/ChangeEvents").to_owned();
        if !channel.starts_with("/data/") {
            problems.add("CRM_CDC_CHANNEL", format!("a change event channel starts with /data/, got {channel:?}"));
        }
        let lease = problems.parse("CRM_CDC_LEASE_SECS", self.crm_cdc_lease_secs.as_deref(), 30, parse_positive);
        let mut inbound = SalesforceInbound::new(
            pubsub_url.unwrap_or_else(|| "https://api.pubsub.salesforce.com:7443".parse().expect("a URL")),
            channel,
            mapping.clone(),
        );
        inbound.lease = Duration::from_secs(lease);
        let inbound = Provider::Salesforce(inbound);
        if !enabled {
            return (inbound, CrmProvider::Mock);
        }
        const WHY: &str = "required when CRM_ENABLED=true with CRM_PROVIDER=salesforce";
        let api_url = match non_empty(&self.crm_api_url) {
            None => {
                problems.add("CRM_API_URL", format!("{WHY}: the org's My Domain URL"));
                None
            }
            Some(raw) => http_url(problems, "CRM_API_URL", raw),
        };
        // The JWT bearer flow, when a key file is named; else client credentials.
        let jwt = match non_empty(&self.crm_jwt_key_file) {
            None => {
                for (variable, value) in
                    [("CRM_JWT_USERNAME", &self.crm_jwt_username), ("CRM_JWT_AUDIENCE", &self.crm_jwt_audience)]
                {
                    if non_empty(value).is_some() {
                        problems.add(variable, "is for the JWT bearer flow, which needs CRM_JWT_KEY_FILE too");
                    }
                }
                None
            }
            Some(path) => {
                let username = non_empty(&self.crm_jwt_username);
                if username.is_none() {
                    problems.add("CRM_JWT_USERNAME", "required with CRM_JWT_KEY_FILE: the integration user's username");
                }
                let audience = non_empty(&self.crm_jwt_audience).unwrap_or("https://login.salesforce.com");
                let audience = match http_url(problems, "CRM_JWT_AUDIENCE", audience) {
                    Some(url) if url.scheme() == "https" && url.path() == "/" => {
                        audience.trim_end_matches('/').to_owned()
                    }
                    Some(_) => {
                        problems.add(
                            "CRM_JWT_AUDIENCE",
                            "expected https://login.salesforce.com, https://test.salesforce.com or a site's https URL",
                        );
                        String::new()
                    }
                    None => String::new(),
                };
                let key =
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}")).and_then(|pem| {
                        crate::crm::salesforce::auth::JwtBearer::new(
                            username.unwrap_or_default().to_owned(),
                            audience,
                            &pem,
                        )
                    });
                match key {
                    Ok(jwt) => Some(Some(jwt)),
                    Err(why) => {
                        problems.add("CRM_JWT_KEY_FILE", why);
                        Some(None)
                    }
                }
            }
        };
        let mut secret = |variable: &'static str, raw: &Option<String>, what: &str| {
            let value = non_empty(raw).map(|s| SecretString::from(s.to_owned()));
            if value.is_none() {
                problems.add(variable, format!("{WHY}: the connected app's {what}"));
            }
            value
        };
        let client_id = secret("CRM_API_KEY", &self.crm_api_key, "consumer key");
        let client_secret = match jwt {
            Some(_) => Some(SecretString::from(non_empty(&self.crm_api_secret).unwrap_or_default().to_owned())),
            None => secret("CRM_API_SECRET", &self.crm_api_secret, "consumer secret"),
        };
        let crm = match (api_url, client_id, client_secret, jwt) {
            (Some(api_url), Some(client_id), Some(client_secret), jwt @ (None | Some(Some(_)))) => {
                CrmProvider::Salesforce(SalesforceConfig {
                    api_url,
                    client_id,
                    client_secret,
                    api_version: SALESFORCE_API_VERSION.into(),
                    client_tag: "crm-gateway".into(),
                    mapping,
                    jwt: jwt.flatten(),
                })
            }
            _ => CrmProvider::Mock,
        };
        (inbound, crm)
    }
}

/// The Salesforce REST API version the client speaks.
pub const SALESFORCE_API_VERSION: &str = "v62.0";

/// An http(s) URL with a host, or a problem for `variable`.
fn http_url(problems: &mut Problems, variable: &'static str, raw: &str) -> Option<Url> {
    match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
        Ok(_) => {
            problems.add(variable, format!("expected an http(s) URL, got {raw:?}"));
            None
        }
        Err(e) => {
            problems.add(variable, format!("not a valid URL ({e}): {raw:?}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "CRM_ENABLED" => s.crm_enabled = v,
                "CRM_PROVIDER" => s.crm_provider = v,
                "CRM_API_URL" => s.crm_api_url = v,
                "CRM_API_KEY" => s.crm_api_key = v,
                "CRM_API_SECRET" => s.crm_api_secret = v,
                "CRM_WEBHOOK_URL" => s.crm_webhook_url = v,
                "CRM_MAPPING_FILE" => s.crm_mapping_file = v,
                "CRM_BATCH_SIZE" => s.crm_batch_size = v,
                "CRM_PUBSUB_URL" => s.crm_pubsub_url = v,
                "CRM_CDC_CHANNEL" => s.crm_cdc_channel = v,
                "CRM_CDC_LEASE_SECS" => s.crm_cdc_lease_secs = v,
                "CRM_JWT_KEY_FILE" => s.crm_jwt_key_file = v,
                "CRM_JWT_USERNAME" => s.crm_jwt_username = v,
                "CRM_JWT_AUDIENCE" => s.crm_jwt_audience = v,
                "CRM_WEBHOOK_SECRET" => s.crm_webhook_secret = v,
                "DATABASE_URL" => s.database_url = v,
                "SQLITE_WRITER_CPU" => s.sqlite_writer_cpu = v,
                "BIND_ADDR" => s.bind_addr = v,
                "LOG_FORMAT" => s.log_format = v,
                "GATEWAY_API_TOKEN" => s.gateway_api_token = v,
                "CRM_LOG_RETENTION_DAYS" => s.crm_log_retention_days = v,
                "CRM_TOMBSTONE_RETENTION_DAYS" => s.crm_tombstone_retention_days = v,
                "CRM_AUTO_RETRY_INTERVAL" => s.crm_auto_retry_interval = v,
                "CRM_RECONCILE_INTERVAL" => s.crm_reconcile_interval = v,
                other => panic!("unknown test variable {other}"),
            }
        }
        s
    }

    fn variables(err: ConfigError) -> Vec<&'static str> {
        err.0.into_iter().map(|p| p.variable).collect()
    }

    #[test]
    fn no_environment_gives_safe_defaults() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(config.crm, CrmProvider::Mock);
        assert_eq!(config.database.url, DEFAULT_DATABASE_URL);
        assert_eq!(config.database.sqlite_synchronous, SqliteSynchronous::Full);
        assert_eq!(config.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.log_format, LogFormat::Human);
        assert!(config.api_token.is_none());
    }

    #[test]
    fn the_sqlite_writer_cpu_is_auto_off_or_one_the_process_may_run_on() {
        let cpu = |v: &str| settings(&[("SQLITE_WRITER_CPU", v)]).validate().map(|c| c.database.sqlite_writer_cpu);
        assert_eq!(Settings::default().validate().unwrap().database.sqlite_writer_cpu, WriterCpu::Auto);
        assert_eq!(cpu("AUTO").unwrap(), WriterCpu::Auto);
        assert_eq!(cpu("off").unwrap(), WriterCpu::Off);
        let err = cpu("fast").unwrap_err();
        assert!(err.to_string().contains("expected auto, off or a CPU number, got \"fast\""), "{err}");
        // CPU_SETSIZE is 1024: no process may run on CPU 4096.
        let err = cpu("4096").unwrap_err();
        assert_eq!(variables(err.clone()), ["SQLITE_WRITER_CPU"]);
        if let Some(&first) = crate::affinity::allowed_cpus().first() {
            assert!(err.to_string().contains("not one this process may run on"), "{err}");
            assert_eq!(cpu(&first.to_string()).unwrap(), WriterCpu::Cpu(first));
        }
        // PostgreSQL has no writer thread to pin: the CPU is not checked.
        let config = settings(&[("DATABASE_URL", "postgres://u@localhost/db"), ("SQLITE_WRITER_CPU", "4096")]);
        assert_eq!(config.validate().unwrap().database.sqlite_writer_cpu, WriterCpu::Cpu(4096));
    }

    #[test]
    fn hubspot_takes_its_token_a_default_url_and_a_mapping_file_that_must_be_right() {
        let config = settings(&[
            ("CRM_PROVIDER", "HubSpot"),
            ("CRM_ENABLED", "true"),
            ("CRM_API_KEY", "pat-1"),
            ("CRM_WEBHOOK_URL", "https://gw.example.com/api/crm/webhooks/hubspot"),
        ])
        .validate()
        .unwrap();
        let CrmProvider::HubSpot(hubspot) = &config.crm else { panic!("{:?}", config.crm) };
        assert_eq!(hubspot.api_url.as_str(), "https://api.hubapi.com/");
        assert_eq!(hubspot.batch_size, 100);
        let Provider::HubSpot(inbound) = &config.provider else { panic!() };
        assert_eq!(inbound.webhook_url.as_deref(), Some("https://gw.example.com/api/crm/webhooks/hubspot"));
        assert_eq!(config.crm_name(), "hubspot");

        // Disabled: HubSpot's webhooks, the mock client.
        let config = settings(&[("CRM_PROVIDER", "hubspot")]).validate().unwrap();
        assert_eq!((config.provider.name(), config.crm_name()), ("hubspot", "mock"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mapping.toml");
        std::fs::write(&file, "[contact.properties]\nnickname = \"x\"\n").unwrap();
        let err = settings(&[
            ("CRM_PROVIDER", "hubspot"),
            ("CRM_ENABLED", "true"),
            ("CRM_WEBHOOK_URL", "not a url"),
            ("CRM_MAPPING_FILE", file.to_str().unwrap()),
            ("CRM_BATCH_SIZE", "0"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(variables(err), ["CRM_WEBHOOK_URL", "CRM_MAPPING_FILE", "CRM_BATCH_SIZE", "CRM_API_KEY"]);
    }

    #[test]
    fn salesforce_takes_the_jwt_bearer_flow_when_a_key_file_is_named() {
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/salesforce/jwt-test-key.pem");
        let base = [
            ("CRM_PROVIDER", "salesforce"),
            ("CRM_ENABLED", "true"),
            ("CRM_API_URL", "https://acme.my.salesforce.com"),
            ("CRM_API_KEY", "3MVG9"),
        ];
        let mut pairs = base.to_vec();
        pairs.extend([("CRM_JWT_KEY_FILE", key), ("CRM_JWT_USERNAME", "sync@acme.example")]);
        let config = settings(&pairs).validate().unwrap();
        let CrmProvider::Salesforce(sf) = &config.crm else { panic!("{:?}", config.crm) };
        let jwt = sf.jwt.as_ref().expect("the JWT bearer flow, no consumer secret needed");
        assert_eq!(
            (jwt.username.as_str(), jwt.audience.as_str()),
            ("sync@acme.example", "https://login.salesforce.com")
        );
        let mut pairs = base.to_vec();
        pairs.extend([
            ("CRM_JWT_KEY_FILE", "/nonexistent/key.pem"),
            ("CRM_JWT_AUDIENCE", "http://login.salesforce.com"),
        ]);
        let err = settings(&pairs).validate().unwrap_err();
        assert_eq!(variables(err), ["CRM_JWT_USERNAME", "CRM_JWT_AUDIENCE", "CRM_JWT_KEY_FILE"]);
        let mut pairs = base.to_vec();
        pairs.extend([("CRM_API_SECRET", "s"), ("CRM_JWT_USERNAME", "sync@acme.example")]);
        let err = settings(&pairs).validate().unwrap_err();
        assert_eq!(variables(err), ["CRM_JWT_USERNAME"], "half the JWT flow is not silently dropped");
    }

    #[test]
    fn salesforce_takes_its_my_domain_and_connected_app_and_a_safe_pubsub_url() {
        let config = settings(&[
            ("CRM_PROVIDER", "salesforce"),
            ("CRM_ENABLED", "true"),
            ("CRM_API_URL", "https://acme.my.salesforce.com"),
            ("CRM_API_KEY", "3MVG9"),
            ("CRM_API_SECRET", "s3cret"),
        ])
        .validate()
        .unwrap();
        let CrmProvider::Salesforce(sf) = &config.crm else { panic!("{:?}", config.crm) };
        assert_eq!((sf.api_version.as_str(), sf.client_tag.as_str()), ("v62.0", "crm-gateway"));
        let Provider::Salesforce(inbound) = &config.provider else { panic!() };
        assert_eq!(inbound.pubsub_url.as_str(), "https://api.pubsub.salesforce.com:7443/");
        assert_eq!(inbound.channel, "/data/ChangeEvents");
        assert!(!format!("{config:?}").contains("s3cret"));
        let local = settings(&[("CRM_PROVIDER", "salesforce"), ("CRM_PUBSUB_URL", "http://127.0.0.1:50051")]);
        assert!(local.validate().is_ok(), "a loopback fake may be plain http");
        let err = settings(&[
            ("CRM_PROVIDER", "salesforce"),
            ("CRM_ENABLED", "true"),
            ("CRM_PUBSUB_URL", "http://pubsub.example.com:7443"),
            ("CRM_CDC_CHANNEL", "ChangeEvents"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(
            variables(err),
            ["CRM_PUBSUB_URL", "CRM_CDC_CHANNEL", "CRM_API_URL", "CRM_API_KEY", "CRM_API_SECRET"]
        );
    }

    #[test]
    fn retention_and_auto_retry_default_to_the_seeds_rules_and_refuse_unsafe_values() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(config.retention.sync_logs, Duration::from_secs(90 * 86_400), "the seed keeps 90 days");
        assert_eq!(config.retention.tombstones, Duration::from_secs(30 * 86_400));
        assert_eq!(config.auto_retry_interval, None, "off unless asked");
        assert_eq!(config.reconcile_interval, None, "off unless asked");
        let config = settings(&[
            ("CRM_LOG_RETENTION_DAYS", "30"),
            ("CRM_AUTO_RETRY_INTERVAL", "30m"),
            ("CRM_RECONCILE_INTERVAL", "1h"),
        ])
        .validate()
        .unwrap();
        assert_eq!(config.reconcile_interval, Some(Duration::from_secs(3600)));
        assert_eq!(config.retention.sync_logs, Duration::from_secs(30 * 86_400));
        assert_eq!(config.auto_retry_interval, Some(Duration::from_secs(1800)));
        let err = settings(&[
            ("CRM_TOMBSTONE_RETENTION_DAYS", "3"),
            ("CRM_AUTO_RETRY_INTERVAL", "10s"),
            ("CRM_RECONCILE_INTERVAL", "30s"),
            ("CRM_LOG_RETENTION_DAYS", "4294967296"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(
            variables(err),
            [
                "CRM_LOG_RETENTION_DAYS",
                "CRM_TOMBSTONE_RETENTION_DAYS",
                "CRM_AUTO_RETRY_INTERVAL",
                "CRM_RECONCILE_INTERVAL"
            ]
        );
    }

    #[test]
    fn enabled_without_credentials_names_every_missing_variable() {
        let err = settings(&[("CRM_ENABLED", "true")]).validate().unwrap_err();
        assert_eq!(variables(err), ["CRM_API_URL", "CRM_API_KEY", "CRM_API_SECRET"]);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let err = settings(&[
            ("CRM_ENABLED", "true"),
            // A CRM the gateway does not know (Salesforce became one it does).
            ("CRM_PROVIDER", "zoho"),
            ("DATABASE_URL", "mysql://x"),
            ("BIND_ADDR", "nowhere"),
            ("LOG_FORMAT", "xml"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(variables(err), ["CRM_PROVIDER", "DATABASE_URL", "BIND_ADDR", "LOG_FORMAT"]);
    }

    #[test]
    fn an_unparsable_url_is_named() {
        let err = settings(&[
            ("CRM_ENABLED", "true"),
            ("CRM_API_URL", "not a url"),
            ("CRM_API_KEY", "k"),
            ("CRM_API_SECRET", "s"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].variable, "CRM_API_URL");
        assert!(err.0[0].message.contains("not a valid URL"));
    }

    #[test]
    fn treadsoft_with_credentials_is_selected() {
        let config = settings(&[
            ("CRM_ENABLED", "true"),
            ("CRM_API_URL", "https://api.treadsoft.com"),
            ("CRM_API_KEY", "key"),
            ("CRM_API_SECRET", "secret"),
        ])
        .validate()
        .unwrap();
        assert!(
            matches!(config.crm, CrmProvider::TreadSoft(ref t) if t.api_url.as_str() == "https://api.treadsoft.com/")
        );
    }

    #[test]
    fn crm_disabled_selects_the_mock_whatever_the_provider() {
        let config = settings(&[("CRM_ENABLED", "false"), ("CRM_PROVIDER", "treadsoft")]).validate().unwrap();
        assert_eq!(config.crm, CrmProvider::Mock);
    }

    #[test]
    fn in_memory_sqlite_is_refused() {
        let err = settings(&[("DATABASE_URL", "sqlite::memory:")]).validate().unwrap_err();
        assert_eq!(variables(err), ["DATABASE_URL"]);
    }

    #[test]
    fn webhook_secrets_split_on_commas_for_rotation() {
        let config = settings(&[("CRM_WEBHOOK_SECRET", "whsec_new, whsec_old")]).validate().unwrap();
        assert_eq!(config.webhook_secrets.len(), 2);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = settings(&[
            ("CRM_ENABLED", "true"),
            ("CRM_API_URL", "https://api.treadsoft.com"),
            ("CRM_API_KEY", "key-VISIBLE"),
            ("CRM_API_SECRET", "secret-VISIBLE"),
            ("CRM_WEBHOOK_SECRET", "whsec-VISIBLE"),
            ("DATABASE_URL", "postgres://app:pw-VISIBLE@db/crm"),
            ("GATEWAY_API_TOKEN", "token-VISIBLE"),
        ])
        .validate()
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("VISIBLE"), "{shown}");
    }
}
