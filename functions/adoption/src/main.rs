//! Lambda entry point for the adoption queue: builds the backfill runner once per cold start and
//! hands it to the runtime. Everything it does lives in `crm_sync`.

use crm_sync::adapters::aws::{load_sdk_config, AwsTarget, CallBudget};
use crm_sync::config::Env;
use crm_sync::entrypoints::adoption_sqs::AdoptionHandler;
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Env::process().adopt()?;
    let aws = load_sdk_config(&AwsTarget::FromEnvironment, CallBudget::BACKGROUND).await;
    let handler = AdoptionHandler::build(&aws, config).await?;
    let handler = &handler;
    run(service_fn(move |event| handler.handle(event))).await
}
