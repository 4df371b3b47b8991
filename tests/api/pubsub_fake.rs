//! An in-process fake of Salesforce's Pub/Sub API, served from the gateway's own
//! `proto/pubsub.proto` by tonic on a loopback port: one channel whose events are Avro datums
//! written with the fixture schemas, `GetSchema`, and `Subscribe` with `LATEST` / `EARLIEST` /
//! `CUSTOM` starts, `num_requested` flow control (at most 100 outstanding), empty keepalive
//! batches carrying the latest replay id, a forced disconnect, statuses queued for the next
//! subscriptions (`UNAUTHENTICATED`, `INVALID_ARGUMENT`), and a record of what each subscriber
//! asked for.

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use crm_gateway::crm::salesforce::pubsub::pub_sub_server::{PubSub, PubSubServer};
use crm_gateway::crm::salesforce::pubsub::{
    ConsumerEvent, FetchRequest, FetchResponse, ProducerEvent, ReplayPreset, SchemaInfo, SchemaRequest,
};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

pub const CONTACT_SCHEMA_ID: &str = "Qe6fvZmc5gV1XTPCQiXa9A";
pub const CONTACT_SCHEMA: &str = include_str!("../fixtures/salesforce/ContactChangeEvent.avsc");
pub const CHANNEL: &str = "/data/ChangeEvents";
pub const TOKEN: &str = "00Dxx!fake-token";

/// What a subscriber's first request asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub preset: ReplayPreset,
    /// The event the subscription started after (its position in the channel), for `CUSTOM`.
    pub after: Option<usize>,
    pub access_token: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Default)]
struct State {
    events: Mutex<Vec<ProducerEvent>>,
    published: Notify,
    starts: Mutex<Vec<Start>>,
    top_ups: Mutex<Vec<i32>>,
    refusals: Mutex<VecDeque<Status>>,
    /// Ends the next stream after it has sent this many events.
    disconnect_after: Mutex<Option<usize>>,
    schema_fetches: AtomicUsize,
    keepalive: Mutex<Option<Duration>>,
    /// Bumped to end every open stream.
    kicks: AtomicUsize,
    kicked: Notify,
}

#[derive(Clone)]
pub struct FakePubSub {
    pub url: String,
    state: Arc<State>,
    schemas: Arc<HashMap<String, String>>,
}

/// A replay id: the event's position, as 8 opaque bytes.
fn replay_id(position: usize) -> Vec<u8> {
    (position as u64 + 1_000).to_be_bytes().to_vec()
}

fn position_of(replay: &[u8]) -> Option<usize> {
    let bytes: [u8; 8] = replay.try_into().ok()?;
    u64::from_be_bytes(bytes).checked_sub(1_000).map(|p| p as usize)
}

impl FakePubSub {
    pub async fn start() -> Self {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = incoming.local_addr().unwrap();
        let fake = Self {
            url: format!("http://{addr}"),
            state: Arc::default(),
            schemas: Arc::new(HashMap::from([(CONTACT_SCHEMA_ID.to_owned(), CONTACT_SCHEMA.to_owned())])),
        };
        let service = PubSubServer::new(fake.clone());
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        fake
    }

    /// Publishes a Contact change event (JSON, written as Avro with the fixture schema).
    pub fn publish(&self, event: Value) {
        let schema = Schema::parse_str(CONTACT_SCHEMA).unwrap();
        let value = Avro::from(event).resolve(&schema).expect("the event fits the schema");
        let payload = apache_avro::to_avro_datum(&schema, value).unwrap();
        let mut events = self.state.events.lock().unwrap();
        let id = format!("e{}", events.len());
        events.push(ProducerEvent { id, schema_id: CONTACT_SCHEMA_ID.into(), payload, headers: Vec::new() });
        drop(events);
        self.state.published.notify_waiters();
    }

    /// Publishes an event that is not Avro at all.
    pub fn publish_garbage(&self) {
        let mut events = self.state.events.lock().unwrap();
        let id = format!("e{}", events.len());
        events.push(ProducerEvent { id, schema_id: CONTACT_SCHEMA_ID.into(), payload: vec![0xff; 3], headers: vec![] });
        drop(events);
        self.state.published.notify_waiters();
    }

    pub fn published(&self) -> usize {
        self.state.events.lock().unwrap().len()
    }

