//! An OpenID Connect provider for the dashboard's sign-in: oidc-provider-mock, a third-party
//! provider (Authlib's authorization server), run from the project's virtualenv by
//! `infra/local/oidc_provider.py`. It requires a nonce and signs ID tokens with RS256.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use reqwest::header::{COOKIE, SET_COOKIE};

use crate::dashboard::{answer, encode, Answer};
use crate::AppOptions;
use reqwest::redirect::Policy;
use reqwest::StatusCode;

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

    /// A stack's options with its dashboard signing operators in here, as `issuer` (this
    /// provider's own, or the same one under another host name), as a confidential client, and
    /// only members of `operators`.
    pub fn dashboard_options(&self, issuer: &str, options: AppOptions) -> AppOptions {
        options
            .with_env("DASHBOARD_OIDC_ISSUER", issuer)
            .with_env("DASHBOARD_OIDC_CLIENT_ID", CLIENT_ID)
            .with_env("DASHBOARD_OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .with_env("DASHBOARD_OIDC_PROVIDER_NAME", "Example SSO")
            .with_env("DASHBOARD_OIDC_REQUIRED_GROUP", "operators")
    }

    /// Makes `subject` an operator: a verified email, in the `operators` group.
    pub async fn add_operator(&self, subject: &str, email: &str) {
        self.set_user(
            subject,
            serde_json::json!({"email": email, "email_verified": true, "groups": ["operators"]}),
        )
        .await;
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

/// A browser: follows no redirects by itself, and keeps the cookies it is given.
pub struct OperatorBrowser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl OperatorBrowser {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: base.to_string(),
            cookies: Vec::new(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Answer {
        let header: Vec<String> = self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let request = if header.is_empty() {
            request
        } else {
            request.header(COOKIE, header.join("; "))
        };
        let response = request.send().await.expect("the dashboard answers");
        for set in response.headers().get_all(SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        answer(response).await
    }

    pub async fn get(&mut self, path_or_url: &str) -> Answer {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let request = self.http.get(url);
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("origin", &self.base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(fields));
        self.send(request).await
    }

    /// Signs `subject` in through `provider`, from the sign-in link back to the dashboard, which
    /// is to show `next` (percent-encoded) next.
    pub async fn sign_in(&mut self, provider: &OidcProvider, subject: &str, next: &str) {
        let authorize = self.start(next).await;
        let back = provider.sign_in(&authorize, subject).await;
        let landed = self.get(&back).await;
        assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    }

    /// From the sign-in link to the provider's authorization page; returns its URL.
    pub async fn start(&mut self, next: &str) -> String {
        let started = self.get(&format!("/admin/auth/start?next={next}")).await;
        assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
        assert!(
            self.cookie("crm_sync_login").is_some(),
            "the sign-in is tied to this browser"
        );
        started.location.expect("sent to the provider")
    }
}

/// The dashboard's client at the provider, and its secret (the provider accepts any: it
/// registers clients as they come).
pub const CLIENT_ID: &str = "crm-sync-dashboard";
pub const CLIENT_SECRET: &str = "oidc-client-secret-Zq81/+";

pub fn query_of(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}
