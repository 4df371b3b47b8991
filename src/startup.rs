//! Building the application and running it until it is told to stop.

use crate::auth;
use crate::config::Config;
use crate::crm;
use crate::db::Db;
use crate::error::{self, json_error_responses};
use crate::inbound;
use crate::ops::health;
use crate::ops::maintenance;
use crate::ops::metrics::{self, Metrics};
use crate::ops::status::{self, CrmHealth};
use crate::outbound;
use crate::outbound::worker::Delivery;
use crate::state::AppState;
use crate::sync::apply::SyncContext;
use crate::sync::hlc::Hlc;
use crate::sync::stamps;
use crate::writer::{Writer, WriterTask};
use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::ErrorHandlers;
use actix_web::{App, HttpMessage, HttpServer, web};
use anyhow::Context;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use tokio::sync::watch;
use tracing_actix_web::{RequestId, TracingLogger};

/// Largest JSON body the app-facing routes accept.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// A built server, bound to its port, not yet running.
pub struct Application {
    port: u16,
    server: Server,
    db: Db,
    writer: Writer,
    sync: Arc<SyncContext>,
    delivery: Arc<Delivery>,
    stop_workers: watch::Sender<bool>,
    /// Delivery workers and the maintenance task: awaited at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    writer_task: WriterTask,
}

