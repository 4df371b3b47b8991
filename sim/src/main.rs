//! `treadsoft-sim`: run TreadSoft's API in memory (see the crate's documentation).

use clap::Parser;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use treadsoft_sim::server::{Account, Sim};

/// An in-memory TreadSoft CRM for trying crm-gateway on one machine.
#[derive(Parser)]
#[command(name = "treadsoft-sim", version, about)]
struct Cli {
    /// Where to listen.
    #[arg(long, env = "SIM_BIND_ADDR", default_value = "127.0.0.1:8090")]
    bind: String,
    /// The account id `GET /v1/me` answers.
    #[arg(long, env = "SIM_ACCOUNT_ID", default_value = "acc_ge_houses")]
    account_id: String,
    /// The API key clients send (the gateway's CRM_API_KEY).
    #[arg(long, env = "SIM_API_KEY", default_value = "ts_key_local")]
    api_key: String,
    /// The API secret requests are signed with (the gateway's CRM_API_SECRET).
    #[arg(long, env = "SIM_API_SECRET", default_value = "ts_secret_local")]
    api_secret: String,
    /// Requests allowed per 10 s (TreadSoft's is 100).
    #[arg(long, env = "SIM_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let account = Account {
        account_id: cli.account_id,
        api_key: cli.api_key,
        api_secret: cli.api_secret,
        rate_limit: cli.rate_limit,
        rate_window: Duration::from_secs(10),
    };
    let listener = TcpListener::bind(&cli.bind)?;
    eprintln!("treadsoft-sim listening on http://{}", listener.local_addr()?);
    let server = treadsoft_sim::serve(Arc::new(Sim::new(account)), listener)?;
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}