    pub fn starts(&self) -> Vec<Start> {
        self.state.starts.lock().unwrap().clone()
    }

    pub fn top_ups(&self) -> Vec<i32> {
        self.state.top_ups.lock().unwrap().clone()
    }

    pub fn schema_fetches(&self) -> usize {
        self.state.schema_fetches.load(Ordering::SeqCst)
    }

    /// The next subscription is refused with `status`.
    pub fn refuse_next(&self, status: Status) {
        self.state.refusals.lock().unwrap().push_back(status);
    }

    /// The next stream ends (`UNAVAILABLE`) once it has sent `n` events.
    pub fn disconnect_after(&self, n: usize) {
        *self.state.disconnect_after.lock().unwrap() = Some(n);
    }

    /// Ends every open stream now (`UNAVAILABLE`), as a server restart would.
    pub fn disconnect(&self) {
        self.state.kicks.fetch_add(1, Ordering::SeqCst);
        self.state.kicked.notify_waiters();
    }

    /// Streams with nothing to send send an empty batch this often.
    pub fn keepalive_every(&self, every: Duration) {
        *self.state.keepalive.lock().unwrap() = Some(every);
    }
}

#[tonic::async_trait]
impl PubSub for FakePubSub {
    type SubscribeStream = tokio_stream::wrappers::ReceiverStream<Result<FetchResponse, Status>>;

