//! moto, the local stand-in for DynamoDB, SQS and Secrets Manager: installed into the project's
//! own virtualenv on first use, started on a port, and stopped with its owner.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

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

/// Makes sure `infra/requirements.txt` (moto, and the sign-in tests' OpenID provider) is
/// installed in the project's virtualenv; returns the path of `moto_server`.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    let venv = venv_dir();
    let moto_server = venv.join("bin/moto_server");
    if moto_server.exists() && venv.join("bin/oidc-provider-mock").exists() {
        return Ok(moto_server);
    }
    eprintln!(
        "crm-sync: installing infra/requirements.txt into {} (first run only)",
        venv.display()
    );
    if !venv.join("bin/pip").exists() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        run(std::process::Command::new(&python)
            .arg("-m")
            .arg("venv")
            .arg(&venv))
        .with_context(|| format!("creating a virtualenv with {python}"))?;
    }
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

/// A running moto server. Dropping it, or the process exiting, stops the server: the guard
/// script ends moto when its stdin (our `lifeline`) closes.
pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    guard: Child,
    lifeline: Option<ChildStdin>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.guard.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.guard.kill();
    }
}

impl Moto {
    /// Starts moto on `host:port` and waits until it answers (blocking; it takes a second or two).
    pub fn start(host: &str, port: u16) -> anyhow::Result<Moto> {
        ensure_installed()?;
        if std::net::TcpListener::bind((host, port)).is_err() {
            bail!(
                "{host}:{port} is in use: choose another port, or point at a running moto with its endpoint"
            );
        }
        let guard_script = repo_root().join("infra/local/moto_guard.py");
        let mut guard = Command::new(venv_dir().join("bin/python"))
            .arg(&guard_script)
            .arg(host)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto")?;
        let lifeline = guard.stdin.take();
        let endpoint = format!("http://{host}:{port}");
        let mut moto = Moto {
            endpoint,
            port,
            guard,
            lifeline,
        };
        wait_until_up(&moto.endpoint.clone(), &mut moto.guard)?;
        Ok(moto)
    }
}

fn wait_until_up(endpoint: &str, guard: &mut Child) -> anyhow::Result<()> {
    let address = endpoint.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = guard.try_wait()? {
            bail!("moto exited at start ({status}); is {address} already in use?");
        }
        if std::net::TcpStream::connect(&address).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("moto did not answer on {address} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
