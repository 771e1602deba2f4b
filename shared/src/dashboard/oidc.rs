//! Operators sign in as themselves: the OpenID Connect authorization-code flow with PKCE, against
//! a Cognito user pool's hosted UI or any other OpenID provider.
//!
//! The browser holds only random values: a login cookie while it is away at the provider, then
//! the session cookie. What the flow needs to finish (the nonce, the PKCE verifier, the page to
//! return to) stays in the store under a digest of `state`, taken once, so a replayed or forged
//! redirect finds nothing. The login cookie binds the redirect to the browser that began it, so
//! nobody can sign a victim in as themselves by sending them a link.

use std::sync::Arc;

use super::session::{is_token, new_token, storage_key, Session, SignIn};
use crate::ports::{
    IdentityProvider, OperatorClaims, PendingLogin, PendingLogins, ProviderError, StoreUnavailable,
};

/// The cookie that ties a sign-in under way to its browser.
pub const LOGIN_COOKIE: &str = "crm_sync_login";

/// Where the provider sends the browser back (the template registers it with the client).
pub const CALLBACK_PATH: &str = "/admin/auth/callback";

/// How long a sign-in may stay at the provider (typing a password, a second factor).
pub const LOGIN_TTL_MS: i64 = 10 * 60_000;

/// RFC 7636's S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The name an operator's actions are recorded under: the verified email, else the username the
/// provider assigned, else its subject id. Never a claim the user may set freely (`name`,
/// `preferred_username`), so that nobody can act under another operator's name. Control,
/// invisible and direction-changing characters are dropped: a name cannot forge a line, or
/// read as another.
pub fn operator_name(claims: &OperatorClaims) -> String {
    let shown = |value: &str| -> String {
        let kept: String = value.chars().filter(|c| !hidden(*c)).collect();
        kept.trim().chars().take(200).collect()
    };
    [&claims.email, &claims.username]
        .into_iter()
        .flatten()
        .map(|value| shown(value))
        .find(|value| !value.is_empty())
        .unwrap_or_else(|| shown(&claims.subject))
}

/// Characters that do not show as themselves: controls, zero-width and joiners, line and
/// paragraph separators, bidirectional marks, embeddings, overrides and isolates, invisible
/// operators and fillers, variation selectors, tags, private use, the BOM.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{E000}'..='\u{F8FF}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E0FFF}'
                | '\u{F0000}'..='\u{10FFFF}'
        )
}

/// A sign-in begun: set the login cookie, then send the browser to `url`.
#[derive(Debug)]
pub struct Started {
    pub login_cookie: String,
    pub url: String,
}

/// Why a returning browser was not signed in.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// No such sign-in under way: expired, used already, begun in another browser, or forged.
    #[error("this sign-in is no longer valid; start again")]
    Unknown,
    /// The provider said no, or the user cancelled there.
    #[error("the identity provider did not sign you in: {0}")]
    Denied(String),
    /// Signed in at the provider, but not in the group that makes an operator.
    #[error("this account is not one of the dashboard's operators")]
    NotAnOperator,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreUnavailable),
}

/// A browser signed in: set `cookie`, then go to `next`.
#[derive(Debug)]
pub struct Finished {
    pub cookie: String,
    pub session: Session,
    pub next: String,
}

/// The sign-in flow through an identity provider.
pub struct ProviderSignIn {
    provider: Arc<dyn IdentityProvider>,
    logins: Arc<dyn PendingLogins>,
    /// The provider's name on the sign-in page ("Cognito", "Okta").
    pub provider_name: String,
    /// The group an account must be in to be an operator; `None`: any account the provider
    /// signs in.
    required_group: Option<String>,
}

