//! Webhook signature verification, over the raw body bytes, before anything is parsed.
//!
//! Two formats, chosen by the headers present:
//! - TreadSoft (API.md §4.1): `X-TreadSoft-Timestamp` and `X-TreadSoft-Signature: v1=<hex>[,v1=<hex>]`,
//!   HMAC-SHA256 keyed with the secret's UTF-8 bytes over `<timestamp>.<body>`.
//! - Standard Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64> ...`,
//!   keyed with the base64 after `whsec_`, over `<id>.<timestamp>.<body>`.
//!
//! Signatures are compared in constant time (`Mac::verify_slice`); any entry may match any secret,
//! so a rotation (two secrets on either side) needs no downtime.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const TREADSOFT_TIMESTAMP: &str = "x-treadsoft-timestamp";
pub const TREADSOFT_SIGNATURE: &str = "x-treadsoft-signature";
pub const TREADSOFT_DELIVERY: &str = "x-treadsoft-delivery";
pub const STANDARD_ID: &str = "webhook-id";
pub const STANDARD_TIMESTAMP: &str = "webhook-timestamp";
pub const STANDARD_SIGNATURE: &str = "webhook-signature";

/// Why a delivery was refused. Each maps to a distinct 401 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature or timestamp header is missing")]
    MissingSignature,
    #[error("no signature matches the body and any configured secret")]
    InvalidSignature,
    #[error("the timestamp is further from the gateway's clock than the tolerance")]
    TimestampOutOfTolerance,
}

impl VerifyError {
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::InvalidSignature => "invalid_signature",
            Self::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
        }
    }
}

/// The signature headers of one request, whichever format it uses.
#[derive(Debug, Clone, Copy)]
pub enum SignedHeaders<'a> {
    TreadSoft { timestamp: Option<&'a str>, signature: Option<&'a str> },
    Standard { id: Option<&'a str>, timestamp: Option<&'a str>, signature: Option<&'a str> },
}

/// Verifies `body` against the headers with any of `secrets`, at Unix time `now`.
pub fn verify(
    headers: SignedHeaders<'_>,
    body: &[u8],
    secrets: &[SecretString],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let (timestamp, matched) = match headers {
        SignedHeaders::TreadSoft { timestamp, signature } => {
            let (Some(timestamp), Some(signature)) = (present(timestamp), present(signature)) else {
                return Err(VerifyError::MissingSignature);
            };
            let signatures: Vec<Vec<u8>> = signature
                .split(',')
                .filter_map(|entry| entry.trim().strip_prefix("v1="))
                .filter_map(|hex_sig| hex::decode(hex_sig).ok())
                .collect();
            let matched = secrets.iter().any(|secret| {
                let mac = keyed(secret.expose_secret().as_bytes()).chain_update(timestamp).chain_update(b".");
                matches_any(mac.chain_update(body), &signatures)
            });
            (timestamp, matched)
        }
        SignedHeaders::Standard { id, timestamp, signature } => {
            let (Some(id), Some(timestamp), Some(signature)) = (present(id), present(timestamp), present(signature))
            else {
                return Err(VerifyError::MissingSignature);
            };
            let signatures: Vec<Vec<u8>> = signature
                .split_whitespace()
                .filter_map(|entry| entry.strip_prefix("v1,"))
                .filter_map(|b64| BASE64.decode(b64).ok())
                .collect();
            let matched = secrets.iter().filter_map(|s| standard_key(s.expose_secret())).any(|key| {
                let mac = keyed(&key).chain_update(id).chain_update(b".").chain_update(timestamp).chain_update(b".");
                matches_any(mac.chain_update(body), &signatures)
            });
            (timestamp, matched)
        }
    };
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    let sent: i64 = timestamp.parse().map_err(|_| VerifyError::InvalidSignature)?;
    // A timestamp near either end of i64 overflows `now - sent`: it is out of tolerance too.
    if now.checked_sub(sent).and_then(i64::checked_abs).is_none_or(|skew| skew > tolerance_secs) {
        return Err(VerifyError::TimestampOutOfTolerance);
    }
    Ok(())
}

/// A header's text, trimmed, if it is there and not blank.
pub(crate) fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| !s.is_empty())
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// Whether any candidate equals the MAC, each compared in constant time.
fn matches_any(mac: HmacSha256, candidates: &[Vec<u8>]) -> bool {
    candidates.iter().any(|candidate| mac.clone().verify_slice(candidate).is_ok())
}

/// A Standard Webhooks key: the base64 after `whsec_`. Secrets that are not base64 do not apply.
fn standard_key(secret: &str) -> Option<Vec<u8>> {
    BASE64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).ok()
}

