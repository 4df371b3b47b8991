//! Who may call the app-facing `/api` routes: a client with `Authorization: Bearer <GATEWAY_API_TOKEN>`
//! (compared in constant time), or, when no token is configured, only clients on this machine.

use crate::error::ApiError;
use crate::startup::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

/// Middleware for the `/api` scope.
pub async fn require_api_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let token = state.as_ref().and_then(|s| s.config.api_token.as_ref());
    match token {
        Some(expected) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                None => return Err(unauthorized("send Authorization: Bearer <GATEWAY_API_TOKEN>").into()),
                Some(given) if !bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) => {
                    return Err(unauthorized("the bearer token is not valid").into());
                }
                Some(_) => {}
            }
        }
        None => {
            let loopback = req.peer_addr().is_some_and(|addr| addr.ip().is_loopback());
            if !loopback {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "GATEWAY_API_TOKEN is not set, so only clients on this machine are served",
                )
                .into());
            }
        }
    }
    next.call(req).await
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}
