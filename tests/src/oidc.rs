//! An OpenID Connect provider for the dashboard's sign-in: oidc-provider-mock, a third-party
//! provider (Authlib's authorization server), run from the project's virtualenv by
//! `infra/local/oidc_provider.py`. It requires a nonce and signs ID tokens with RS256.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use reqwest::redirect::Policy;

pub struct OidcProvider {
    /// `http://127.0.0.1:{port}`: the `iss` of its tokens.
    pub issuer: String,
    http: reqwest::Client,
    child: Child,
    lifeline: Option<ChildStdin>,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    pub fn start() -> Self {
        crm_sync_local::moto::ensure_installed().expect("the project's virtualenv");
        let script = crm_sync_local::moto::repo_root().join("infra/local/oidc_provider.py");
        let mut child = Command::new(crm_sync_local::moto::venv_dir().join("bin/python"))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "the OpenID provider starts (is oidc-provider-mock in infra/requirements.txt installed?)",
            );
        let lifeline = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("it says its port");
        let port: u16 = line
            .trim()
            .strip_prefix("port ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the OpenID provider did not start: {line:?}"));
        Self {
            issuer: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .expect("a client"),
            child,
            lifeline,
        }
    }

    /// Gives the user `subject` these claims in the ID tokens it is issued.
    pub async fn set_user(&self, subject: &str, claims: serde_json::Value) {
        let encoded: String = form_urlencoded::byte_serialize(subject.as_bytes()).collect();
        let response = self
            .http
            .put(format!("{}/users/{encoded}", self.issuer))
            .json(&claims)
            .send()
            .await
            .expect("the provider answers");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// Signs `subject` in on the provider's authorization page at `authorize_url` (what the
    /// person does there); returns where the provider sends the browser back.
    pub async fn sign_in(&self, authorize_url: &str, subject: &str) -> String {
        let response = self
            .http
            .post(authorize_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("sub", subject)
                    .finish(),
            )
            .send()
            .await
            .expect("the provider answers");
        assert!(
            response.status().is_redirection(),
            "the provider sends the browser back: {}",
            response.status()
        );
        response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .expect("a Location")
            .to_string()
    }
}
