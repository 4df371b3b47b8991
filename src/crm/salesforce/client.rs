//! The Salesforce REST client (`salesforce.md` §4): every call with the OAuth token (renewed once
//! on 401 `INVALID_SESSION_ID`) and `Sforce-Call-Options: client=<tag>` (so Change Data Capture
//! marks the gateway's own writes in `changeOrigin`); upserts by the external id field, one record
//! (`sobjects/{O}/{field}/{value}`) or up to 200 (`composite/sobjects`, `allOrNone=false`, one
//! result per record in request order); listings by SOQL on `LastModifiedDate`; the org's API
//! usage (`Sforce-Limit-Info`) slowing the calls down near its allocation.

use super::auth::{Token, TokenSource};
use super::errors;
use crate::crm::mapping::Mapping;
use crate::crm::rate_limit::RateLimit;
use crate::crm::{BatchItem, CrmClient, CrmError, CrmRecord, ErrorBody, Page, Written};
use crate::ops::metrics::Metrics;
use crate::sync::mapping::RecordType;
use chrono::{DateTime, Utc};
use governor::DefaultDirectRateLimiter;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Most records in one sObject Collections call.
pub const COLLECTION_MAX: usize = 200;
/// The share of the org's daily API allocation past which calls are spaced out.
const USAGE_SLOWDOWN: f64 = 0.95;
/// The space between calls past that share.
const SLOW_PAUSE: Duration = Duration::from_secs(5);

/// Where and how to reach a Salesforce org.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    /// The org's My Domain URL (the token endpoint is under it).
    pub api_url: Url,
    /// The connected app's consumer key and secret.
    pub client_id: SecretString,
    pub client_secret: SecretString,
    /// The REST API version, e.g. `v62.0`.
    pub api_version: String,
    /// What `Sforce-Call-Options: client=` names the gateway's writes.
    pub client_tag: String,
    pub mapping: Arc<Mapping>,
    /// The JWT bearer flow instead of client credentials (`client_secret` is then unused).
    pub jwt: Option<super::auth::JwtBearer>,
}

impl PartialEq for SalesforceConfig {
    fn eq(&self, other: &Self) -> bool {
        self.api_url == other.api_url
            && self.client_id.expose_secret() == other.client_id.expose_secret()
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
            && self.api_version == other.api_version
            && self.client_tag == other.client_tag
            && self.jwt == other.jwt
            && self.mapping == other.mapping
    }
}
impl Eq for SalesforceConfig {}

#[derive(Debug)]
pub struct SalesforceClient {
    http: reqwest::Client,
    config: SalesforceConfig,
    tokens: Arc<TokenSource>,
    limiter: Arc<DefaultDirectRateLimiter>,
    metrics: Option<Arc<Metrics>>,
    paused: crate::crm::Pause,
}

struct Answer {
    status: u16,
    body: Value,
}

