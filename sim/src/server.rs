//! The REST API of API.md §3 over the [`Store`]: signed requests (§3.1), the endpoints (§3.2),
//! error bodies (§3.3), idempotency keys, the rate limit with `Retry-After`, and a request id on
//! every answer.

use crate::store::{Collection, Refused, Source, Store};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How far a request's timestamp may be from the simulator's clock.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;
/// How long an idempotency key's answer is kept.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most records a batch upsert takes.
pub const MAX_BATCH: usize = 100;
/// Most records a list page holds.
pub const MAX_PAGE: usize = 200;

/// What a simulated account is.
#[derive(Debug, Clone)]
pub struct Account {
    pub account_id: String,
    pub api_key: String,
    pub api_secret: String,
    /// At most this many requests per window (API.md: 100 per 10 s).
    pub rate_limit: u32,
    pub rate_window: Duration,
}

/// One stored answer to a `POST` with an `Idempotency-Key`.
struct Answered {
    body_hash: [u8; 32],
    status: StatusCode,
    body: Value,
    request_id: String,
    at: Instant,
}

/// Faults switched on through the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Changes are not sent as webhooks (lost, as when TreadSoft gives up on a delivery).
    #[serde(default)]
    pub drop_webhooks: bool,
    /// The share of API calls (0 to 1) answered `503 server_error` instead of being done.
    #[serde(default)]
    pub error_rate: f64,
    /// Milliseconds added before every API answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Every API call is answered `503` until this time (Unix seconds): an outage window. Set
    /// with `outageSeconds` (from now); 0 ends it.
    #[serde(default)]
    pub outage_until: Option<i64>,
}

/// What `PUT /admin/faults` takes: the faults, with an outage given as its length from now.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultsRequest {
    #[serde(default)]
    drop_webhooks: bool,
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    outage_seconds: u64,
}

/// The simulator's state: the account, its records, and what the API remembers between calls.
pub struct Sim {
    pub account: Account,
    pub store: Mutex<Store>,
    calls: Mutex<VecDeque<Instant>>,
    answered: Mutex<HashMap<String, Answered>>,
    faults: Mutex<Faults>,
    sent: Mutex<crate::webhooks::Sent>,
}

impl Sim {
    pub fn new(account: Account) -> Self {
        Self {
            account,
            store: Mutex::new(Store::default()),
            calls: Mutex::new(VecDeque::new()),
            answered: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            sent: Mutex::new(crate::webhooks::Sent::default()),
        }
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the webhook sender has done so far.
    pub fn sent(&self) -> std::sync::MutexGuard<'_, crate::webhooks::Sent> {
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An answer with TreadSoft's error body.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> (StatusCode, Value) {
    (status, json!({ "error": { "code": code, "message": message.into() } }))
}

fn refused(refusal: Refused) -> (StatusCode, Value) {
    match refusal {
        Refused::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such record"),
        Refused::Duplicate(existing) => (
            StatusCode::CONFLICT,
            json!({ "error": { "code": "duplicate", "message": "a contact with that email exists", "existingId": existing } }),
        ),
        Refused::Invalid(fields) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": { "code": "validation_failed", "message": "some fields are not valid", "fields": fields } }),
        ),
        Refused::VersionMismatch => {
            error(StatusCode::PRECONDITION_FAILED, "version_mismatch", "If-Match did not match")
        }
    }
}

/// Checks the key, the timestamp and the request signature (API.md §3.1).
fn authenticate(sim: &Sim, req: &HttpRequest, body: &[u8]) -> Result<(), (StatusCode, Value)> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let unauthorized = |why: &str| error(StatusCode::UNAUTHORIZED, "unauthorized", why);
    let key = header("x-treadsoft-key").ok_or_else(|| unauthorized("X-TreadSoft-Key is missing"))?;
    if !bool::from(key.as_bytes().ct_eq(sim.account.api_key.as_bytes())) {
        return Err(unauthorized("unknown API key"));
    }
    let timestamp: i64 = header("x-treadsoft-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("X-TreadSoft-Timestamp is missing or not Unix seconds"))?;
    if (chrono::Utc::now().timestamp() - timestamp).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(unauthorized("the timestamp is more than 300 s from TreadSoft's clock"));
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let expected = crm_gateway::crm::signing::request_signature(
        &sim.account.api_secret,
        timestamp,
        req.method().as_str(),
        path_and_query,
        body,
    );
    let given = header("x-treadsoft-request-signature").unwrap_or_default().to_ascii_lowercase();
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(unauthorized("the request signature does not match"));
    }
    Ok(())
}

