//! The vendors' official client libraries as the oracle: runs the contract suites in
//! `tests/contract/` (Python: `hubspot-api-client`, `simple-salesforce`; Node: `pipedrive`,
//! `jsforce`) against a sandbox, installing them on first use into `.venv-contract/` and
//! `tests/contract/node_modules/` (pinned in `infra/requirements-contract.txt` and
//! `tests/contract/package-lock.json`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    crm_sync_local::moto::repo_root()
}

fn install(what: &str, command: &mut std::process::Command) -> Result<(), String> {
    eprintln!("crm-sync contract suite: {what} (first run only)");
    let output = command
        .output()
        .map_err(|error| format!("{what}: could not run {command:?}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what}: {command:?} failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// The contract virtualenv's python, with the pinned clients installed. The requirements file
/// is copied into the venv when installed, so that a changed pin reinstalls.
pub fn python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let root = repo_root();
            let venv = root.join(".venv-contract");
            let requirements = root.join("infra/requirements-contract.txt");
            let installed = venv.join("requirements-contract.txt");
            let wanted =
                std::fs::read(&requirements).map_err(|e| format!("{}: {e}", requirements.display()))?;
            if std::fs::read(&installed).ok().as_deref() != Some(wanted.as_slice()) {
                let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
                install(
                    "creating .venv-contract",
                    std::process::Command::new(&python)
                        .args(["-m", "venv"])
                        .arg(&venv),
                )?;
                install(
                    "installing the vendors' Python clients",
                    std::process::Command::new(venv.join("bin/pip"))
                        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                        .arg(&requirements),
                )?;
                std::fs::write(&installed, wanted).map_err(|e| e.to_string())?;
            }
            Ok(venv.join("bin/python"))
        })
        .clone()
}

/// `tests/contract/` with its Node clients installed (`npm ci`, from the lock file).
pub fn node_suites() -> Result<PathBuf, String> {
    static NODE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    NODE.get_or_init(|| {
        let dir = repo_root().join("tests/contract");
        let lock = dir.join("package-lock.json");
        let installed = dir.join("node_modules/.package-lock.json");
        let fresh = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if fresh(&installed).is_none() || fresh(&installed) < fresh(&lock) {
            install(
                "installing the vendors' Node clients",
                std::process::Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--silent"])
                    .current_dir(&dir),
            )?;
        }
        Ok(dir)
    })
    .clone()
}

/// What a suite printed and whether every check passed.
pub struct SuiteRun {
    pub passed: bool,
    pub output: String,
}

impl SuiteRun {
    /// The lines of failed checks, for the assertion message.
    pub fn failures(&self) -> String {
        self.output
            .lines()
            .filter(|line| line.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many checks passed.
    pub fn passes(&self) -> usize {
        self.output
            .lines()
            .filter(|line| line.starts_with("PASS"))
            .count()
    }
}

/// Runs one suite (`python tests/contract/x.py` or `node tests/contract/x.mjs`) with `env`,
/// without blocking the runtime the sandbox answers on.
pub async fn run(program: &Path, script: &str, env: &[(&str, String)]) -> SuiteRun {
    let dir = repo_root().join("tests/contract");
    let output = tokio::process::Command::new(program)
        .arg(dir.join(script))
        .current_dir(&dir)
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|error| panic!("running {script}: {error}"));
    let output_text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    SuiteRun {
        passed: output.status.success(),
        output: output_text,
    }
}