impl Application {
    /// Connects to the database, applies migrations and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database)
            .await
            .with_context(|| format!("cannot open the database {}", config.database.redacted_url()))?;
        db.migrate().await.context("cannot migrate the database")?;
        Self::build_with_db(config, db).await
    }

    /// Starts the writer and binds the listener over an open, migrated database.
    pub async fn build_with_db(config: Config, db: Db) -> anyhow::Result<Self> {
        if matches!(config.provider, crate::config::Provider::Salesforce(_))
            && matches!(config.crm, crate::config::CrmProvider::Mock)
        {
            tracing::warn!("CRM_ENABLED=false: Salesforce's Change Data Capture channel is not read");
        }
        if let crate::config::Provider::HubSpot(inbound) = &config.provider
            && (config.webhook_secrets.is_empty() || inbound.webhook_url.is_none())
        {
            tracing::warn!(
                "HubSpot's webhooks are answered 503 until CRM_WEBHOOK_SECRET (the app's client secret) and \
                 CRM_WEBHOOK_URL are set"
            );
        }
        let floor = stamps::max_stamp(db.reader()).await.context("cannot read the latest version stamp")?;
        let sync = Arc::new(SyncContext { precedence: config.tie_winner, hlc: Hlc::starting_after(floor) });
        let metrics = Arc::new(Metrics::new());
        let (writer, writer_task) = Writer::start(&db, metrics.clone());
        let crm = crm::from_config(&config, metrics.clone()).context("cannot set up the CRM client")?;
        let health = CrmHealth::new(crm.clone(), crm::provider_name(&config));
        let delivery = Arc::new(
            Delivery::new(
                db.clone(),
                writer.clone(),
                crm,
                sync.clone(),
                config.retry_schedule.clone(),
                config.delivery_lease,
                config.crm_request_timeout,
            )
            .with_metrics(metrics.clone()),
        );
        let (stop_workers, stopped) = watch::channel(false);
        let mut background: Vec<_> =
            (0..config.delivery_workers).map(|_| tokio::spawn(delivery.clone().run(stopped.clone()))).collect();
        let upkeep = maintenance::Upkeep {
            writer: writer.clone(),
            db: db.clone(),
            sync: sync.clone(),
            delivery: delivery.clone(),
            retention: config.retention,
            auto_retry: config.auto_retry_interval,
            reconcile: reconcile_with(&config, &db, &writer, &sync, &delivery),
        };
        background.push(tokio::spawn(maintenance::run(upkeep, stopped.clone())));
        if let (crate::config::Provider::Salesforce(inbound), crate::config::CrmProvider::Salesforce(salesforce)) =
            (&config.provider, &config.crm)
        {
            let tokens = crate::crm::salesforce::auth::TokenSource::new(
                crm::http_client(config.crm_request_timeout)?,
                &salesforce.api_url,
                salesforce.client_id.clone(),
                salesforce.client_secret.clone(),
                salesforce.jwt.clone(),
            );
            let subscriber = inbound::salesforce::Subscriber::new(
                db.clone(),
                writer.clone(),
                sync.clone(),
                delivery.crm(),
                tokens,
                inbound.clone(),
                salesforce.client_tag.clone(),
                metrics.clone(),
            );
            background.push(tokio::spawn(subscriber.run(stopped.clone())));
        }
        let listener = TcpListener::bind(config.bind_addr)
            .with_context(|| format!("cannot listen on {} (BIND_ADDR)", config.bind_addr))?;
        let local_addr = listener.local_addr()?;
        let port = local_addr.port();
        let workers = config.http_workers;
        let webhook_limit = config.webhook_max_bytes;
        let state = web::Data::new(AppState {
            config,
            db: db.clone(),
            writer: writer.clone(),
            sync: sync.clone(),
            delivery: delivery.clone(),
            metrics,
            health,
            status_cache: Default::default(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(error::json_config(JSON_BODY_LIMIT))
                .configure(health::routes)
                .configure(crate::ops::dashboard::routes)
                .service(
                    crate::error::resource("/metrics", "GET")
                        .wrap(actix_web::middleware::from_fn(auth::require_api_token))
                        .route(web::get().to(metrics::metrics_route)),
                )
                .configure(|cfg| inbound::routes::routes(cfg, webhook_limit))
                .configure(|cfg| inbound::hubspot::routes(cfg, webhook_limit))
                .service(
                    web::scope("/api")
                        .wrap(actix_web::middleware::from_fn(auth::require_api_token))
                        .configure(inbound::inbox::routes)
                        .configure(outbound::events::routes)
                        .configure(outbound::admin::routes)
                        .configure(status::routes)
                        .configure(crate::ops::recovery::routes)
                        .configure(outbound::seed_routes::routes),
                )
                .default_service(web::to(error::not_found))
                .wrap(ErrorHandlers::new().default_handler(json_error_responses))
                .wrap_fn(|req, srv| {
                    let request_id = req.extensions().get::<RequestId>().map(ToString::to_string);
                    let metrics = req.app_data::<web::Data<AppState>>().map(|s| s.metrics.clone());
                    let started = std::time::Instant::now();
                    let response = srv.call(req);
                    async move {
                        let mut response = response.await?;
                        if let Some(metrics) = metrics {
                            metrics.http_request(
                                response.request().match_pattern().as_deref(),
                                response.request().method().as_str(),
                                response.status().as_u16(),
                                started.elapsed(),
                            );
                        }
                        if let Some(value) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                            response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
                        }
                        Ok(response)
                    }
                })
                .wrap(TracingLogger::default())
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(30)
        .listen(listener)?
        .run();
        tracing::info!(addr = %local_addr, "listening");
        Ok(Self { port, server, db, writer, writer_task, sync, delivery, stop_workers, background })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn sync(&self) -> &Arc<SyncContext> {
        &self.sync
    }

    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (up to 30 s) and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = std::pin::pin!(self.server);
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                tracing::info!("shutting down: finishing in-flight requests");
                // The stop command is sent now; the server future must be polled to carry it out.
                let stopped = handle.stop(true);
                let result = server.await;
                stopped.await;
                result
            }
        };
        // Delivery workers finish the step they are in (what is left stays queued for next
        // time); then the writer commits what they and the requests queued, and stops.
        let _ = self.stop_workers.send(true);
        for worker in self.background {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "a background task failed");
            }
        }
        self.writer_task.stop().await;
        tracing::info!("stopped");
        result
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// What scheduled reconciliation reads with, when `CRM_RECONCILE_INTERVAL` asks for it: the
/// delivery's own client, so both share one rate limiter.
fn reconcile_with(
    config: &Config,
    db: &Db,
    writer: &Writer,
    sync: &Arc<SyncContext>,
    delivery: &Arc<Delivery>,
) -> Option<(std::time::Duration, crate::pull::import::Importer)> {
    let every = config.reconcile_interval?;
    if matches!(config.crm, crate::config::CrmProvider::Mock) {
        tracing::warn!("CRM_RECONCILE_INTERVAL is set but the CRM is the mock (CRM_ENABLED=false): no reconciliation");
        return None;
    }
    let importer = crate::pull::import::Importer {
        db: db.clone(),
        writer: writer.clone(),
        crm: delivery.crm(),
        sync: sync.clone(),
        overlap: crate::pull::import::OVERLAP,
    };
    Some((every, importer))
}
