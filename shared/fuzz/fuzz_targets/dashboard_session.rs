//! Dashboard session cookies and CSRF tokens cannot be forged: any value other than one the
//! dashboard issued is refused.
#![no_main]

use crm_sync::dashboard::session::Sessions;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const NOW_MS: i64 = 1_795_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sessions = Sessions::new(&SecretString::from("fuzz-password"), 3_600_000);
    let (session, genuine) = sessions.issue(NOW_MS, "0123456789abcdef");
    match sessions.verify(text, NOW_MS) {
        Some(accepted) => {
            assert_eq!(text, genuine, "a forged cookie was accepted");
            assert_eq!(accepted, session);
        }
        None => assert_ne!(text, genuine),
    }
    assert_eq!(
        sessions.csrf_matches(&session, text),
        text == sessions.csrf_token(&session)
    );
    assert_eq!(sessions.password_matches(text), text == "fuzz-password");
});
