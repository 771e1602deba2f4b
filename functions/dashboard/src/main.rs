//! Lambda entry point for the dashboard under `/admin`: builds the dashboard API once per cold
//! start and hands it to the runtime. Everything it does lives in `crm_sync`.

use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::dashboard_http::DashboardApi;
use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let config = Env::process().dashboard()?;
    let aws = load_sdk_config(&AwsTarget::FromEnvironment, CallBudget::WEBHOOK).await;
    let api = DashboardApi::build(&aws, config).await?;
    let api = &api;
    run(service_fn(move |request| api.handle(request))).await
}
