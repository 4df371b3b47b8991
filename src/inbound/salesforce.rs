//! Salesforce's changes, read from a Change Data Capture channel over the Pub/Sub API
//! (`salesforce.md` §2): a task started with the server, one per instance, of which one at a time
//! reads the channel (a lease in the database, [`crate::ops::lease`]).
//!
//! - **Connecting**: gRPC over TLS (plain HTTP/2 only to a loopback fake) with the token's
//!   `accesstoken`, `instanceurl` and `tenantid` metadata, added by an interceptor that reads the
//!   current token, so a renewed one is used from the next call.
//! - **Where to start**: after the stored replay id (`CUSTOM`) when it is younger than the
//!   channel's 72-hour retention; else (none stored, too old, or refused by the server) at the
//!   next event (`LATEST`), followed by one reconciliation pass over REST, so what happened
//!   while nobody was reading is read from the listings.
//! - **Flow control**: [`BATCH`] events asked for at the start, and as many again as each batch
//!   carried once it is applied.
//! - **Applying**: a batch's events become provider-neutral changes ([`cdc::action`]; Avro
//!   decoded with the schema its id names, fetched once by `GetSchema` and cached); the changes
//!   go through the inbox and last-writer-wins like a webhook delivery's, and the replay id of
//!   the batch's last event is written **in the same transaction**, under the lease. A crash
//!   before the commit leaves the old replay id, and the batch comes again; after it, the next
//!   start resumes after it. Change ids name the event, so a batch delivered twice applies once.
//! - **Keepalives**: an empty batch's `latest_replay_id` is stored too. A stream silent for longer
//!   than the keepalive period (270 s, with a margin) is taken as dead and opened again.
//! - **Failures**: a refused token is renewed once; any other end of the stream is followed by a
//!   new one after a backoff (doubling to a minute), resuming from the stored replay id.

use crate::config::SalesforceInbound;
use crate::crm::salesforce::auth::{Token, TokenSource};
use crate::crm::salesforce::avro::EventSchema;
use crate::crm::salesforce::cdc::{self, Action};
use crate::crm::salesforce::pubsub::pub_sub_client::PubSubClient;
use crate::crm::salesforce::pubsub::{FetchRequest, FetchResponse, ReplayPreset, SchemaRequest};
use crate::crm::{CrmClient, CrmError};
use crate::db::Db;
use crate::ops::lease;
use crate::ops::metrics::Metrics;
use crate::pull::import::{self, Importer, PassError, Start};
use crate::sync::apply::SyncContext;
use crate::sync::inbox::{self, Incoming};
use crate::writer::{WriteError, Writer};
use base64::Engine as _;
use chrono::Utc;
use entity::crm_stream_positions as positions;
use sea_orm::{ActiveValue::Set, DatabaseTransaction, DbErr, EntityTrait};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Events asked for at a time (the Pub/Sub API's largest).
pub const BATCH: i32 = 100;
/// `INVALID_ARGUMENT`s in a row, on subscriptions resuming from a replay id, after which the
/// replay id is taken as refused even when the message does not name it.
pub const REFUSALS_BEFORE_LATEST: u32 = 3;
/// How long a channel keeps its events: an older replay id cannot be resumed from (72 hours,
/// less an hour's margin for clocks), measured from when its event was committed
/// (`crm_stream_positions.event_at`).
pub const REPLAY_KEPT: chrono::Duration = chrono::Duration::hours(71);

type Client = PubSubClient<InterceptedService<Channel, Auth>>;

/// Adds the current token's metadata to every call.
#[derive(Clone)]
struct Auth(Arc<RwLock<Option<Token>>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let current = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some(token) = current.as_ref() else {
            return Err(tonic::Status::unauthenticated("no Salesforce token yet"));
        };
        let value = |text: &str| {
            text.parse::<tonic::metadata::MetadataValue<_>>()
                .map_err(|_| tonic::Status::internal("a Salesforce token value is not printable ASCII"))
        };
        let metadata = request.metadata_mut();
        metadata.insert("accesstoken", value(token.access_token.expose_secret())?);
        metadata.insert("instanceurl", value(&token.instance_url)?);
        metadata.insert("tenantid", value(&token.org_id)?);
        drop(current);
        Ok(request)
    }
}

