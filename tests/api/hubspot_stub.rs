//! An in-process stand-in for HubSpot (`hubspot.md`): the CRM v3 objects API over records it keeps
//! (each property with its history), upserts by a unique property, contacts unique by email (a
//! 409-style error naming the existing id), 207 partial answers, 429 with `Retry-After`, a Bearer
//! token check, v4 default associations and the properties API; and the webhooks HubSpot would
//! send for each change, signed with v3, queued until a test sends them (API writes queue theirs
//! too, with `changeSource: "INTEGRATION"`: the echoes).

use crm_gateway::crm::hubspot::signature;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const TOKEN: &str = "pat-eu1-test-token";
pub const CLIENT_SECRET: &str = "hubspot-client-secret-test";
pub const PORTAL: i64 = 62515;

/// One object: its properties, each with its history (newest last), and when it last changed.
#[derive(Debug, Clone)]
pub struct Object {
    pub id: String,
    pub history: BTreeMap<String, Vec<(String, i64)>>,
    pub updated_ms: i64,
}

impl Object {
    pub fn get(&self, property: &str) -> Option<&str> {
        self.history.get(property).and_then(|h| h.last()).map(|(v, _)| v.as_str())
    }

    fn json(&self, wanted: &[String], with_history: bool) -> Value {
        let mut properties = Map::new();
        let mut history = Map::new();
        for name in wanted {
            properties.insert(name.clone(), self.get(name).map_or(Value::Null, |v| json!(v)));
            if with_history && let Some(h) = self.history.get(name) {
                let entries: Vec<Value> = h
                    .iter()
                    .rev()
                    .map(|(v, at)| json!({"value": v, "timestamp": iso(*at), "sourceType": "CRM_UI"}))
                    .collect();
                history.insert(name.clone(), Value::Array(entries));
            }
        }
        let mut out = json!({"id": self.id, "properties": properties, "createdAt": iso(self.updated_ms),
            "updatedAt": iso(self.updated_ms), "archived": false});
        if with_history {
            out["propertiesWithHistory"] = Value::Object(history);
        }
        out
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What the next call gets instead of its answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// This status, with `Retry-After` seconds when given.
    Fail(u16, Option<u64>),
}

#[derive(Default)]
pub struct State {
    /// (object, id) → object.
    pub objects: HashMap<(String, String), Object>,
    pub archived: HashSet<(String, String)>,
    /// (from object, from id, to object, to id).
    pub associations: HashSet<(String, String, String, String)>,
    /// Custom properties created through the properties API (their definitions), per object.
    pub properties: HashMap<String, Vec<Value>>,
    /// Property groups: (object, quoted name).
    pub groups: HashSet<(String, String)>,
    /// Every request: method, path and body.
    pub calls: Vec<(String, String, Value)>,
    pub script: VecDeque<Scripted>,
    /// Upserts of these id-property values fail inside a 207.
    pub refuse: HashSet<String>,
    /// Webhook events not yet sent.
    pub outbox: Vec<Value>,
    /// Ids per object type, as HubSpot's are (contact 901 and deal 901 are two records).
    next_id: HashMap<String, u64>,
    /// Answer upserts without the id property in their results (HubSpot need not echo it).
    pub hide_id_property: bool,
    /// Refuse a whole batch with a 409 when one of its contacts has an email already taken
    /// (instead of a 207 naming that record).
    pub refuse_whole_batch: bool,
    next_event: i64,
    clock_ms: i64,
}

/// The webhook object name of an API object.
fn webhook_object(object: &str) -> &str {
    match object {
        "contacts" => "contact",
        "deals" => "deal",
        "tickets" => "ticket",
        other => other,
    }
}

impl State {
    fn new_id(&mut self, object: &str) -> String {
        let n = self.next_id.entry(object.to_owned()).or_default();
        *n += 1;
        (900 + *n).to_string()
    }

    /// A strictly increasing clock a little past the real one: every change has its own time.
    fn tick(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp_millis();
        self.clock_ms = (self.clock_ms + 1).max(now);
        self.clock_ms
    }