impl SalesforceClient {
    pub fn new(config: SalesforceConfig, timeout: Duration, rate_limit: RateLimit) -> anyhow::Result<Self> {
        let http = crate::crm::http_client(timeout)?;
        let tokens = TokenSource::new(
            http.clone(),
            &config.api_url,
            config.client_id.clone(),
            config.client_secret.clone(),
            config.jwt.clone(),
        );
        Ok(Self {
            http,
            config,
            tokens,
            limiter: Arc::new(rate_limit.limiter()),
            metrics: None,
            paused: crate::crm::Pause::default(),
        })
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn data(&self, rest: &str) -> String {
        format!("/services/data/{}{rest}", self.config.api_version)
    }

    fn object(&self, t: RecordType) -> &str {
        &self.config.mapping.object(t).object
    }

    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CrmError> {
        self.paused.wait().await;
        crate::crm::paced(&self.limiter, self.metrics.as_deref(), operation, |a: &Answer| a.status, async {
            let token = self.tokens.token().await?;
            match self.send(&token, method.clone(), path, body).await {
                Ok(answer) => answer,
                // The session ended (an expired or revoked token): a new one, and once more.
                Err(Unauthorized) => {
                    let token = self.tokens.renew(&token).await?;
                    match self.send(&token, method, path, body).await {
                        Ok(answer) => answer,
                        Err(Unauthorized) => Err(CrmError::Permanent {
                            status: 401,
                            code: "INVALID_SESSION_ID".into(),
                            message: "Salesforce refused a token it had just issued: check the connected app's \
                                      policies and the integration user"
                                .into(),
                        }),
                    }
                }
            }
        })
        .await
    }

    /// One request; `Err(Unauthorized)` for a 401, the rest sorted in the answer.
    async fn send(
        &self,
        token: &Token,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<Answer, CrmError>, Unauthorized> {
        let url = format!("{}{path}", token.instance_url);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(token.access_token.expose_secret())
            .header("Sforce-Call-Options", format!("client={}", self.config.client_tag))
            .header("Sforce-Query-Options", "batchSize=200");
        if let Some(body) = body {
            request = request.json(body);
        }
        let path_only = path.split('?').next().unwrap_or(path);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Ok(Err(crate::crm::unanswered("Salesforce", &method, path_only, &e))),
        };
        let status = response.status().as_u16();
        if let Some((used, limit)) =
            response.headers().get("sforce-limit-info").and_then(|v| v.to_str().ok()).and_then(errors::api_usage)
            && limit > 0
            && used as f64 >= limit as f64 * USAGE_SLOWDOWN
        {
            tracing::warn!(used, limit, "the org's daily API allocation is nearly used: calls are spaced out");
            self.paused.set(SLOW_PAUSE);
        }
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                return Ok(Err(CrmError::Transient {
                    status: Some(status),
                    message: format!("{method} {path_only}: the answer broke off: {e}"),
                    retry_after: None,
                }));
            }
        };
        if status == 401 {
            return Err(Unauthorized);
        }
        if (200..300).contains(&status) {
            let body =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
            return Ok(Ok(Answer { status, body }));
        }
        Ok(Err(errors::classify(status, &bytes)))
    }

    /// The fields of a write, as Salesforce names them, without the external id (it is in the
    /// path) or anything read-only.
    fn fields(&self, t: RecordType, fields: &Map<String, Value>) -> Map<String, Value> {
        let mut out = self.config.mapping.to_crm(t, fields);
        out.remove(&self.config.mapping.id_property);
        out
    }

    fn record(&self, t: RecordType, body: &Value) -> CrmRecord {
        let properties = body.as_object().cloned().unwrap_or_default();
        let id = properties.get("Id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let updated_at = properties.get("LastModifiedDate").and_then(Value::as_str).and_then(parse_time);
        self.config.mapping.from_crm(t, &id, &properties, updated_at)
    }

    fn read_fields(&self, t: RecordType) -> String {
        let mapping = &self.config.mapping;
        let mut fields = vec!["Id".to_owned(), "LastModifiedDate".to_owned()];
        fields.extend(mapping.read_properties(t));
        fields.join(", ")
    }
}

/// What a write answers: the record as sent, with the id Salesforce gave it (the rest is not
/// read back).
fn written(id: String, fields: &Map<String, Value>) -> Written {
    let mut record_fields = fields.clone();
    record_fields.insert("id".into(), Value::String(id.clone()));
    Written {
        record: CrmRecord {
            id,
            external_id: fields.get("externalId").and_then(Value::as_str).map(str::to_owned),
            version: 0,
            updated_at: None,
            fields: record_fields,
            changed_at: Default::default(),
            partial: false,
            defaults: Map::new(),
        },
        request_id: None,
    }
}

/// A 401: the token is to be renewed.
struct Unauthorized;

/// Salesforce's times: `2026-12-01T10:00:00.000+0000`.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.3f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One record's result in a collections answer.
fn item(external_id: String, result: &Value) -> BatchItem {
    if result["success"].as_bool() == Some(true) {
        let created = result["created"].as_bool().unwrap_or(false);
        return BatchItem {
            external_id,
            id: result["id"].as_str().map(str::to_owned),
            status: if created { "created" } else { "updated" }.into(),
            error: None,
        };
    }
    let errors = errors::read(result["errors"].to_string().as_bytes());
    let first = errors.first().cloned().unwrap_or_default();
    let code = first.code().to_owned();
    // A locked row is worth retrying; a bad value is not.
    let status = if errors::transient_code(&code) { 503 } else { 400 };
    let message = errors.iter().map(errors::ApiError::text).collect::<Vec<_>>().join("; ");
    BatchItem {
        external_id,
        id: None,
        status: "error".into(),
        error: Some(ErrorBody { code, message, existing_id: None, status: Some(status) }),
    }
}

