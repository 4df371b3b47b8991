//! Webhook signature verification (`inbound::verify`).
//!
//! Any headers, secrets, body and clock: an answer, never a panic, and `Ok` only within the
//! tolerance. A body signed with a configured secret (TreadSoft and Standard Webhooks formats)
//! verifies at any time within the tolerance, among other secrets too, and is refused with a
//! byte of the body flipped, with another secret, or at a clock outside the tolerance.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use crm_gateway::inbound::verify::{self, SignedHeaders, VerifyError};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// Read the fuzzed headers as Standard Webhooks ones rather than TreadSoft's.
    standard: bool,
    id: Option<&'a str>,
    timestamp: Option<&'a str>,
    signature: Option<&'a str>,
    /// The configured secrets; the first (or a default) signs the body for the properties.
    secrets: Vec<&'a str>,
    /// When the body is signed, and the gateway's clock.
    signed_at: i64,
    now: i64,
    tolerance: u16,
    /// Which byte of the body to change, and how (XOR, never 0).
    flip_at: u16,
    flip_mask: u8,
    body: &'a [u8],
}

fn secrets(values: &[&str]) -> Vec<SecretString> {
    values.iter().map(|s| SecretString::from((*s).to_owned())).collect()
}

/// Whether `now` and `sent` are at most `tolerance` seconds apart, without overflow.
fn within(now: i64, sent: i64, tolerance: i64) -> bool {
    (i128::from(now) - i128::from(sent)).abs() <= i128::from(tolerance)
}

fuzz_target!(|input: Input<'_>| {
    let tolerance = i64::from(input.tolerance);
    let body = input.body;

    // Anything at all: no panic, and Ok only for a timestamp within the tolerance.
    let headers = if input.standard {
        SignedHeaders::Standard { id: input.id, timestamp: input.timestamp, signature: input.signature }
    } else {
        SignedHeaders::TreadSoft { timestamp: input.timestamp, signature: input.signature }
    };
    if verify::verify(headers, body, &secrets(&input.secrets), input.now, tolerance).is_ok() {
        let sent: i64 = input.timestamp.unwrap_or_default().trim().parse().expect("Ok with an unparsable timestamp");
        assert!(within(input.now, sent, tolerance), "Ok outside the tolerance");
    }

    let secret = input.secrets.first().copied().unwrap_or("whsec_fuzz");
    let key = secrets(&[secret]);
    // The same secret's bytes as a Standard Webhooks (`whsec_` base64) key.
    let standard_secret = format!("whsec_{}", BASE64.encode(secret));
    let mut rotation = secrets(&input.secrets);
    rotation.push(SecretString::from(secret.to_owned()));
    rotation.push(SecretString::from(standard_secret.clone()));
    // Another secret, also as an HMAC key (which is zero-padded: `{secret}\0` would be the same).
    let wrong = secrets(&[&format!("{secret}x")]);
    let timestamp = input.signed_at.to_string();
    // A clock within the tolerance of the signing time, when one fits in an i64.
    let skew = input.now.rem_euclid(2 * tolerance + 1) - tolerance;
    let close = input.signed_at.checked_add(skew);
    let flipped = (!body.is_empty()).then(|| {
        let mut flipped = body.to_vec();
        flipped[usize::from(input.flip_at) % body.len()] ^= input.flip_mask.max(1);
        flipped
    });
    let at_now =
        if within(input.now, input.signed_at, tolerance) { Ok(()) } else { Err(VerifyError::TimestampOutOfTolerance) };

    let check = |headers: SignedHeaders<'_>, key: &[SecretString], wrong: &[SecretString]| {
        if let Some(close) = close {
            assert_eq!(verify::verify(headers, body, key, close, tolerance), Ok(()), "signed, within the tolerance");
            assert_eq!(verify::verify(headers, body, &rotation, close, tolerance), Ok(()), "among other secrets");
            assert_eq!(
                verify::verify(headers, body, wrong, close, tolerance),
                Err(VerifyError::InvalidSignature),
                "another secret"
            );
            if let Some(flipped) = &flipped {
                assert_eq!(
                    verify::verify(headers, flipped, key, close, tolerance),
                    Err(VerifyError::InvalidSignature),
                    "a flipped byte"
                );
            }
        }
        assert_eq!(verify::verify(headers, body, key, input.now, tolerance), at_now, "at the fuzzed clock");
    };

    // TreadSoft: HMAC keyed with the secret's bytes.
    let header = verify::treadsoft_signature(secret, input.signed_at, body);
    check(SignedHeaders::TreadSoft { timestamp: Some(&timestamp), signature: Some(&header) }, &key, &wrong);

    // Standard Webhooks.
    let standard_key = secrets(&[&standard_secret]);
    let standard_wrong = secrets(&[&format!("whsec_{}", BASE64.encode(format!("{secret}x")))]);
    let id = input.id.map(str::trim).filter(|id| !id.is_empty()).unwrap_or("msg_fuzz");
    let header = verify::standard_signature(&standard_secret, id, input.signed_at, body).expect("a base64 key");
    check(
        SignedHeaders::Standard { id: Some(id), timestamp: Some(&timestamp), signature: Some(&header) },
        &standard_key,
        &standard_wrong,
    );
});