    pub fn find(&self, object: &str, property: &str, value: &str) -> Option<&Object> {
        self.objects.iter().find(|((o, _), obj)| o == object && obj.get(property) == Some(value)).map(|(_, obj)| obj)
    }

    pub fn object(&self, object: &str, id: &str) -> Option<&Object> {
        self.objects.get(&(object.to_owned(), id.to_owned()))
    }

    fn event(&mut self, object: &str, kind: &str, id: &str, at: i64, extra: Value) -> Value {
        self.next_event += 1;
        let (subscription_type, object_type_id) = match webhook_object(object) {
            o if o.contains('-') => (format!("object.{kind}"), Some(o.to_owned())),
            o => (format!("{o}.{kind}"), None),
        };
        let mut event = json!({
            "eventId": 1000 + self.next_event, "subscriptionId": 77, "portalId": PORTAL, "appId": 4242,
            "occurredAt": at, "subscriptionType": subscription_type, "attemptNumber": 0, "objectId": id.parse::<i64>().unwrap(),
        });
        if let Some(type_id) = object_type_id {
            event["objectTypeId"] = json!(type_id);
        }
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            event[k] = v;
        }
        event
    }

    /// Creates an object as a HubSpot user would; returns its id (its creation and property
    /// events queued).
    pub fn create(&mut self, object: &str, properties: &[(&str, &str)], source: &str) -> String {
        let id = self.new_id(object);
        let at = self.tick();
        let mut obj = Object { id: id.clone(), history: BTreeMap::new(), updated_ms: at };
        for (k, v) in properties {
            obj.history.insert((*k).to_owned(), vec![((*v).to_owned(), at)]);
        }
        self.objects.insert((object.to_owned(), id.clone()), obj);
        let event = self.event(object, "creation", &id, at, json!({"changeSource": source}));
        self.outbox.push(event);
        for (k, v) in properties {
            let event = self.event(
                object,
                "propertyChange",
                &id,
                at,
                json!({"propertyName": k, "propertyValue": v, "changeSource": source}),
            );
            self.outbox.push(event);
        }
        id
    }

    /// Sets properties as a HubSpot user would (events queued); `None` if there is no such object.
    pub fn set(&mut self, object: &str, id: &str, properties: &[(&str, &str)], source: &str) -> Option<i64> {
        let at = self.tick();
        let obj = self.objects.get_mut(&(object.to_owned(), id.to_owned()))?;
        let mut changed = Vec::new();
        for (k, v) in properties {
            if obj.get(k) != Some(v) {
                obj.history.entry((*k).to_owned()).or_default().push(((*v).to_owned(), at));
                changed.push((*k, *v));
            }
        }
        obj.updated_ms = at;
        for (k, v) in changed {
            let event = self.event(
                object,
                "propertyChange",
                id,
                at,
                json!({"propertyName": k, "propertyValue": v, "changeSource": source}),
            );
            self.outbox.push(event);
        }
        Some(at)
    }

    /// Archives an object as a HubSpot user would.
    pub fn delete(&mut self, object: &str, id: &str) -> bool {
        let at = self.tick();
        if self.objects.remove(&(object.to_owned(), id.to_owned())).is_none() {
            return false;
        }
        self.archived.insert((object.to_owned(), id.to_owned()));
        let event = self.event(object, "deletion", id, at, json!({"changeSource": "CRM_UI"}));
        self.outbox.push(event);
        true
    }

    /// Adds (or removes) the default association between two objects; HubSpot sends an event
    /// for each direction.
    pub fn associate(&mut self, from: (&str, &str), to: (&str, &str), removed: bool, source: &str) {
        let at = self.tick();
        let key = (from.0.to_owned(), from.1.to_owned(), to.0.to_owned(), to.1.to_owned());
        if removed {
            self.associations.remove(&key);
        } else {
            self.associations.insert(key);
        }
        let name = |object: &str| match object {
            "0-420" => "LISTING".to_owned(),
            other => webhook_object(other).to_ascii_uppercase(),
        };
        for ((a, a_id), (b, b_id)) in [(from, to), (to, from)] {
            let extra = json!({"associationType": format!("{}_TO_{}", name(a), name(b)),
                "fromObjectId": a_id.parse::<i64>().unwrap(), "toObjectId": b_id.parse::<i64>().unwrap(),
                "associationRemoved": removed, "isPrimaryAssociation": false, "changeSource": source});
            let event = self.event(a, "associationChange", a_id, at, extra);
            self.outbox.push(event);
        }
    }

