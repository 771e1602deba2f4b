//! Sign-in for the dashboard: one operator password (kept in Secrets Manager), a signed session
//! cookie, and a CSRF token per session. Sessions carry no server state: every key derives from
//! the password, so rotating the secret signs everyone out.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const COOKIE_NAME: &str = "crm_sync_session";

/// A signed-in operator's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub nonce: String,
    pub expires_at_ms: i64,
}

/// Issues and checks sessions and CSRF tokens.
pub struct Sessions {
    key: [u8; 32],
    password_digest: [u8; 32],
    ttl_ms: i64,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
        // A separator that no part contains keeps ("a","bc") and ("ab","c") apart.
        mac.update(&[0]);
    }
    mac.finalize().into_bytes().into()
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    pub fn new(password: &SecretString, ttl_ms: i64) -> Self {
        let key = mac(
            password.expose_secret().as_bytes(),
            &[b"crm-sync dashboard sessions v1"],
        );
        let password_digest = mac(&key, &[b"password", password.expose_secret().as_bytes()]);
        Self {
            key,
            password_digest,
            ttl_ms,
        }
    }

    /// Compares digests, so that neither the length nor a prefix of the password leaks by timing.
    pub fn password_matches(&self, attempt: &str) -> bool {
        let digest = mac(&self.key, &[b"password", attempt.as_bytes()]);
        digest.ct_eq(&self.password_digest).into()
    }

    /// A new session and its cookie value; `nonce` must be unpredictable.
    pub fn issue(&self, now_ms: i64, nonce: &str) -> (Session, String) {
        let session = Session {
            nonce: nonce.to_string(),
            expires_at_ms: now_ms + self.ttl_ms,
        };
        let expires = session.expires_at_ms.to_string();
        let signature = mac(&self.key, &[b"session", expires.as_bytes(), nonce.as_bytes()]);
        let value = format!("{expires}.{nonce}.{}", encode(&signature));
        (session, value)
    }

    /// The session a cookie value proves, if it is genuine and not expired.
    pub fn verify(&self, value: &str, now_ms: i64) -> Option<Session> {
        let mut parts = value.split('.');
        let (expires, nonce, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expected = encode(&mac(
            &self.key,
            &[b"session", expires.as_bytes(), nonce.as_bytes()],
        ));
        if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
            return None;
        }
        let expires_at_ms: i64 = expires.parse().ok()?;
        (expires_at_ms > now_ms).then(|| Session {
            nonce: nonce.to_string(),
            expires_at_ms,
        })
    }

    /// The token every form of this session carries.
    pub fn csrf_token(&self, session: &Session) -> String {
        encode(&mac(&self.key, &[b"csrf", session.nonce.as_bytes()]))
    }

    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        self.csrf_token(session).as_bytes().ct_eq(token.as_bytes()).into()
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_ms / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(password: &str) -> Sessions {
        Sessions::new(&SecretString::from(password.to_string()), 3_600_000)
    }

    #[test]
    fn only_the_password_itself_signs_in() {
        let sessions = sessions("correct horse");
        assert!(sessions.password_matches("correct horse"));
        assert!(!sessions.password_matches("correct hors"));
        assert!(!sessions.password_matches(""));
    }

    #[test]
    fn a_session_cookie_holds_until_it_expires() {
        let sessions = sessions("pw");
        let (session, cookie) = sessions.issue(1_000, "n1");
        assert_eq!(sessions.verify(&cookie, 2_000), Some(session));
        assert_eq!(sessions.verify(&cookie, 1_000 + 3_600_000), None);
    }

    #[test]
    fn an_edited_or_foreign_cookie_is_refused() {
        let sessions = sessions("pw");
        let (_, cookie) = sessions.issue(1_000, "n1");
        let later = cookie.replacen(&(1_000 + 3_600_000).to_string(), "99999999999999", 1);
        assert_eq!(sessions.verify(&later, 2_000), None);
        assert_eq!(sessions.verify(&cookie.replace("n1", "n2"), 2_000), None);
        let (_, other) = self::sessions("another password").issue(1_000, "n1");
        assert_eq!(sessions.verify(&other, 2_000), None);
        assert_eq!(sessions.verify("garbage", 2_000), None);
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let sessions = sessions("pw");
        let (first, _) = sessions.issue(1_000, "n1");
        let (second, _) = sessions.issue(1_000, "n2");
        let token = sessions.csrf_token(&first);
        assert!(sessions.csrf_matches(&first, &token));
        assert!(!sessions.csrf_matches(&second, &token));
        assert!(!sessions.csrf_matches(&first, ""));
    }
}