/// Why a subscription ended (it is opened again after a backoff).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot connect to the Pub/Sub API at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the Pub/Sub API ended the subscription: {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("the Pub/Sub API sent nothing for {0:?}, not even a keepalive: the stream is taken as dead")]
    Silent(Duration),
    #[error("the Pub/Sub API closed the stream")]
    Closed,
    #[error("event schema {id}: {message}")]
    Schema { id: String, message: String },
    #[error("Salesforce: {0}")]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Db(#[from] DbErr),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::Status { code: status.code(), message: status.message().to_owned() }
    }
}

/// How a subscription ended without failing.
enum Ended {
    Stopped,
    LeaseLost,
}

/// The Change Data Capture subscriber.
pub struct Subscriber {
    db: Db,
    writer: Writer,
    sync: Arc<SyncContext>,
    crm: Arc<dyn CrmClient>,
    importer: Importer,
    tokens: Arc<TokenSource>,
    inbound: SalesforceInbound,
    client_tag: String,
    metrics: Arc<Metrics>,
    /// This instance, as the lease names it.
    holder: String,
    lease_name: String,
    current: Arc<RwLock<Option<Token>>>,
    /// `INVALID_ARGUMENT`s in a row on subscriptions resuming from a replay id that received
    /// nothing: at [`REFUSALS_BEFORE_LATEST`], the replay id is taken as refused, whatever the
    /// message says.
    custom_refusals: std::sync::atomic::AtomicU32,
    schemas: tokio::sync::Mutex<HashMap<String, Arc<EventSchema>>>,
}

