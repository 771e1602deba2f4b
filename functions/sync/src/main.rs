//! Lambda entry point for the outbound queue: builds the sync handler once per cold start (a bad
//! mapping or configuration stops it here, before any message is touched) and hands it to the
//! runtime. Everything it does lives in `crm_sync`.

use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::sync_sqs::SyncHandler;
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Env::process().sync()?;
    let aws = load_sdk_config(&AwsTarget::FromEnvironment, CallBudget::BACKGROUND).await;
    let handler = SyncHandler::build(&aws, config).await?;
    let handler = &handler;
    run(service_fn(move |event| handler.handle(event))).await
}
