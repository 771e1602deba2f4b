//! HubSpot webhook authentication on hostile requests: any headers and body are answered without
//! a panic; a request signed with the real secret passes, and the same request altered in any
//! byte of its body does not.
#![no_main]

use crm_sync::adapters::hubspot::signature::sign_v3;
use crm_sync::adapters::hubspot::{HubSpotWebhookSettings, HubSpotWebhooks};
use crm_sync::domain::WebhookRequest;
use crm_sync::ports::WebhookProvider;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SECRET: &str = "fuzz-client-secret";
const URL: &str = "https://example.execute-api.us-east-1.amazonaws.com/webhooks/hubspot?a=%20b";
const NOW_MS: i64 = 1_795_000_000_000;
const HEADERS: [&str; 4] = [
    "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp",
    "X-HubSpot-Signature",
    "X-HubSpot-Signature-Version",
];

fuzz_target!(|data: &[u8]| {
    let provider = HubSpotWebhooks::new(HubSpotWebhookSettings::new(SecretString::from(SECRET)));
    // The input is: a byte choosing which headers are present, their values, then the body,
    // separated by 0xFF.
    let mut parts = data.split(|byte| *byte == 0xFF);
    let present = parts.next().and_then(|p| p.first().copied()).unwrap_or(0);
    let mut headers = Vec::new();
    for (bit, name) in HEADERS.iter().enumerate() {
        let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        if present & (1 << bit) != 0 {
            headers.push((name.to_ascii_lowercase(), value));
        }
    }
    let body: Vec<u8> = parts.collect::<Vec<_>>().join(&0xFF);
    let request = WebhookRequest {
        method: "POST".into(),
        public_url: URL.into(),
        headers,
        body: body.clone(),
    };
    let _ = provider.authenticate(&request, NOW_MS);
    let _ = provider.parse(&body);

    let timestamp = NOW_MS.to_string();
    let signed = |body: &[u8]| WebhookRequest {
        method: "POST".into(),
        public_url: URL.into(),
        headers: vec![
            (
                "x-hubspot-signature-v3".into(),
                sign_v3(SECRET.as_bytes(), "POST", URL, body, &timestamp),
            ),
            ("x-hubspot-request-timestamp".into(), timestamp.clone()),
        ],
        body: body.to_vec(),
    };
    assert!(provider.authenticate(&signed(&body), NOW_MS).is_ok());
    if !body.is_empty() {
        let mut tampered = signed(&body);
        let at = usize::from(present) % body.len();
        tampered.body[at] ^= 0x01;
        assert!(provider.authenticate(&tampered, NOW_MS).is_err());
    }
});