/// Counts the call against the rate limit; `Err(retry after)` when it is over.
fn rate(sim: &Sim) -> (Result<(), Duration>, u32) {
    let now = Instant::now();
    let window = sim.account.rate_window;
    let mut calls = sim.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while calls.front().is_some_and(|t| now.duration_since(*t) >= window) {
        calls.pop_front();
    }
    if calls.len() as u32 >= sim.account.rate_limit {
        let wait = calls.front().map_or(window, |oldest| window.saturating_sub(now.duration_since(*oldest)));
        return (Err(wait), 0);
    }
    calls.push_back(now);
    (Ok(()), sim.account.rate_limit - calls.len() as u32)
}

/// Every request: authenticate, rate-limit, replay an idempotent answer or do the call, and
/// answer with a request id.
pub async fn handle(req: HttpRequest, body: web::Bytes, sim: web::Data<Sim>) -> HttpResponse {
    if req.path().starts_with("/admin/") {
        let (status, answer) = admin(&sim, &req, &body);
        return if answer.is_null() {
            HttpResponse::build(status).finish()
        } else {
            HttpResponse::build(status).json(answer)
        };
    }
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let faults = *sim.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let down = faults.outage_until.is_some_and(|until| chrono::Utc::now().timestamp() < until);
    if down || (faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate) {
        let (status, answer) = error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "simulated failure");
        return HttpResponse::build(status).insert_header(("X-TreadSoft-Request-Id", request_id.as_str())).json(answer);
    }
    let (status, answer, request_id, remaining, retry_after) = match authenticate(&sim, &req, &body) {
        Err((status, answer)) => (status, answer, request_id, None, None),
        Ok(()) => match rate(&sim) {
            (Err(wait), _) => {
                let (status, answer) =
                    error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "100 requests per 10 s per key");
                (status, answer, request_id, Some(0), Some(wait))
            }
            (Ok(()), remaining) => {
                let (status, answer, request_id) = idempotent(&sim, &req, &body, request_id);
                (status, answer, request_id, Some(remaining), None)
            }
        },
    };
    let mut response = HttpResponse::build(status);
    response.insert_header(("X-TreadSoft-Request-Id", request_id.as_str()));
    if let Some(remaining) = remaining {
        let reset = chrono::Utc::now() + sim.account.rate_window;
        response
            .insert_header(("X-RateLimit-Limit", sim.account.rate_limit.to_string()))
            .insert_header(("X-RateLimit-Remaining", remaining.to_string()))
            .insert_header(("X-RateLimit-Reset", reset.timestamp().to_string()));
    }
    if let Some(wait) = retry_after {
        response.insert_header(("Retry-After", wait.as_secs_f64().ceil().max(1.0).to_string()));
    }
    if answer.is_null() { response.finish() } else { response.json(answer) }
}

/// A `POST` with an `Idempotency-Key` seen before with the same body gets the first answer
/// again; with another body, `422 idempotency_mismatch`.
fn idempotent(sim: &Sim, req: &HttpRequest, body: &[u8], request_id: String) -> (StatusCode, Value, String) {
    let key = (req.method() == Method::POST)
        .then(|| req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_owned);
    let Some(key) = key else {
        let (status, answer) = call(sim, req, body, &request_id);
        return (status, answer, request_id);
    };
    let body_hash: [u8; 32] = Sha256::digest(body).into();
    let mut answered = sim.answered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    answered.retain(|_, a| a.at.elapsed() < IDEMPOTENCY_TTL);
    if let Some(first) = answered.get(&key) {
        if first.body_hash != body_hash {
            let (status, answer) = error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                "this Idempotency-Key was used with another body",
            );
            return (status, answer, request_id);
        }
        return (first.status, first.body.clone(), first.request_id.clone());
    }
    let (status, answer) = call(sim, req, body, &request_id);
    answered.insert(
        key,
        Answered { body_hash, status, body: answer.clone(), request_id: request_id.clone(), at: Instant::now() },
    );
    (status, answer, request_id)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, (StatusCode, Value)> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(error(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object")),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())),
    }
}

