//! The cold-start anchor: a Lambda function that only echoes its event, on the runtime crate the
//! functions use, so that what crm-sync adds to a cold start can be told from the runtime's own.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|event: LambdaEvent<serde_json::Value>| async move {
        Ok::<_, Error>(event.payload)
    }))
    .await
}
