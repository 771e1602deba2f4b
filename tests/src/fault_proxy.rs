//! A proxy in front of moto that fails chosen AWS operations with HTTP 500, to show what the
//! handlers do when AWS fails and after it recovers.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    /// Wakes the held requests.
    released: Arc<tokio::sync::Notify>,
    /// Operations to fail, as they appear in `X-Amz-Target` (`DynamoDB_20120810.PutItem`,
    /// `AmazonSQS.SendMessageBatch`) or a query `Action`; `*` fails everything.
    failing: Vec<String>,
    /// Operations whose next calls reach moto but whose answers are replaced by a 500, as when
    /// a write lands and its answer is lost: how many answers each has left to lose.
    losing: std::collections::BTreeMap<String, usize>,
    /// Requests whose body holds this text are held, never reaching moto, until `release`:
    /// where a test stops a handler mid-flight.
    holding: Option<String>,
    /// How many requests are held right now.
    held: usize,
    failed_calls: usize,
    /// Calls passed through, by operation (`PutItem`, `SendMessageBatch`).
    calls: std::collections::BTreeMap<String, u64>,
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    endpoint: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(Mutex::new(State::default()));
        let client = reqwest::Client::new();
        let upstream = upstream.to_string();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (client, upstream, state) = (client.clone(), upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        forward(client.clone(), upstream.clone(), state.clone(), request)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            endpoint,
            state,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// From now on, fail every call to `operation` (`*` for all).
    pub fn fail(&self, operation: &str) {
        self.state.lock().unwrap().failing.push(operation.to_string());
    }

    /// Let the next `count` calls to `operation` (as in `X-Amz-Target`) through to moto, then
    /// answer each with a 500: the write is done, the caller does not know it.
    pub fn lose_answers(&self, operation: &str, count: usize) {
        self.state
            .lock()
            .unwrap()
            .losing
            .insert(operation.to_string(), count);
    }

    /// From now on, hold every request whose body contains `text` (an operation's own words,
    /// e.g. its condition expression): it reaches moto never, and is answered 500 once released.
    pub fn hold(&self, text: &str) {
        self.state.lock().unwrap().holding = Some(text.to_string());
    }

    /// How many requests are held now.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held
    }

    /// Stops holding; the held requests are answered 500, as if the connection had broken.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.holding = None;
        state.released.notify_waiters();
    }

    /// AWS is back: stop failing anything.
    pub fn heal(&self) {
        self.state.lock().unwrap().failing.clear();
    }

    /// The calls that went through, by operation: what a workload costs in AWS requests.
    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.state.lock().unwrap().calls.clone()
    }

    /// How many calls were failed so far.
    pub fn failed_calls(&self) -> usize {
        self.state.lock().unwrap().failed_calls
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: reqwest::Client,
    upstream: String,
    state: Arc<Mutex<State>>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let form = String::from_utf8_lossy(&body);
    let hold = {
        let mut state = state.lock().unwrap();
        match &state.holding {
            Some(text) if form.contains(text.as_str()) => {
                state.held += 1;
                // Registered before the lock is let go, so that a release cannot slip between.
                let released = state.released.clone();
                Some(released)
            }
            _ => None,
        }
    };
    if let Some(released) = hold {
        let notified = released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let still_held = state.lock().unwrap().holding.is_some();
        if still_held {
            notified.await;
        }
        state.lock().unwrap().held -= 1;
        return Ok(injected_failure());
    }
    let lose_answer = {
        let mut state = state.lock().unwrap();
        match state.losing.get_mut(&target) {
            Some(left) if *left > 0 => {
                *left -= 1;
                state.failed_calls += 1;
                true
            }
            _ => false,
        }
    };
    {
        let mut state = state.lock().unwrap();
        let hit = state.failing.iter().any(|operation| {
            operation == "*"
                || target == *operation
                || form.contains(&format!(
                    "Action={}",
                    operation.rsplit('.').next().unwrap_or_default()
                ))
        });
        let operation = match target.rsplit_once('.') {
            Some((_, name)) => name.to_string(),
            None => form
                .split('&')
                .find_map(|pair| pair.strip_prefix("Action="))
                .unwrap_or("other")
                .to_string(),
        };
        if !hit {
            *state.calls.entry(operation).or_default() += 1;
        }
        if hit {
            state.failed_calls += 1;
            return Ok(injected_failure());
        }
    }
    let url = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/")
    );
    let mut outgoing = client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = match outgoing.send().await {
        Ok(response) => response,
        Err(error) => {
            return Ok(hyper::Response::builder()
                .status(502)
                .body(Full::new(Bytes::from(error.to_string())))
                .unwrap())
        }
    };
    let mut builder = hyper::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            builder = builder.header(name, value);
        }
    }
    let bytes = response.bytes().await.unwrap_or_default();
    if lose_answer {
        return Ok(injected_failure());
    }
    Ok(builder.body(Full::new(bytes)).unwrap())
}

fn injected_failure() -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(500)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from_static(
            br#"{"__type":"InternalFailure","message":"injected by the test"}"#,
        )))
        .unwrap()
}
