//! Salesforce's REST answers sorted by what the gateway does about them (`salesforce.md` §4.3-4.4).
//!
//! Errors are a JSON array of `{message, errorCode, fields}` (per-record results of a collections
//! call say `statusCode` instead of `errorCode`: both are read). Unknown codes are sorted by the
//! HTTP status.

use crate::crm::CrmError;
use serde::Deserialize;
use std::time::Duration;

/// How long the outbox waits after `REQUEST_LIMIT_EXCEEDED`: the org's allocation is counted over
/// a rolling day, and concurrent long requests clear in seconds.
pub const LIMIT_WAIT: Duration = Duration::from_secs(60);

/// One error of an error array.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, alias = "statusCode")]
    pub error_code: Option<String>,
    #[serde(default)]
    pub fields: Vec<String>,
}

impl ApiError {
    pub fn code(&self) -> &str {
        self.error_code.as_deref().unwrap_or("ERROR")
    }

    /// `message (fields: A, B)`.
    pub fn text(&self) -> String {
        let mut text = self.message.clone().unwrap_or_default();
        if !self.fields.is_empty() {
            text.push_str(&format!(" (fields: {})", self.fields.join(", ")));
        }
        text
    }
}

/// The errors of a body: an array, a single object, or (anything else) the text itself.
pub fn read(body: &[u8]) -> Vec<ApiError> {
    if let Ok(list) = serde_json::from_slice::<Vec<ApiError>>(body) {
        return list;
    }
    if let Ok(one) = serde_json::from_slice::<ApiError>(body)
        && (one.message.is_some() || one.error_code.is_some())
    {
        return vec![one];
    }
    let text: String = String::from_utf8_lossy(body).chars().take(500).collect();
    vec![ApiError { message: Some(text), ..Default::default() }]
}

/// Whether an error code is worth retrying whatever the status (a row locked by another
/// transaction).
pub fn transient_code(code: &str) -> bool {
    matches!(code, "UNABLE_TO_LOCK_ROW" | "SERVER_UNAVAILABLE" | "REQUEST_RUNNING_TOO_LONG")
}

/// A failed answer: its status and body. (A 401 `INVALID_SESSION_ID` is the token's: the client
/// renews it and asks once more before it gets here.)
pub fn classify(status: u16, body: &[u8]) -> CrmError {
    let errors = read(body);
    let first = errors.first().cloned().unwrap_or_default();
    let message = errors.iter().map(ApiError::text).filter(|t| !t.is_empty()).collect::<Vec<_>>().join("; ");
    let code = first.code().to_owned();
    match status {
        // The external id matched several records: nothing was written; the body lists them.
        300 => CrmError::Permanent {
            status,
            code: "MULTIPLE_CHOICES".into(),
            message: format!(
                "the external id matches several Salesforce records ({}): make it unique there",
                String::from_utf8_lossy(body).chars().take(300).collect::<String>()
            ),
        },
        404 => CrmError::NotFound { message },
        403 if code == "REQUEST_LIMIT_EXCEEDED" => CrmError::Transient {
            status: Some(status),
            message: format!("{code}: {message}"),
            retry_after: Some(LIMIT_WAIT),
        },
        409 | 429 | 500..=599 => {
            CrmError::Transient { status: Some(status), message: format!("{code}: {message}"), retry_after: None }
        }
        _ if transient_code(&code) => {
            CrmError::Transient { status: Some(status), message: format!("{code}: {message}"), retry_after: None }
        }
        _ => CrmError::Permanent { status, code, message },
    }
}

/// `Sforce-Limit-Info: api-usage=<used>/<limit>`.
pub fn api_usage(header: &str) -> Option<(u64, u64)> {
    let usage = header.split(',').find_map(|part| part.trim().strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_arrays_are_sorted_by_code_then_status() {
        let invalid = classify(
            400,
            br#"[{"message":"No such column 'Foo__c'","errorCode":"INVALID_FIELD","fields":["Foo__c"]}]"#,
        );
        assert_eq!(
            invalid,
            CrmError::Permanent {
                status: 400,
                code: "INVALID_FIELD".into(),
                message: "No such column 'Foo__c' (fields: Foo__c)".into()
            }
        );
        assert!(classify(400, br#"[{"message":"locked","errorCode":"UNABLE_TO_LOCK_ROW"}]"#).is_transient());
        let limited =
            classify(403, br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#);
        assert!(matches!(limited, CrmError::Transient { retry_after: Some(LIMIT_WAIT), .. }));
        let forbidden = classify(403, br#"[{"message":"no access","errorCode":"INSUFFICIENT_ACCESS"}]"#);
        assert!(matches!(forbidden, CrmError::Permanent { status: 403, .. }));
        assert!(matches!(classify(404, br#"[{"message":"gone","errorCode":"NOT_FOUND"}]"#), CrmError::NotFound { .. }));
        assert!(classify(503, b"<html>down</html>").is_transient());
        let several = classify(
            300,
            br#"["/services/data/v62.0/sobjects/Contact/003A","/services/data/v62.0/sobjects/Contact/003B"]"#,
        );
        let CrmError::Permanent { code, message, .. } = several else { panic!() };
        assert_eq!(code, "MULTIPLE_CHOICES");
        assert!(message.contains("003A") && message.contains("003B"), "{message}");
    }

    #[test]
    fn a_collections_result_says_status_code_and_is_read_alike() {
        let errors = read(br#"[{"statusCode":"DUPLICATE_VALUE","message":"duplicate value found","fields":[]}]"#);
        assert_eq!(errors[0].code(), "DUPLICATE_VALUE");
    }

    #[test]
    fn the_api_usage_header_is_read() {
        assert_eq!(api_usage("api-usage=18/15000"), Some((18, 15000)));
        assert_eq!(api_usage("per-app-api-usage=17/250(appName=x), api-usage=25/5000"), Some((25, 5000)));
        assert_eq!(api_usage("nonsense"), None);
    }
}