    /// Merges `secondary` into `primary` as a HubSpot user would: with `new_id`, both go and a
    /// new object holds the primary's values (HubSpot's newer merges); else the primary stays.
    /// Returns the survivor's id.
    pub fn merge(&mut self, object: &str, primary: &str, secondary: &str, new_id: bool) -> String {
        let at = self.tick();
        let mut kept = self.objects.remove(&(object.to_owned(), primary.to_owned())).unwrap();
        self.objects.remove(&(object.to_owned(), secondary.to_owned()));
        if new_id {
            kept.id = self.new_id(object);
        }
        kept.updated_ms = at;
        let survivor = kept.id.clone();
        self.objects.insert((object.to_owned(), survivor.clone()), kept);
        let mut extra = json!({"primaryObjectId": primary.parse::<i64>().unwrap(),
            "mergedObjectIds": [secondary.parse::<i64>().unwrap()], "numberOfPropertiesMoved": 2, "changeSource": "CRM_UI"});
        if new_id {
            extra["newObjectId"] = json!(survivor.parse::<i64>().unwrap());
        }
        let event = self.event(object, "merge", primary, at, extra);
        self.outbox.push(event);
        survivor
    }

    /// Upserts one input; `Ok((id, new))`, or the error object of a 207.
    fn upsert(&mut self, object: &str, input: &Value) -> Result<(String, bool), Value> {
        let id_property = input["idProperty"].as_str().unwrap_or_default().to_owned();
        let unique = input["id"].as_str().unwrap_or_default().to_owned();
        let properties: Vec<(String, String)> = input["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        if self.refuse.contains(&unique) {
            return Err(json!({"status": "error", "category": "VALIDATION_ERROR",
                "message": format!("Property values were not valid for {unique}"), "context": {"ids": [unique]}}));
        }
        let existing = self.find(object, &id_property, &unique).map(|o| o.id.clone());
        if existing.is_none()
            && object == "contacts"
            && let Some((_, email)) = properties.iter().find(|(k, _)| k == "email")
            && let Some(same) = self.find(object, "email", email)
        {
            return Err(json!({"status": "error", "category": "OBJECT_ALREADY_EXISTS",
                "message": format!("Contact already exists. Existing ID: {}", same.id), "context": {"ids": [unique]}}));
        }
        let pairs: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(match existing {
            Some(id) => {
                self.set(object, &id, &pairs, "INTEGRATION");
                (id, false)
            }
            None => {
                let mut pairs = pairs;
                pairs.push((id_property.as_str(), unique.as_str()));
                (self.create(object, &pairs, "INTEGRATION"), true)
            }
        })
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

    pub fn fail_next(&self, status: u16, retry_after: Option<u64>) {
        self.state().script.push_back(Scripted::Fail(status, retry_after));
    }

    /// Takes the queued webhook events, to send as one delivery (or several, or none).
    pub fn take_events(&self) -> Vec<Value> {
        std::mem::take(&mut self.state().outbox)
    }
}

/// Signs `body` as HubSpot does for a POST to `url`, now: the v3 headers.
pub fn signed_headers(url: &str, body: &str) -> Vec<(&'static str, String)> {
    let timestamp = chrono::Utc::now().timestamp_millis().to_string();
    let signature = signature::v3(CLIENT_SECRET, "POST", url, body.as_bytes(), &timestamp);
    vec![("X-HubSpot-Signature-v3", signature), ("X-HubSpot-Request-Timestamp", timestamp)]
}

struct Responder(Arc<Mutex<State>>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.0.lock().unwrap();
        let path = request.url.path().to_owned();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        state.calls.push((request.method.to_string(), path.clone(), body.clone()));
        let authorized = request.headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {TOKEN}").as_str());
        if !authorized {
            return ResponseTemplate::new(401)
                .set_body_json(json!({"status": "error", "category": "INVALID_AUTHENTICATION",
                "message": "Authentication credentials not found.", "correlationId": "c-401"}));
        }
        if let Some(Scripted::Fail(status, retry_after)) = state.script.pop_front() {
            let mut answer = ResponseTemplate::new(status).set_body_json(json!({"status": "error",
                "message": "You have reached your secondly limit.", "policyName": "SECONDLY", "correlationId": "c-1"}));
            if let Some(secs) = retry_after {
                answer = answer.insert_header("Retry-After", secs.to_string().as_str());
            }
            return answer;
        }
        let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let not_found =
            || (404, json!({"status": "error", "category": "OBJECT_NOT_FOUND", "message": "resource not found"}));
        let (status, answer) = match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["crm", "v3", "objects", object, "batch", "upsert"]) => {
                let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
                let taken = |state: &State, input: &Value| {
                    let email = input["properties"]["email"].as_str().unwrap_or_default();
                    let unique = input["id"].as_str().unwrap_or_default();
                    let id_property = input["idProperty"].as_str().unwrap_or_default();
                    if *object != "contacts" || email.is_empty() || state.find(object, id_property, unique).is_some() {
                        return None;
                    }
                    state.find(object, "email", email).map(|o| o.id.clone())
                };
                if state.refuse_whole_batch
                    && let Some(existing) = inputs.iter().find_map(|i| taken(&state, i))
                {
                    let message = format!("Contact already exists. Existing ID: {existing}");
                    let answer = json!({"status": "error", "category": "CONFLICT", "message": message});
                    return ResponseTemplate::new(409).set_body_json(answer);
                }
                let (mut results, mut errors) = (Vec::new(), Vec::new());
                for input in &inputs {
                    match state.upsert(object, input) {
                        Ok((id, new)) => {
                            let id_property = input["idProperty"].as_str().unwrap_or_default().to_owned();
                            let mut wanted: Vec<String> =
                                input["properties"].as_object().into_iter().flatten().map(|(k, _)| k.clone()).collect();
                            wanted.push(id_property);
                            if state.hide_id_property {
                                wanted.clear();
                            }
                            let mut result = state.object(object, &id).unwrap().json(&wanted, false);
                            result["new"] = json!(new);
                            results.push(result);
                        }
                        Err(error) => errors.push(error),
                    }
                }
                let status = if errors.is_empty() { 200 } else { 207 };
                (status, json!({"status": "COMPLETE", "results": results, "errors": errors, "numErrors": errors.len()}))
            }
            ("POST", ["crm", "v3", "objects", object, "batch", "read"]) => {
                let wanted: Vec<String> = serde_json::from_value(body["properties"].clone()).unwrap_or_default();
                let with_history = body.get("propertiesWithHistory").is_some();
                let results: Vec<Value> = body["inputs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| state.object(object, i["id"].as_str().unwrap_or_default()))
                    .map(|o| o.json(&wanted, with_history))
                    .collect();
                (200, json!({"status": "COMPLETE", "results": results}))
            }
            ("POST", ["crm", "v3", "objects", object, "search"]) => {
                let filter = &body["filterGroups"][0]["filters"][0];
                let since: i64 = filter["value"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
                let wanted: Vec<String> = serde_json::from_value(body["properties"].clone()).unwrap_or_default();
                let limit = body["limit"].as_u64().unwrap_or(10) as usize;
                let from: usize = body["after"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
                let mut found: Vec<&Object> = state
                    .objects
                    .iter()
                    .filter(|((o, _), obj)| o == object && obj.updated_ms >= since)
                    .map(|(_, obj)| obj)
                    .collect();
                found.sort_by_key(|o| (o.updated_ms, o.id.clone()));
                let page: Vec<Value> = found.iter().skip(from).take(limit).map(|o| o.json(&wanted, false)).collect();
                let mut answer = json!({"total": found.len(), "results": page});
                if from + limit < found.len() {
                    answer["paging"] = json!({"next": {"after": (from + limit).to_string()}});
                }
                (200, answer)
            }
            ("GET", ["crm", "v3", "objects", _]) => (200, json!({"results": []})),
            ("GET", ["crm", "v3", "objects", object, id]) => match state.object(object, id) {
                Some(o) => {
                    let wanted: Vec<String> =
                        query.get("properties").map(|p| p.split(',').map(str::to_owned).collect()).unwrap_or_default();
                    (200, o.json(&wanted, false))
                }
                None => not_found(),
            },
            ("PATCH", ["crm", "v3", "objects", object, id]) => {
                let properties: Vec<(String, String)> = body["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let pairs: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                match state.set(object, id, &pairs, "INTEGRATION") {
                    Some(_) => {
                        let wanted: Vec<String> = properties.iter().map(|(k, _)| k.clone()).collect();
                        (200, state.object(object, id).unwrap().json(&wanted, false))
                    }
                    None => not_found(),
                }
            }
            ("DELETE", ["crm", "v3", "objects", object, id]) => {
                if state.delete(object, id) {
                    // The deletion is the gateway's own: its event is an echo.
                    (204, Value::Null)
                } else {
                    not_found()
                }
            }
            ("PUT", ["crm", "v4", "objects", from, from_id, "associations", "default", to, to_id]) => {
                let key = (from.to_string(), from_id.to_string(), to.to_string(), to_id.to_string());
                if !state.associations.contains(&key) {
                    state.associate((from, from_id), (to, to_id), false, "INTEGRATION");
                }
                (200, json!({"status": "COMPLETE", "results": []}))
            }
            ("GET", ["crm", "v3", "properties", object]) => {
                let standard: &[&str] = match *object {
                    "contacts" => &["firstname", "lastname", "email", "phone", "company", "lastmodifieddate"],
                    "deals" => &["dealname", "amount", "pipeline", "dealstage", "hs_lastmodifieddate"],
                    "tickets" => &["subject", "content", "hs_pipeline", "hs_pipeline_stage", "hs_lastmodifieddate"],
                    "0-420" => &["hs_name", "hs_lastmodifieddate"],
                    _ => &[],
                };
                let mut results: Vec<Value> =
                    standard.iter().map(|n| json!({"name": n, "hasUniqueValue": false})).collect();
                results.extend(state.properties.get(*object).cloned().unwrap_or_default());
                (200, json!({"results": results}))
            }
            ("POST", ["crm", "v3", "properties", object, "groups"]) => {
                let name = body["name"].clone();
                if state.groups.insert((object.to_string(), name.to_string())) {
                    (201, json!({"name": name}))
                } else {
                    (409, json!({"status": "error", "category": "CONFLICT", "message": "group exists"}))
                }
            }
            ("POST", ["crm", "v3", "properties", object]) => {
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                let group = body["groupName"].as_str().unwrap_or_default().to_owned();
                let listed = state.properties.get(*object).into_iter().flatten().any(|p| p["name"] == name);
                if listed || !state.groups.contains(&(object.to_string(), format!("\"{group}\""))) {
                    (409, json!({"status": "error", "category": "CONFLICT", "message": "exists, or no such group"}))
                } else {
                    state.properties.entry(object.to_string()).or_default().push(body.clone());
                    (201, body.clone())
                }
            }
            _ => not_found(),
        };
        let mut response = ResponseTemplate::new(status)
            .insert_header("X-HubSpot-RateLimit-Max", "100")
            .insert_header("X-HubSpot-RateLimit-Remaining", "99")
            .insert_header("X-HubSpot-RateLimit-Interval-Milliseconds", "10000");
        if !answer.is_null() {
            response = response.set_body_json(answer);
        }
        response
    }
}
