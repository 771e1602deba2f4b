//! A signed-in dashboard user over real HTTP: follows no redirects by itself, keeps its session
//! cookie, and reads each page's CSRF token the way a browser form would carry it.

use std::net::IpAddr;

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

pub struct DashboardClient {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

/// An answer: status, `Location` (for redirects) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

impl DashboardClient {
    pub fn new(base: &str) -> Self {
        Self::with_client(base, reqwest::Client::builder().redirect(Policy::none()))
    }

    /// A client on another machine, as the dashboard sees it: its connections come from `ip`
    /// (any of 127.0.0.0/8 reaches a local stack listening on 127.0.0.1).
    pub fn from_address(base: &str, ip: IpAddr) -> Self {
        Self::with_client(
            base,
            reqwest::Client::builder()
                .redirect(Policy::none())
                .local_address(ip),
        )
    }

    fn with_client(base: &str, builder: reqwest::ClientBuilder) -> Self {
        Self {
            http: builder.build().expect("a client"),
            base: base.to_string(),
            cookie: None,
        }
    }

    pub async fn signed_in(base: &str, password: &str) -> Self {
        let mut client = Self::new(base);
        let answer = client.sign_in(password).await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "sign-in works: {}",
            answer.body
        );
        client
    }

    /// Posts the sign-in form; keeps the session cookie it sets.
    pub async fn sign_in(&mut self, password: &str) -> Answer {
        let response = self
            .http
            .post(format!("{}/admin/login", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encode(&[("password", password), ("next", "/admin")]))
            .send()
            .await
            .expect("the dashboard answers");
        if let Some(cookie) = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|value| value.to_str().ok())
        {
            self.cookie = cookie.split(';').next().map(str::to_string);
        }
        answer(response).await
    }

    /// Uses `cookie` (`name=value`) as the session from now on.
    pub fn with_cookie(mut self, cookie: &str) -> Self {
        self.cookie = Some(cookie.to_string());
        self
    }

    pub fn session_cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    pub async fn get(&self, path: &str) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        answer(request.send().await.expect("the dashboard answers")).await
    }

    /// Posts a form as the browser would from a dashboard page (same origin).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.post_from(path, fields, Some(&self.base)).await
    }

    /// Posts a form claiming to come from `origin` (`None`: no Origin header).
    pub async fn post_from(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encode(fields));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        answer(request.send().await.expect("the dashboard answers")).await
    }

    /// The CSRF token the forms of `path` carry.
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        csrf_in(&page.body).expect("a signed-in page carries a CSRF token")
    }
}

pub(crate) fn encode(fields: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in fields {
        form.append_pair(name, value);
    }
    form.finish()
}

/// Reads `name="csrf" value="…"` out of a page.
pub fn csrf_in(page: &str) -> Option<String> {
    let start = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let end = page[start..].find('"')? + start;
    Some(page[start..end].to_string())
}

pub(crate) async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let body = response.text().await.unwrap_or_default();
    Answer {
        status,
        location,
        set_cookie,
        retry_after,
        body,
    }
}
