//! Cold starts: each function's release binary started fresh, as Lambda starts it, against a
//! stand-in Lambda Runtime API on this machine. Init is process start to the first `next`
//! request; the first invocation is that `next` to its response. The AWS calls made during init
//! are counted by a proxy in front of moto. A Lambda function that only echoes its event, on the
//! same runtime crate, is the anchor.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use crm_sync_tests::fault_proxy::FaultProxy;
use crm_sync_tests::hubspot::{now_ms, property_change};

use crate::webhook::SECRET;
/// Fresh starts per function; the median is reported.
const STARTS: usize = 5;

/// One function's cold start, the median of [`STARTS`] fresh starts.
#[derive(Debug, Clone)]
pub struct ColdStart {
    pub function: String,
    pub init_ms: f64,
    pub first_invocation_ms: f64,
    /// AWS calls made before the first `next`, by operation (in every start alike).
    pub init_calls: BTreeMap<String, u64>,
    /// The first invocation's answer, shortened: proof that it did its work.
    pub answer: String,
}

/// What one start saw.
#[derive(Default)]
struct Seen {
    first_next: Option<Instant>,
    answered: Option<(Instant, String)>,
    init_calls: BTreeMap<String, u64>,
}

struct Runtime {
    event: String,
    seen: Mutex<Seen>,
    proxy: Arc<FaultProxy>,
    calls_before: BTreeMap<String, u64>,
}

/// The release binaries (built here, for this machine) and the anchor.
fn build_binaries() -> anyhow::Result<PathBuf> {
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "webhook",
            "-p",
            "sync",
            "-p",
            "reconcile",
            "-p",
            "dashboard",
            "-p",
            "crm-sync-bench",
            "--bin",
            "webhook",
            "--bin",
            "sync",
            "--bin",
            "reconcile",
            "--bin",
            "dashboard",
            "--bin",
            "hello-lambda",
        ])
        .status()?;
    anyhow::ensure!(status.success(), "building the release binaries failed");
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

pub async fn measure(moto: &str) -> anyhow::Result<Vec<ColdStart>> {
    let dir = build_binaries()?;
    let proxy = Arc::new(FaultProxy::start(moto).await);
    let stack = crate::webhook::stack(moto, "benchcold").await?;
    let functions: Vec<(&str, HashMap<String, String>, String)> = vec![
        ("hello-lambda (anchor)", HashMap::new(), "{}".to_string()),
        ("webhook", stack.webhook_env.clone(), webhook_event()?),
        // The same with its secret in the environment: init without the Secrets Manager call,
        // to tell that call's share from the rest.
        (
            "webhook (secret in the environment)",
            secret_in_environment(&stack.webhook_env),
            webhook_event()?,
        ),
        ("dashboard", stack.dashboard_env.clone(), dashboard_event()?),
        (
            "sync",
            stack.sync_env.clone(),
            sqs_event(&stack.resources.queue("OutboundQueue").arn),
        ),
        ("reconcile", stack.reconcile_env.clone(), scheduled_event()),
    ];
    let mut results = Vec::new();
    for (name, env, event) in functions {
        let binary = dir.join(name.split(' ').next().unwrap_or(name));
        let mut starts = Vec::new();
        for _ in 0..STARTS {
            starts.push(start_once(&binary, &env, &event, &proxy).await?);
        }
        starts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (init_ms, _, init_calls, answer) = starts[STARTS / 2].clone();
        let mut invocations: Vec<f64> = starts.iter().map(|start| start.1).collect();
        invocations.sort_by(f64::total_cmp);
        results.push(ColdStart {
            function: name.to_string(),
            init_ms,
            first_invocation_ms: invocations[STARTS / 2],
            init_calls,
            answer,
        });
    }
    Ok(results)
}

fn secret_in_environment(env: &HashMap<String, String>) -> HashMap<String, String> {
    let mut env = env.clone();
    env.remove("HUBSPOT_SECRET_ARN");
    env.insert("HUBSPOT_CLIENT_SECRET".into(), SECRET.into());
    env
}