    async fn get_schema(&self, request: Request<SchemaRequest>) -> Result<Response<SchemaInfo>, Status> {
        authorized(&request)?;
        self.state.schema_fetches.fetch_add(1, Ordering::SeqCst);
        let id = request.into_inner().schema_id;
        let json = self.schemas.get(&id).ok_or_else(|| Status::not_found(format!("no schema {id}")))?;
        Ok(Response::new(SchemaInfo { schema_json: json.clone(), schema_id: id, rpc_id: "rpc-schema".into() }))
    }

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let metadata = request.metadata().clone();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        authorized(&request)?;
        let mut requests = request.into_inner();
        let first = requests.message().await?.ok_or_else(|| Status::invalid_argument("no FetchRequest"))?;
        let preset = ReplayPreset::try_from(first.replay_preset).unwrap_or(ReplayPreset::Latest);
        let after = (preset == ReplayPreset::Custom).then(|| position_of(&first.replay_id)).flatten();
        self.state.starts.lock().unwrap().push(Start {
            preset,
            after,
            access_token: text("accesstoken"),
            tenant: text("tenantid"),
        });
        if let Some(status) = self.state.refusals.lock().unwrap().pop_front() {
            return Err(status);
        }
        if first.topic_name != CHANNEL {
            return Err(Status::invalid_argument(format!("unknown topic {}", first.topic_name)));
        }
        let published = self.published();
        let mut next = match preset {
            ReplayPreset::Latest => published,
            ReplayPreset::Earliest => 0,
            ReplayPreset::Custom => match after {
                Some(p) if p < published => p + 1,
                _ => return Err(Status::invalid_argument("The Replay ID validation failed.")),
            },
        };
        if !(0..=100).contains(&first.num_requested) {
            return Err(Status::invalid_argument("num_requested is at most 100"));
        }
        let mut credit = first.num_requested;
        let disconnect_after = self.state.disconnect_after.lock().unwrap().take();
        let keepalive = self.state.keepalive.lock().unwrap().unwrap_or(Duration::from_secs(3600));
        let (out, stream) = mpsc::channel(4);
        let state = self.state.clone();
        let kicks = state.kicks.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let mut sent = 0;
            loop {
                // Listening before looking, so an event published in between is not missed.
                let published = state.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                let kicked = state.kicked.notified();
                tokio::pin!(kicked);
                kicked.as_mut().enable();
                if state.kicks.load(Ordering::SeqCst) != kicks {
                    let _ = out.send(Err(Status::unavailable("the fake ends every stream"))).await;
                    return;
                }
                let batch: Vec<ConsumerEvent> = {
                    let events = state.events.lock().unwrap();
                    let end = (next + credit as usize).min(events.len());
                    let end = disconnect_after.map_or(end, |limit| end.min(next + (limit - sent)));
                    (next..end)
                        .map(|p| ConsumerEvent { event: Some(events[p].clone()), replay_id: replay_id(p) })
                        .collect()
                };
                if !batch.is_empty() {
                    let n = batch.len();
                    let latest = replay_id(next + n - 1);
                    let response = FetchResponse {
                        events: batch,
                        latest_replay_id: latest,
                        rpc_id: "rpc-subscribe".into(),
                        pending_num_requested: credit - n as i32,
                    };
                    if out.send(Ok(response)).await.is_err() {
                        return;
                    }
                    next += n;
                    sent += n;
                    credit -= n as i32;
                    continue;
                }
                if disconnect_after.is_some_and(|limit| sent >= limit) {
                    let _ = out.send(Err(Status::unavailable("the fake ends the stream"))).await;
                    return;
                }
                tokio::select! {
                    request = requests.next() => match request {
                        Some(Ok(more)) => {
                            state.top_ups.lock().unwrap().push(more.num_requested);
                            credit += more.num_requested;
                            // A subscriber asking for more than 100 outstanding is told so.
                            if credit > 100 {
                                let _ = out.send(Err(Status::invalid_argument("more than 100 events outstanding"))).await;
                                return;
                            }
                        }
                        _ => return,
                    },
                    () = published.as_mut() => {}
                    () = kicked.as_mut() => {}
                    () = tokio::time::sleep(keepalive) => {
                        let latest = state.events.lock().unwrap().len().checked_sub(1).map(replay_id).unwrap_or_default();
                        let empty = FetchResponse { events: vec![], latest_replay_id: latest, rpc_id: "rpc-keepalive".into(), pending_num_requested: credit };
                        if out.send(Ok(empty)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(stream)))
    }
}

fn authorized<T>(request: &Request<T>) -> Result<(), Status> {
    let metadata = request.metadata();
    let token = metadata.get("accesstoken").and_then(|v| v.to_str().ok());
    if token != Some(TOKEN) || metadata.get("instanceurl").is_none() || metadata.get("tenantid").is_none() {
        return Err(Status::unauthenticated("the access token, instance URL or tenant id is missing or wrong"));
    }
    Ok(())
}

/// A Contact change event as Salesforce writes it (the header and the fields, JSON).
pub struct Event {
    pub change_type: &'static str,
    pub ids: Vec<String>,
    pub origin: &'static str,
    pub transaction: String,
    pub sequence: i32,
    pub at_ms: i64,
    /// Bitmaps ([`bitmap`], [`name_bitmap`]).
    pub changed: Vec<String>,
    pub nulled: Vec<String>,
    pub fields: Value,
}

impl Event {
    pub fn new(change_type: &'static str, id: &str, at_ms: i64) -> Self {
        Self {
            change_type,
            ids: vec![id.to_owned()],
            origin: "com/salesforce/api/rest/62.0;client=SfdcInternalAPI/",
            transaction: format!("tx-{at_ms}"),
            sequence: 1,
            at_ms,
            changed: Vec::new(),
            nulled: Vec::new(),
            fields: json!({}),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut event = json!({
            "ChangeEventHeader": {
                "entityName": "Contact", "recordIds": self.ids, "changeType": self.change_type,
                "changeOrigin": self.origin, "transactionKey": self.transaction,
                "sequenceNumber": self.sequence, "commitTimestamp": self.at_ms, "commitNumber": 1,
                "commitUser": "005000000000001AAA",
                "changedFields": self.changed, "nulledFields": self.nulled, "diffFields": []
            },
            "LastModifiedDate": self.at_ms
        });
        for (k, v) in self.fields.as_object().unwrap() {
            event[k] = v.clone();
        }
        event
    }
}

/// A bitmap over the fixture Contact schema's top-level fields, by name.
pub fn bitmap(names: &[&str]) -> String {
    let fields: Vec<String> = serde_json::from_str::<Value>(CONTACT_SCHEMA).unwrap()["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    let mut bits: u64 = 0;
    for name in names {
        bits |= 1 << fields.iter().position(|f| f == name).unwrap_or_else(|| panic!("no field {name}"));
    }
    format!("0x{bits:X}")
}

/// The nested bitmap of the Name's parts (`1-0x…`).
pub fn name_bitmap(parts: &[&str]) -> String {
    let order = ["Salutation", "FirstName", "LastName"];
    let mut bits = 0u32;
    for part in parts {
        bits |= 1 << order.iter().position(|p| p == part).unwrap();
    }
    format!("1-0x{bits:X}")
}
