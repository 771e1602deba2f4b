//! HubSpot request signatures. v3 is HMAC-SHA256 over method, URI, body and timestamp; v1 and v2
//! (older subscriptions) are plain SHA-256 over the secret followed by the request parts.
//! Every comparison runs in constant time over the decoded digest bytes.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The escapes HubSpot decodes in the URI before signing v3; every other escape stays as sent.
const V3_DECODED_ESCAPES: [(&str, char); 12] = [
    ("%3A", ':'),
    ("%2F", '/'),
    ("%3F", '?'),
    ("%40", '@'),
    ("%21", '!'),
    ("%24", '$'),
    ("%27", '\''),
    ("%28", '('),
    ("%29", ')'),
    ("%2A", '*'),
    ("%2C", ','),
    ("%3B", ';'),
];

/// Applies HubSpot's v3 URI decoding: only the listed escapes, case-insensitively.
pub fn decode_v3_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let candidate = rest.get(pos..pos + 3);
        match candidate.and_then(|escape| {
            V3_DECODED_ESCAPES
                .iter()
                .find(|(code, _)| code.eq_ignore_ascii_case(escape))
        }) {
            Some((_, decoded)) => {
                out.push(*decoded);
                rest = &rest[pos + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn v3_mac(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(method.as_bytes());
    mac.update(decode_v3_uri(uri).as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

/// The v3 signature (Base64) of a request; used by the sandbox and by tests to sign.
pub fn sign_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    let tag = v3_mac(secret, method, uri, body, timestamp)
        .finalize()
        .into_bytes();
    base64::engine::general_purpose::STANDARD.encode(tag)
}

/// Checks a v3 signature in constant time. A signature that is not Base64 never matches.
pub fn verify_v3(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: &str,
    signature: &str,
) -> bool {
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    v3_mac(secret, method, uri, body, timestamp)
        .verify_slice(&claimed)
        .is_ok()
}

fn legacy_digest(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(secret);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The v1 signature (hex SHA-256 of secret + body).
pub fn sign_v1(secret: &[u8], body: &[u8]) -> String {
    crate::domain::webhook::hex(&legacy_digest(secret, &[body]))
}

/// The v2 signature (hex SHA-256 of secret + method + URI + body).
pub fn sign_v2(secret: &[u8], method: &str, uri: &str, body: &[u8]) -> String {
    crate::domain::webhook::hex(&legacy_digest(secret, &[method.as_bytes(), uri.as_bytes(), body]))
}

fn hex_matches(expected: &[u8; 32], claimed_hex: &str) -> bool {
    let Some(claimed) = decode_hex(claimed_hex.trim()) else {
        return false;
    };
    claimed.len() == expected.len() && bool::from(claimed.ct_eq(expected))
}

/// Checks a v1 signature in constant time.
pub fn verify_v1(secret: &[u8], body: &[u8], signature: &str) -> bool {
    hex_matches(&legacy_digest(secret, &[body]), signature)
}

/// Checks a v2 signature in constant time.
pub fn verify_v2(secret: &[u8], method: &str, uri: &str, body: &[u8], signature: &str) -> bool {
    hex_matches(
        &legacy_digest(secret, &[method.as_bytes(), uri.as_bytes(), body]),
        signature,
    )
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published test vectors (HubSpot's official SDK tests).
    const SECRET: &[u8] = b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const BODY: &[u8] = b"{'example_field':'example_value'}";
    const URI: &str = "https://www.example.com/webhook_uri";
    const V1: &str = "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750";
    const V2: &str = "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383";
    const V3: &str = "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw=";
    const TIMESTAMP: &str = "15000000";

    #[test]
    fn v1_matches_the_published_vector() {
        assert_eq!(sign_v1(SECRET, BODY), V1);
        assert!(verify_v1(SECRET, BODY, V1));
    }

    #[test]
    fn v2_matches_the_published_vector() {
        assert_eq!(sign_v2(SECRET, "POST", URI, BODY), V2);
        assert!(verify_v2(SECRET, "POST", URI, BODY, V2));
    }

    #[test]
    fn v3_matches_the_published_vector() {
        assert_eq!(sign_v3(SECRET, "POST", URI, BODY, TIMESTAMP), V3);
        assert!(verify_v3(SECRET, "POST", URI, BODY, TIMESTAMP, V3));
    }

    #[test]
    fn v1_rejects_a_tampered_body_or_another_secret() {
        assert!(!verify_v1(SECRET, b"{'example_field':'other'}", V1));
        assert!(!verify_v1(b"another-secret", BODY, V1));
    }

    #[test]
    fn v2_rejects_a_tampered_method_uri_or_body() {
        assert!(!verify_v2(SECRET, "GET", URI, BODY, V2));
        assert!(!verify_v2(
            SECRET,
            "POST",
            "https://www.example.com/other",
            BODY,
            V2
        ));
        assert!(!verify_v2(SECRET, "POST", URI, b"{}", V2));
    }

    #[test]
    fn v3_rejects_a_tampered_method_uri_body_or_timestamp() {
        assert!(!verify_v3(SECRET, "PUT", URI, BODY, TIMESTAMP, V3));
        assert!(!verify_v3(
            SECRET,
            "POST",
            "https://www.example.com/webhook_urj",
            BODY,
            TIMESTAMP,
            V3
        ));
        assert!(!verify_v3(
            SECRET,
            "POST",
            URI,
            b"{'example_field':'example_valuf'}",
            TIMESTAMP,
            V3
        ));
        assert!(!verify_v3(SECRET, "POST", URI, BODY, "15000001", V3));
        assert!(!verify_v3(
            b"zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
            "POST",
            URI,
            BODY,
            TIMESTAMP,
            V3
        ));
    }

    #[test]
    fn signatures_that_are_not_hex_or_base64_never_match() {
        assert!(!verify_v1(SECRET, BODY, "not hex at all"));
        assert!(!verify_v1(SECRET, BODY, &V1[..62]));
        assert!(!verify_v3(SECRET, "POST", URI, BODY, TIMESTAMP, "%%%"));
        assert!(!verify_v3(SECRET, "POST", URI, BODY, TIMESTAMP, ""));
    }

    #[test]
    fn v3_uri_decoding_touches_only_the_listed_escapes() {
        assert_eq!(
            decode_v3_uri("https://h.example/a%3Ab%2Fc?x=%40y%2a%20z%3d%"),
            "https://h.example/a:b/c?x=@y*%20z%3d%"
        );
    }

    #[test]
    fn v3_signs_the_decoded_uri() {
        let encoded = "https://h.example/hooks%3Ahubspot?tenant=a%40b";
        let decoded = "https://h.example/hooks:hubspot?tenant=a@b";
        let signature = sign_v3(SECRET, "POST", decoded, BODY, TIMESTAMP);
        assert!(verify_v3(SECRET, "POST", encoded, BODY, TIMESTAMP, &signature));
    }
}
