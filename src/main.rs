use clap::Parser;
use crm_gateway::cli::{Cli, run};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("error: cannot read .env: {err}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            match err.downcast_ref::<crm_gateway::config::ConfigError>() {
                Some(config) => eprint!("error: {config}"),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::from(if err.is::<crm_gateway::config::ConfigError>() { 2 } else { 1 })
        }
    }
}
