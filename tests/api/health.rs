//! Liveness, readiness and the JSON error shape of the HTTP surface.

use crate::helpers::{TestApp, error_code};
use crate::on_both_databases;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn healthz_answers_while_the_process_is_alive(app: TestApp) {
    let response = app.get("/healthz").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

async fn readyz_checks_the_database(app: TestApp) {
    let response = app.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    let expected = match app.backend {
        crate::helpers::Backend::Sqlite => "sqlite",
        crate::helpers::Backend::Postgres => "postgres",
    };
    assert_eq!(body["checks"]["database"]["backend"], expected);
}

async fn readyz_is_unavailable_when_the_database_is_gone(app: TestApp) {
    app.db.clone().close().await.unwrap();

    let response = app.get("/readyz").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"]["status"], "error");
}

async fn unknown_routes_are_404_json(app: TestApp) {
    let response = app.get("/no/such/route").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "not_found");
}

async fn a_wrong_method_is_405_json(app: TestApp) {
    let response = app.request(Method::POST, "/healthz").await;

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers().get("allow").unwrap(), "GET");
    assert_eq!(error_code(response).await, "method_not_allowed");
}

async fn every_response_carries_a_request_id(app: TestApp) {
    let first = app.get("/healthz").await;
    let second = app.get("/no/such/route").await;

    let id = |r: &reqwest::Response| r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let (first, second) = (id(&first).expect("x-request-id"), id(&second).expect("x-request-id"));
    assert_ne!(first, second);
}

async fn stopping_finishes_and_closes_the_port(mut app: TestApp) {
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    app.stop().await.expect("a clean stop");

    let refused = reqwest::Client::new().get(format!("{}/healthz", app.address)).send().await;
    assert!(refused.is_err(), "the port still answers after a stop");
}

on_both_databases!(
    healthz_answers_while_the_process_is_alive,
    readyz_checks_the_database,
    readyz_is_unavailable_when_the_database_is_gone,
    unknown_routes_are_404_json,
    a_wrong_method_is_405_json,
    every_response_carries_a_request_id,
    stopping_finishes_and_closes_the_port,
);
