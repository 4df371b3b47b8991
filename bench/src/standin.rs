//! A fast local TreadSoft stand-in for the outbound scenario, inside the benchmark's process (one
//! actix-web worker thread of its own). It answers what the gateway's delivery worker calls
//! (API.md §3): batch upserts with created ids, PATCH with the record, GET /v1/me, and notes when
//! each record (by `externalId`) arrived. It checks no signatures. Every answer carries an
//! `X-TreadSoft-Request-Id`.

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What the stand-in saw of one run.
#[derive(Default)]
pub struct Seen {
    /// externalId → (first arrival, how many times it arrived).
    pub arrivals: HashMap<String, (Instant, u32)>,
    pub batches: u64,
    pub patches: u64,
    pub other: u64,
}

#[derive(Default)]
pub struct StandIn {
    seen: Mutex<Seen>,
    next_id: AtomicU64,
}

impl StandIn {
    /// Forgets what it saw (a new run).
    pub fn reset(&self) {
        *self.lock() = Seen::default();
    }

    /// How many distinct records have arrived.
    pub fn arrived(&self) -> usize {
        self.lock().arrivals.len()
    }

    /// What it saw so far, taken out (the stand-in starts afresh).
    pub fn take(&self) -> Seen {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A running stand-in.
pub struct Running {
    pub addr: SocketAddr,
    pub state: std::sync::Arc<StandIn>,
    handle: ServerHandle,
}

impl Running {
    /// Starts it on 127.0.0.1 on a free port, on a thread of its own.
    pub fn start() -> anyhow::Result<Self> {
        let state = std::sync::Arc::new(StandIn::default());
        let shared = web::Data::from(state.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("treadsoft-stand-in".into()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(shared.clone())
                        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                        .default_service(web::to(answer))
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0));
                let server = match server {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                let addr = server.addrs().first().copied();
                let running = server.run();
                let _ = tx.send(addr.context("the stand-in has no address").map(|a| (a, running.handle())));
                let _ = running.await;
            });
        })?;
        let (addr, handle) = rx.recv().context("the stand-in's thread stopped")??;
        Ok(Self { addr, state, handle })
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn record_type(collection: &str) -> &str {
    match collection {
        "contacts" => "contact",
        "properties" => "property",
        "enquiries" => "enquiry",
        "bookings" => "booking",
        _ => "membership",
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn answer(req: HttpRequest, body: web::Bytes, state: web::Data<StandIn>) -> HttpResponse {
    let arrived = Instant::now();
    let request_id = format!("req_bench_{}", state.next());
    let segments: Vec<&str> = req.path().trim_start_matches("/v1/").split('/').collect();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, answer) = match (req.method().as_str(), segments.as_slice()) {
        ("POST", [collection, "batch", "upsert"]) => {
            let records = parsed["records"].as_array().cloned().unwrap_or_default();
            let mut results = Vec::with_capacity(records.len());
            let mut seen = state.lock();
            seen.batches += 1;
            for record in &records {
                let external_id = record["externalId"].as_str().unwrap_or_default().to_owned();
                let entry = seen.arrivals.entry(external_id.clone()).or_insert((arrived, 0));
                entry.1 += 1;
                let id = format!("crm_{}_bench_{}", record_type(collection), state.next());
                results.push(json!({"externalId": external_id, "id": id, "status": "created"}));
            }
            (200, json!({ "results": results }))
        }
        ("POST", [collection]) => {
            state.lock().other += 1;
            let mut record = parsed.as_object().cloned().unwrap_or_default();
            stamp(&mut record, format!("crm_{}_bench_{}", record_type(collection), state.next()), 1);
            (201, Value::Object(record))
        }
        ("PATCH", [_, id]) => {
            state.lock().patches += 1;
            let mut record = parsed.as_object().cloned().unwrap_or_default();
            stamp(&mut record, (*id).to_owned(), 2);
            (200, Value::Object(record))
        }
        ("GET", ["me"]) => (200, json!({"accountId": "acc_bench", "apiKeyId": "k"})),
        ("DELETE", [_, _]) => {
            state.lock().other += 1;
            (204, Value::Null)
        }
        _ => {
            state.lock().other += 1;
            (404, json!({"error": {"code": "not_found", "message": "not served by the benchmark's stand-in"}}))
        }
    };
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default());
    response.insert_header(("X-TreadSoft-Request-Id", request_id));
    if answer.is_null() { response.finish() } else { response.json(answer) }
}

fn stamp(record: &mut Map<String, Value>, id: String, version: i64) {
    let at = now();
    record.insert("id".into(), json!(id));
    record.insert("version".into(), json!(version));
    record.entry("createdAt").or_insert_with(|| json!(at));
    record.insert("updatedAt".into(), json!(at));
}
