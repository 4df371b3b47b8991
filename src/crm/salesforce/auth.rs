//! Salesforce's OAuth 2.0 token (`salesforce.md` §5): the client-credentials flow at
//! `CRM_API_URL/services/oauth2/token`, cached, shared by every caller, and renewed when a call
//! answers 401 `INVALID_SESSION_ID` (one renewal however many callers saw the 401). The token is a
//! [`SecretString`]: it never reaches a log.

use crate::crm::CrmError;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::Mutex;
use url::Url;

/// A token and where it works.
#[derive(Clone)]
pub struct Token {
    pub access_token: SecretString,
    /// The org's instance: REST calls go there.
    pub instance_url: String,
    /// The org's id (`tenantid` on Pub/Sub calls), from the identity URL.
    pub org_id: String,
    /// Which token this is: a caller that saw a 401 with generation `n` renews only if the
    /// current one is still `n`.
    pub generation: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("instance_url", &self.instance_url)
            .field("org_id", &self.org_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The client-credentials flow's credentials and a cache of its token.
#[derive(Debug)]
pub struct TokenSource {
    http: reqwest::Client,
    token_url: Url,
    client_id: SecretString,
    client_secret: SecretString,
    current: Mutex<Option<Token>>,
    generations: std::sync::atomic::AtomicU64,
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    instance_url: String,
    #[serde(default)]
    id: Option<String>,
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        my_domain: &Url,
        client_id: SecretString,
        client_secret: SecretString,
    ) -> Arc<Self> {
        let mut token_url = my_domain.clone();
        token_url.set_path(&format!("{}/services/oauth2/token", my_domain.path().trim_end_matches('/')));
        Arc::new(Self {
            http,
            token_url,
            client_id,
            client_secret,
            current: Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The cached token, or a new one.
    pub async fn token(&self) -> Result<Token, CrmError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *current = Some(token.clone());
        Ok(token)
    }

    /// After a 401 with `stale`: a new token, unless another caller has renewed it already.
    pub async fn renew(&self, stale: &Token) -> Result<Token, CrmError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| t.generation != stale.generation) {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *current = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self) -> Result<Token, CrmError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.expose_secret()),
            ("client_secret", self.client_secret.expose_secret()),
        ];
        let response = self
            .http
            .post(self.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| crate::crm::unanswered("Salesforce", &reqwest::Method::POST, self.token_url.path(), &e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            // `{"error":"invalid_client","error_description":"..."}`: the credentials, for good.
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let code = error["error"].as_str().unwrap_or("token_refused").to_owned();
            let message = format!(
                "Salesforce refused the client credentials at {}: {}",
                self.token_url,
                error["error_description"].as_str().unwrap_or("no reason given")
            );
            return Err(if status >= 500 || status == 429 {
                CrmError::Transient { status: Some(status), message, retry_after: None }
            } else {
                CrmError::Permanent { status, code, message }
            });
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| CrmError::Transient {
            status: Some(status),
            message: format!("Salesforce answered the token request with something unreadable: {e}"),
            retry_after: None,
        })?;
        // `https://login.salesforce.com/id/<org id>/<user id>`
        let org_id = answer.id.as_deref().and_then(|id| id.rsplit('/').nth(1)).unwrap_or_default().to_owned();
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::info!(instance_url = %answer.instance_url, org_id, generation, "got a Salesforce token");
        Ok(Token {
            access_token: SecretString::from(answer.access_token),
            instance_url: answer.instance_url.trim_end_matches('/').to_owned(),
            org_id,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn source(server: &MockServer) -> Arc<TokenSource> {
        let url: Url = server.uri().parse().unwrap();
        TokenSource::new(
            reqwest::Client::new(),
            &url,
            "consumer-key".to_owned().into(),
            "consumer-secret".to_owned().into(),
        )
    }

    #[tokio::test]
    async fn a_token_is_fetched_once_cached_and_renewed_once_after_a_401() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/services/oauth2/token"))
            .and(body_string_contains("grant_type=client_credentials"))
            .and(body_string_contains("client_id=consumer-key"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "00Dxx!token", "instance_url": "https://acme.my.salesforce.com/",
                "id": "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA",
                "token_type": "Bearer", "issued_at": "1764000000000"
            })))
            .expect(2)
            .mount(&server)
            .await;
        let tokens = source(&server);
        let first = tokens.token().await.unwrap();
        assert_eq!(first.instance_url, "https://acme.my.salesforce.com");
        assert_eq!(first.org_id, "00D000000000001AAA");
        assert_eq!(tokens.token().await.unwrap().generation, first.generation, "cached");
        let renewed = tokens.renew(&first).await.unwrap();
        assert_ne!(renewed.generation, first.generation);
        // Another caller that saw the same 401 gets the renewed token, not a third.
        assert_eq!(tokens.renew(&first).await.unwrap().generation, renewed.generation);
        assert!(!format!("{renewed:?}").contains("00Dxx!token"), "the token is not printed");
    }

    #[tokio::test]
    async fn refused_credentials_are_permanent_and_say_why() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "error": "invalid_client", "error_description": "invalid client credentials"
            })))
            .mount(&server)
            .await;
        let e = source(&server).token().await.unwrap_err();
        let CrmError::Permanent { status: 400, code, message } = e else { panic!("{e:?}") };
        assert_eq!(code, "invalid_client");
        assert!(message.contains("invalid client credentials"));
        assert!(!message.contains("consumer-secret"));
    }
}
