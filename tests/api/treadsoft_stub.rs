//! An in-process stand-in for TreadSoft's REST API (API.md §3): it keeps records, checks each
//! request's signature, honours idempotency keys and batch upserts by `externalId`, answers 409 for
//! a contact email it has, and can be scripted to fail the next calls.

use crm_gateway::crm::signing::request_signature;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const API_KEY: &str = "key_test";
pub const API_SECRET: &str = "tss_test_stub_secret";

/// One request as the stub saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub idempotency_key: Option<String>,
    pub signed: bool,
}

/// What the next call gets instead of the normal answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Answer with this status and error code, changing nothing.
    Fail(u16, &'static str, Option<u64>),
    /// Do the work, but answer only after this long (the client times out first).
    Slow(Duration),
}

#[derive(Default)]
pub struct State {
    /// (collection, id) → record.
    pub records: HashMap<(String, String), Value>,
    pub calls: Vec<Call>,
    pub script: VecDeque<Scripted>,
    /// While set, every call is answered with this status (an outage), after the script.
    pub down: Option<u16>,
    answered: HashMap<String, (u16, Value)>,
    next: u64,
}

impl State {
    /// Adds a record as a CRM user would (no call is recorded); returns its id.
    pub fn add(&mut self, collection: &str, fields: Value) -> String {
        self.next += 1;
        let id = format!("crm_{}_{}", record_type(collection), self.next);
        let mut record = fields;
        record["id"] = json!(id);
        record["version"] = json!(1);
        record["updatedAt"] = json!(format!("2025-01-05T10:{:02}:{:02}.000Z", (self.next / 60) % 60, self.next % 60));
        self.records.insert((collection.to_owned(), id.clone()), record);
        id
    }

    /// The live records of a collection.
    pub fn all(&self, collection: &str) -> Vec<Value> {
        self.records.iter().filter(|((c, _), _)| c == collection).map(|(_, r)| r.clone()).collect()
    }

    pub fn by_external_id(&self, collection: &str, external_id: &str) -> Option<Value> {
        self.all(collection).into_iter().find(|r| r["externalId"] == external_id)
    }
}

pub struct Stub {
    pub server: MockServer,
    pub state: Arc<Mutex<State>>,
}

impl Stub {
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State::default()));
        Mock::given(wiremock::matchers::any()).respond_with(Responder(state.clone())).mount(&server).await;
        Self { server, state }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn fail_next(&self, status: u16, code: &'static str, retry_after: Option<u64>) {
        self.state().script.push_back(Scripted::Fail(status, code, retry_after));
    }
}

struct Responder(Arc<Mutex<State>>);

