//! HubSpot's webhook signatures (`../shared/providers/hubspot.md` §2.1-2.3).
//!
//! Only v3 is accepted: `X-HubSpot-Signature-v3` is standard base64 of HMAC-SHA256, keyed with the
//! app's client secret, over `METHOD + URI + raw body + timestamp`, where the timestamp is the
//! `X-HubSpot-Request-Timestamp` header text (Unix milliseconds) and the URI is the exact public
//! URL HubSpot calls (configured, never rebuilt from `Host` or `X-Forwarded-*`). A request older
//! than five minutes, or more than five minutes ahead, is refused; the comparison is constant
//! time (`Mac::verify_slice`). v1 and v2 (plain SHA-256 over `secret + ...`, hex) carry no
//! timestamp, so a captured request would replay forever: they are not accepted, and exist here
//! only as the published vectors' checks of the same string building.

use crate::inbound::verify::present;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub const SIGNATURE_V3: &str = "x-hubspot-signature-v3";
pub const TIMESTAMP: &str = "x-hubspot-request-timestamp";

/// How far a request's timestamp may be from the clock, either way.
pub const TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Why a HubSpot delivery was refused (each a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp header is missing")]
    Missing,
    #[error("X-HubSpot-Request-Timestamp is not Unix milliseconds")]
    BadTimestamp,
    #[error("the request is more than five minutes from the gateway's clock")]
    Stale,
    #[error("the signature matches no configured client secret (or is not base64)")]
    Invalid,
}

impl Refused {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_signature",
            Self::BadTimestamp | Self::Stale => "timestamp_out_of_tolerance",
            Self::Invalid => "invalid_signature",
        }
    }
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// An HMAC over the v3 string to sign: method, URI, body, timestamp, in that order.
fn v3_mac(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> Hmac<Sha256> {
    mac(secret).chain_update(method.as_bytes()).chain_update(uri.as_bytes()).chain_update(body).chain_update(timestamp)
}

/// The v3 signature header value HubSpot sends for this request.
pub fn v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    BASE64.encode(v3_mac(secret, method, uri, body, timestamp).finalize().into_bytes())
}

/// v1 (legacy, not accepted): lowercase hex SHA-256 of `secret + body`.
pub fn v1(secret: &str, body: &[u8]) -> String {
    hex::encode(Sha256::new().chain_update(secret).chain_update(body).finalize())
}

/// v2 (legacy, not accepted): lowercase hex SHA-256 of `secret + method + uri + body`.
pub fn v2(secret: &str, method: &str, uri: &str, body: &[u8]) -> String {
    hex::encode(Sha256::new().chain_update(secret).chain_update(method).chain_update(uri).chain_update(body).finalize())
}