/// The TreadSoft signature header for `body` at `timestamp` (what `crm-gateway sign` prints).
pub fn treadsoft_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = keyed(secret.as_bytes()).chain_update(timestamp.to_string()).chain_update(b".").chain_update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks signature header for `body`.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = standard_key(secret)?;
    let mac = keyed(&key)
        .chain_update(id)
        .chain_update(b".")
        .chain_update(timestamp.to_string())
        .chain_update(b".")
        .chain_update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn secrets(values: &Value) -> Vec<SecretString> {
        values.as_array().unwrap().iter().map(|s| SecretString::from(s.as_str().unwrap().to_owned())).collect()
    }

    #[test]
    fn every_treadsoft_webhook_vector() {
        let vectors: Value = serde_json::from_str(include_str!("../../tests/fixtures/treadsoft-vectors.json")).unwrap();
        let list = vectors["webhook"].as_array().unwrap();
        assert!(list.len() >= 14);
        for v in list {
            let name = v["name"].as_str().unwrap();
            let headers = SignedHeaders::TreadSoft {
                timestamp: v["timestamp"].as_str(),
                signature: v["signatureHeader"].as_str(),
            };
            let result = verify(
                headers,
                v["body"].as_str().unwrap().as_bytes(),
                &secrets(&v["secrets"]),
                v["now"].as_i64().unwrap(),
                300,
            );
            match (v["valid"].as_bool().unwrap(), v["reason"].as_str()) {
                (true, _) => assert_eq!(result, Ok(()), "{name}"),
                (false, Some("timestamp")) => assert_eq!(result, Err(VerifyError::TimestampOutOfTolerance), "{name}"),
                (false, Some("signature")) => assert!(
                    matches!(result, Err(VerifyError::InvalidSignature | VerifyError::MissingSignature)),
                    "{name}: {result:?}"
                ),
                (false, other) => panic!("{name}: unknown reason {other:?}"),
            }
        }
    }

    #[test]
    fn every_standard_webhooks_vector_verifies_and_signs() {
        let vectors: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/standard-webhooks-vectors.json")).unwrap();
        for v in vectors["vectors"].as_array().unwrap() {
            let secret = v["secret"].as_str().unwrap();
            let (id, ts, body) =
                (v["webhookId"].as_str(), v["webhookTimestamp"].as_str().unwrap(), v["body"].as_str().unwrap());
            let now: i64 = ts.parse().unwrap();
            let headers = SignedHeaders::Standard { id, timestamp: Some(ts), signature: v["signature"].as_str() };
            let key = [SecretString::from(secret.to_owned())];

            assert_eq!(verify(headers, body.as_bytes(), &key, now, 300), Ok(()));
            assert_eq!(
                standard_signature(secret, id.unwrap(), now, body.as_bytes()).as_deref(),
                v["signature"].as_str()
            );
            assert_eq!(verify(headers, b"{}", &key, now, 300), Err(VerifyError::InvalidSignature), "tampered body");
            assert_eq!(
                verify(headers, body.as_bytes(), &key, now + 301, 300),
                Err(VerifyError::TimestampOutOfTolerance)
            );
        }
    }

    #[test]
    fn a_standard_header_may_carry_several_signatures() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let good = standard_signature(secret, "msg_1", 1_700_000_000, b"{}").unwrap();
        let header = format!("v1,AAAA {good} v2,ignored");
        let headers =
            SignedHeaders::Standard { id: Some("msg_1"), timestamp: Some("1700000000"), signature: Some(&header) };

        assert_eq!(verify(headers, b"{}", &[SecretString::from(secret.to_owned())], 1_700_000_000, 300), Ok(()));
    }

    #[test]
    fn missing_headers_are_missing_signature() {
        let secret = [SecretString::from("s".to_owned())];
        let none = SignedHeaders::TreadSoft { timestamp: None, signature: Some("v1=00") };
        assert_eq!(verify(none, b"{}", &secret, 0, 300), Err(VerifyError::MissingSignature));
        let none = SignedHeaders::Standard { id: None, timestamp: Some("0"), signature: Some("v1,AA==") };
        assert_eq!(verify(none, b"{}", &secret, 0, 300), Err(VerifyError::MissingSignature));
    }

    #[test]
    fn a_signed_timestamp_at_the_ends_of_i64_is_out_of_tolerance() {
        // Found by the fuzzer (fuzz/corpus/signature/regression-timestamp-overflow): `now - sent`
        // overflowed, a panic with overflow checks and a wrapped skew without.
        let secret = [SecretString::from("s".to_owned())];
        for (sent, now) in [(i64::MIN, 1_736_073_000), (i64::MAX, -1), (-1_736_073_000, i64::MAX)] {
            let header = treadsoft_signature("s", sent, b"{}");
            let timestamp = sent.to_string();
            let headers = SignedHeaders::TreadSoft { timestamp: Some(&timestamp), signature: Some(&header) };
            assert_eq!(
                verify(headers, b"{}", &secret, now, 300),
                Err(VerifyError::TimestampOutOfTolerance),
                "{sent} at {now}"
            );
        }
    }

    #[test]
    fn signing_round_trips_with_verification() {
        let header = treadsoft_signature("whsec_x", 1_736_073_000, "é".as_bytes());
        let headers = SignedHeaders::TreadSoft { timestamp: Some("1736073000"), signature: Some(&header) };

        assert_eq!(
            verify(headers, "é".as_bytes(), &[SecretString::from("whsec_x".to_owned())], 1_736_073_000, 300),
            Ok(())
        );
    }
}
