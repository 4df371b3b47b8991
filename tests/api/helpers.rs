//! Starting the real application against a fresh database, and talking to it.

use crm_gateway::config::{Config, DatabaseConfig, Settings, SqliteSynchronous};
use crm_gateway::db::Db;
use crm_gateway::startup::Application;
use sea_orm::{ConnectionTrait, Database};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Where PostgreSQL tests go unless `TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Test databases on PostgreSQL are named with this prefix and their creation time.
const PG_PREFIX: &str = "cgw_test_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(TestApp)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                $crate::helpers::run_app_test($crate::helpers::Backend::Sqlite, super::$test).await;
            }
            #[tokio::test]
            async fn postgres() {
                $crate::helpers::run_app_test($crate::helpers::Backend::Postgres, super::$test).await;
            }
        }
    )*};
}

/// Runs each named `async fn(TestDatabase)` once per database, without the HTTP server.
#[macro_export]
macro_rules! on_both_databases_without_app {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                $crate::helpers::run_db_test($crate::helpers::Backend::Sqlite, super::$test).await;
            }
            #[tokio::test]
            async fn postgres() {
                $crate::helpers::run_db_test($crate::helpers::Backend::Postgres, super::$test).await;
            }
        }
    )*};
}

/// Runs each named `async fn(TestDatabase)` on one database only, without the HTTP server:
/// `on_one_database_without_app!(Sqlite sqlite: a, b)` for what PostgreSQL does not have (pragmas,
/// checkpoints, the writer's thread), `(Postgres postgres: ...)` for what needs two writing
/// connections at once.
#[macro_export]
macro_rules! on_one_database_without_app {
    ($backend:ident $name:ident: $($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn $name() {
                $crate::helpers::run_db_test($crate::helpers::Backend::$backend, super::$test).await;
            }
        }
    )*};
}

pub async fn run_app_test<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(database) = TestDatabase::create(backend).await else { return };
    let cleanup = database.cleanup_handle();
    let app = TestApp::spawn(database).await;
    test(app).await;
    cleanup.run().await;
}

pub async fn run_db_test<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestDatabase) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(database) = TestDatabase::create(backend).await else { return };
    let cleanup = database.cleanup_handle();
    test(database).await;
    cleanup.run().await;
}

/// A database no other test uses: a SQLite file in a temporary folder, or a PostgreSQL database.
pub struct TestDatabase {
    pub backend: Backend,
    pub config: DatabaseConfig,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

/// Drops a test's PostgreSQL database once the test is done with it.
pub struct Cleanup(Option<String>);

impl Cleanup {
    pub async fn run(self) {
        if let Some(name) = self.0 {
            drop_pg_database(&name).await;
        }
    }
}

impl TestDatabase {
    /// A fresh, empty database; `None` when the test must be skipped (PostgreSQL absent outside CI).
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
                Some(Self { backend, config: database_config(url), _dir: Some(dir), pg_name: None })
            }
            Backend::Postgres => {
                let admin_url = postgres_url();
                let admin = match tokio::time::timeout(Duration::from_secs(5), Database::connect(&admin_url)).await {
                    Ok(Ok(admin)) => admin,
                    outcome => {
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        if std::env::var("CI").is_ok_and(|v| v == "true") {
                            panic!("PostgreSQL at {admin_url} does not answer ({why}) and CI=true");
                        }
                        eprintln!(
                            "\n*** SKIPPED on PostgreSQL: {admin_url} does not answer ({why}). \
                             Start PostgreSQL or set TEST_POSTGRES_URL. ***\n"
                        );
                        return None;
                    }
                };
                remove_stale_pg_databases(&admin).await;
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
                let name = format!("{PG_PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
                admin
                    .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
                    .await
                    .expect("create a test database");
                let _ = admin.close().await;
                let mut url = url::Url::parse(&admin_url).expect("TEST_POSTGRES_URL is a URL");
                url.set_path(&name);
                Some(Self { backend, config: database_config(url.to_string()), _dir: None, pg_name: Some(name) })
            }
        }
    }

    pub fn cleanup_handle(&self) -> Cleanup {
        Cleanup(self.pg_name.clone())
    }

    /// Connects without migrating.
    pub async fn connect(&self) -> Db {
        Db::connect(&self.config).await.expect("connect to the test database")
    }

    /// Connects and applies every migration.
    pub async fn migrated(&self) -> Db {
        let db = self.connect().await;
        db.migrate().await.expect("migrate the test database");
        db
    }
}

fn database_config(url: String) -> DatabaseConfig {
    DatabaseConfig {
        url,
        max_connections: 5,
        sqlite_synchronous: SqliteSynchronous::Full,
        sqlite_writer_cpu: Default::default(),
    }
}

pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned())
}

async fn admin_connection() -> sea_orm::DatabaseConnection {
    Database::connect(&postgres_url()).await.expect("connect to PostgreSQL")
}

async fn drop_pg_database(name: &str) {
    let admin = admin_connection().await;
    let _ = admin.execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).await;
    let _ = admin.close().await;
}

/// Drops test databases left over by runs that crashed more than an hour ago (once per run).
async fn remove_stale_pg_databases(admin: &sea_orm::DatabaseConnection) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let cutoff = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().saturating_sub(3600);
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT datname FROM pg_database WHERE datname LIKE '{PG_PREFIX}%'"),
        ))
        .await
        .unwrap_or_default();
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else { continue };
        let created = name.trim_start_matches(PG_PREFIX).split('_').next().and_then(|t| t.parse::<u64>().ok());
        if created.is_some_and(|t| t < cutoff) {
            let _ = admin.execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).await;
        }
    }
}

/// The webhook secret test apps verify with (the fixtures are signed with it too).
pub const WEBHOOK_SECRET: &str = "whsec_test_fixtures";

/// The configuration a test app runs with: no environment but a webhook secret, port 0, one HTTP worker.
pub fn test_config(database: DatabaseConfig) -> Config {
    let mut config = Settings::default().validate().expect("defaults are valid");
    config.webhook_secrets = vec![secrecy::SecretString::from(WEBHOOK_SECRET.to_owned())];
    config.database = database;
    config.bind_addr = "127.0.0.1:0".parse().unwrap();
    config.http_workers = 1;
    // Tests drive delivery one step at a time (`TestApp::deliver_pending`).
    config.delivery_workers = 0;
    config
}

/// Points `config` at the TreadSoft stub.
pub fn use_stub(config: &mut Config, stub: &crate::treadsoft_stub::Stub) {
    config.crm = crm_gateway::config::CrmProvider::TreadSoft(crm_gateway::config::TreadSoftConfig {
        api_url: stub.server.uri().parse().unwrap(),
        api_key: crate::treadsoft_stub::API_KEY.to_owned().into(),
        api_secret: crate::treadsoft_stub::API_SECRET.to_owned().into(),
    });
    config.crm_request_timeout = std::time::Duration::from_millis(500);
    config.crm_rate_limit =
        crm_gateway::crm::rate_limit::RateLimit { requests: 100_000, period: std::time::Duration::from_secs(1) };
}

/// Points `config` at the stub with room for slow, large steps (a debug-build stub takes a while
/// over a thousand records): for tests about exactly-once delivery, not about timeouts.
pub fn use_stub_patiently(config: &mut Config, stub: &crate::treadsoft_stub::Stub) {
    use_stub(config, stub);
    config.crm_request_timeout = std::time::Duration::from_secs(30);
    config.delivery_lease = std::time::Duration::from_secs(300);
}

/// The real application, serving on a free port of 127.0.0.1.
pub struct TestApp {
    pub address: String,
    pub db: Db,
    pub sync: std::sync::Arc<crm_gateway::sync::apply::SyncContext>,
    pub delivery: std::sync::Arc<crm_gateway::outbound::worker::Delivery>,
    pub writer: crm_gateway::writer::Writer,
    pub backend: Backend,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub database_config: DatabaseConfig,
    _database: Option<TestDatabase>,
}

impl TestApp {
    pub async fn spawn(database: TestDatabase) -> Self {
        Self::spawn_with(database, |_| {}).await
    }

    /// Spawns with a configuration `adjust` may change first.
    pub async fn spawn_with(database: TestDatabase, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut app = Self::start(database.config.clone(), database.backend, adjust).await;
        app._database = Some(database);
        app
    }

    /// Spawns over `db`, an open and migrated connection to `database` (one that counts its
    /// statements, say).
    pub async fn spawn_on(database: TestDatabase, db: Db, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut app = Self::start_on(database.config.clone(), database.backend, Some(db), adjust).await;
        app._database = Some(database);
        app
    }

    /// A second gateway instance on the same database (as when scaling out on PostgreSQL).
    pub async fn another_instance(&self) -> Self {
        self.another_instance_with(|_| {}).await
    }

    /// Another instance, configured by `adjust`.
    pub async fn another_instance_with(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start(self.database_config.clone(), self.backend, adjust).await
    }

    async fn start(database: DatabaseConfig, backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(database, backend, None, adjust).await
    }

    async fn start_on(
        database: DatabaseConfig,
        backend: Backend,
        db: Option<Db>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        init_test_logging();
        let mut config = test_config(database.clone());
        adjust(&mut config);
        let app = match db {
            Some(db) => Application::build_with_db(config, db).await,
            None => Application::build(config).await,
        };
        let app = app.expect("build the application");
        let port = app.port();
        let db = app.db().clone();
        let sync = app.sync().clone();
        let delivery = app.delivery().clone();
        let writer = app.writer().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            address: format!("http://127.0.0.1:{port}"),
            db,
            sync,
            delivery,
            writer,
            backend,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            server: Some(server),
            database_config: database,
            _database: None,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http.request(method, format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    /// POSTs `body` to the webhook endpoint, signed as TreadSoft signs it, now.
    pub async fn post_webhook(&self, body: &str) -> reqwest::Response {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = crm_gateway::inbound::verify::treadsoft_signature(WEBHOOK_SECRET, timestamp, body.as_bytes());
        self.post_webhook_with(
            body,
            &[("X-TreadSoft-Timestamp", timestamp.to_string()), ("X-TreadSoft-Signature", signature)],
        )
        .await
    }

    /// POSTs `body` to the webhook endpoint with exactly `headers` (and a JSON content type).
    pub async fn post_webhook_with(&self, body: &str, headers: &[(&str, String)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/api/crm/webhooks/treadsoft", self.address))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.expect("request sent")
    }

    /// Posts a delivery of `events` and returns each event's outcome, in order.
    pub async fn deliver(&self, events: &[serde_json::Value]) -> Vec<String> {
        let body = serde_json::json!({
            "deliveryId": uuid::Uuid::new_v4().to_string(), "accountId": "acc_ge_houses", "events": events
        });
        let response = self.post_webhook(&body.to_string()).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK, "delivery refused");
        let answer: serde_json::Value = response.json().await.unwrap();
        answer["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap().to_owned()).collect()
    }

    /// Runs delivery steps until nothing is due now; returns how many rows were handled.
    pub async fn deliver_pending(&self) -> usize {
        self.deliver_at(chrono::Utc::now()).await
    }

    /// Runs delivery steps as if the time were `now` (to make retries due without waiting).
    pub async fn deliver_at(&self, now: chrono::DateTime<chrono::Utc>) -> usize {
        let mut total = 0;
        loop {
            let handled = self.delivery.deliver_due(now).await.expect("a delivery step");
            if handled == 0 {
                return total;
            }
            total += handled;
        }
    }

    /// POSTs app events (`{"events": [...]}` or one event) to `/api/events`.
    pub async fn post_events(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http.post(format!("{}/api/events", self.address)).json(body).send().await.expect("request sent")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Logs of the app under test go to the test output when `TEST_LOG` is set.
fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        crm_gateway::telemetry::init("debug,sqlx=warn", crm_gateway::config::LogFormat::Human);
    }
}

/// Registers owner `user_1` (Mary Smith, mary@example.com) through `POST /api/events`, then has
/// TreadSoft refuse its create for good (`422`) in the next delivery step: a dead letter.
pub async fn dead_lettered_owner(app: &TestApp, stub: &crate::treadsoft_stub::Stub) {
    let owner = serde_json::json!({"id": "user_1", "name": "Mary Smith", "email": "mary@example.com", "phone": null,
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&serde_json::json!({"id": "ev_1", "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    stub.fail_next(422, "validation_failed", None);
    app.deliver_pending().await;
}

/// A JSON error body's `error.code`.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    body["error"]["code"].as_str().expect("error.code is a string").to_owned()
}

/// App events creating one record of every type but users, all of owner `user_1`: property 7,
/// enquiry 11, booking 21, membership 31.
pub fn every_record_type_of_user_1() -> serde_json::Value {
    serde_json::json!({"events": [
        {"id": "ev_p", "type": "property.created", "data": {"id": 7, "ownerId": "user_1", "title": "Haworth Hall",
            "location": "Haworth", "bedrooms": 12, "pricePerNight": 145050, "currency": "GBP", "status": "active"}},
        {"id": "ev_e", "type": "enquiry.created", "data": {"id": 11, "userId": null, "propertyId": 7, "guestName": "Ann Lee",
            "guestEmail": "ann@example.com", "guestPhone": null, "subject": "Dogs?", "message": "Two dogs?", "status": "new", "source": "website"}},
        {"id": "ev_b", "type": "booking.created", "data": {"id": 21, "propertyId": 7, "userId": "user_1", "guestName": "Ann Lee",
            "guestEmail": "ann@example.com", "checkIn": "2025-07-01", "checkOut": "2025-07-08", "guests": 14, "totalPrice": 1015350,
            "currency": "GBP", "status": "confirmed", "paymentStatus": "deposit_paid"}},
        {"id": "ev_m", "type": "membership.created", "data": {"id": 31, "userId": "user_1", "membershipTier": "premium",
            "status": "active", "startDate": "2025-01-01", "endDate": null, "autoRenew": true, "paymentStatus": "paid"}},
    ]})
}