/// Checks a delivery's v3 signature against any of `secrets` (two during a rotation), for the
/// request `method` to `uri` (the configured public URL) with `body`, at `now_ms`.
pub fn verify(
    signature: Option<&str>,
    timestamp: Option<&str>,
    method: &str,
    uri: &str,
    body: &[u8],
    secrets: &[SecretString],
    now_ms: i64,
) -> Result<(), Refused> {
    let (Some(signature), Some(timestamp)) = (present(signature), present(timestamp)) else {
        return Err(Refused::Missing);
    };
    let at: i64 = timestamp.parse().map_err(|_| Refused::BadTimestamp)?;
    // A timestamp near either end of i64 overflows the difference: out of tolerance too.
    if now_ms.checked_sub(at).and_then(i64::checked_abs).is_none_or(|skew| skew > TOLERANCE_MS) {
        return Err(Refused::Stale);
    }
    let given = BASE64.decode(signature).map_err(|_| Refused::Invalid)?;
    let matched = secrets
        .iter()
        .any(|secret| v3_mac(secret.expose_secret(), method, uri, body, timestamp).verify_slice(&given).is_ok());
    if matched { Ok(()) } else { Err(Refused::Invalid) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../../tests/fixtures/hubspot-vectors.json");

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| (*s).to_owned().into()).collect()
    }

    #[test]
    fn every_published_vector() {
        let file: Value = serde_json::from_str(VECTORS).unwrap();
        let secret = file["secret"].as_str().unwrap();
        let vectors = file["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 6);
        for v in vectors {
            let s = |k: &str| v[k].as_str();
            let body = s("body").unwrap().as_bytes();
            let expected = s("expected").unwrap();
            let computed = match s("version").unwrap() {
                "v1" => v1(secret, body),
                "v2" => v2(secret, s("method").unwrap(), s("uri").unwrap(), body),
                "v3" => v3(secret, s("method").unwrap(), s("uri").unwrap(), body, s("timestamp").unwrap()),
                other => panic!("unknown version {other}"),
            };
            assert_eq!(computed, expected, "{}", s("source").unwrap());
        }
    }

    /// The v3 vector, checked by `verify` with the clock at its timestamp (it is decades old).
    #[test]
    fn the_v3_vector_verifies_and_every_altered_part_is_refused() {
        let file: Value = serde_json::from_str(VECTORS).unwrap();
        let v = &file["vectors"][5];
        let secret = file["secret"].as_str().unwrap();
        let (uri, body, ts) =
            (v["uri"].as_str().unwrap(), v["body"].as_str().unwrap(), v["timestamp"].as_str().unwrap());
        let signature = v["expected"].as_str().unwrap();
        let now: i64 = ts.parse().unwrap();
        let ok = secrets(&["old-secret", secret]);
        let check = |signature: Option<&str>, timestamp: Option<&str>, uri: &str, body: &str, now: i64| {
            verify(signature, timestamp, "POST", uri, body.as_bytes(), &ok, now)
        };

        assert_eq!(check(Some(signature), Some(ts), uri, body, now), Ok(()), "any configured secret may match");
        assert_eq!(
            verify(Some(signature), Some(ts), "POST", uri, body.as_bytes(), &secrets(&["wrong"]), now),
            Err(Refused::Invalid)
        );
        let http = uri.replacen("https", "http", 1);
        assert_eq!(check(Some(signature), Some(ts), &http, body, now), Err(Refused::Invalid), "http vs https");
        let slash = format!("{uri}/");
        assert_eq!(check(Some(signature), Some(ts), &slash, body, now), Err(Refused::Invalid), "a trailing slash");
        let respaced = body.replace(':', ": ");
        assert_eq!(check(Some(signature), Some(ts), uri, &respaced, now), Err(Refused::Invalid), "a re-spaced body");
        assert_eq!(
            verify(Some(signature), Some(ts), "GET", uri, body.as_bytes(), &ok, now),
            Err(Refused::Invalid),
            "another method"
        );
        let later = (now + 1).to_string();
        assert_eq!(check(Some(signature), Some(&later), uri, body, now), Err(Refused::Invalid), "another timestamp");
        assert_eq!(check(Some("not base64!"), Some(ts), uri, body, now), Err(Refused::Invalid));
        assert_eq!(check(None, Some(ts), uri, body, now), Err(Refused::Missing));
        assert_eq!(check(Some(signature), None, uri, body, now), Err(Refused::Missing));
        assert_eq!(check(Some(signature), Some(" "), uri, body, now), Err(Refused::Missing));
        assert_eq!(check(Some(signature), Some("15000000.5"), uri, body, now), Err(Refused::BadTimestamp));
    }

    #[test]
    fn the_timestamp_is_milliseconds_within_five_minutes_either_way() {
        let (secret, uri, body) = ("s3cret", "https://gateway.example.com/api/crm/webhooks/hubspot", b"[]");
        let now = 1_764_000_000_000_i64;
        let signed = |at: i64| (v3(secret, "POST", uri, body, &at.to_string()), at.to_string());
        let check = |(signature, at): (String, String)| {
            verify(Some(&signature), Some(&at), "POST", uri, body, &secrets(&[secret]), now)
        };
        assert_eq!(check(signed(now)), Ok(()));
        assert_eq!(check(signed(now - TOLERANCE_MS)), Ok(()), "five minutes old is still taken");
        assert_eq!(check(signed(now - TOLERANCE_MS - 1)), Err(Refused::Stale));
        assert_eq!(check(signed(now + 6 * 60 * 1000)), Err(Refused::Stale), "six minutes ahead");
        assert_eq!(check(signed(now / 1000)), Err(Refused::Stale), "seconds are not milliseconds");
        assert_eq!(check(signed(i64::MIN)), Err(Refused::Stale), "no overflow at the ends of i64");
        assert_eq!(check(signed(i64::MAX)), Err(Refused::Stale));
        assert_eq!(Refused::Stale.code(), "timestamp_out_of_tolerance");
    }
}