/// The call itself (API.md §3.2).
fn call(sim: &Sim, req: &HttpRequest, body: &[u8], request_id: &str) -> (StatusCode, Value) {
    let source = Source { change_source: "api", request_id: Some(request_id.to_owned()) };
    let segments: Vec<&str> = req.path().trim_start_matches("/v1/").split('/').collect();
    let method = req.method().clone();
    if req.path() == "/v1/me" && method == Method::GET {
        return (StatusCode::OK, json!({ "accountId": sim.account.account_id, "apiKeyId": sim.account.api_key }));
    }
    let Some(collection) = segments.first().and_then(|c| Collection::parse(c)) else {
        return error(StatusCode::NOT_FOUND, "not_found", format!("no route {method} {}", req.path()));
    };
    let result = match (method.as_str(), &segments[1..]) {
        ("POST", []) => object(body).and_then(|input| {
            sim.store().create(collection, &input, &source).map(|r| (StatusCode::CREATED, r)).map_err(refused)
        }),
        ("POST", ["batch", "upsert"]) => batch_upsert(sim, collection, body, &source),
        ("GET", []) => list(sim, collection, req),
        ("GET", [id]) => {
            sim.store().get(collection, id).map(|r| (StatusCode::OK, r)).ok_or_else(|| refused(Refused::NotFound))
        }
        ("PATCH", [id]) => object(body).and_then(|input| {
            let if_match = req
                .headers()
                .get("if-match")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse::<i64>().ok());
            sim.store().update(collection, id, &input, if_match, &source).map(|r| (StatusCode::OK, r)).map_err(refused)
        }),
        ("DELETE", [id]) => {
            sim.store().delete(collection, id, &source).map(|()| (StatusCode::NO_CONTENT, Value::Null)).map_err(refused)
        }
        _ => Err(error(StatusCode::NOT_FOUND, "not_found", format!("no route {method} {}", req.path()))),
    };
    result.unwrap_or_else(|e| e)
}

fn list(sim: &Sim, collection: Collection, req: &HttpRequest) -> Result<(StatusCode, Value), (StatusCode, Value)> {
    let query: HashMap<String, String> = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let invalid = |field: &str, message: &str| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": { "code": "validation_failed", "message": message, "fields": { field: message } } }),
        )
    };
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| invalid("limit", "1 to 200"))?,
    };
    let since = match query.get("updatedSince") {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| invalid("updatedSince", "an RFC 3339 time"))?
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    };
    let cursor = match query.get("cursor") {
        None => None,
        Some(c) => {
            let text = String::from_utf8(hex::decode(c).map_err(|_| invalid("cursor", "not a cursor this API gave"))?)
                .map_err(|_| invalid("cursor", "not a cursor this API gave"))?;
            let (updated, id) = text.split_once('|').ok_or_else(|| invalid("cursor", "not a cursor this API gave"))?;
            Some((updated.to_owned(), id.to_owned()))
        }
    };
    let store = sim.store();
    let (data, next) =
        store.list(collection, since.as_deref(), cursor.as_ref().map(|(u, i)| (u.as_str(), i.as_str())), limit);
    let next_cursor = next.map(|(updated, id)| hex::encode(format!("{updated}|{id}")));
    Ok((StatusCode::OK, json!({ "data": data, "nextCursor": next_cursor })))
}

