//! An OpenID Connect provider (a Cognito user pool, Okta, Entra ID, Google...) over HTTPS with
//! reqwest: its discovery document, its token endpoint, and ID tokens checked with jsonwebtoken
//! against its JWKS.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ports::{IdentityProvider, OperatorClaims, ProviderError};

/// Larger answers from the provider are refused: a discovery document, a JWKS or a token answer
/// is a few kilobytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The discovery document is read again after this long, and the JWKS too; a token signed with
/// a key not yet seen reads the JWKS again at most this often.
const METADATA_TTL: Duration = Duration::from_secs(3600);
const UNKNOWN_KEY_REFRESH: Duration = Duration::from_secs(60);

/// Signature algorithms an ID token may use: asymmetric only, so that no shared secret (and no
/// `none`) can sign one.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The scopes asked for: the ID token then names the operator by email.
const SCOPES: &str = "openid email profile";

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: String,
    /// RP-Initiated Logout 1.0; Cognito has none (see `logout_url`).
    end_session_endpoint: Option<String>,
}

/// The claims crm-sync reads from an ID token (the library checks `iss`, `aud` and `exp`).
#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    nonce: Option<String>,
    email: Option<String>,
    /// A boolean, or (some providers) the text `"true"`.
    email_verified: Option<serde_json::Value>,
    #[serde(rename = "cognito:username")]
    cognito_username: Option<String>,
    #[serde(rename = "cognito:groups")]
    cognito_groups: Option<serde_json::Value>,
    groups: Option<serde_json::Value>,
    /// Cognito's: an access token has `access`, and must never pass for an ID token.
    token_use: Option<String>,
    azp: Option<String>,
    #[serde(default)]
    aud: Audience,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    Many(Vec<String>),
    One(serde::de::IgnoredAny),
    #[default]
    None,
}

/// [`IdentityProvider`] over HTTPS.
pub struct OidcHttpProvider {
    http: reqwest::Client,
    issuer: String,
    discovery_url: String,
    client_id: String,
    client_secret: Option<SecretString>,
    metadata: Mutex<Option<(Metadata, Instant)>>,
    keys: Mutex<Option<(JwkSet, Instant)>>,
}

