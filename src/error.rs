//! The one JSON error shape every route answers with: `{"error": {"code", "message"}}`.

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::{StatusCode, header};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse, ResponseError, error::JsonPayloadError, web};
use serde::Serialize;
use std::fmt;

/// An error a client sees: a status, a stable machine-readable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure inside the gateway. The cause is logged; the client gets no internals.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %ErrorChain(cause), "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the gateway failed to handle the request")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(Body { error: Detail { code: self.code, message: &self.message } })
    }
}

/// Displays an error with every cause in its chain, for logs.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The JSON extractor's configuration: size limit and errors in the shape above.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|err, _req| json_error(err).into())
}

fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is {length} bytes; the limit is {limit}"),
        ),
        JsonPayloadError::Overflow { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) => {
            let code = if e.is_syntax() || e.is_eof() { "invalid_json" } else { "invalid_request" };
            ApiError::bad_request(code, e.to_string())
        }
        other => ApiError::bad_request("invalid_request", other.to_string()),
    }
}

/// The answer for a path no route matches.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.path())).error_response()
}

/// A resource that answers 405 with an `Allow` header (not the app's 404) to methods it does not
/// serve; `allow` lists the ones it does, e.g. `"GET"` or `"GET, POST"`.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {}; use {allow}", req.method(), req.path()),
        )
        .error_response();
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        response
    }))
}

/// Rewrites error responses that actix-web produced itself (405 from a resource, 413 from a
/// payload limit, ...) into the JSON shape; responses that are JSON already pass through.
pub fn json_error_responses<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => {
            ("not_found", format!("no route for {} {}", res.request().method(), res.request().path()))
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", format!("{} is not allowed on {}", res.request().method(), res.request().path()))
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is over the size limit".to_owned()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported Content-Type".to_owned()),
        s if s.is_server_error() => ("internal_error", "the gateway failed to handle the request".to_owned()),
        s => ("bad_request", s.canonical_reason().unwrap_or("bad request").to_owned()),
    };
    let (req, res) = res.into_parts();
    let mut json = ApiError::new(status, code, message).error_response();
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let res: ServiceResponse<EitherBody<B, BoxBody>> = ServiceResponse::new(req, json).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

/// The answer when work could not be written: `409` when it broke a uniqueness rule another
/// write won, `503` when trying again can help (the database is unreachable, or the work lost a
/// conflict with another instance), `500` otherwise.
impl From<crate::writer::WriteError> for ApiError {
    fn from(e: crate::writer::WriteError) -> Self {
        use crate::writer::WriteError;
        match &e {
            WriteError::Work(cause) if crate::db::is_unique_violation(cause) => {
                tracing::warn!(error = %ErrorChain(&e), "a write broke a uniqueness rule");
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a record with the same key was written at the same time",
                )
            }
            WriteError::Work(cause) if !crate::db::is_conflict(cause) => ApiError::internal(&e),
            _ => storage_unavailable(&e),
        }
    }
}

/// A read that failed: `503` when the database could not be reached or the read lost a
/// conflict (trying again can help), `500` otherwise, the same as for writes.
impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match &e {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => storage_unavailable(&e),
            cause if crate::db::is_conflict(cause) => storage_unavailable(&e),
            _ => ApiError::internal(&e),
        }
    }
}

fn storage_unavailable(e: &dyn std::error::Error) -> ApiError {
    tracing::error!(error = %ErrorChain(e), "the database could not do the work");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database could not do the work; nothing of it was written, send it again",
    )
}
