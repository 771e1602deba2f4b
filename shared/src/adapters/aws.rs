//! Loading the AWS SDK configuration: the real chain when deployed, or a fixed endpoint (moto)
//! with throwaway credentials on a developer machine.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// Where the SDK sends its calls.
#[derive(Debug, Clone, Default)]
pub enum AwsTarget {
    /// The default chain: region, credentials and endpoints from the Lambda environment.
    #[default]
    FromEnvironment,
    /// A local stand-in such as moto, with fixed dummy credentials.
    Local { endpoint_url: String, region: String },
}

impl AwsTarget {
    /// A local endpoint in `us-east-1`.
    pub fn local(endpoint_url: impl Into<String>) -> Self {
        AwsTarget::Local {
            endpoint_url: endpoint_url.into(),
            region: "us-east-1".to_string(),
        }
    }
}

/// Per-call limits; a webhook must answer well inside HubSpot's 5-second deadline.
#[derive(Debug, Clone, Copy)]
pub struct CallBudget {
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

impl CallBudget {
    /// Tight limits for request paths that must answer fast.
    pub const WEBHOOK: CallBudget = CallBudget {
        attempt_timeout: Duration::from_millis(1_500),
        operation_timeout: Duration::from_millis(3_500),
        max_attempts: 3,
    };

    /// Queue consumers: more patience, the invocation has a minute.
    pub const BACKGROUND: CallBudget = CallBudget {
        attempt_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(15),
        max_attempts: 4,
    };
}

/// Loads the SDK configuration for `target` with the given call budget.
pub async fn load_sdk_config(target: &AwsTarget, budget: CallBudget) -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(budget.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(budget.attempt_timeout)
                .operation_timeout(budget.operation_timeout)
                .build(),
        );
    match target {
        AwsTarget::FromEnvironment => loader.load().await,
        AwsTarget::Local { endpoint_url, region } => {
            loader
                .endpoint_url(endpoint_url)
                .region(Region::new(region.clone()))
                .credentials_provider(Credentials::new("local", "local", None, None, "crm-sync-local"))
                .load()
                .await
        }
    }
}
