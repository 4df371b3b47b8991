use sea_orm_migration::prelude::*;

/// `cargo run -p migration -- up|down|status|fresh|...`, as with any sea-orm project.
/// Without `DATABASE_URL` it works on the gateway's default database, `crm-gateway.db`.
#[tokio::main]
async fn main() {
    if std::env::var_os("DATABASE_URL").is_none() && dotenv_database_url().is_none() {
        // SAFETY: single-threaded here; nothing else reads the environment yet.
        unsafe { std::env::set_var("DATABASE_URL", "sqlite://crm-gateway.db?mode=rwc") };
    }
    cli::run_cli(migration::Migrator).await;
}

/// Whether `.env` names a database (the CLI reads `.env` itself; this only decides the default).
fn dotenv_database_url() -> Option<String> {
    let text = std::fs::read_to_string(".env").ok()?;
    text.lines().filter_map(|line| line.trim().strip_prefix("DATABASE_URL=")).map(str::to_owned).next()
}
