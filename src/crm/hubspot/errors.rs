//! HubSpot's answers sorted by what the gateway does about them (`hubspot.md` §3.6, §3.8).
//!
//! Every member of an error body is optional (HubSpot says so); the raw body is kept for the log.
//! A 409 names the record that exists already (`Existing ID: 2926551`, in `message` or in
//! `errors[].message`): it is linked, and the change sent again as an update.

use crate::crm::CrmError;
use serde::Deserialize;
use std::time::Duration;

/// HubSpot's error body; every member optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub sub_category: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub policy_name: Option<String>,
    #[serde(default)]
    pub errors: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorBody {
    /// The body read leniently: what is not an error body is kept as its message.
    pub fn read(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_else(|_| Self {
            message: Some(String::from_utf8_lossy(body).chars().take(500).collect()),
            ..Default::default()
        })
    }

    /// The id in `Existing ID: N`, from the message, else from a detail's message.
    pub fn existing_id(&self) -> Option<String> {
        let messages = self.message.iter().chain(self.errors.iter().filter_map(|e| e.message.as_ref()));
        messages.filter_map(|m| existing_id_in(m)).next()
    }

    fn code(&self) -> String {
        self.category.clone().or_else(|| self.error.clone()).unwrap_or_else(|| "error".into())
    }

    fn text(&self) -> String {
        let mut text = self.message.clone().unwrap_or_default();
        for detail in &self.errors {
            if let Some(m) = &detail.message {
                text.push_str(if text.is_empty() { "" } else { "; " });
                text.push_str(m);
            }
        }
        if let Some(id) = &self.correlation_id {
            text.push_str(&format!(" (correlation id {id})"));
        }
        text
    }
}

/// The digits after `Existing ID:` in `message`.
fn existing_id_in(message: &str) -> Option<String> {
    let at = message.find("Existing ID:")? + "Existing ID:".len();
    let digits: String = message[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then_some(digits)
}

/// What the rate-limit headers of an answer say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub max: Option<u64>,
    pub remaining: Option<u64>,
    pub interval: Option<Duration>,
}

impl RateLimit {
    /// From `X-HubSpot-RateLimit-Max`, `-Remaining` and `-Interval-Milliseconds`, by a header getter.
    pub fn read<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Self {
        let number = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
        Self {
            max: number("x-hubspot-ratelimit-max"),
            remaining: number("x-hubspot-ratelimit-remaining"),
            interval: number("x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis),
        }
    }
}

/// A failed answer as the delivery worker sorts failures: `status`, its body, its `Retry-After`
/// (seconds) and rate-limit headers.
pub fn classify(status: u16, body: &[u8], retry_after: Option<&str>, limit: RateLimit) -> CrmError {
    let error = ErrorBody::read(body);
    match status {
        409 => match error.existing_id() {
            Some(existing_id) => CrmError::Duplicate { existing_id },
            None => CrmError::Permanent { status, code: error.code(), message: error.text() },
        },
        404 => CrmError::NotFound { message: error.text() },
        429 => CrmError::Transient {
            status: Some(status),
            message: format!("rate limited{}", error.policy_name.map(|p| format!(" ({p})")).unwrap_or_default()),
            // Retry-After if given, else the rest of the limit's window.
            retry_after: retry_after.and_then(|s| s.trim().parse().ok()).map(Duration::from_secs).or(limit.interval),
        },
        500..=599 => CrmError::Transient { status: Some(status), message: error.text(), retry_after: None },
        _ => CrmError::Permanent { status, code: error.code(), message: error.text() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_409_names_the_existing_record_in_its_message_or_its_details() {
        let reported = br#"{"status":"error","message":"Contact already exists. Existing ID: 2926551",
            "correlationId":"abc","category":"OBJECT_ALREADY_EXISTS","error":"CONTACT_EXISTS"}"#;
        assert_eq!(
            classify(409, reported, None, RateLimit::default()),
            CrmError::Duplicate { existing_id: "2926551".into() }
        );
        let nested = br#"{"category":"CONFLICT","errors":[{"message":"Existing ID: 42"}]}"#;
        assert_eq!(classify(409, nested, None, RateLimit::default()), CrmError::Duplicate { existing_id: "42".into() });
        let unnamed = classify(409, br#"{"category":"CONFLICT","message":"busy"}"#, None, RateLimit::default());
        assert!(matches!(unnamed, CrmError::Permanent { status: 409, ref code, .. } if code == "CONFLICT"));
    }

    #[test]
    fn every_member_is_optional_and_what_is_not_json_is_kept_as_the_message() {
        let bare = classify(400, b"{}", None, RateLimit::default());
        assert!(matches!(bare, CrmError::Permanent { status: 400, ref code, .. } if code == "error"));
        let html = classify(502, b"<html>Bad gateway</html>", None, RateLimit::default());
        assert_eq!(
            html,
            CrmError::Transient { status: Some(502), message: "<html>Bad gateway</html>".into(), retry_after: None }
        );
        let validation = classify(
            400,
            br#"{"category":"VALIDATION_ERROR","message":"Property values were not valid","correlationId":"c1",
                "errors":[{"message":"Property \"bedrooms\" does not exist","code":"PROPERTY_DOESNT_EXIST"}]}"#,
            None,
            RateLimit::default(),
        );
        let CrmError::Permanent { code, message, .. } = validation else { panic!("{validation:?}") };
        assert_eq!(code, "VALIDATION_ERROR");
        assert_eq!(message, "Property values were not valid; Property \"bedrooms\" does not exist (correlation id c1)");
    }

    #[test]
    fn a_429_waits_for_retry_after_else_the_limits_window() {
        let headers = [
            ("x-hubspot-ratelimit-max", "100"),
            ("x-hubspot-ratelimit-remaining", "0"),
            ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
        ];
        let limit = RateLimit::read(|name| headers.iter().find(|(h, _)| *h == name).map(|(_, v)| *v));
        assert_eq!(limit, RateLimit { max: Some(100), remaining: Some(0), interval: Some(Duration::from_secs(10)) });
        let body = br#"{"status":"error","message":"You have reached your secondly limit.","policyName":"SECONDLY"}"#;
        let told = classify(429, body, Some("3"), limit);
        assert!(matches!(told, CrmError::Transient { retry_after: Some(d), ref message, .. }
            if d == Duration::from_secs(3) && message == "rate limited (SECONDLY)"));
        let untold = classify(429, body, None, limit);
        assert!(matches!(untold, CrmError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(10)));
        assert!(matches!(classify(404, b"", None, limit), CrmError::NotFound { .. }));
        assert!(matches!(classify(401, b"", None, limit), CrmError::Permanent { status: 401, .. }));
    }
}