fn record_type(collection: &str) -> &str {
    match collection {
        "contacts" => "contact",
        "properties" => "property",
        "enquiries" => "enquiry",
        "bookings" => "booking",
        _ => "membership",
    }
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.0.lock().unwrap();
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path = request.url.path().to_owned();
        let path_and_query = match request.url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let timestamp: i64 = header("x-treadsoft-timestamp").and_then(|t| t.parse().ok()).unwrap_or_default();
        let signed = header("x-treadsoft-key").as_deref() == Some(API_KEY)
            && header("x-treadsoft-request-signature").as_deref()
                == Some(
                    request_signature(API_SECRET, timestamp, request.method.as_str(), &path_and_query, &request.body)
                        .as_str(),
                );
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let idempotency_key = header("idempotency-key");
        state.calls.push(Call {
            method: request.method.to_string(),
            path: path.clone(),
            body: body.clone(),
            idempotency_key: idempotency_key.clone(),
            signed,
        });
        if !signed {
            return ResponseTemplate::new(401)
                .set_body_json(json!({"error": {"code": "unauthorized", "message": "bad signature"}}));
        }
        let mut delay = None;
        match state.script.pop_front() {
            Some(Scripted::Fail(status, code, retry_after)) => {
                let mut answer = ResponseTemplate::new(status)
                    .set_body_json(json!({"error": {"code": code, "message": "scripted"}}));
                if let Some(secs) = retry_after {
                    answer = answer.insert_header("Retry-After", secs.to_string().as_str());
                }
                return answer;
            }
            Some(Scripted::Slow(d)) => delay = Some(d),
            None => {}
        }
        if let Some(status) = state.down {
            return ResponseTemplate::new(status)
                .set_body_json(json!({"error": {"code": "server_error", "message": "TreadSoft is down"}}));
        }
        if let Some(key) = &idempotency_key
            && let Some((status, body)) = state.answered.get(key).cloned()
        {
            return ResponseTemplate::new(status).set_body_json(body);
        }
        state.next += 1;
        let request_id = format!("req_{}", state.next);
        let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        let (status, answer) = match (request.method.as_str(), segments.as_slice()) {
            ("POST", [collection, "batch", "upsert"]) => {
                let records = body["records"].as_array().cloned().unwrap_or_default();
                let results: Vec<Value> = records
                    .iter()
                    .map(|r| upsert(&mut state, collection, r.as_object().cloned().unwrap_or_default()))
                    .collect();
                (200, json!({ "results": results }))
            }
            ("POST", [collection]) => {
                let fields = body.as_object().cloned().unwrap_or_default();
                let result = upsert(&mut state, collection, fields);
                match result["status"].as_str() {
                    Some("error") => (409, json!({ "error": result["error"] })),
                    _ => {
                        let id = result["id"].as_str().unwrap_or_default().to_owned();
                        (201, state.records[&(collection.to_string(), id)].clone())
                    }
                }
            }
            ("GET", ["me"]) => (200, json!({"accountId": "acc_ge_houses", "apiKeyId": API_KEY})),
            ("GET", [collection]) => {
                // Live records by updatedAt then id, from `updatedSince`; the cursor is an offset.
                let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
                let since = query.get("updatedSince").cloned().unwrap_or_default();
                let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                let from: usize = query.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
                let mut live: Vec<Value> = state
                    .all(collection)
                    .into_iter()
                    .filter(|r| r["updatedAt"].as_str().unwrap_or_default() >= since.as_str())
                    .collect();
                live.sort_by(|a, b| {
                    (a["updatedAt"].as_str(), a["id"].as_str()).cmp(&(b["updatedAt"].as_str(), b["id"].as_str()))
                });
                let page: Vec<Value> = live.iter().skip(from).take(limit).cloned().collect();
                let next = (from + limit < live.len()).then(|| (from + limit).to_string());
                (200, json!({"data": page, "nextCursor": next}))
            }
            ("GET", [collection, id]) => match state.records.get(&(collection.to_string(), id.to_string())) {
                Some(record) => (200, record.clone()),
                None => (404, json!({"error": {"code": "not_found", "message": "no such record"}})),
            },
            ("PATCH", [collection, id]) => match state.records.get_mut(&(collection.to_string(), id.to_string())) {
                Some(record) => {
                    for (k, v) in body.as_object().cloned().unwrap_or_default() {
                        record[k] = v;
                    }
                    record["version"] = json!(record["version"].as_i64().unwrap_or(1) + 1);
                    (200, record.clone())
                }
                None => (404, json!({"error": {"code": "not_found", "message": "no such record"}})),
            },
            ("DELETE", [collection, id]) => match state.records.remove(&(collection.to_string(), id.to_string())) {
                Some(_) => (204, Value::Null),
                None => (404, json!({"error": {"code": "not_found", "message": "no such record"}})),
            },
            _ => (404, json!({"error": {"code": "not_found", "message": "no such route in the stub"}})),
        };
        if let Some(key) = idempotency_key {
            state.answered.insert(key, (status, answer.clone()));
        }
        let mut response = ResponseTemplate::new(status).insert_header("X-TreadSoft-Request-Id", request_id.as_str());
        if !answer.is_null() {
            response = response.set_body_json(answer);
        }
        match delay {
            Some(d) => response.set_delay(d),
            None => response,
        }
    }
}

fn upsert(state: &mut State, collection: &str, fields: Map<String, Value>) -> Value {
    let external_id = fields.get("externalId").and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(existing) = state.by_external_id(collection, &external_id) {
        let id = existing["id"].as_str().unwrap().to_owned();
        let record = state.records.get_mut(&(collection.to_owned(), id.clone())).unwrap();
        for (k, v) in fields {
            record[k] = v;
        }
        record["version"] = json!(record["version"].as_i64().unwrap_or(1) + 1);
        return json!({"externalId": external_id, "id": id, "status": "updated"});
    }
    if collection == "contacts"
        && let Some(email) = fields.get("email").and_then(Value::as_str)
        && let Some(same) = state
            .all("contacts")
            .into_iter()
            .find(|r| r["email"].as_str().is_some_and(|e| e.eq_ignore_ascii_case(email)))
    {
        return json!({"externalId": external_id, "status": "error",
            "error": {"code": "duplicate", "message": "a contact with that email exists", "existingId": same["id"]}});
    }
    state.next += 1;
    let id = format!("crm_{}_{}", record_type(collection), state.next);
    let mut record = fields;
    record.insert("id".into(), json!(id));
    record.insert("version".into(), json!(1));
    record.insert("updatedAt".into(), json!("2025-01-05T10:30:00.000Z"));
    state.records.insert((collection.to_owned(), id.clone()), Value::Object(record));
    json!({"externalId": external_id, "id": id, "status": "created"})
}
