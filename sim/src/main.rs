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
    /// Where to send webhooks (the gateway's `/api/crm/webhooks/treadsoft`); none: not sent.
    #[arg(long, env = "SIM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The webhook signing secret (the gateway's CRM_WEBHOOK_SECRET).
    #[arg(long, env = "SIM_WEBHOOK_SECRET", default_value = "whsec_local")]
    webhook_secret: String,
    /// Divides TreadSoft's webhook retry schedule (1 min ... 10 h): 60 makes the first retry 1 s.
    #[arg(long, env = "SIM_SPEED", default_value_t = 1.0)]
    speed: f64,
    /// Requests allowed per 10 s (TreadSoft's is 100).
    #[arg(long, env = "SIM_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Start with this many contacts (as a CRM that existed before the gateway; no webhooks
    /// are sent for them), for trying `crm-gateway import`.
    #[arg(long, env = "SIM_SEED_CONTACTS", default_value_t = 0)]
    seed_contacts: usize,
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
    let sim = Arc::new(Sim::new(account));
    if cli.seed_contacts > 0 {
        treadsoft_sim::seed_contacts(&sim, cli.seed_contacts);
        eprintln!("seeded {} contacts", cli.seed_contacts);
    }
    if let Some(url) = cli.webhook_url {
        eprintln!("sending webhooks to {url}");
        let hooks = treadsoft_sim::webhooks::Webhooks { url, secret: cli.webhook_secret, speed: cli.speed };
        tokio::spawn(treadsoft_sim::webhooks::run(sim.clone(), hooks));
    }
    let server = treadsoft_sim::serve(sim, listener)?;
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}
