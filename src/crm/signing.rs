//! Signing REST requests to TreadSoft (API.md §3.1): `v1=` + lowercase hex HMAC-SHA256, keyed with
//! the API secret, over `<timestamp>\n<METHOD>\n<path and query>\n<raw body>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `X-TreadSoft-Request-Signature` header value.
pub fn request_signature(api_secret: &str, timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(api_secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path_and_query.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_request_vector() {
        let vectors: Value = serde_json::from_str(include_str!("../../tests/fixtures/treadsoft-vectors.json")).unwrap();
        let list = vectors["request"].as_array().unwrap();
        assert_eq!(list.len(), 4);
        for v in list {
            let s = |k: &str| v[k].as_str().unwrap();
            let signature = request_signature(
                s("apiSecret"),
                s("timestamp").parse().unwrap(),
                s("method"),
                s("pathAndQuery"),
                s("body").as_bytes(),
            );
            assert_eq!(signature, s("signatureHeader"), "{}", s("name"));
        }
    }
}