impl ProviderSignIn {
    pub fn new(
        provider: Arc<dyn IdentityProvider>,
        logins: Arc<dyn PendingLogins>,
        provider_name: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            logins,
            provider_name: provider_name.into(),
            required_group: None,
        }
    }

    /// Only accounts in `group` (the ID token's `cognito:groups` or `groups`) are operators: an
    /// account the provider creates by itself (a user of a federated provider, signing in for
    /// the first time) is not, until an administrator adds it.
    pub fn requiring_group(mut self, group: Option<String>) -> Self {
        self.required_group = group.filter(|group| !group.trim().is_empty());
        self
    }

    /// Where to send a browser signing out, to end its session at the provider too.
    pub async fn logout_url(&self, return_to: &str) -> Option<String> {
        self.provider.logout_url(return_to).await
    }

    /// Stores what the return needs and says where to send the browser.
    pub async fn start(&self, redirect_uri: &str, next: &str, now_ms: i64) -> Result<Started, FinishError> {
        let (state, nonce, verifier, login_cookie) = (new_token(), new_token(), new_token(), new_token());
        let url = self
            .provider
            .authorization_url(redirect_uri, &state, &nonce, &pkce_challenge(&verifier))
            .await?;
        self.logins
            .put(
                &storage_key(&state),
                &PendingLogin {
                    nonce,
                    verifier,
                    browser: storage_key(&login_cookie),
                    redirect_uri: redirect_uri.to_string(),
                    next: next.to_string(),
                    expires_at_ms: now_ms + LOGIN_TTL_MS,
                },
            )
            .await?;
        Ok(Started { login_cookie, url })
    }

    /// The provider sent the browser back with `state` and a `code` (or an `error`): checks that
    /// this browser began that sign-in, redeems the code, and opens a session for the operator
    /// the ID token names.
    pub async fn finish(
        &self,
        sessions: &SignIn,
        returned: Returned<'_>,
        now_ms: i64,
    ) -> Result<Finished, FinishError> {
        let Some(state) = returned.state.filter(|state| is_token(state)) else {
            return Err(FinishError::Unknown);
        };
        // Taken before anything else: whatever follows, this state is spent, so a redirect that
        // leaked (a log, a history, a link sent to someone) is good for nothing afterwards.
        let Some(login) = self.logins.take(&storage_key(state)).await? else {
            return Err(FinishError::Unknown);
        };
        let browser = returned
            .login_cookie
            .filter(|cookie| is_token(cookie))
            .unwrap_or_default();
        let same_browser: bool =
            subtle::ConstantTimeEq::ct_eq(login.browser.as_bytes(), storage_key(browser).as_bytes()).into();
        if !same_browser || login.expires_at_ms <= now_ms {
            return Err(FinishError::Unknown);
        }
        if let Some(error) = returned.error {
            // An OAuth error code (`access_denied`, `login_required`) is shown; any other text in
            // the URL is not repeated on the page.
            let code = error.len() <= 40
                && !error.is_empty()
                && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            return Err(FinishError::Denied(if code {
                error.to_string()
            } else {
                "an error".to_string()
            }));
        }
        let code = returned
            .code
            .filter(|code| !code.is_empty() && code.len() <= 2048);
        let Some(code) = code else {
            return Err(FinishError::Denied("no authorization code".into()));
        };
        let claims = self
            .provider
            .redeem(code, &login.redirect_uri, &login.verifier, &login.nonce)
            .await?;
        if let Some(group) = &self.required_group {
            if !claims.groups.iter().any(|member_of| member_of == group) {
                tracing::warn!(subject = %claims.subject, group = %group, "dashboard sign-in refused: not in the operators' group");
                return Err(FinishError::NotAnOperator);
            }
        }
        let operator = operator_name(&claims);
        let (cookie, session) = sessions.open_session(&operator, &claims.subject, now_ms).await?;
        // The subject, not the name: the logs carry no email address.
        tracing::info!(subject = %claims.subject, "dashboard sign-in through the identity provider");
        Ok(Finished {
            cookie,
            session,
            next: login.next,
        })
    }
}

