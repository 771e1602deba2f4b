//! One trust store per process for every TLS client crm-sync makes, the AWS SDK's and the CRM
//! clients': the system's root certificates, read from disk once. Each client would read them on
//! its own otherwise, a cold-start cost paid twice by the functions that call a CRM.

use std::sync::OnceLock;

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;

/// The system's root certificates, as DER and as one PEM bundle.
pub struct Roots {
    pub der: Vec<CertificateDer<'static>>,
    pub pem: String,
}

/// The roots, read on first use (`SSL_CERT_FILE` and `SSL_CERT_DIR` choose where from, as for
/// OpenSSL).
pub fn roots() -> &'static Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::warn!(errors = ?found.errors, "some root certificates could not be read");
        }
        let der = anchors(found.certs);
        if der.is_empty() {
            tracing::error!("no root certificates found: TLS connections will fail");
        }
        let pem = der.iter().map(|cert| pem_block(cert)).collect();
        Roots { der, pem }
    })
}

/// Only certificates that make trust anchors: the SDK panics on one that does not (where its own
/// loading of the system's roots skips it).
fn anchors(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    certs
        .into_iter()
        .filter(|cert| webpki::anchor_from_trusted_cert(cert).is_ok())
        .collect()
}

fn pem_block(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The AWS SDK's HTTPS client (rustls with aws-lc, as the SDK's default) trusting [`roots`].
pub fn sdk_http_client() -> anyhow::Result<SharedHttpClient> {
    let trust = TrustStore::empty().with_pem_certificate(roots().pem.as_bytes());
    let context = TlsContext::builder().with_trust_store(trust).build()?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// The CRM clients' roots, as reqwest takes them.
pub fn reqwest_roots() -> impl Iterator<Item = reqwest::Certificate> {
    roots()
        .der
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_system_certificate_that_makes_no_trust_anchor_is_left_out_and_the_rest_kept() {
        let system = rustls_native_certs::load_native_certs().certs;
        let Some(real) = system.first().cloned() else {
            panic!("this machine has root certificates (Debian's ca-certificates)");
        };
        // Not a certificate at all: the system's files could hold anything.
        let junk = rustls_pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(super::anchors(vec![junk, real.clone()]), vec![real]);
    }

    #[test]
    fn a_certificate_becomes_one_pem_block_of_64_character_lines() {
        let pem = super::pem_block(&[7u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert!(lines[1..lines.len() - 1].iter().all(|line| line.len() <= 64));
        assert_eq!(
            lines[1].len(),
            64,
            "100 bytes are 136 base64 characters: 64 + 64 + 8"
        );
    }
}
