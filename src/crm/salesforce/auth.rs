//! Salesforce's OAuth 2.0 token (`salesforce.md` §5) at `CRM_API_URL/services/oauth2/token`:
//! the client-credentials flow, or the JWT bearer flow (an RS256 assertion signed with the
//! connected app's certificate key, `CRM_JWT_KEY_FILE`, for `CRM_JWT_USERNAME`).
//!
//! The token is cached and shared by every caller. Salesforce does not say when it expires (the
//! org's session timeout decides, 15 minutes of inactivity at the least), so it is renewed before
//! use once it is [`MAX_AGE`] old, which is always before it can have expired, and once when a
//! call answers 401 `INVALID_SESSION_ID` (one renewal however many callers saw the 401). The
//! token and the key are secrets: they never reach a log.

use crate::crm::CrmError;
use base64::Engine as _;
use ring::signature::KeyPair as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use url::Url;

/// A token older than this is renewed before use: less than the shortest session timeout an org
/// can set (15 minutes), so a token in use has not expired.
pub const MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// The JWT bearer flow's settings: who the token is for, and the key that signs the assertion.
#[derive(Clone)]
pub struct JwtBearer {
    /// `CRM_JWT_USERNAME`: the integration user (the assertion's `sub`).
    pub username: String,
    /// `CRM_JWT_AUDIENCE`: `https://login.salesforce.com`, or `https://test.salesforce.com` for
    /// a sandbox.
    pub audience: String,
    /// The private key of the certificate uploaded to the connected app.
    pub key: Arc<ring::rsa::KeyPair>,
}

impl JwtBearer {
    /// The settings with a key read from PEM text (`PRIVATE KEY`, PKCS#8, or `RSA PRIVATE KEY`).
    pub fn new(username: String, audience: String, pem: &str) -> Result<Self, String> {
        Ok(Self { username, audience, key: Arc::new(rsa_key(pem)?) })
    }

    /// A signed assertion for `client_id`, valid for two minutes from `now` (Unix seconds):
    /// Salesforce takes at most three, and a clock a little ahead stays within them.
    pub fn assertion(&self, client_id: &str, now: i64) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims =
            serde_json::json!({"iss": client_id, "sub": self.username, "aud": self.audience, "exp": now + 120});
        let signed = format!("{}.{}", b64.encode(br#"{"alg":"RS256"}"#), b64.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "the JWT assertion could not be signed".to_owned())?;
        Ok(format!("{signed}.{}", b64.encode(signature)))
    }
}

impl std::fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBearer")
            .field("username", &self.username)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl PartialEq for JwtBearer {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username
            && self.audience == other.audience
            && self.key.public_key().as_ref() == other.key.public_key().as_ref()
    }
}

/// An RSA private key from PEM text: the first private key block (a file may hold the
/// certificate too); an encrypted key is refused with what to do.
fn rsa_key(pem: &str) -> Result<ring::rsa::KeyPair, String> {
    let mut rest = pem;
    let mut labels = Vec::new();
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after = &rest[begin + "-----BEGIN ".len()..];
        let (label, body) = after.split_once("-----").ok_or("a PEM block without its label")?;
        let end = body.find("-----END ").ok_or("a PEM block without its end")?;
        rest = &body[end + "-----END ".len()..];
        let text = &body[..end];
        if label == "ENCRYPTED PRIVATE KEY" || text.contains("ENCRYPTED") {
            return Err("the key is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)".into());
        }
        if !matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY") {
            labels.push(label.to_owned());
            continue;
        }
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("the PEM block is not base64: {e}"))?;
        return if label == "PRIVATE KEY" {
            ring::rsa::KeyPair::from_pkcs8(&der)
        } else {
            ring::rsa::KeyPair::from_der(&der)
        }
        .map_err(|e| format!("not an RSA private key of 2048 to 4096 bits: {e}"));
    }
    Err(match labels.is_empty() {
        true => "no PEM block (-----BEGIN ...-----) found".into(),
        false => format!("no PRIVATE KEY or RSA PRIVATE KEY PEM block (found {})", labels.join(", ")),
    })
}

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
    fetched_at: Instant,
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
    jwt: Option<JwtBearer>,
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
        jwt: Option<JwtBearer>,
    ) -> Arc<Self> {
        let mut token_url = my_domain.clone();
        token_url.set_path(&format!("{}/services/oauth2/token", my_domain.path().trim_end_matches('/')));
        Arc::new(Self {
            http,
            token_url,
            client_id,
            client_secret,
            jwt,
            current: Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The cached token, or a new one when there is none or it is [`MAX_AGE`] old.
    pub async fn token(&self) -> Result<Token, CrmError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| t.fetched_at.elapsed() < MAX_AGE) {
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
        let assertion;
        let form: Vec<(&str, &str)> = match &self.jwt {
            None => vec![
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.expose_secret()),
                ("client_secret", self.client_secret.expose_secret()),
            ],
            Some(jwt) => {
                assertion = jwt
                    .assertion(self.client_id.expose_secret(), chrono::Utc::now().timestamp())
                    .map_err(|message| CrmError::Permanent { status: 0, code: "jwt_unsigned".into(), message })?;
                vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())]
            }
        };
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
                "Salesforce refused the {} at {}: {}",
                if self.jwt.is_some() { "JWT bearer assertion" } else { "client credentials" },
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
            fetched_at: Instant::now(),
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
            None,
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

    #[tokio::test]
    async fn the_jwt_bearer_flow_sends_an_rs256_assertion_signed_with_the_apps_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/services/oauth2/token"))
            .and(body_string_contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "00Dxx!jwt", "instance_url": "https://acme.my.salesforce.com",
                "id": "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let pem = include_str!("../../../tests/fixtures/salesforce/jwt-test-key.pem");
        let jwt = JwtBearer::new("sync@acme.example".into(), "https://login.salesforce.com".into(), pem).unwrap();
        let public = jwt.key.public_key().as_ref().to_vec();
        let url: Url = server.uri().parse().unwrap();
        let tokens = TokenSource::new(
            reqwest::Client::new(),
            &url,
            "consumer-key".to_owned().into(),
            SecretString::from(""),
            Some(jwt),
        );
        assert_eq!(tokens.token().await.unwrap().org_id, "00D000000000001AAA");

        let sent = server.received_requests().await.unwrap().remove(0);
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&sent.body).into_owned().collect();
        let assertion = &form["assertion"];
        let (signed, signature) = assertion.rsplit_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(signed.as_bytes(), &b64.decode(signature).unwrap())
            .expect("the assertion verifies with the certificate's public key");
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(signed.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(claims["iss"], "consumer-key");
        assert_eq!(claims["sub"], "sync@acme.example");
        assert_eq!(claims["aud"], "https://login.salesforce.com");
        let exp = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
        assert!((110..=120).contains(&exp), "a short expiry: {exp}");
        assert!(!form.contains_key("client_secret"));
    }

    #[test]
    fn a_key_that_is_not_an_rsa_private_key_is_refused_with_a_reason() {
        let refused = |pem: &str| JwtBearer::new("u".into(), "a".into(), pem).unwrap_err();
        assert!(refused("nothing").contains("no PEM block"));
        assert!(refused("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").contains("CERTIFICATE"));
        assert!(
            refused("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").contains("not an RSA private key")
        );
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(refused(encrypted).contains("decrypt"));
        // The certificate first, then the key: the key is found.
        let key = include_str!("../../../tests/fixtures/salesforce/jwt-test-key.pem");
        let bundle = format!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n{key}");
        assert!(JwtBearer::new("u".into(), "a".into(), &bundle).is_ok());
    }
}
