//! The running local stack (`cargo run -p crm-sync-local`), as the tools that act on it find it:
//! its AWS endpoint and a function's environment, resolved from the template as the stack did.

use std::collections::HashMap;

use anyhow::Context;
use aws_config::SdkConfig;
use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};

use crate::{moto, provision, template};

/// A setting from the shell, or its default.
pub fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The AWS configuration of the running local stack and the environment of `function` in it
/// (`SyncFunction`, `ReconcileFunction`), pointed at the HubSpot sandbox unless
/// `HUBSPOT_ACCESS_TOKEN` names a real account. Reads `CRM_SYNC_HOST`, `CRM_SYNC_MOTO_PORT`,
/// `CRM_SYNC_AWS_ENDPOINT`, `CRM_SYNC_STACK_NAME` and `CRM_SYNC_SANDBOX_PORT`, as the stack does.
pub async fn function_env(function: &str) -> anyhow::Result<(SdkConfig, HashMap<String, String>)> {
    let host = setting("CRM_SYNC_HOST", "127.0.0.1");
    let endpoint = setting(
        "CRM_SYNC_AWS_ENDPOINT",
        &format!("http://{host}:{}", setting("CRM_SYNC_MOTO_PORT", "4566")),
    );
    let stack_name = setting("CRM_SYNC_STACK_NAME", "crm-sync-local");
    let real_token = std::env::var("HUBSPOT_ACCESS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let template = template::Template::load(&moto::repo_root().join("template.yaml"))?;
    let aws = load_sdk_config(&AwsTarget::local(&endpoint), CallBudget::BACKGROUND).await;
    // Provisioning is idempotent: this finds the running stack's tables, queues and secret.
    let parameters = HashMap::from([
        ("HubSpotClientSecret".to_string(), "unused".to_string()),
        (
            "HubSpotAccessToken".to_string(),
            real_token.clone().unwrap_or_else(|| "sandbox-token".into()),
        ),
    ]);
    let resources = provision::provision(&aws, &template, &stack_name, &parameters, &HashMap::new())
        .await
        .with_context(|| {
            format!("finding the local stack at {endpoint}; is `cargo run -p crm-sync-local` running?")
        })?;
    let mut env = template.function_environment(function, &resources.resolver)?;
    match real_token {
        Some(token) => {
            env.insert("HUBSPOT_ACCESS_TOKEN".into(), token);
        }
        None => {
            env.insert("HUBSPOT_ACCESS_TOKEN".into(), "sandbox-token".into());
            env.insert(
                "HUBSPOT_API_BASE".into(),
                format!("http://{host}:{}", setting("CRM_SYNC_SANDBOX_PORT", "3001")),
            );
        }
    }
    Ok((aws, env))
}
