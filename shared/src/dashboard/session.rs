//! Sign-in for the dashboard: one operator password (kept in Secrets Manager), sessions kept
//! server-side and named by a random cookie, a CSRF token per session, and a limit on failed
//! sign-ins that every instance shares.
//!
//! Nothing a browser holds derives from the password: the cookie is 256 random bits, the CSRF
//! token a digest of the cookie, and the password is compared under a key drawn at random by each
//! process. A stolen cookie therefore tells nothing about the password, and signing out ends the
//! session for every copy of its cookie. The store holds a digest of each cookie, never the
//! cookie, so that reading the store signs nobody in.

use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::clock::rfc3339;
use crate::ports::{DashboardSessions, SignInCounters, StoreUnavailable, StoredSession};

type HmacSha256 = Hmac<Sha256>;

pub const COOKIE_NAME: &str = "crm_sync_session";

/// Whom a session signed in with the shared password acts as: it cannot tell people apart, which
/// is why it is for the local stack only.
pub const SHARED_PASSWORD_OPERATOR: &str = "shared password";

/// The counter of every client's sign-in attempts together.
pub const ALL_CLIENTS: &str = "all";

/// Characters of a cookie value: 32 bytes in unpadded base64url.
const TOKEN_CHARS: usize = 43;

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// 32 bytes from the operating system's random source (two version-4 UUIDs: 244 random bits).
fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// A new cookie value: random, and nothing else.
pub fn new_token() -> String {
    encode(&random_bytes())
}

/// Whether a cookie value has the shape of one [`new_token`] makes (anything else is not looked up).
pub fn is_token(value: &str) -> bool {
    value.len() == TOKEN_CHARS
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// What a session is stored under: the SHA-256 of its cookie.
pub fn storage_key(token: &str) -> String {
    encode(&sha256(&[token.as_bytes()]))
}

/// The CSRF token of the session a cookie names. A page of another site cannot read the
/// (`HttpOnly`) cookie, so it cannot make the token either.
pub fn csrf_token(token: &str) -> String {
    encode(&sha256(&[b"csrf\0", token.as_bytes()]))
}

/// The operator password, held only as a digest under a key this process drew at random.
pub struct Password {
    key: [u8; 32],
    digest: [u8; 32],
}

fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl Password {
    pub fn new(password: &SecretString) -> Self {
        let key = random_bytes();
        let digest = mac(&key, password.expose_secret().as_bytes());
        Self { key, digest }
    }

    /// Compares digests, so that neither the length nor a prefix of the password leaks by timing.
    pub fn matches(&self, attempt: &str) -> bool {
        mac(&self.key, attempt.as_bytes()).ct_eq(&self.digest).into()
    }
}

/// How many failed sign-ins are allowed in each fixed window: from one client, and from all
/// clients together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInLimits {
    pub per_client: u32,
    pub all_clients: u32,
    pub window_ms: i64,
}

impl Default for SignInLimits {
    fn default() -> Self {
        Self {
            per_client: 5,
            all_clients: 100,
            window_ms: 15 * 60_000,
        }
    }
}

impl SignInLimits {
    /// The number of the fixed window `now_ms` falls in.
    pub fn window(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.window_ms.max(1))
    }

    /// When window `window` ends, and its counts start again from zero.
    pub fn window_end_ms(&self, window: i64) -> i64 {
        (window + 1) * self.window_ms.max(1)
    }
}

/// A signed-in operator's session.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// What the session is stored under (a digest of its cookie).
    pub key: String,
    pub expires_at_ms: i64,
    /// Who signed in: every re-sync, redrive and dismissal is recorded under this name.
    pub operator: String,
    /// Their stable id at the provider: what the logs name.
    pub subject: String,
    csrf: String,
}