/// What came back on the redirect from the provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct Returned<'a> {
    pub state: Option<&'a str>,
    pub code: Option<&'a str>,
    pub error: Option<&'a str>,
    pub login_cookie: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use crate::ports::{DashboardSessions, SignInCounters, StoredSession};

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn an_operator_is_named_by_email_then_username_then_subject_without_control_characters() {
        let claims = |email: Option<&str>, username: Option<&str>| OperatorClaims {
            subject: "sub-1".into(),
            email: email.map(str::to_string),
            username: username.map(str::to_string),
            groups: Vec::new(),
        };
        assert_eq!(
            operator_name(&claims(Some("ada@example.com"), Some("ada"))),
            "ada@example.com"
        );
        assert_eq!(operator_name(&claims(Some(" "), Some("ada"))), "ada");
        assert_eq!(operator_name(&claims(None, None)), "sub-1");
        assert_eq!(operator_name(&claims(Some("a\nforged=1"), None)), "aforged=1");
        assert_eq!(
            operator_name(&claims(Some("\u{202E}moc.elpmaxe@ada\u{2028}\u{200B}"), None)),
            "moc.elpmaxe@ada",
            "no override makes a name read as another"
        );
        assert_eq!(
            operator_name(&claims(Some("\u{200B}\u{E0041}"), Some(" \u{3164}ada"))),
            "ada",
            "a value of hidden characters alone names nobody"
        );
        assert_eq!(operator_name(&claims(Some("\u{2066}"), None)), "sub-1");
    }

    /// A provider that accepts one code, and remembers what it was asked.
    #[derive(Default)]
    struct Provider {
        redeemed: Mutex<Vec<(String, String, String, String)>>,
        challenges: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl IdentityProvider for Provider {
        async fn authorization_url(
            &self,
            redirect_uri: &str,
            state: &str,
            _nonce: &str,
            challenge: &str,
        ) -> Result<String, ProviderError> {
            self.challenges.lock().unwrap().push(challenge.to_string());
            Ok(format!(
                "https://idp.example/authorize?state={state}&redirect_uri={redirect_uri}"
            ))
        }

        async fn redeem(
            &self,
            code: &str,
            redirect_uri: &str,
            verifier: &str,
            nonce: &str,
        ) -> Result<OperatorClaims, ProviderError> {
            self.redeemed.lock().unwrap().push((
                code.into(),
                redirect_uri.into(),
                verifier.into(),
                nonce.into(),
            ));
            match code {
                "good" => Ok(OperatorClaims {
                    subject: "s".into(),
                    email: Some("ada@example.com".into()),
                    username: None,
                    groups: vec!["operators".into()],
                }),
                "outsider" => Ok(OperatorClaims {
                    subject: "o".into(),
                    email: Some("eve@example.com".into()),
                    username: None,
                    groups: vec!["everyone".into()],
                }),
                _ => Err(ProviderError::Refused("invalid_grant".into())),
            }
        }

        async fn logout_url(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[derive(Default)]
    struct Store {
        logins: Mutex<HashMap<String, PendingLogin>>,
        sessions: Mutex<HashMap<String, StoredSession>>,
    }

    #[async_trait]
    impl PendingLogins for Store {
        async fn put(&self, key: &str, login: &PendingLogin) -> Result<(), StoreUnavailable> {
            self.logins.lock().unwrap().insert(key.into(), login.clone());
            Ok(())
        }
        async fn take(&self, key: &str) -> Result<Option<PendingLogin>, StoreUnavailable> {
            Ok(self.logins.lock().unwrap().remove(key))
        }
    }

    #[async_trait]
    impl DashboardSessions for Store {
        async fn create(&self, key: &str, session: &StoredSession) -> Result<(), StoreUnavailable> {
            self.sessions.lock().unwrap().insert(key.into(), session.clone());
            Ok(())
        }
        async fn find(&self, key: &str) -> Result<Option<StoredSession>, StoreUnavailable> {
            Ok(self.sessions.lock().unwrap().get(key).cloned())
        }
        async fn end(&self, key: &str) -> Result<(), StoreUnavailable> {
            self.sessions.lock().unwrap().remove(key);
            Ok(())
        }
    }

    #[async_trait]
    impl SignInCounters for Store {
        async fn count(&self, _: &str, _: i64, _: u32, _: i64) -> Result<Option<u32>, StoreUnavailable> {
            Ok(Some(1))
        }
        async fn uncount(&self, _: &str, _: i64) -> Result<(), StoreUnavailable> {
            Ok(())
        }
    }

    fn flow() -> (Arc<Provider>, Arc<Store>, ProviderSignIn, SignIn) {
        let provider = Arc::new(Provider::default());
        let store = Arc::new(Store::default());
        let flow = ProviderSignIn::new(provider.clone(), store.clone(), "Test IdP");
        let sessions = SignIn::for_provider("https://idp.example", store.clone(), store.clone(), 3_600_000);
        (provider, store, flow, sessions)
    }

    fn state_of(url: &str) -> String {
        url.split("state=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_returning_browser_is_signed_in_as_the_operator_the_id_token_names() {
        let (provider, _, flow, sessions) = flow();
        let started = flow
            .start("https://d.example/admin/auth/callback", "/admin/queues", 0)
            .await
            .unwrap();
        let state = state_of(&started.url);
        let returned = Returned {
            state: Some(&state),
            code: Some("good"),
            error: None,
            login_cookie: Some(&started.login_cookie),
        };
        let finished = flow.finish(&sessions, returned, 1_000).await.unwrap();
        assert_eq!(finished.session.operator, "ada@example.com");
        assert_eq!(finished.next, "/admin/queues");
        let found = sessions.session(&finished.cookie, 2_000).await.unwrap().unwrap();
        assert_eq!(found.operator, "ada@example.com");
        let (code, redirect_uri, verifier, _) = provider.redeemed.lock().unwrap()[0].clone();
        assert_eq!(code, "good");
        assert_eq!(redirect_uri, "https://d.example/admin/auth/callback");
        assert_eq!(
            pkce_challenge(&verifier),
            provider.challenges.lock().unwrap()[0],
            "the code is redeemed with the verifier of the challenge sent"
        );
    }

    #[tokio::test]
    async fn a_state_is_good_for_one_return_and_only_in_the_browser_that_began_it() {
        let (provider, _, flow, sessions) = flow();
        let started = flow.start("https://d.example/cb", "/admin", 0).await.unwrap();
        let state = state_of(&started.url);
        let other_browser = new_token();
        let elsewhere = Returned {
            state: Some(&state),
            code: Some("good"),
            error: None,
            login_cookie: Some(&other_browser),
        };
        assert!(matches!(
            flow.finish(&sessions, elsewhere, 1).await,
            Err(FinishError::Unknown)
        ));
        let here = Returned {
            login_cookie: Some(&started.login_cookie),
            ..elsewhere
        };
        assert!(
            matches!(flow.finish(&sessions, here, 1).await, Err(FinishError::Unknown)),
            "the state was spent by the first return, even from the wrong browser"
        );
        assert!(
            provider.redeemed.lock().unwrap().is_empty(),
            "no code was redeemed"
        );
    }

    #[tokio::test]
    async fn with_an_operators_group_only_its_members_are_signed_in() {
        let (_, store, flow, sessions) = flow();
        let flow = flow.requiring_group(Some("operators".into()));
        for (code, signed_in) in [("outsider", false), ("good", true)] {
            let started = flow.start("https://d.example/cb", "/admin", 0).await.unwrap();
            let state = state_of(&started.url);
            let returned = Returned {
                state: Some(&state),
                code: Some(code),
                error: None,
                login_cookie: Some(&started.login_cookie),
            };
            let outcome = flow.finish(&sessions, returned, 1).await;
            assert_eq!(outcome.is_ok(), signed_in, "{code}: {outcome:?}");
            if !signed_in {
                assert!(matches!(outcome, Err(FinishError::NotAnOperator)));
            }
        }
        assert_eq!(store.sessions.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_sign_in_left_at_the_provider_too_long_or_refused_there_opens_no_session() {
        let (_, store, flow, sessions) = flow();
        for (code, error, at, expected) in [
            (Some("good"), None, LOGIN_TTL_MS, "unknown"),
            (None, Some("access_denied"), 1, "denied"),
            (Some("forged"), None, 1, "refused"),
        ] {
            let started = flow.start("https://d.example/cb", "/admin", 0).await.unwrap();
            let state = state_of(&started.url);
            let returned = Returned {
                state: Some(&state),
                code,
                error,
                login_cookie: Some(&started.login_cookie),
            };
            let outcome = flow.finish(&sessions, returned, at).await;
            let kind = match outcome {
                Err(FinishError::Unknown) => "unknown",
                Err(FinishError::Denied(_)) => "denied",
                Err(FinishError::Provider(ProviderError::Refused(_))) => "refused",
                other => panic!("{other:?}"),
            };
            assert_eq!(kind, expected);
        }
        assert!(store.sessions.lock().unwrap().is_empty());
    }
}
