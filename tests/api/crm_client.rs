//! The TreadSoft client against a local stub of TreadSoft's API.

use crm_gateway::config::TreadSoftConfig;
use crm_gateway::crm::rate_limit::RateLimit;
use crm_gateway::crm::signing::request_signature;
use crm_gateway::crm::treadsoft::TreadSoftClient;
use crm_gateway::crm::{CrmClient, CrmError};
use crm_gateway::sync::mapping::RecordType;
use serde_json::{Map, Value, json};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SECRET: &str = "tss_test_Zx8pQ2vN7yR4kL1mW9sT3bH6";

async fn client(server: &MockServer, timeout: Duration) -> TreadSoftClient {
    let config = TreadSoftConfig {
        api_url: server.uri().parse().unwrap(),
        api_key: "key_test".to_owned().into(),
        api_secret: SECRET.to_owned().into(),
    };
    TreadSoftClient::new(config, timeout, RateLimit { requests: 1000, period: Duration::from_secs(1) }).unwrap()
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Whether TreadSoft would accept the request's signature.
fn signed_correctly(request: &Request) -> bool {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let path_and_query = match request.url.query() {
        Some(q) => format!("{}?{q}", request.url.path()),
        None => request.url.path().to_owned(),
    };
    let expected = request_signature(
        SECRET,
        header("x-treadsoft-timestamp").parse().unwrap_or_default(),
        request.method.as_str(),
        &path_and_query,
        &request.body,
    );
    header("x-treadsoft-key") == "key_test" && header("x-treadsoft-request-signature") == expected
}

#[tokio::test]
async fn create_is_signed_carries_an_idempotency_key_and_returns_the_request_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/contacts"))
        .respond_with(
            ResponseTemplate::new(201)
                .insert_header("X-TreadSoft-Request-Id", "req_1")
                .set_body_json(json!({"id": "crm_contact_1", "externalId": "user_1", "version": 1, "updatedAt": "2025-01-05T10:30:00.000Z", "firstName": "John"})),
        )
        .expect(1)
        .mount(&server)
        .await;

    let written = client(&server, Duration::from_secs(5))
        .await
        .create(RecordType::Contact, &fields(json!({"firstName": "John", "externalId": "user_1"})), "idem-1")
        .await
        .unwrap();

    assert_eq!(written.record.id, "crm_contact_1");
    assert_eq!(written.request_id.as_deref(), Some("req_1"));
    let received = &server.received_requests().await.unwrap()[0];
    assert!(signed_correctly(received), "the stub could not verify the signature");
    assert_eq!(received.headers.get("idempotency-key").unwrap(), "idem-1");
}

#[tokio::test]
async fn a_list_signs_its_query_string() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/properties"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [], "nextCursor": null})))
        .mount(&server)
        .await;

    let since = "2025-01-01T00:00:00Z".parse().unwrap();
    let page =
        client(&server, Duration::from_secs(5)).await.list_since(RecordType::Property, since, None, 200).await.unwrap();

    assert!(page.data.is_empty());
    let received = &server.received_requests().await.unwrap()[0];
    assert_eq!(received.url.query(), Some("updatedSince=2025-01-01T00%3A00%3A00.000Z&limit=200"));
    assert!(signed_correctly(received));
}

#[tokio::test]
async fn a_409_duplicate_names_the_existing_contact() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(409).set_body_json(
                json!({"error": {"code": "duplicate", "message": "exists", "existingId": "crm_contact_9"}}),
            ),
        )
        .mount(&server)
        .await;

    let result = client(&server, Duration::from_secs(5)).await.create(RecordType::Contact, &Map::new(), "k").await;

    assert_eq!(result, Err(CrmError::Duplicate { existing_id: "crm_contact_9".into() }));
}

#[tokio::test]
async fn a_slow_answer_is_a_transient_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;

    let result = client(&server, Duration::from_millis(200))
        .await
        .update(RecordType::Contact, "crm_contact_1", &Map::new())
        .await;

    let error = result.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(error.to_string().contains("did not answer in time"), "{error}");
}

#[tokio::test]
async fn rate_limited_answers_carry_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "12")
                .set_body_json(json!({"error": {"code": "rate_limited", "message": "slow down"}})),
        )
        .mount(&server)
        .await;

    let result = client(&server, Duration::from_secs(5)).await.delete(RecordType::Booking, "crm_booking_1").await;

    assert!(
        matches!(result, Err(CrmError::Transient { status: Some(429), retry_after: Some(d), .. }) if d == Duration::from_secs(12))
    );
}

#[tokio::test]
async fn create_update_get_and_delete_work_for_every_record_type() {
    let stub = crate::treadsoft_stub::Stub::start().await;
    let config = TreadSoftConfig {
        api_url: stub.server.uri().parse().unwrap(),
        api_key: crate::treadsoft_stub::API_KEY.to_owned().into(),
        api_secret: crate::treadsoft_stub::API_SECRET.to_owned().into(),
    };
    let client = TreadSoftClient::new(
        config,
        Duration::from_secs(5),
        RateLimit { requests: 1000, period: Duration::from_secs(1) },
    )
    .unwrap();

    for t in RecordType::ALL {
        let external_id = format!("{}-1", t.as_str());
        let created = client
            .create(
                t,
                &fields(json!({"externalId": external_id, "email": format!("{external_id}@example.com")})),
                &format!("k-{external_id}"),
            )
            .await
            .unwrap();
        let id = created.record.id.clone();
        assert!(id.starts_with(&format!("crm_{}_", t.as_str())), "{id}");
        assert!(created.request_id.is_some());

        let updated = client.update(t, &id, &fields(json!({"status": "active"}))).await.unwrap();
        assert_eq!(updated.record.version, 2);
        assert_eq!(client.get(t, &id).await.unwrap().fields["status"], "active");

        client.delete(t, &id).await.unwrap();
        assert!(matches!(client.get(t, &id).await, Err(CrmError::NotFound { .. })), "{}", t.as_str());
        assert!(matches!(client.delete(t, &id).await, Err(CrmError::NotFound { .. })));
    }
    assert!(stub.state().calls.iter().all(|c| c.signed));
    assert!(stub.state().calls.iter().filter(|c| c.method == "POST").all(|c| c.idempotency_key.is_some()));
}