#[async_trait::async_trait]
impl CrmClient for SalesforceClient {
    /// An upsert of one record by its external id: safe to repeat, and tagged for echoes.
    async fn create(&self, t: RecordType, fields: &Map<String, Value>, _key: &str) -> Result<Written, CrmError> {
        let external_id = fields.get("externalId").and_then(Value::as_str).unwrap_or_default();
        let mapping = &self.config.mapping;
        let path = self.data(&format!(
            "/sobjects/{}/{}/{}",
            self.object(t),
            mapping.id_property,
            utf8_percent_encode(external_id, NON_ALPHANUMERIC)
        ));
        let answer = self.call("create", Method::PATCH, &path, Some(&Value::Object(self.fields(t, fields)))).await?;
        let id = match answer.body["id"].as_str() {
            Some(id) => id.to_owned(),
            // 204 (older versions): matched and updated, no body; its id is read.
            None => {
                let read = self.call("get", Method::GET, &format!("{path}?fields=Id"), None).await?;
                read.body["Id"].as_str().unwrap_or_default().to_owned()
            }
        };
        Ok(written(id, fields))
    }

    async fn update(&self, t: RecordType, id: &str, fields: &Map<String, Value>) -> Result<Written, CrmError> {
        let path = self.data(&format!("/sobjects/{}/{id}", self.object(t)));
        let mut body = self.fields(t, fields);
        // The gateway's id is set by an update too (the link-back).
        if let Some(external_id) = fields.get("externalId") {
            body.insert(self.config.mapping.id_property.clone(), external_id.clone());
        }
        self.call("update", Method::PATCH, &path, Some(&Value::Object(body))).await?;
        Ok(written(id.to_owned(), fields))
    }

    async fn delete(&self, t: RecordType, id: &str) -> Result<Option<String>, CrmError> {
        self.call("delete", Method::DELETE, &self.data(&format!("/sobjects/{}/{id}", self.object(t))), None).await?;
        Ok(None)
    }

    async fn get(&self, t: RecordType, id: &str) -> Result<CrmRecord, CrmError> {
        let fields = self.read_fields(t).replace(", ", ",");
        let path = self.data(&format!("/sobjects/{}/{id}?fields={fields}", self.object(t)));
        Ok(self.record(t, &self.call("get", Method::GET, &path, None).await?.body))
    }

