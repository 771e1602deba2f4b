//! moto, the local stand-in for DynamoDB, SQS and Secrets Manager: installed into the project's
//! own virtualenv on first use, started on a port, and stopped with its owner.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, ChildStdin, Command};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The project's virtualenv: `CRM_SYNC_VENV`, or `.venv` at the repository root.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CRM_SYNC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
}

/// Makes sure `moto_server` is installed in the project's virtualenv; returns its path.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    let venv = venv_dir();
    let moto_server = venv.join("bin/moto_server");
    if moto_server.exists() {
        return Ok(moto_server);
    }
    eprintln!("crm-sync: installing moto into {} (first run only)", venv.display());
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    run(std::process::Command::new(&python).arg("-m").arg("venv").arg(&venv))
        .with_context(|| format!("creating a virtualenv with {python}"))?;
    let requirements = repo_root().join("infra/requirements.txt");
    run(std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))
    .context("installing moto from infra/requirements.txt")?;
    if !moto_server.exists() {
        bail!("moto installed, but {} is missing", moto_server.display());
    }
    Ok(moto_server)
}

fn run(command: &mut std::process::Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// A running moto server. Dropping it (or the process exiting) stops the server.
pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    _guard: Child,
    _lifeline: ChildStdin,
}

impl Moto {
    /// Starts moto on `host:port` and waits until it answers.
    pub async fn start(host: &str, port: u16) -> anyhow::Result<Moto> {
        let moto_server = ensure_installed()?;
        let guard_script = repo_root().join("infra/local/moto_guard.py");
        let mut guard = Command::new(venv_dir().join("bin/python"))
            .arg(&guard_script)
            .arg(&moto_server)
            .arg(host)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting moto")?;
        let lifeline = guard.stdin.take().expect("stdin is piped");
        let endpoint = format!("http://{host}:{port}");
        wait_until_up(&endpoint, &mut guard).await?;
        Ok(Moto {
            endpoint,
            port,
            _guard: guard,
            _lifeline: lifeline,
        })
    }
}

async fn wait_until_up(endpoint: &str, guard: &mut Child) -> anyhow::Result<()> {
    let address = endpoint.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = guard.try_wait()? {
            bail!("moto exited at start ({status}); is {address} already in use?");
        }
        if tokio::net::TcpStream::connect(&address).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("moto did not answer on {address} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
