//! Secrets Manager: secrets are JSON objects of named fields, read once per cold start.

use anyhow::{anyhow, Context};
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use aws_sdk_secretsmanager::Client;
use secrecy::SecretString;

/// Reads one string field of a JSON secret. An empty field is returned as it is: a stack made
/// for one CRM leaves the others' fields empty, and each caller decides what empty means.
pub async fn read_secret_field(
    client: &Client,
    secret_id: &str,
    field: &str,
) -> anyhow::Result<SecretString> {
    Ok(read_secret_field_and_version(client, secret_id, field).await?.0)
}

/// Every field of a secret holding a JSON object.
pub async fn read_secret_json(
    client: &Client,
    secret_id: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    Ok(read_secret_json_and_version(client, secret_id).await?.0)
}

/// The fields of a JSON secret, and the version read.
async fn read_secret_json_and_version(
    client: &Client,
    secret_id: &str,
) -> anyhow::Result<(serde_json::Map<String, serde_json::Value>, Option<String>)> {
    let output = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|error| anyhow!("{}", DisplayErrorContext(&error)))
        .with_context(|| format!("reading secret {secret_id}"))?;
    let text = output
        .secret_string()
        .with_context(|| format!("secret {secret_id} holds no string"))?;
    let fields =
        serde_json::from_str(text).map_err(|_| anyhow!("secret {secret_id} is not a JSON object"))?;
    Ok((fields, output.version_id().map(str::to_string)))
}

/// [`read_secret_field`], with the version of the secret it read: Secrets Manager's `VersionId`,
/// a new one with every new value, and nothing derived from the value.
pub async fn read_secret_field_and_version(
    client: &Client,
    secret_id: &str,
    field: &str,
) -> anyhow::Result<(SecretString, Option<String>)> {
    let (fields, version) = read_secret_json_and_version(client, secret_id).await?;
    let value = fields
        .get(field)
        .and_then(|value| value.as_str())
        .with_context(|| format!("secret {secret_id} has no string field `{field}`"))?;
    Ok((SecretString::from(value.to_string()), version))
}
