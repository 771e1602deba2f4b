//! The process's one trust store (`crm_sync::adapters::tls`), handed to the AWS SDK's HTTPS
//! client and to the CRM clients, works over real TLS: pointed at a test authority, both reach
//! an HTTPS server whose certificate it signed, and neither reaches one signed by another.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn openssl(args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A certificate authority named `name` and a `localhost` certificate it signed, as PEM files in
/// `dir`: (the authority's certificate, the server's certificate, the server's key).
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
    let text = |path: &PathBuf| path.to_str().expect("a UTF-8 path").to_string();
    let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
    let (cert, key, request, extensions) = (
        file("server.pem"),
        file("server.key"),
        file("server.csr"),
        file("ext"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subject = format!("/CN={name} test authority");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_key_path, ca_path) = (text(&ca_key), text(&ca));
    args.extend([
        "-keyout",
        &ca_key_path,
        "-out",
        &ca_path,
        "-days",
        "1",
        "-subj",
        &subject,
    ]);
    openssl(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    let (key_path, request_path) = (text(&key), text(&request));
    args.extend([
        "-keyout",
        &key_path,
        "-out",
        &request_path,
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args);
    std::fs::write(
        &extensions,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("the extensions");
    let (cert_path, extensions_path, serial) = (text(&cert), text(&extensions), text(&file("ca.srl")));
    openssl(&[
        "x509",
        "-req",
        "-in",
        &request_path,
        "-CA",
        &ca_path,
        "-CAkey",
        &ca_key_path,
        "-CAserial",
        &serial,
        "-CAcreateserial",
        "-out",
        &cert_path,
        "-days",
        "1",
        "-extfile",
        &extensions_path,
    ]);
    (ca, cert, key)
}

/// An HTTPS server on localhost answering every request with 200 and an empty DynamoDB
/// ListTables answer; returns its port.
async fn https_server(cert: &Path, key: &Path) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("the certificate file")
        .collect::<Result<_, _>>()
        .expect("a certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("the key");
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The head, then as much body as it announces.
                loop {
                    let Ok(read) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = r#"{"TableNames":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

async fn sdk_reaches(port: u16) -> bool {
    std::env::set_var("AWS_ENDPOINT_URL", format!("https://localhost:{port}"));
    let aws = load_sdk_config(&AwsTarget::FromEnvironment, CallBudget::BACKGROUND).await;
    aws_sdk_dynamodb::Client::new(&aws)
        .list_tables()
        .send()
        .await
        .is_ok()
}

async fn crm_client_reaches(port: u16) -> bool {
    let client = crm_sync::adapters::crm_http::client(Duration::from_secs(5)).expect("a client");
    client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await
        .is_ok_and(|response| response.status() == 200)
}

#[tokio::test]
async fn the_sdk_and_the_crm_clients_trust_the_one_store_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("crm-sync-tls-{}", std::process::id()));
    let empty = dir.join("no-more-roots");
    std::fs::create_dir_all(&empty).expect("a temporary directory");
    let (trusted_ca, trusted_cert, trusted_key) = certificate(&dir, "trusted");
    let (_, other_cert, other_key) = certificate(&dir, "other");
    // Set before the store is first read; this binary runs this one test.
    std::env::set_var("SSL_CERT_FILE", &trusted_ca);
    std::env::set_var("SSL_CERT_DIR", &empty);
    for (name, value) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ] {
        std::env::set_var(name, value);
    }
    let trusted = https_server(&trusted_cert, &trusted_key).await;
    let other = https_server(&other_cert, &other_key).await;

    assert_eq!(
        crm_sync::adapters::tls::roots().der.len(),
        1,
        "the test certificate alone"
    );
    assert!(
        crm_client_reaches(trusted).await,
        "the CRM client trusts the store"
    );
    assert!(sdk_reaches(trusted).await, "the SDK's client trusts the store");
    assert!(!crm_client_reaches(other).await, "and nothing else");
    assert!(!sdk_reaches(other).await, "and nothing else");
    let _ = std::fs::remove_dir_all(&dir);
}
