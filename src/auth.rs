//! Who may call the app-facing `/api` routes: a client with `Authorization: Bearer <GATEWAY_API_TOKEN>`
//! (compared in constant time), or, when no token is configured, only clients on this machine.
//!
//! "On this machine" is judged by the peer address, which a reverse proxy on the same host makes
//! 127.0.0.1 for everyone: so without a token a request that carries a proxy's headers is refused.
//! A browser on this machine is a client on this machine too, and any site it has open could make
//! it POST here: so without a token a request a browser marks as coming from another site
//! (`Origin` of another host, `Sec-Fetch-Site` other than `same-origin`/`none`) is refused as well.
//! A bearer token is never sent by a browser on its own, so with one neither check is needed.

use crate::error::ApiError;
use crate::state::AppState;
use actix_web::ResponseError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

/// Middleware for the `/api` scope. A refusal is answered here as a response (not returned as
/// an error), so the outer layers count it and give it its request id like any other answer.
pub async fn require_api_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match refusal(&req) {
        Some(refused) => Ok(req.into_response(refused.error_response()).map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// Why `req` may not be served; `None` when it may.
fn refusal(req: &ServiceRequest) -> Option<ApiError> {
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
                None => Some(unauthorized("send Authorization: Bearer <GATEWAY_API_TOKEN>")),
                Some(given) if !bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) => {
                    Some(unauthorized("the bearer token is not valid"))
                }
                Some(_) => None,
            }
        }
        None => loopback_refusal(req).map(|refusal| ApiError::new(StatusCode::FORBIDDEN, "forbidden", refusal)),
    }
}

/// Headers a reverse proxy adds: their presence means the peer address is the proxy's.
const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Why a request is refused when no token is set; `None` when it is served.
fn loopback_refusal(req: &ServiceRequest) -> Option<String> {
    // `to_canonical`: a dual-stack listener sees 127.0.0.1 as ::ffff:127.0.0.1.
    if !req.peer_addr().is_some_and(|addr| addr.ip().to_canonical().is_loopback()) {
        return Some("GATEWAY_API_TOKEN is not set, so only clients on this machine are served".into());
    }
    let headers = req.headers();
    // A page of any site can make the operator's browser send it here under its own name, once
    // that name resolves to 127.0.0.1 (DNS rebinding): then Origin and Host agree. Only the
    // names of this machine are served.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !is_loopback_name(host_part(host)) {
        return Some(format!(
            "GATEWAY_API_TOKEN is not set, so requests are served only under a name of this machine \
             (localhost, 127.0.0.1, [::1]), not {host:?}: set a token"
        ));
    }
    if let Some(name) = PROXY_HEADERS.into_iter().find(|name| headers.contains_key(*name)) {
        return Some(format!(
            "GATEWAY_API_TOKEN is not set and this request came through a proxy ({name}), so it may come from \
             anywhere: set a token"
        ));
    }
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("?").to_owned());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site.as_str(), "same-origin" | "none")
    {
        return Some(format!(
            "GATEWAY_API_TOKEN is not set and a browser sent this request from another site ({site})"
        ));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let same = url::Url::parse(&origin).ok().is_some_and(|o| {
            o.host_str().is_some_and(|h| format!("{h}:{}", o.port_or_known_default().unwrap_or(0)) == with_port(host))
        });
        if !same {
            return Some(format!(
                "GATEWAY_API_TOKEN is not set and a browser sent this request from another origin ({origin})"
            ));
        }
    }
    None
}

/// The host of a `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `localhost` (and its subdomains) or a loopback address.
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// `host` or `host:port` from a Host header, with the port (80 when absent: the gateway speaks plain HTTP).
fn with_port(host: &str) -> String {
    let has_port = host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) && !host.ends_with(']');
    if has_port { host.to_owned() } else { format!("{host}:80") }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

#[cfg(test)]
mod tests {
    use super::{host_part, is_loopback_name};

    #[test]
    fn only_names_of_this_machine_are_loopback() {
        for host in ["localhost:8080", "127.0.0.1:8080", "127.0.0.1", "[::1]:8080", "LOCALHOST", "app.localhost:80"] {
            assert!(is_loopback_name(host_part(host)), "{host}");
        }
        for host in ["evil.example:8080", "10.0.0.5:8080", "[2001:db8::1]:8080", "localhost.evil.example", ""] {
            assert!(!is_loopback_name(host_part(host)), "{host}");
        }
    }
}