impl Subscriber {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        writer: Writer,
        sync: Arc<SyncContext>,
        crm: Arc<dyn CrmClient>,
        tokens: Arc<TokenSource>,
        inbound: SalesforceInbound,
        client_tag: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let importer = Importer {
            db: db.clone(),
            writer: writer.clone(),
            crm: crm.clone(),
            sync: sync.clone(),
            overlap: import::OVERLAP,
        };
        let holder = format!(
            "{}:{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Arc::new(Self {
            lease_name: format!("salesforce-cdc:{}", inbound.channel),
            db,
            writer,
            sync,
            crm,
            importer,
            tokens,
            inbound,
            client_tag,
            metrics,
            holder,
            current: Arc::new(RwLock::new(None)),
            custom_refusals: std::sync::atomic::AtomicU32::new(0),
            schemas: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Reads the channel while this instance holds its lease, until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.inbound.retry_base;
        loop {
            if *stop.borrow() {
                break;
            }
            let name = self.lease_name.clone();
            let (holder, ttl) = (self.holder.clone(), self.inbound.lease);
            let taken = on_lease(&self.db, &self.writer, move |txn| {
                Box::pin(async move { lease::take(txn, &name, &holder, ttl).await })
            })
            .await;
            match taken {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(channel = %self.inbound.channel, "another instance reads the channel");
                    if wait(&mut stop, self.inbound.lease / 3).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot take the channel's lease");
                    if wait(&mut stop, self.inbound.lease / 3).await {
                        break;
                    }
                    continue;
                }
            }
            tracing::info!(channel = %self.inbound.channel, holder = %self.holder, "reading Salesforce's changes");
            let mut heard = false;
            match self.session(&mut stop, &mut heard).await {
                Ok(Ended::Stopped) => break,
                Ok(Ended::LeaseLost) => {
                    tracing::warn!(channel = %self.inbound.channel, "another instance took the channel over");
                    backoff = self.inbound.retry_base;
                }
                Err(e) => {
                    if heard {
                        backoff = self.inbound.retry_base;
                    }
                    tracing::warn!(
                        channel = %self.inbound.channel,
                        error = %crate::error::ErrorChain(&e),
                        retry_in = ?backoff,
                        "the Change Data Capture subscription ended; resuming from the stored replay id"
                    );
                    if wait(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        let (name, holder) = (self.lease_name.clone(), self.holder.clone());
        let _ = on_lease(&self.db, &self.writer, move |txn| {
            Box::pin(async move { lease::release(txn, &name, &holder).await })
        })
        .await;
    }

    /// One subscription, from connecting to its end.
    async fn session(&self, stop: &mut watch::Receiver<bool>, heard: &mut bool) -> Result<Ended, Failure> {
        let token = self.tokens.token().await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        let mut client = PubSubClient::with_interceptor(self.connect().await?, Auth(self.current.clone()));
        let stored = positions::Entity::find_by_id(self.inbound.channel.clone()).one(self.db.reader()).await?;
        let resume = stored.as_ref().filter(|p| Utc::now() - p.event_at < REPLAY_KEPT).and_then(|p| {
            base64::engine::general_purpose::STANDARD.decode(&p.replay_id).ok().filter(|id| !id.is_empty())
        });
        if let (Some(p), None) = (&stored, &resume) {
            tracing::warn!(
                channel = %self.inbound.channel,
                event_at = %p.event_at,
                "the stored replay id is older than the channel keeps events: starting from the next event \
                 and reconciling over REST"
            );
        }
        let first = FetchRequest {
            topic_name: self.inbound.channel.clone(),
            replay_preset: (if resume.is_some() { ReplayPreset::Custom } else { ReplayPreset::Latest }) as i32,
            replay_id: resume.clone().unwrap_or_default(),
            num_requested: BATCH,
        };
        let (requests, outgoing) = mpsc::channel(4);
        requests.send(first).await.map_err(|_| Failure::Closed)?;
        let subscribed = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await;
        let mut stream = match subscribed {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.refused(status, &token, resume.is_some()).await),
        };
        let (lost, keeper) = self.keep_lease();
        let _keeper = AbortOnDrop(keeper);
        let mut lost_wait = lost.clone();
        if let (Some(from), Some(_)) = (stored.as_ref().and_then(|p| p.reconcile_from), &resume) {
            tokio::select! {
                () = self.catch_up(from) => {}
                _ = lost_wait.wait_for(|lost| *lost) => return Ok(Ended::LeaseLost),
                _ = stop.wait_for(|stop| *stop) => return Ok(Ended::Stopped),
            }
        }
        if resume.is_none() {
            // Nothing to resume from: what changed since the last reconciliation is read over
            // REST (the subscription is open, so nothing after this point is missed).
            tokio::select! {
                passed = self.reconcile() => passed?,
                _ = lost_wait.wait_for(|lost| *lost) => return Ok(Ended::LeaseLost),
                _ = stop.wait_for(|stop| *stop) => return Ok(Ended::Stopped),
            }
        }
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.inbound.silence, stream.message()) => next,
                _ = lost_wait.wait_for(|lost| *lost) => return Ok(Ended::LeaseLost),
                _ = stop.wait_for(|stop| *stop) => return Ok(Ended::Stopped),
            };
            let response = match next {
                Err(_) => return Err(Failure::Silent(self.inbound.silence)),
                Ok(Err(status)) => return Err(self.refused(status, &token, resume.is_some() && !*heard).await),
                Ok(Ok(None)) => return Err(Failure::Closed),
                Ok(Ok(Some(response))) => response,
            };
            *heard = true;
            self.custom_refusals.store(0, std::sync::atomic::Ordering::SeqCst);
            // Asked for again on receipt, not after applying: a stream with nothing requested
            // may be closed by the server while a slow batch (a REST read, a resync) applies. At
            // most two batches are held.
            let taken = i32::try_from(response.events.len()).unwrap_or(BATCH);
            if taken > 0 {
                let more = FetchRequest { num_requested: taken, ..Default::default() };
                requests.send(more).await.map_err(|_| Failure::Closed)?;
            }
            if !self.apply(&mut client, response).await? {
                return Ok(Ended::LeaseLost);
            }
        }
    }

    /// An error status of the subscription: a refused token is renewed (for the next
    /// subscription); a refused replay id is forgotten, so the next one starts at the next event
    /// and reconciles.
    async fn refused(&self, status: tonic::Status, token: &Token, custom: bool) -> Failure {
        match status.code() {
            tonic::Code::Unauthenticated => {
                if let Err(e) = self.tokens.renew(token).await {
                    return e.into();
                }
            }
            tonic::Code::InvalidArgument
                if custom
                    && (about_the_replay_id(&status)
                        || self.custom_refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
                            >= REFUSALS_BEFORE_LATEST) =>
            {
                self.custom_refusals.store(0, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(
                    channel = %self.inbound.channel,
                    message = status.message(),
                    "the stored replay id was refused: starting from the next event and reconciling over REST"
                );
                let (channel, name, holder, ttl) =
                    (self.inbound.channel.clone(), self.lease_name.clone(), self.holder.clone(), self.inbound.lease);
                let forgot = self
                    .writer
                    .run(move |txn| {
                        Box::pin(async move {
                            if lease::renew(txn, &name, &holder, ttl).await? {
                                positions::Entity::delete_by_id(channel).exec(txn).await?;
                            }
                            Ok(())
                        })
                    })
                    .await;
                if let Err(e) = forgot {
                    return e.into();
                }
            }
            _ => {}
        }
        status.into()
    }

    /// Renews the lease every third of its time, in a task; the watch turns true when it is lost.
    fn keep_lease(&self) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (lost, watch) = watch::channel(false);
        let (db, writer, name, holder, ttl) =
            (self.db.clone(), self.writer.clone(), self.lease_name.clone(), self.holder.clone(), self.inbound.lease);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(ttl / 3);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let (name, holder) = (name.clone(), holder.clone());
                let renewed = on_lease(&db, &writer, move |txn| {
                    Box::pin(async move { lease::renew(txn, &name, &holder, ttl).await })
                })
                .await;
                match renewed {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost.send(true);
                        return;
                    }
                    // Not renewed this time; the lease outlives two failed renewals.
                    Err(e) => tracing::warn!(error = %e, "cannot renew the channel's lease"),
                }
            }
        });
        (watch, task)
    }

    /// One reconciliation pass over every synced type (from where the last one stopped).
    async fn reconcile(&self) -> Result<(), Failure> {
        Ok(self.pass_every_type(Start::Resume, "reconciled over REST before reading the channel").await?)
    }

    /// One import pass from `start` over every synced type, parents first; stops at the first
    /// that fails.
    async fn pass_every_type(&self, start: Start, done: &'static str) -> Result<(), PassError> {
        for t in crate::sync::mapping::RecordType::ALL.into_iter().filter(|t| self.crm.syncs(*t)) {
            let summary = self.importer.pass(t, start, false, &import::Quiet).await?;
            tracing::info!(
                record = t.as_str(),
                seen = summary.seen,
                created = summary.created,
                updated = summary.updated,
                "{done}"
            );
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Channel, Failure> {
        let url = self.inbound.pubsub_url.as_str().trim_end_matches('/').to_owned();
        let failed = |e: &dyn std::error::Error| Failure::Connect {
            url: url.clone(),
            message: crate::error::ErrorChain(e).to_string(),
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| failed(&e))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if self.inbound.pubsub_url.scheme() == "https" {
            endpoint = endpoint.tls_config(ClientTlsConfig::new().with_webpki_roots()).map_err(|e| failed(&e))?;
        }
        endpoint.connect().await.map_err(|e| failed(&e))
    }

    /// The schema `id` names, fetched once.
    async fn schema(&self, client: &mut Client, id: &str) -> Result<Arc<EventSchema>, Failure> {
        if let Some(schema) = self.schemas.lock().await.get(id) {
            return Ok(schema.clone());
        }
        // The current token (renewed once it is old), not the one the subscription began with.
        let token = self.tokens.token().await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(token);
        let info = client.get_schema(SchemaRequest { schema_id: id.to_owned() }).await?.into_inner();
        let schema =
            EventSchema::parse(&info.schema_json).map_err(|message| Failure::Schema { id: id.to_owned(), message })?;
        let schema = Arc::new(schema);
        self.schemas.lock().await.insert(id.to_owned(), schema.clone());
        Ok(schema)
    }

    /// Applies a batch and stores its last replay id, in one transaction under the lease.
    /// False when the lease is no longer this instance's (nothing written).
    ///
    /// An event that can never be read (a payload or schema that does not decode, a record
    /// Salesforce refuses to show) is not retried forever: it is logged, counted, and covered by a
    /// reconciliation pass over REST before the batch's position is stored, so its change is read
    /// from the listing instead. A failure that may pass (Salesforce unreachable) fails the batch,
    /// which comes again from the stored replay id.
    async fn apply(&self, client: &mut Client, response: FetchResponse) -> Result<bool, Failure> {
        let last = response.events.last().map(|e| e.replay_id.clone()).unwrap_or(response.latest_replay_id);
        if last.is_empty() {
            return Ok(true);
        }
        let mut changes = Vec::new();
        let mut unreadable = false;
        let mut newest: Option<chrono::DateTime<Utc>> = None;
        for event in &response.events {
            let Some(produced) = &event.event else { continue };
            let decoded = match self.schema(client, &produced.schema_id).await {
                Ok(schema) => schema.decode(&produced.payload),
                Err(Failure::Schema { message, .. }) => Err(message),
                Err(Failure::Status { code: tonic::Code::NotFound | tonic::Code::InvalidArgument, message }) => {
                    Err(format!("GetSchema refused it: {message}"))
                }
                Err(e) => return Err(e),
            };
            let decoded = match decoded {
                Ok(decoded) => decoded,
                Err(why) => {
                    tracing::error!(
                        event = %produced.id,
                        schema = %produced.schema_id,
                        %why,
                        "a change event cannot be read: reconciling over REST instead"
                    );
                    self.count_unreadable();
                    unreadable = true;
                    continue;
                }
            };
            newest = newest.max(chrono::DateTime::from_timestamp_millis(decoded.header.commit_timestamp));
            match cdc::action(&self.inbound.mapping, &decoded.header, &decoded.values, &self.client_tag) {
                Action::Apply(of_event) => changes.extend(of_event),
                Action::Reread(t, ids) if self.crm.syncs(t) => match self.crm.read_many(t, &ids).await {
                    Ok(records) => changes.extend(cdc::reread(t, &decoded.header, &ids, &records)),
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(e) => {
                        tracing::error!(record = t.as_str(), ?ids, error = %e, "records cannot be read again: reconciling over REST instead");
                        self.count_unreadable();
                        unreadable = true;
                    }
                },
                Action::Resync(t, since) if self.crm.syncs(t) => {
                    tracing::info!(record = t.as_str(), %since, "reading every record changed since a change too big for events");
                    self.importer.pass(t, Start::Since(since - import::OVERLAP), false, &import::Quiet).await?;
                }
                Action::Reread(..) | Action::Resync(..) => {}
                Action::Ignore(why) => tracing::info!(event = %produced.id, %why, "change event not applied"),
            }
        }
        let events: Vec<Value> = changes.iter().map(crate::sync::change::Change::to_value).collect();
        let incoming = Incoming {
            delivery_id: format!("cdc-{}", base64::engine::general_purpose::STANDARD.encode(&last)),
            events: Arc::new(events),
        };
        let position = Position {
            channel: self.inbound.channel.clone(),
            replay_id: base64::engine::general_purpose::STANDARD.encode(&last),
            events: response.events.len() as i64,
            event_at: newest,
            unreadable,
        };
        let (ctx, name, holder, ttl) =
            (self.sync.clone(), self.lease_name.clone(), self.holder.clone(), self.inbound.lease);
        let written = self
            .writer
            .run_retrying(|| {
                let (incoming, ctx, name, holder, position) =
                    (incoming.clone(), ctx.clone(), name.clone(), holder.clone(), position.clone());
                move |txn: &DatabaseTransaction| {
                    Box::pin(async move {
                        // Renewing is the check: it locks the lease's row until the commit.
                        if !lease::renew(txn, &name, &holder, ttl).await? {
                            return Ok(None);
                        }
                        let results = if incoming.events.is_empty() {
                            Vec::new()
                        } else {
                            inbox::receive_all(txn, &ctx, std::slice::from_ref(&incoming))
                                .await
                                .pop()
                                .unwrap_or_else(|| Ok(Vec::new()))?
                        };
                        let due = save_position(txn, position).await?;
                        Ok(Some((results, due)))
                    }) as futures_util::future::BoxFuture<'_, Result<Option<Written>, DbErr>>
                }
            })
            .await?;
        match written {
            None => Ok(false),
            Some((results, due)) => {
                self.metrics.webhook_results(&results);
                if let Some(from) = due {
                    self.catch_up(from).await;
                }
                Ok(true)
            }
        }
    }

    /// Reads over REST the records changed since `from` (events that could not be read were
    /// stored past), after the batch holding them is stored, so an older event of that batch
    /// cannot override what is read; then clears the mark. A pass that fails leaves the mark,
    /// and is tried again after the next batch or subscription.
    async fn catch_up(&self, from: chrono::DateTime<Utc>) {
        let read = "read over REST the records changed around events that could not be read";
        if let Err(e) = self.pass_every_type(Start::Since(from), read).await {
            tracing::error!(
                %from,
                error = %crate::error::ErrorChain(&e),
                "cannot read over REST the changes of events that could not be read; trying again later"
            );
            return;
        }
        let channel = self.inbound.channel.clone();
        let cleared = self
            .writer
            .run(move |txn| {
                Box::pin(async move {
                    use sea_orm::{ColumnTrait, QueryFilter};
                    let none: Option<chrono::DateTime<Utc>> = None;
                    positions::Entity::update_many()
                        .col_expr(positions::Column::ReconcileFrom, sea_orm::sea_query::Expr::value(none))
                        .filter(positions::Column::Channel.eq(channel))
                        .filter(positions::Column::ReconcileFrom.eq(from))
                        .exec(txn)
                        .await?;
                    Ok(())
                })
            })
            .await;
        match cleared {
            Ok(()) => tracing::info!(%from, "read over REST the changes of events that could not be read"),
            Err(e) => tracing::error!(error = %crate::error::ErrorChain(&e), "cannot clear the catch-up mark"),
        }
    }

    fn count_unreadable(&self) {
        self.metrics
            .webhook_refusals
            .get_or_create(&crate::ops::metrics::ReasonLabel { reason: "cdc_event_unreadable".into() })
            .inc();
    }
}

/// A channel's position to store.
#[derive(Clone)]
struct Position {
    channel: String,
    replay_id: String,
    /// Events applied with it.
    events: i64,
    /// The newest commit time among them; `None` for a keepalive.
    event_at: Option<chrono::DateTime<Utc>>,
    /// Some of them could not be read.
    unreadable: bool,
}

/// What a batch's transaction wrote: each event's result, and the catch-up mark.
type Written = (Vec<inbox::EventResult>, Option<chrono::DateTime<Utc>>);

/// Writes the channel's position: the replay id of the last event applied. A keepalive's replay
/// id keeps the time of the event stored before it while it is the same id, else now (a later
/// event the channel holds but did not send here).
///
/// With events that could not be read, it marks the changes since the previously stored event
/// (less the listing overlap) to be read over REST; returns that mark, if one is set.
async fn save_position(txn: &DatabaseTransaction, position: Position) -> Result<Option<chrono::DateTime<Utc>>, DbErr> {
    let now = Utc::now();
    let stored = positions::Entity::find_by_id(position.channel.clone()).one(txn).await?;
    let mark = |previous: chrono::DateTime<Utc>, kept: Option<chrono::DateTime<Utc>>| {
        let from = previous - import::OVERLAP;
        match (position.unreadable, kept) {
            (true, Some(kept)) => Some(kept.min(from)),
            (true, None) => Some(from),
            (false, kept) => kept,
        }
    };
    match stored {
        Some(row) => {
            let event_at = match position.event_at {
                Some(at) => at,
                None if row.replay_id == position.replay_id => row.event_at,
                None => now,
            };
            let due = mark(row.event_at, row.reconcile_from);
            let mut row: positions::ActiveModel = row.into();
            let events = row.events.take().unwrap_or_default() + position.events;
            row.events = Set(events);
            row.replay_id = Set(position.replay_id);
            row.event_at = Set(event_at);
            row.reconcile_from = Set(due);
            row.updated_at = Set(now);
            positions::Entity::update(row).exec(txn).await?;
            Ok(due)
        }
        None => {
            // No event stored before: the subscription began with a reconciliation pass, but
            // when is not kept; the channel's whole retention is read.
            let due = mark(now - REPLAY_KEPT, None);
            let row = positions::ActiveModel {
                channel: Set(position.channel),
                replay_id: Set(position.replay_id),
                events: Set(position.events),
                event_at: Set(position.event_at.unwrap_or(now)),
                reconcile_from: Set(due),
                updated_at: Set(now),
            };
            positions::Entity::insert(row).exec_without_returning(txn).await?;
            Ok(due)
        }
    }
}

/// Whether an `INVALID_ARGUMENT` is about the replay id (Salesforce names it in the message or
/// in its `error-code` metadata), not about the topic or the request.
fn about_the_replay_id(status: &tonic::Status) -> bool {
    let code = status.metadata().get("error-code").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let text = format!("{} {code}", status.message()).to_ascii_lowercase();
    text.contains("replay")
}

/// Runs a lease statement: on PostgreSQL in a transaction of its own connection, outside any
/// group transaction (so it never holds a group's other locks while it waits for the lease's
/// row); on SQLite through the writer (its only writing connection).
async fn on_lease<T, F>(db: &Db, writer: &Writer, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> futures_util::future::BoxFuture<'t, Result<T, DbErr>>
        + Send
        + 'static,
{
    if db.backend() == sea_orm::DatabaseBackend::Postgres {
        let txn = sea_orm::TransactionTrait::begin(db.writer()).await.map_err(|e| e.to_string())?;
        let result = work(&txn).await.map_err(|e| e.to_string())?;
        txn.commit().await.map_err(|e| e.to_string())?;
        Ok(result)
    } else {
        writer.run(work).await.map_err(|e| crate::error::ErrorChain(&e).to_string())
    }
}

/// Waits `wait`, or until `stop` turns true (then true).
async fn wait(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        _ = stop.wait_for(|stop| *stop) => return true,
    }
    *stop.borrow()
}

/// Aborts a task when dropped (the lease keeper, at the end of a subscription).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