impl std::fmt::Debug for Session {
    // The CSRF token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn of(token: &str, expires_at_ms: i64, operator: String, subject: String) -> Self {
        Self {
            key: storage_key(token),
            expires_at_ms,
            operator,
            subject,
            csrf: csrf_token(token),
        }
    }

    /// The token every form of this session carries.
    pub fn csrf_token(&self) -> &str {
        &self.csrf
    }

    pub fn csrf_matches(&self, token: &str) -> bool {
        self.csrf.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

/// What a sign-in attempt came to.
pub enum SignInOutcome {
    /// Signed in: `cookie` is the session cookie's value.
    SignedIn {
        cookie: String,
        session: Session,
    },
    WrongPassword,
    /// Too many failed sign-ins in this window, from this client or from all: the password was
    /// not even compared. Sign-in opens again at `until_ms`.
    TooManyFailures {
        until_ms: i64,
    },
}

/// Signs operators in and out, and finds the session a cookie names.
pub struct SignIn {
    /// `None` where operators sign in through an identity provider instead.
    password: Option<Password>,
    /// Which password sessions are signed in with: a session of another version is refused, so
    /// that rotating the password ends every session.
    password_version: String,
    sessions: Arc<dyn DashboardSessions>,
    counters: Arc<dyn SignInCounters>,
    limits: SignInLimits,
    ttl_ms: i64,
}

/// The counter of one client's attempts.
fn client_counter(client: &str) -> String {
    format!("client#{client}")
}

impl SignIn {
    /// `password_version` names the password's version (Secrets Manager's `VersionId`) and MUST
    /// NOT be derived from the password.
    pub fn new(
        password: &SecretString,
        password_version: impl Into<String>,
        sessions: Arc<dyn DashboardSessions>,
        counters: Arc<dyn SignInCounters>,
        limits: SignInLimits,
        ttl_ms: i64,
    ) -> Self {
        Self {
            password: Some(Password::new(password)),
            password_version: password_version.into(),
            sessions,
            counters,
            limits,
            ttl_ms,
        }
    }

    /// Sessions only, for sign-in through an identity provider: `issuer` marks its sessions, so
    /// that moving to another provider (or to a password) ends them.
    pub fn for_provider(
        issuer: impl Into<String>,
        sessions: Arc<dyn DashboardSessions>,
        counters: Arc<dyn SignInCounters>,
        ttl_ms: i64,
    ) -> Self {
        Self {
            password: None,
            password_version: format!("oidc {}", issuer.into()),
            sessions,
            counters,
            limits: SignInLimits::default(),
            ttl_ms,
        }
    }

    /// Whether operators sign in with the shared password.
    pub fn by_password(&self) -> bool {
        self.password.is_some()
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_ms / 1000
    }

    pub fn limits(&self) -> SignInLimits {
        self.limits
    }

    /// One attempt to sign in from `client` (its IP address). Every attempt is counted before the
    /// password is compared, and taken back when the password is right; so a limit holds however
    /// many attempts arrive at once, on however many instances. An attempt over a limit is refused
    /// without comparing the password. A store that cannot count refuses the sign-in (an error).
    pub async fn sign_in(
        &self,
        client: &str,
        attempt: &str,
        now_ms: i64,
    ) -> Result<SignInOutcome, StoreUnavailable> {
        let limits = self.limits;
        let window = limits.window(now_ms);
        let until_ms = limits.window_end_ms(window);
        // Kept a window longer than it counts: instances' clocks differ a little.
        let keep_until_ms = until_ms + limits.window_ms;
        let own = client_counter(client);
        let Some(client_failures) = self
            .counters
            .count(&own, window, limits.per_client, keep_until_ms)
            .await?
        else {
            tracing::warn!(
                client,
                client_failures = limits.per_client,
                client_limit = limits.per_client,
                until = %rfc3339(until_ms),
                "dashboard sign-in refused: too many failed sign-ins from this client"
            );
            return Ok(SignInOutcome::TooManyFailures { until_ms });
        };
        let all_failures = match self
            .counters
            .count(ALL_CLIENTS, window, limits.all_clients, keep_until_ms)
            .await
        {
            Ok(Some(count)) => count,
            Ok(None) => {
                // Refused attempts are not failures: this one costs the client nothing.
                self.uncount(&own, window).await;
                tracing::warn!(
                    client,
                    all_failures = limits.all_clients,
                    all_limit = limits.all_clients,
                    until = %rfc3339(until_ms),
                    "dashboard sign-in refused: too many failed sign-ins from all clients"
                );
                return Ok(SignInOutcome::TooManyFailures { until_ms });
            }
            Err(error) => {
                self.uncount(&own, window).await;
                return Err(error);
            }
        };
        if !self
            .password
            .as_ref()
            .is_some_and(|password| password.matches(attempt))
        {
            tracing::warn!(
                client,
                client_failures,
                client_limit = limits.per_client,
                all_failures,
                all_limit = limits.all_clients,
                "dashboard sign-in with a wrong password"
            );
            return Ok(SignInOutcome::WrongPassword);
        }
        // A right password is no failure.
        futures::future::join(self.uncount(&own, window), self.uncount(ALL_CLIENTS, window)).await;
        let (cookie, session) = self
            .open_session(SHARED_PASSWORD_OPERATOR, SHARED_PASSWORD_OPERATOR, now_ms)
            .await?;
        tracing::info!(client, "dashboard sign-in");
        Ok(SignInOutcome::SignedIn { cookie, session })
    }

    /// A new session for `operator` (`subject` at the provider), who has proven who they are;
    /// returns its cookie.
    pub async fn open_session(
        &self,
        operator: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<(String, Session), StoreUnavailable> {
        let cookie = new_token();
        let session = Session::of(
            &cookie,
            now_ms + self.ttl_ms,
            operator.to_string(),
            subject.to_string(),
        );
        self.sessions
            .create(
                &session.key,
                &StoredSession {
                    created_at_ms: now_ms,
                    expires_at_ms: session.expires_at_ms,
                    password_version: self.password_version.clone(),
                    operator: session.operator.clone(),
                    subject: session.subject.clone(),
                },
            )
            .await?;
        Ok((cookie, session))
    }

    async fn uncount(&self, counter: &str, window: i64) {
        if let Err(error) = self.counters.uncount(counter, window).await {
            // The attempt stays counted: the window allows one attempt fewer.
            tracing::warn!(error = %error, "could not take back a counted sign-in attempt");
        }
    }

    /// The session a cookie value names: stored, not expired, and signed in with this password.
    pub async fn session(&self, cookie: &str, now_ms: i64) -> Result<Option<Session>, StoreUnavailable> {
        if !is_token(cookie) {
            return Ok(None);
        }
        let key = storage_key(cookie);
        let Some(stored) = self.sessions.find(&key).await? else {
            return Ok(None);
        };
        // The store's own expiry (DynamoDB's TTL) lags by up to days: the expiry is checked here.
        if stored.expires_at_ms <= now_ms || stored.password_version != self.password_version {
            return Ok(None);
        }
        Ok(Some(Session::of(
            cookie,
            stored.expires_at_ms,
            stored.operator,
            stored.subject,
        )))
    }

    /// Ends the session for every copy of its cookie.
    pub async fn sign_out(&self, session: &Session) -> Result<(), StoreUnavailable> {
        self.sessions.end(&session.key).await?;
        tracing::info!("dashboard sign-out");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;

    /// Sessions and counters in memory, as the DynamoDB adapter keeps them.
    #[derive(Default)]
    struct Memory {
        sessions: Mutex<HashMap<String, StoredSession>>,
        counts: Mutex<HashMap<(String, i64), u32>>,
        down: AtomicBool,
    }

    impl Memory {
        fn check(&self) -> Result<(), StoreUnavailable> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreUnavailable(anyhow::anyhow!("down")));
            }
            Ok(())
        }

        fn count_of(&self, counter: &str, window: i64) -> u32 {
            let key = (counter.to_string(), window);
            self.counts.lock().unwrap().get(&key).copied().unwrap_or(0)
        }
    }

    #[async_trait]
    impl DashboardSessions for Memory {
        async fn create(&self, key: &str, session: &StoredSession) -> Result<(), StoreUnavailable> {
            self.check()?;
            let mut sessions = self.sessions.lock().unwrap();
            assert!(!sessions.contains_key(key), "a session key is never reused");
            sessions.insert(key.to_string(), session.clone());
            Ok(())
        }

        async fn find(&self, key: &str) -> Result<Option<StoredSession>, StoreUnavailable> {
            self.check()?;
            Ok(self.sessions.lock().unwrap().get(key).cloned())
        }

        async fn end(&self, key: &str) -> Result<(), StoreUnavailable> {
            self.check()?;
            self.sessions.lock().unwrap().remove(key);
            Ok(())
        }
    }

    #[async_trait]
    impl SignInCounters for Memory {
        async fn count(
            &self,
            counter: &str,
            window: i64,
            limit: u32,
            _keep_until_ms: i64,
        ) -> Result<Option<u32>, StoreUnavailable> {
            self.check()?;
            let mut counts = self.counts.lock().unwrap();
            let count = counts.entry((counter.to_string(), window)).or_insert(0);
            if *count >= limit {
                return Ok(None);
            }
            *count += 1;
            Ok(Some(*count))
        }

        async fn uncount(&self, counter: &str, window: i64) -> Result<(), StoreUnavailable> {
            self.check()?;
            let mut counts = self.counts.lock().unwrap();
            if let Some(count) = counts.get_mut(&(counter.to_string(), window)) {
                *count = count.saturating_sub(1);
            }
            Ok(())
        }
    }

    const PASSWORD: &str = "correct horse";
    const TTL_MS: i64 = 3_600_000;
    const NOW: i64 = 1_795_000_000_000;

    fn limits() -> SignInLimits {
        SignInLimits {
            per_client: 3,
            all_clients: 5,
            window_ms: 60_000,
        }
    }

    fn sign_in_with(store: &Arc<Memory>, version: &str) -> SignIn {
        SignIn::new(
            &SecretString::from(PASSWORD.to_string()),
            version,
            store.clone(),
            store.clone(),
            limits(),
            TTL_MS,
        )
    }

    /// The start of a window, so that a test's attempts all fall in it.
    fn window_start() -> i64 {
        limits().window_end_ms(limits().window(NOW))
    }

    async fn cookie_of(sign_in: &SignIn, client: &str, now_ms: i64) -> String {
        match sign_in.sign_in(client, PASSWORD, now_ms).await.unwrap() {
            SignInOutcome::SignedIn { cookie, .. } => cookie,
            _ => panic!("the right password signs in"),
        }
    }

    #[test]
    fn only_the_password_itself_matches() {
        let password = Password::new(&SecretString::from(PASSWORD.to_string()));
        assert!(password.matches(PASSWORD));
        assert!(!password.matches("correct hors"));
        assert!(!password.matches(""));
    }

    #[test]
    fn the_password_is_held_under_a_key_each_process_draws_at_random() {
        let secret = SecretString::from(PASSWORD.to_string());
        let (one, other) = (Password::new(&secret), Password::new(&secret));
        assert_ne!(one.key, other.key);
        assert_ne!(one.digest, other.digest);
    }

    #[test]
    fn cookies_are_random_tokens_and_nothing_else_has_their_shape() {
        let (one, other) = (new_token(), new_token());
        assert_ne!(one, other);
        assert!(is_token(&one) && is_token(&other), "{one}");
        let (longer, dotted) = (format!("{one}x"), format!("{}.", &one[1..]));
        let not_tokens: [&str; 6] = [
            "",
            "garbage",
            "1795000000000.0123456789abcdef.c2lnbmF0dXJl",
            &longer,
            &one[1..],
            &dotted,
        ];
        for not_one in not_tokens {
            assert!(!is_token(not_one), "{not_one}");
        }
    }

    #[test]
    fn the_stored_key_and_the_csrf_token_are_digests_of_the_cookie_apart_from_each_other() {
        let token = new_token();
        let key = storage_key(&token);
        assert_ne!(key, token);
        assert_ne!(csrf_token(&token), key);
        assert_ne!(csrf_token(&token), token);
        assert_eq!(key, storage_key(&token));
        assert_ne!(csrf_token(&token), csrf_token(&new_token()));
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let (first, second) = (
            Session::of(&new_token(), 1, String::new(), String::new()),
            Session::of(&new_token(), 1, String::new(), String::new()),
        );
        let token = first.csrf_token().to_string();
        assert!(first.csrf_matches(&token));
        assert!(!second.csrf_matches(&token));
        assert!(!first.csrf_matches(""));
    }

    #[test]
    fn windows_are_fixed_and_end_where_the_next_begins() {
        let limits = limits();
        let window = limits.window(NOW);
        assert!(limits.window_end_ms(window) > NOW);
        assert!(limits.window_end_ms(window) - NOW <= limits.window_ms);
        assert_eq!(limits.window(limits.window_end_ms(window)), window + 1);
        assert_eq!(limits.window(limits.window_end_ms(window) - 1), window);
    }

    #[tokio::test]
    async fn a_session_holds_until_it_expires_and_no_copy_of_its_cookie_works_after_sign_out() {
        let store = Arc::new(Memory::default());
        let sign_in = sign_in_with(&store, "v1");
        let cookie = cookie_of(&sign_in, "192.0.2.1", NOW).await;
        let session = sign_in
            .session(&cookie, NOW + 1)
            .await
            .unwrap()
            .expect("signed in");
        assert_eq!(session.expires_at_ms, NOW + TTL_MS);
        assert!(
            sign_in.session(&cookie, NOW + TTL_MS).await.unwrap().is_none(),
            "expired"
        );

        let copy = cookie.clone();
        sign_in.sign_out(&session).await.unwrap();
        assert!(sign_in.session(&copy, NOW + 2).await.unwrap().is_none());
        assert!(store.sessions.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_store_holds_no_cookie_and_a_cookie_it_does_not_hold_is_refused() {
        let store = Arc::new(Memory::default());
        let sign_in = sign_in_with(&store, "v1");
        let cookie = cookie_of(&sign_in, "192.0.2.1", NOW).await;
        let other = cookie_of(&sign_in, "192.0.2.1", NOW).await;
        assert_ne!(cookie, other, "two sign-ins, two unrelated cookies");
        let keys: Vec<String> = store.sessions.lock().unwrap().keys().cloned().collect();
        assert!(!keys.contains(&cookie) && !keys.contains(&other));
        assert!(sign_in.session(&new_token(), NOW).await.unwrap().is_none());
        assert!(sign_in.session("garbage", NOW).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_new_password_version_ends_the_sessions_of_the_old_one() {
        let store = Arc::new(Memory::default());
        let cookie = cookie_of(&sign_in_with(&store, "v1"), "192.0.2.1", NOW).await;
        let rotated = sign_in_with(&store, "v2");
        assert!(rotated.session(&cookie, NOW + 1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn after_the_client_limit_even_the_right_password_is_refused_until_the_window_ends() {
        let store = Arc::new(Memory::default());
        let sign_in = sign_in_with(&store, "v1");
        let start = window_start();
        for n in 0..3 {
            let outcome = sign_in.sign_in("192.0.2.1", "guess", start + n).await.unwrap();
            assert!(matches!(outcome, SignInOutcome::WrongPassword));
        }
        let end = limits().window_end_ms(limits().window(start));
        let refused = sign_in.sign_in("192.0.2.1", PASSWORD, start + 10).await.unwrap();
        assert!(matches!(refused, SignInOutcome::TooManyFailures { until_ms } if until_ms == end));
        assert_eq!(store.count_of("client#192.0.2.1", limits().window(start)), 3);
        cookie_of(&sign_in, "192.0.2.2", start + 11).await;
        cookie_of(&sign_in, "192.0.2.1", end).await;
    }

    #[tokio::test]
    async fn the_limit_for_all_clients_refuses_everyone_and_refused_attempts_count_for_nobody() {
        let store = Arc::new(Memory::default());
        let sign_in = sign_in_with(&store, "v1");
        let start = window_start();
        let window = limits().window(start);
        for client in ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.2", "192.0.2.3"] {
            let outcome = sign_in.sign_in(client, "guess", start).await.unwrap();
            assert!(matches!(outcome, SignInOutcome::WrongPassword));
        }
        let refused = sign_in.sign_in("192.0.2.4", PASSWORD, start).await.unwrap();
        assert!(matches!(refused, SignInOutcome::TooManyFailures { .. }));
        assert_eq!(store.count_of("client#192.0.2.4", window), 0);
        assert_eq!(store.count_of(ALL_CLIENTS, window), 5);
    }

    #[tokio::test]
    async fn a_right_password_counts_as_no_failure() {
        let store = Arc::new(Memory::default());
        let sign_in = sign_in_with(&store, "v1");
        let start = window_start();
        for _ in 0..5 {
            cookie_of(&sign_in, "192.0.2.1", start).await;
        }
        let window = limits().window(start);
        assert_eq!(store.count_of("client#192.0.2.1", window), 0);
        assert_eq!(store.count_of(ALL_CLIENTS, window), 0);
    }

    #[tokio::test]
    async fn a_store_that_cannot_count_lets_nobody_in() {
        let store = Arc::new(Memory::default());
        let sign_in = sign_in_with(&store, "v1");
        store.down.store(true, Ordering::SeqCst);
        assert!(sign_in.sign_in("192.0.2.1", PASSWORD, NOW).await.is_err());
    }
}
