//! Salesforce as the CRM (`CRM_PROVIDER=salesforce`), outbound, against a wiremock org: the
//! Change Data Capture side is not built yet (issue 13).

use crate::helpers::{TestApp, TestDatabase};
use crate::on_both_databases_without_app;
use crm_gateway::config::{CrmProvider, Provider, SalesforceInbound};
use crm_gateway::crm::mapping::{Flavor, Mapping};
use crm_gateway::crm::salesforce::client::SalesforceConfig;
use entity::enums::CrmSyncStatus;
use entity::user;
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use std::sync::Arc;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn org() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "tok", "instance_url": server.uri(),
            "id": "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
        })))
        .mount(&server)
        .await;
    server
}

fn use_salesforce(config: &mut crm_gateway::config::Config, server: &MockServer) {
    let mapping = Arc::new(Mapping::defaults(Flavor::Salesforce));
    config.provider = Provider::Salesforce(SalesforceInbound {
        pubsub_url: "http://127.0.0.1:1".parse().unwrap(),
        channel: "/data/ChangeEvents".into(),
        mapping: mapping.clone(),
    });
    config.crm = CrmProvider::Salesforce(SalesforceConfig {
        api_url: server.uri().parse().unwrap(),
        client_id: "key".to_owned().into(),
        client_secret: "secret".to_owned().into(),
        api_version: "v62.0".into(),
        client_tag: "crm-gateway".into(),
        mapping,
    });
    config.crm_request_timeout = std::time::Duration::from_millis(500);
}

async fn an_owner_registered_here_reaches_salesforce_as_a_contact(database: TestDatabase) {
    let server = org().await;
    Mock::given(method("PATCH"))
        .and(path("/services/data/v62.0/composite/sobjects/Contact/Crm_Gateway_Id__c"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": "003A", "success": true, "created": true, "errors": []}])),
        )
        .mount(&server)
        .await;
    let app = TestApp::spawn_with(database, |c| use_salesforce(c, &server)).await;
    let owner = json!({"id": "user_1", "name": "Mary Anne van Dyke", "email": "user_1@example.com", "phone": "+44 1",
        "companyName": null, "role": "owner", "membershipStatus": "pending"});
    let response = app.post_events(&json!({"id": "ev_1", "type": "owner.registered", "data": owner})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.deliver_pending().await, 1);

    let user = user::Entity::find_by_id("user_1").one(app.db.reader()).await.unwrap().unwrap();
    assert_eq!((user.crm_id.as_deref(), user.crm_sync_status), (Some("003A"), CrmSyncStatus::Synced));
    let sent = server.received_requests().await.unwrap().into_iter().find(|r| r.method.as_str() == "PATCH").unwrap();
    assert_eq!(sent.headers.get("sforce-call-options").unwrap(), "client=crm-gateway");
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    let record = &body["records"][0];
    assert_eq!((record["FirstName"].as_str(), record["LastName"].as_str()), (Some("Mary"), Some("Anne van Dyke")));
    assert_eq!(record["Crm_Gateway_Id__c"], "user_1");

    // No webhook route answers for Salesforce.
    for route in ["treadsoft", "hubspot"] {
        let response = app.request(reqwest::Method::POST, &format!("/api/crm/webhooks/{route}")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{route}");
    }
}

on_both_databases_without_app!(an_owner_registered_here_reaches_salesforce_as_a_contact);