    /// SOQL: the records modified at or after `since`, oldest first, 200 a page; the cursor is
    /// Salesforce's `nextRecordsUrl`.
    async fn list_since(
        &self,
        t: RecordType,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        _limit: u32,
    ) -> Result<Page, CrmError> {
        let path = match cursor {
            Some(next) => next.to_owned(),
            None => {
                let soql = format!(
                    "SELECT {} FROM {} WHERE LastModifiedDate >= {} ORDER BY LastModifiedDate, Id",
                    self.read_fields(t),
                    self.object(t),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                self.data(&format!("/query?q={}", utf8_percent_encode(&soql, NON_ALPHANUMERIC)))
            }
        };
        let answer = self.call("list", Method::GET, &path, None).await?;
        let records = answer.body["records"].as_array().cloned().unwrap_or_default();
        let next_cursor =
            answer.body["nextRecordsUrl"].as_str().filter(|_| answer.body["done"] != true).map(str::to_owned);
        Ok(Page { data: records.iter().map(|r| self.record(t, r)).collect(), next_cursor })
    }

    async fn ping(&self) -> Result<(), CrmError> {
        self.call("ping", Method::GET, &self.data("/limits"), None).await.map(drop)
    }

    fn syncs(&self, t: RecordType) -> bool {
        self.config.mapping.object(t).enabled
    }

    /// sObject Collections, up to 200 records a call, `allOrNone=false`: one result per record,
    /// in the request's order.
    async fn batch_upsert(
        &self,
        t: RecordType,
        records: &[Map<String, Value>],
        _key: &str,
    ) -> Result<(Vec<BatchItem>, Option<String>), CrmError> {
        let mapping = &self.config.mapping;
        let path = self.data(&format!("/composite/sobjects/{}/{}", self.object(t), mapping.id_property));
        let mut items = Vec::with_capacity(records.len());
        for chunk in records.chunks(COLLECTION_MAX) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|r| {
                    let mut fields = mapping.to_crm(t, r);
                    fields.insert("attributes".into(), json!({ "type": self.object(t) }));
                    Value::Object(fields)
                })
                .collect();
            let answer = match self
                .call("batch_upsert", Method::PATCH, &path, Some(&json!({ "allOrNone": false, "records": body })))
                .await
            {
                Ok(answer) => answer,
                Err(e) if items.is_empty() => return Err(e),
                // Later chunks failing do not undo what the earlier ones wrote.
                Err(e) => {
                    let error = ErrorBody {
                        code: "not_sent".into(),
                        message: e.to_string(),
                        existing_id: None,
                        status: Some(if e.is_transient() { 503 } else { e.status().unwrap_or(400) }),
                    };
                    items.extend(chunk.iter().map(|r| BatchItem {
                        external_id: r.get("externalId").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        id: None,
                        status: "error".into(),
                        error: Some(error.clone()),
                    }));
                    continue;
                }
            };
            let results = answer.body.as_array().cloned().unwrap_or_default();
            for (i, record) in chunk.iter().enumerate() {
                let external_id = record.get("externalId").and_then(Value::as_str).unwrap_or_default().to_owned();
                items.push(match results.get(i) {
                    Some(result) => item(external_id, result),
                    None => BatchItem {
                        external_id,
                        id: None,
                        status: "error".into(),
                        error: Some(ErrorBody {
                            code: "unanswered".into(),
                            message: "Salesforce's answer left this record out".into(),
                            existing_id: None,
                            status: Some(503),
                        }),
                    },
                });
            }
        }
        Ok((items, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::mapping::Flavor;
    use wiremock::matchers::{header, method, path, path_regex, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    async fn org() -> (MockServer, SalesforceClient) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/services/oauth2/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "tok-1", "instance_url": server.uri(),
                "id": "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
            })))
            .mount(&server)
            .await;
        let config = SalesforceConfig {
            api_url: server.uri().parse().unwrap(),
            client_id: "key".to_owned().into(),
            client_secret: "secret".to_owned().into(),
            api_version: "v62.0".into(),
            client_tag: "crm-gateway".into(),
            mapping: Arc::new(Mapping::defaults(Flavor::Salesforce)),
            jwt: None,
        };
        let rate = RateLimit { requests: 10_000, period: Duration::from_secs(1) };
        let client = SalesforceClient::new(config, Duration::from_secs(5), rate).unwrap();
        (server, client)
    }

    fn owner() -> Map<String, Value> {
        json!({"externalId": "user_1", "firstName": "Mary", "lastName": "Anne", "email": "m@example.com",
            "phone": null, "companyName": null, "role": "owner", "membershipStatus": "pending"})
        .as_object()
        .unwrap()
        .clone()
    }

    #[tokio::test]
    async fn a_create_is_an_upsert_by_the_external_id_tagged_for_echoes() {
        let (server, client) = org().await;
        Mock::given(method("PATCH"))
            .and(path("/services/data/v62.0/sobjects/Contact/Crm_Gateway_Id__c/user%5F1"))
            .and(header("Sforce-Call-Options", "client=crm-gateway"))
            .and(header("Authorization", "Bearer tok-1"))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": "003A", "success": true, "errors": [], "created": true})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let written = client.create(RecordType::Contact, &owner(), "k").await.unwrap();
        assert_eq!(written.record.id, "003A");
        let sent =
            server.received_requests().await.unwrap().into_iter().find(|r| r.method.as_str() == "PATCH").unwrap();
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["FirstName"], "Mary");
        assert_eq!(body["Role__c"], "owner");
        assert!(body.get("Crm_Gateway_Id__c").is_none(), "the external id is in the path");
    }

    #[tokio::test]
    async fn an_expired_session_is_renewed_once_and_the_call_made_again() {
        let (server, client) = org().await;
        Mock::given(method("DELETE"))
            .and(path("/services/data/v62.0/sobjects/Contact/003A"))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(
                    json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
                ),
            )
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/services/data/v62.0/sobjects/Contact/003A"))
            .respond_with(ResponseTemplate::new(204))
            .mount(&server)
            .await;
        client.delete(RecordType::Contact, "003A").await.unwrap();
        let tokens = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/services/oauth2/token")
            .count();
        assert_eq!(tokens, 2, "one token, then one renewal");
    }

    #[tokio::test]
    async fn collections_answer_each_record_in_order_and_a_locked_row_is_retried() {
        let (server, client) = org().await;
        Mock::given(method("PATCH"))
            .and(path("/services/data/v62.0/composite/sobjects/Contact/Crm_Gateway_Id__c"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                {"id": "003A", "success": true, "created": true, "errors": []},
                {"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [LastName]", "fields": ["LastName"]}]},
                {"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access"}]}
            ])))
            .mount(&server)
            .await;
        let mut second = owner();
        second.insert("externalId".into(), json!("user_2"));
        let mut third = owner();
        third.insert("externalId".into(), json!("user_3"));
        let (items, _) = client.batch_upsert(RecordType::Contact, &[owner(), second, third], "k").await.unwrap();
        assert_eq!(
            (items[0].external_id.as_str(), items[0].id.as_deref(), items[0].status.as_str()),
            ("user_1", Some("003A"), "created")
        );
        let refused = items[1].error.clone().unwrap();
        assert_eq!((refused.code.as_str(), refused.status), ("REQUIRED_FIELD_MISSING", Some(400)));
        assert!(refused.message.contains("LastName"));
        assert_eq!(items[2].error.clone().unwrap().status, Some(503), "a locked row: again later");
        let sent =
            server.received_requests().await.unwrap().into_iter().find(|r| r.method.as_str() == "PATCH").unwrap();
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(body["allOrNone"], false);
        assert_eq!(body["records"][0]["attributes"]["type"], "Contact");
        assert_eq!(body["records"][1]["Crm_Gateway_Id__c"], "user_2");
    }

    #[tokio::test]
    async fn several_matches_and_the_request_limit_are_told_apart() {
        let (server, client) = org().await;
        Mock::given(method("PATCH"))
            .and(path_regex("/sobjects/Contact/Crm_Gateway_Id__c/.*"))
            .respond_with(ResponseTemplate::new(300).set_body_json(json!([
                "/services/data/v62.0/sobjects/Contact/003A",
                "/services/data/v62.0/sobjects/Contact/003B"
            ])))
            .mount(&server)
            .await;
        Mock::given(method("PATCH"))
            .and(path("/services/data/v62.0/sobjects/Contact/003A"))
            .respond_with(ResponseTemplate::new(403).set_body_json(
                json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
            ))
            .mount(&server)
            .await;
        let several = client.create(RecordType::Contact, &owner(), "k").await.unwrap_err();
        assert!(matches!(several, CrmError::Permanent { status: 300, .. }), "{several:?}");
        let limited = client.update(RecordType::Contact, "003A", &owner()).await.unwrap_err();
        assert!(matches!(limited, CrmError::Transient { retry_after: Some(_), .. }), "{limited:?}");
    }

    #[tokio::test]
    async fn a_listing_pages_by_next_records_url_and_reads_typed_values() {
        let (server, client) = org().await;
        Mock::given(method("GET"))
            .and(path("/services/data/v62.0/query"))
            .and(query_param("q", "SELECT Id, LastModifiedDate, Crm_Gateway_Id__c, Owner_Contact_Id__c, Name, Location__c, Bedrooms__c, Price_Per_Night__c, Currency__c, Status__c FROM Rental_Property__c WHERE LastModifiedDate >= 2026-12-01T00:00:00Z ORDER BY LastModifiedDate, Id"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"done": false, "totalSize": 2,
                "nextRecordsUrl": "/services/data/v62.0/query/01gA-1",
                "records": [{"attributes": {"type": "Rental_Property__c"}, "Id": "a01A", "LastModifiedDate": "2026-12-01T10:00:00.000+0000",
                    "Crm_Gateway_Id__c": "7", "Name": "Mill House", "Owner_Contact_Id__c": "003A", "Location__c": "Haworth",
                    "Bedrooms__c": 6, "Price_Per_Night__c": 120.5, "Currency__c": "GBP", "Status__c": "active"}]})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/services/data/v62.0/query/01gA-1"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"done": true, "totalSize": 2, "records": []})),
            )
            .mount(&server)
            .await;
        let since = "2026-12-01T00:00:00Z".parse().unwrap();
        let page = client.list_since(RecordType::Property, since, None, 200).await.unwrap();
        let record = &page.data[0];
        assert_eq!((record.id.as_str(), record.external_id.as_deref()), ("a01A", Some("7")));
        assert_eq!(record.fields["bedrooms"], json!(6));
        assert_eq!(record.fields["pricePerNight"], json!(120.5));
        assert_eq!(record.updated_at.unwrap().to_rfc3339(), "2026-12-01T10:00:00+00:00");
        let next = page.next_cursor.clone().expect("a next page");
        let last = client.list_since(RecordType::Property, since, Some(&next), 200).await.unwrap();
        assert!(last.data.is_empty() && last.next_cursor.is_none());
    }
}
