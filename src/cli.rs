//! The command line: `serve` (the default) and `migrate`.

use crate::config::{Config, Settings};
use crate::db::Db;
use crate::startup::{Application, shutdown_signal};
use crate::telemetry;
use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

/// Runs the parsed command line. Errors are for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.settings.validate()?;
    telemetry::init(&config.log_filter, config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(crm = config.crm_name(), "starting crm-gateway {}", env!("CARGO_PKG_VERSION"));
    if config.webhook_secrets.is_empty() {
        tracing::warn!("CRM_WEBHOOK_SECRET is not set: CRM webhooks will be refused");
    }
    let app = Application::build(config).await?;
    app.run_until(shutdown_signal()).await.context("the HTTP server failed")?;
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config.database).await.context("cannot open the database")?;
    db.migrate().await.context("cannot migrate the database")?;
    tracing::info!("database is up to date");
    db.close().await?;
    Ok(())
}