/// One fresh start: (init ms, first invocation ms, AWS calls during init, the answer).
async fn start_once(
    binary: &Path,
    env: &HashMap<String, String>,
    event: &str,
    proxy: &Arc<FaultProxy>,
) -> anyhow::Result<(f64, f64, BTreeMap<String, u64>, String)> {
    let runtime = Arc::new(Runtime {
        event: event.to_string(),
        seen: Mutex::new(Seen::default()),
        proxy: proxy.clone(),
        calls_before: proxy.calls(),
    });
    let api = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(response))
        .route("/2018-06-01/runtime/init/error", post(response))
        .with_state(runtime.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, api).await;
    });
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(env)
        .envs([
            ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "bench".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_ENDPOINT_URL", proxy.endpoint()),
            ("RUST_LOG", "warn".into()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        {
            let seen = runtime.seen.lock().expect("not poisoned");
            if let (Some(first_next), Some((answered, answer))) = (seen.first_next, &seen.answered) {
                break Ok((
                    (first_next - started).as_secs_f64() * 1000.0,
                    (*answered - first_next).as_secs_f64() * 1000.0,
                    seen.init_calls.clone(),
                    answer.chars().take(80).collect(),
                ));
            }
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("{} did not answer within 60 s", binary.display()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill().await;
    server.abort();
    outcome
}

/// The first `next` gets the event; a later one waits (the process is stopped meanwhile).
async fn next(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    let first = {
        let mut seen = runtime.seen.lock().expect("not poisoned");
        match seen.first_next {
            Some(_) => false,
            None => {
                seen.first_next = Some(Instant::now());
                let now = runtime.proxy.calls();
                seen.init_calls = now
                    .into_iter()
                    .filter_map(|(call, count)| {
                        let before = runtime.calls_before.get(&call).copied().unwrap_or(0);
                        (count > before).then(|| (call, count - before))
                    })
                    .collect();
                true
            }
        }
    };
    if !first {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", "bench-request-1".to_string()),
        ("lambda-runtime-deadline-ms", (now_ms() + 30_000).to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:bench".to_string(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000".to_string(),
        ),
    ] {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, runtime.event.clone())
}

async fn response(State(runtime): State<Arc<Runtime>>, body: String) -> StatusCode {
    let mut seen = runtime.seen.lock().expect("not poisoned");
    if seen.answered.is_none() {
        seen.answered = Some((Instant::now(), body));
    }
    StatusCode::ACCEPTED
}

/// API Gateway's event for a signed one-event HubSpot delivery.
fn webhook_event() -> anyhow::Result<String> {
    let body = serde_json::json!([property_change(1, 5_000, "email", "cold@example.com", 0)]).to_string();
    Ok(crate::webhook::signed_event(&body)?.to_string())
}

/// API Gateway's event for the dashboard's sign-in page.
fn dashboard_event() -> anyhow::Result<String> {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "bench.example".parse()?);
    let peer: SocketAddr = "127.0.0.1:9".parse()?;
    Ok(crm_sync_local::apigw::event("GET", "/admin/login", &headers, b"", peer).to_string())
}

/// SQS's event of one app change from the outbound queue.
fn sqs_event(queue_arn: &str) -> String {
    let change = serde_json::json!({"version": 1, "type": "contact.upsert", "record_id": "cold-1",
        "idempotency_id": "cold-1-v1", "changed_at": now_ms(), "data": {"email": "cold@example.com"}});
    serde_json::json!({"Records": [{
        "messageId": "cold-message-1", "receiptHandle": "cold-receipt-1", "body": change.to_string(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now_ms().to_string(),
                       "SenderId": "bench", "ApproximateFirstReceiveTimestamp": now_ms().to_string()},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "awsRegion": "us-east-1"}]})
    .to_string()
}

/// EventBridge's scheduled event.
fn scheduled_event() -> String {
    serde_json::json!({"version": "0", "id": "cold-1", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-12-01T02:00:00Z",
        "region": "us-east-1", "resources": [], "detail": {}})
    .to_string()
}

/// The cold starts as a table.
pub fn table(starts: &[ColdStart]) -> String {
    let mut out = String::from(
        "| cold start (release, x86_64, this machine) | init | first invocation | AWS calls during init |\n|---|---|---|---|\n",
    );
    for start in starts {
        let calls = if start.init_calls.is_empty() {
            "none".to_string()
        } else {
            start
                .init_calls
                .iter()
                .map(|(call, count)| format!("{call} × {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {} | {:.1} ms | {:.1} ms | {} |\n",
            start.function, start.init_ms, start.first_invocation_ms, calls
        ));
    }
    out
}
