//! `cargo run -p hubspot-sandbox`: a local HubSpot on http://127.0.0.1:3001 (SANDBOX_HOST,
//! SANDBOX_PORT). Requests need `Authorization: Bearer $SANDBOX_TOKEN` (default `sandbox-token`).

use hubspot_sandbox::{Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let host = std::env::var("SANDBOX_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("SANDBOX_PORT").unwrap_or_else(|_| "3001".into());
    let mut config = SandboxConfig::default();
    if let Ok(token) = std::env::var("SANDBOX_TOKEN") {
        config.token = token;
    }
    let sandbox = Sandbox::start(&format!("{host}:{port}"), config).await?;
    println!(
        "HubSpot sandbox on {} (token {:?}); control API under /_sandbox",
        sandbox.url(),
        sandbox.token()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