fn batch_upsert(
    sim: &Sim,
    collection: Collection,
    body: &[u8],
    source: &Source,
) -> Result<(StatusCode, Value), (StatusCode, Value)> {
    let input = object(body)?;
    let records = match input.get("records") {
        Some(Value::Array(records)) if (1..=MAX_BATCH).contains(&records.len()) => records,
        _ => {
            return Err(refused(Refused::Invalid(
                [("records".to_owned(), format!("1 to {MAX_BATCH} records"))].into_iter().collect(),
            )));
        }
    };
    let mut store = sim.store();
    let mut results = Vec::with_capacity(records.len());
    for record in records {
        let fields = record.as_object().cloned().unwrap_or_default();
        let Some(external_id) = fields.get("externalId").and_then(Value::as_str).map(str::to_owned) else {
            results.push(json!({ "externalId": null, "status": "error",
                "error": { "code": "validation_failed", "message": "externalId is required", "fields": { "externalId": "is required" } } }));
            continue;
        };
        let outcome = match store.by_external_id(collection, &external_id) {
            Some(id) => store.update(collection, &id, &fields, None, source).map(|r| (r, "updated")),
            None => store.create(collection, &fields, source).map(|r| (r, "created")),
        };
        results.push(match outcome {
            Ok((record, status)) => json!({ "externalId": external_id, "id": record["id"], "status": status }),
            Err(refusal) => {
                let (_, body) = refused(refusal);
                json!({ "externalId": external_id, "status": "error", "error": body["error"] })
            }
        });
    }
    Ok((StatusCode::OK, json!({ "results": results })))
}

/// The admin API, as a CRM user working in TreadSoft's own screens (`changeSource: "ui"`, no
/// request id), unauthenticated: the simulator is a local test tool.
/// - `GET /admin/R`: every live record of a collection;
/// - `POST /admin/R`, `PATCH /admin/R/{id}`, `DELETE /admin/R/{id}`: change records;
/// - `GET /admin/webhooks`: what the webhook sender has done;
/// - `PUT /admin/faults` `{"dropWebhooks", "errorRate", "latencyMs", "outageSeconds"}`: switch
///   faults on or off (what is not given is off).
fn admin(sim: &Sim, req: &HttpRequest, body: &[u8]) -> (StatusCode, Value) {
    let source = Source { change_source: "ui", request_id: None };
    let segments: Vec<&str> = req.path().trim_start_matches("/admin/").split('/').collect();
    let result = match (req.method().as_str(), segments.as_slice()) {
        ("GET", ["webhooks"]) => Ok((StatusCode::OK, json!(*sim.sent()))),
        ("PUT", ["faults"]) => match serde_json::from_slice::<FaultsRequest>(body) {
            Ok(asked) if !(0.0..=1.0).contains(&asked.error_rate) => {
                Err(error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "errorRate: 0 to 1"))
            }
            Ok(asked) => {
                let faults = Faults {
                    drop_webhooks: asked.drop_webhooks,
                    error_rate: asked.error_rate,
                    latency_ms: asked.latency_ms,
                    outage_until: (asked.outage_seconds > 0)
                        .then(|| chrono::Utc::now().timestamp() + asked.outage_seconds as i64),
                };
                *sim.faults() = faults;
                Ok((StatusCode::OK, json!(faults)))
            }
            Err(e) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", e.to_string())),
        },
        (method, [collection, rest @ ..]) => match (Collection::parse(collection), method, rest) {
            (Some(c), "GET", []) => {
                let (data, _) = sim.store().list(c, None, None, usize::MAX);
                Ok((StatusCode::OK, json!({ "data": data })))
            }
            (Some(c), "POST", []) => object(body).and_then(|input| {
                sim.store().create(c, &input, &source).map(|r| (StatusCode::CREATED, r)).map_err(refused)
            }),
            (Some(c), "PATCH", [id]) => object(body).and_then(|input| {
                sim.store().update(c, id, &input, None, &source).map(|r| (StatusCode::OK, r)).map_err(refused)
            }),
            (Some(c), "DELETE", [id]) => {
                sim.store().delete(c, id, &source).map(|()| (StatusCode::NO_CONTENT, Value::Null)).map_err(refused)
            }
            _ => Err(error(StatusCode::NOT_FOUND, "not_found", format!("no admin route {method} {}", req.path()))),
        },
        _ => Err(error(StatusCode::NOT_FOUND, "not_found", format!("no admin route {}", req.path()))),
    };
    result.unwrap_or_else(|e| e)
}
