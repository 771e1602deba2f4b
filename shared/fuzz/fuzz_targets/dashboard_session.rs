//! Dashboard cookies, CSRF tokens and the password: only a value shaped like a random token is
//! ever looked up as a session, and then under its own key; a CSRF token is its own session's;
//! only the password matches the password.
#![no_main]

use std::sync::LazyLock;

use crm_sync::dashboard::session::{csrf_token, is_token, new_token, storage_key, Password};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

static PASSWORD: LazyLock<Password> = LazyLock::new(|| Password::new(&SecretString::from("fuzz-password")));
static TOKEN: LazyLock<String> = LazyLock::new(new_token);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let genuine = TOKEN.as_str();
    if is_token(text) {
        assert_eq!(text.len(), 43, "a token is 32 bytes in base64url");
        assert_eq!(storage_key(text) == storage_key(genuine), text == genuine);
    }
    assert_eq!(csrf_token(text) == csrf_token(genuine), text == genuine);
    assert_ne!(storage_key(text), csrf_token(text));
    assert_eq!(PASSWORD.matches(text), text == "fuzz-password");
});