impl OidcHttpProvider {
    /// A provider found by its issuer's discovery document
    /// (`{issuer}/.well-known/openid-configuration`). The issuer must be HTTPS, but for a
    /// provider on this machine (local runs and tests).
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: Option<SecretString>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let issuer = issuer.trim_end_matches('/').to_string();
        let url =
            reqwest::Url::parse(&issuer).map_err(|error| anyhow::anyhow!("issuer `{issuer}`: {error}"))?;
        let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !local {
            anyhow::bail!("issuer `{issuer}` is not an https:// URL");
        }
        if client_id.trim().is_empty() {
            anyhow::bail!("the client id is empty");
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            discovery_url: format!("{issuer}/.well-known/openid-configuration"),
            issuer,
            client_id: client_id.trim().to_string(),
            client_secret,
            metadata: Mutex::new(None),
            keys: Mutex::new(None),
        })
    }

    /// Reads the discovery document from elsewhere than the issuer's own address (a stand-in
    /// that serves it at its own address); its `issuer` must still be the configured one.
    pub fn with_discovery_url(mut self, url: &str) -> Self {
        self.discovery_url = url.to_string();
        self
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, ProviderError> {
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|error| ProviderError::Unavailable(format!("{what}: {error}")))?;
        let status = response.status();
        let body = bounded(response, what).await?;
        if !status.is_success() {
            return Err(ProviderError::Unavailable(format!("{what}: HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|error| ProviderError::Unavailable(format!("{what}: {error}")))
    }

    async fn metadata(&self) -> Result<Metadata, ProviderError> {
        if let Some((metadata, at)) = self
            .metadata
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            if at.elapsed() < METADATA_TTL {
                return Ok(metadata.clone());
            }
        }
        let metadata: Metadata = self.get_json(&self.discovery_url, "discovery document").await?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked for.
        if metadata.issuer.trim_end_matches('/') != self.issuer {
            return Err(ProviderError::Unavailable(format!(
                "the discovery document names issuer `{}`, not `{}`",
                metadata.issuer, self.issuer
            )));
        }
        *self
            .metadata
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    /// The provider's keys; read again when stale, or when `kid` is not among them (a rotated
    /// key) and they were not read within the last minute.
    async fn keys(&self, kid: Option<&str>) -> Result<JwkSet, ProviderError> {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((keys, at)) = cached {
            let known = kid.is_none_or(|kid| keys.find(kid).is_some());
            let fresh = at.elapsed() < METADATA_TTL;
            if (known && fresh) || at.elapsed() < UNKNOWN_KEY_REFRESH {
                return Ok(keys);
            }
        }
        let metadata = self.metadata().await?;
        let keys: JwkSet = self.get_json(&metadata.jwks_uri, "JWKS").await?;
        *self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// Checks an ID token: signed by one of the provider's keys with an asymmetric algorithm,
    /// issued by the issuer for this client, not expired, and carrying `nonce` when one is given.
    pub async fn verify(&self, id_token: &str, nonce: Option<&str>) -> Result<OperatorClaims, ProviderError> {
        let refused = |why: String| ProviderError::Refused(format!("ID token: {why}"));
        if id_token.len() > 16 * 1024 {
            return Err(refused("too large".into()));
        }
        let header = jsonwebtoken::decode_header(id_token).map_err(|error| refused(error.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let keys = self.keys(header.kid.as_deref()).await?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => keys.find(kid),
            // Without a key id, only a provider with one key is unambiguous.
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| refused("signed with a key the provider does not publish".into()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|error| refused(error.to_string()))?;
        let mut validation = Validation::new(header.alg);
        // As the provider writes it (with a trailing slash, for some): the discovery document
        // named it, and was checked to name the configured one.
        let issuer = self.metadata().await?.issuer;
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        let token = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
            .map_err(|error| refused(error.to_string()))?;
        let claims = token.claims;
        if claims.token_use.as_deref().is_some_and(|used| used != "id") {
            return Err(refused("not an ID token".into()));
        }
        // OpenID Connect Core 1.0, 3.1.3.7: with several audiences, `azp` must be this client.
        if matches!(&claims.aud, Audience::Many(all) if all.len() > 1)
            && claims.azp.as_deref() != Some(self.client_id.as_str())
        {
            return Err(refused("issued to another party".into()));
        }
        if let Some(expected) = nonce {
            if claims.nonce.as_deref() != Some(expected) {
                return Err(refused("its nonce is not this sign-in's".into()));
            }
        }
        if claims.sub.trim().is_empty() {
            return Err(refused("no subject".into()));
        }
        let verified = matches!(&claims.email_verified, Some(serde_json::Value::Bool(true)))
            || matches!(&claims.email_verified, Some(serde_json::Value::String(text)) if text == "true");
        let groups = claims
            .cognito_groups
            .or(claims.groups)
            .and_then(|groups| match groups {
                serde_json::Value::Array(all) => Some(
                    all.into_iter()
                        .filter_map(|group| group.as_str().map(str::to_string))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        Ok(OperatorClaims {
            subject: claims.sub,
            email: claims.email.filter(|_| verified),
            username: claims.cognito_username,
            groups,
        })
    }
}

/// A body read whole, up to [`MAX_ANSWER_BYTES`].
async fn bounded(mut response: reqwest::Response, what: &str) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| ProviderError::Unavailable(format!("{what}: {error}")))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ProviderError::Unavailable(format!(
                "{what}: answer over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// RFC 6749, 2.3.1: client credentials are form-encoded before they are joined for Basic auth.
fn form_encoded(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[async_trait]
impl IdentityProvider for OidcHttpProvider {
    async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, ProviderError> {
        let metadata = self.metadata().await?;
        let endpoint = metadata.authorization_endpoint.ok_or_else(|| {
            ProviderError::Unavailable("the discovery document names no authorization endpoint".into())
        })?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", SCOPES)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{separator}{query}"))
    }

    async fn redeem(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<OperatorClaims, ProviderError> {
        let metadata = self.metadata().await?;
        let endpoint = metadata.token_endpoint.ok_or_else(|| {
            ProviderError::Unavailable("the discovery document names no token endpoint".into())
        })?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&endpoint).header("accept", "application/json");
        match &self.client_secret {
            Some(secret) => {
                request = request.basic_auth(
                    form_encoded(&self.client_id),
                    Some(form_encoded(secret.expose_secret())),
                );
            }
            None => form.push(("client_id", &self.client_id)),
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|error| ProviderError::Unavailable(format!("token endpoint: {error}")))?;
        let status = response.status();
        let answer = bounded(response, "token endpoint").await?;
        let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        if status.is_client_error() {
            // RFC 6749, 5.2: `invalid_grant` and the like; this code is spent.
            let error = json
                .get("error")
                .and_then(|value| value.as_str())
                .unwrap_or("refused");
            return Err(ProviderError::Refused(format!(
                "token endpoint: {error} (HTTP {status})"
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::Unavailable(format!(
                "token endpoint: HTTP {status}"
            )));
        }
        let id_token = json
            .get("id_token")
            .and_then(|value| value.as_str())
            .ok_or_else(|| {
                ProviderError::Refused(
                    "the token endpoint sent no ID token (is `openid` among the client's scopes?)".into(),
                )
            })?;
        self.verify(id_token, Some(nonce)).await
    }

    async fn logout_url(&self, return_to: &str) -> Option<String> {
        let metadata = self.metadata().await.ok()?;
        let (endpoint, query) = match metadata.end_session_endpoint {
            Some(endpoint) => (
                endpoint,
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", &self.client_id)
                    .append_pair("post_logout_redirect_uri", return_to)
                    .finish(),
            ),
            // Cognito's hosted UI ends its session at `/logout` on the domain of its
            // `/oauth2/authorize`, back to one of the client's registered logout URLs.
            None if self.issuer.starts_with("https://cognito-idp.") => {
                let authorize = reqwest::Url::parse(metadata.authorization_endpoint.as_deref()?).ok()?;
                (
                    format!("{}/logout", authorize.origin().ascii_serialization()),
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("client_id", &self.client_id)
                        .append_pair("logout_uri", return_to)
                        .finish(),
                )
            }
            None => return None,
        };
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Some(format!("{endpoint}{separator}{query}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_must_be_https_unless_it_is_on_this_machine() {
        let provider = |issuer: &str| OidcHttpProvider::new(issuer, "client", None, Duration::from_secs(1));
        assert!(provider("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc").is_ok());
        assert!(provider("http://127.0.0.1:9400").is_ok());
        assert!(provider("http://idp.example").is_err());
        assert!(provider("not a url").is_err());
        assert!(OidcHttpProvider::new("https://idp.example", " ", None, Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn an_id_token_over_16_kb_or_unsigned_is_refused_before_any_key_is_fetched() {
        // Nothing listens on port 9: a refusal here was decided without the network.
        let provider =
            OidcHttpProvider::new("http://127.0.0.1:9", "client", None, Duration::from_secs(1)).unwrap();
        let at_limit = "a".repeat(16 * 1024);
        assert!(matches!(
            provider.verify(&at_limit, None).await,
            Err(ProviderError::Refused(why)) if !why.contains("too large")
        ));
        let past = "a".repeat(16 * 1024 + 1);
        assert!(matches!(
            provider.verify(&past, None).await,
            Err(ProviderError::Refused(why)) if why.contains("too large")
        ));
        // {"alg":"none"} and {"alg":"HS256"}: no key of the provider can have signed these.
        for header in ["eyJhbGciOiJub25lIn0", "eyJhbGciOiJIUzI1NiJ9"] {
            let token = format!("{header}.e30.");
            assert!(
                matches!(
                    provider.verify(&token, None).await,
                    Err(ProviderError::Refused(_))
                ),
                "{header}"
            );
        }
    }

    /// A provider whose discovery document is already read.
    fn discovered(issuer: &str, authorize: &str, end_session: Option<&str>) -> OidcHttpProvider {
        let provider = OidcHttpProvider::new(issuer, "client 1", None, Duration::from_secs(1)).unwrap();
        *provider.metadata.lock().unwrap() = Some((
            Metadata {
                issuer: issuer.to_string(),
                authorization_endpoint: Some(authorize.to_string()),
                token_endpoint: None,
                jwks_uri: format!("{issuer}/jwks"),
                end_session_endpoint: end_session.map(str::to_string),
            },
            Instant::now(),
        ));
        provider
    }

    #[tokio::test]
    async fn signing_out_goes_to_the_providers_end_session_endpoint_or_cognitos_logout() {
        let back = "https://d.example/admin/login";
        let standard = discovered(
            "https://idp.example",
            "https://idp.example/authorize",
            Some("https://idp.example/logout?tenant=1"),
        );
        assert_eq!(
            standard.logout_url(back).await.as_deref(),
            Some("https://idp.example/logout?tenant=1&client_id=client+1&post_logout_redirect_uri=https%3A%2F%2Fd.example%2Fadmin%2Flogin")
        );
        // Cognito's discovery document names no end-session endpoint; its hosted UI logs out at
        // `/logout` on its own domain, with `logout_uri`.
        let cognito = discovered(
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc",
            "https://crm-sync-1.auth.eu-west-1.amazoncognito.com/oauth2/authorize",
            None,
        );
        assert_eq!(
            cognito.logout_url(back).await.as_deref(),
            Some("https://crm-sync-1.auth.eu-west-1.amazoncognito.com/logout?client_id=client+1&logout_uri=https%3A%2F%2Fd.example%2Fadmin%2Flogin")
        );
        let other = discovered("https://idp.example", "https://idp.example/authorize", None);
        assert_eq!(other.logout_url(back).await, None, "no address to sign out at");
    }

    #[test]
    fn client_credentials_are_form_encoded_for_basic_auth() {
        assert_eq!(form_encoded("a b+c/d"), "a+b%2Bc%2Fd");
    }
}
