//! Creates in moto what `template.yaml` declares: DynamoDB tables (keys, indexes, TTL), SQS
//! queues (attributes, redrive and redrive-allow policies), S3 buckets, Secrets Manager secrets.

use std::collections::HashMap;

use anyhow::{anyhow, Context};
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_norway::Value;

use crate::template::{Resolver, ResourceValues, SecretValue, Template};

/// The local stand-ins' region and account, as moto reports them.
pub const REGION: &str = "us-east-1";
pub const ACCOUNT_ID: &str = "123456789012";

/// Queue properties that are SQS attributes of the same name.
const QUEUE_ATTRIBUTES: [&str; 7] = [
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "MaximumMessageSize",
    "FifoQueue",
    "ContentBasedDeduplication",
];

/// A queue created locally.
#[derive(Debug, Clone)]
pub struct LocalQueue {
    pub name: String,
    pub url: String,
    pub arn: String,
}

/// What was created, by logical id, and the resolver that knows all of it.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub tables: HashMap<String, String>,
    pub queues: HashMap<String, LocalQueue>,
    /// Bucket names by logical id.
    pub buckets: HashMap<String, String>,
    pub secrets: HashMap<String, String>,
    pub resolver: Resolver,
}

impl Provisioned {
    pub fn table(&self, logical_id: &str) -> &str {
        self.tables
            .get(logical_id)
            .unwrap_or_else(|| panic!("template.yaml declares no table {logical_id}"))
    }

    pub fn queue(&self, logical_id: &str) -> &LocalQueue {
        self.queues
            .get(logical_id)
            .unwrap_or_else(|| panic!("template.yaml declares no queue {logical_id}"))
    }
}

fn pseudo_parameters(stack_name: &str) -> HashMap<String, String> {
    [
        ("AWS::Region", REGION),
        ("AWS::AccountId", ACCOUNT_ID),
        ("AWS::StackName", stack_name),
        ("AWS::Partition", "aws"),
        ("AWS::URLSuffix", "amazonaws.com"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

/// Resolves a template value into JSON (for policies written as YAML mappings).
fn resolve_json(resolver: &Resolver, value: &Value) -> anyhow::Result<serde_json::Value> {
    Ok(match value {
        Value::Number(number) => serde_json::to_value(number)?,
        Value::Sequence(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|item| resolve_json(resolver, item))
                .collect::<anyhow::Result<_>>()?,
        ),
        Value::Mapping(map) if !is_intrinsic(map) => {
            let mut object = serde_json::Map::new();
            for (key, item) in map {
                object.insert(
                    key.as_str().unwrap_or_default().to_string(),
                    resolve_json(resolver, item)?,
                );
            }
            serde_json::Value::Object(object)
        }
        other => serde_json::Value::String(resolver.resolve(other)?),
    })
}

fn is_intrinsic(map: &serde_norway::Mapping) -> bool {
    map.len() == 1
        && map
            .keys()
            .next()
            .and_then(Value::as_str)
            .is_some_and(|key| key == "Ref" || key.starts_with("Fn::"))
}

fn key_schema(pairs: &[(String, String)]) -> anyhow::Result<Vec<KeySchemaElement>> {
    pairs
        .iter()
        .map(|(name, kind)| {
            Ok(KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(KeyType::from(kind.as_str()))
                .build()?)
        })
        .collect()
}

/// A bucket's name under `stack_name`: S3 takes 3 to 63 lowercase letters, digits and `-`, so a
/// long stack name is cut and told apart by a hash of the whole.
fn bucket_name(stack_name: &str, logical_id: &str) -> String {
    let whole: String = format!("{stack_name}-{logical_id}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if whole.len() <= 63 {
        return whole;
    }
    let hash = whole.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{hash:016x}", &whole[..46])
}

/// Creates every table, queue, bucket and secret of `template` under `stack_name`.
pub async fn provision(
    sdk: &SdkConfig,
    template: &Template,
    stack_name: &str,
    parameters: &HashMap<String, String>,
    generated_secrets: &HashMap<String, String>,
) -> anyhow::Result<Provisioned> {
    let mut resolver = Resolver {
        parameters: template.parameter_defaults(),
        pseudo: pseudo_parameters(stack_name),
        resources: HashMap::new(),
    };
    resolver.parameters.extend(parameters.clone());

    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let mut tables = HashMap::new();
    for table in template.tables() {
        let name = format!("{stack_name}-{}", table.logical_id);
        let mut request = dynamodb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(&table.key_schema)?));
        for (attribute, kind) in &table.attributes {
            request = request.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attribute)
                    .attribute_type(ScalarAttributeType::from(kind.as_str()))
                    .build()?,
            );
        }
        for index in &table.global_indexes {
            request = request.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(&index.name)
                    .set_key_schema(Some(key_schema(&index.key_schema)?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::from(index.projection.as_str()))
                            .set_non_key_attributes(
                                (!index.projected.is_empty()).then(|| index.projected.clone()),
                            )
                            .build(),
                    )
                    .build()?,
            );
        }
        // A table that exists already (a second command attaching to a running stack) is reused.
        let (arn, existed) = match request.send().await {
            Ok(created) => (
                created
                    .table_description()
                    .and_then(|description| description.table_arn())
                    .unwrap_or_default()
                    .to_string(),
                false,
            ),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                let described = dynamodb
                    .describe_table()
                    .table_name(&name)
                    .send()
                    .await
                    .map_err(|error| anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&error)))?;
                let arn = described
                    .table()
                    .and_then(|table| table.table_arn())
                    .unwrap_or_default()
                    .to_string();
                (arn, true)
            }
            Err(error) => {
                return Err(anyhow!(
                    "{}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&error)
                ))
                .with_context(|| format!("creating table {name}"))
            }
        };
        if let Some(attribute) = table.ttl_attribute.as_ref().filter(|_| !existed) {
            dynamodb
                .update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(attribute)
                        .enabled(true)
                        .build()?,
                )
                .send()
                .await
                .map_err(|error| anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&error)))
                .with_context(|| format!("enabling TTL on {name}"))?;
        }
        resolver.resources.insert(
            table.logical_id.clone(),
            ResourceValues {
                reference: name.clone(),
                attributes: [("Arn".to_string(), arn)].into(),
            },
        );
        tables.insert(table.logical_id, name);
    }

    let sqs = aws_sdk_sqs::Client::new(sdk);
    let sqs_error = |error: &dyn std::fmt::Display| anyhow!("{error}");
    let mut queues = HashMap::new();
    let specs = template.queues();
    // Every queue first, then the policies that point from one queue to another.
    for queue in &specs {
        let name = match queue.properties.get("QueueName") {
            Some(value) => resolver.resolve(value)?,
            None => format!("{stack_name}-{}", queue.logical_id),
        };
        let mut attributes = HashMap::new();
        for attribute in QUEUE_ATTRIBUTES {
            if let Some(value) = queue.properties.get(attribute) {
                attributes.insert(QueueAttributeName::from(attribute), resolver.resolve(value)?);
            }
        }
        let created = sqs
            .create_queue()
            .queue_name(&name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|error| sqs_error(&aws_sdk_sqs::error::DisplayErrorContext(&error)))
            .with_context(|| format!("creating queue {name}"))?;
        let url = created.queue_url().unwrap_or_default().to_string();
        let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}");
        resolver.resources.insert(
            queue.logical_id.clone(),
            ResourceValues {
                reference: url.clone(),
                attributes: [
                    ("Arn".to_string(), arn.clone()),
                    ("QueueName".to_string(), name.clone()),
                    ("QueueUrl".to_string(), url.clone()),
                ]
                .into(),
            },
        );
        queues.insert(queue.logical_id.clone(), LocalQueue { name, url, arn });
    }
    for queue in &specs {
        let mut attributes = HashMap::new();
        for policy in ["RedrivePolicy", "RedriveAllowPolicy"] {
            if let Some(value) = queue.properties.get(policy) {
                let json = resolve_json(&resolver, value)
                    .with_context(|| format!("{}: {policy}", queue.logical_id))?;
                attributes.insert(QueueAttributeName::from(policy), json.to_string());
            }
        }
        if attributes.is_empty() {
            continue;
        }
        sqs.set_queue_attributes()
            .queue_url(&queues[&queue.logical_id].url)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|error| sqs_error(&aws_sdk_sqs::error::DisplayErrorContext(&error)))
            .with_context(|| format!("setting the policies of queue {}", queue.logical_id))?;
    }

    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    );
    let mut buckets = HashMap::new();
    for logical_id in template.buckets() {
        let name = bucket_name(stack_name, &logical_id);
        match s3.create_bucket().bucket(&name).send().await {
            Ok(_) => {}
            // A second command attaching to a running stack finds its bucket.
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()) => {}
            Err(error) => {
                return Err(anyhow!("{}", aws_sdk_s3::error::DisplayErrorContext(&error)))
                    .with_context(|| format!("creating bucket {name}"))
            }
        }
        resolver.resources.insert(
            logical_id.clone(),
            ResourceValues {
                reference: name.clone(),
                attributes: [("Arn".to_string(), format!("arn:aws:s3:::{name}"))].into(),
            },
        );
        buckets.insert(logical_id, name);
    }

    // No Cognito locally: the operator pool and its client resolve to names that say so, and the
    // local dashboard signs in with its password (or the identity provider a caller names).
    for kind in [
        "AWS::Cognito::UserPool",
        "AWS::Cognito::UserPoolClient",
        "AWS::Cognito::UserPoolDomain",
        "AWS::Cognito::UserPoolGroup",
    ] {
        for logical_id in template.logical_ids_of(kind) {
            resolver.resources.insert(
                logical_id.clone(),
                ResourceValues {
                    reference: format!("local-{logical_id}"),
                    attributes: HashMap::new(),
                },
            );
        }
    }

    let secrets_manager = aws_sdk_secretsmanager::Client::new(sdk);
    let mut secrets = HashMap::new();
    for secret in template.secrets() {
        let name = format!("{stack_name}-{}", secret.logical_id);
        let value = match &secret.value {
            SecretValue::Given(value) => resolver
                .resolve(value)
                .with_context(|| format!("{}: SecretString", secret.logical_id))?,
            SecretValue::Generated { template, key } => {
                let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(template)
                    .with_context(|| format!("{}: SecretStringTemplate", secret.logical_id))?;
                // As Secrets Manager would, unless the caller fixed the value (tests, local runs).
                let generated = generated_secrets
                    .get(&secret.logical_id)
                    .cloned()
                    .unwrap_or_else(|| std::iter::repeat_with(fastrand::alphanumeric).take(32).collect());
                json.insert(key.clone(), serde_json::Value::String(generated));
                serde_json::Value::Object(json).to_string()
            }
        };
        let arn = match secrets_manager
            .create_secret()
            .name(&name)
            .secret_string(value)
            .send()
            .await
        {
            Ok(created) => created.arn().unwrap_or_default().to_string(),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception()) =>
            {
                secrets_manager
                    .describe_secret()
                    .secret_id(&name)
                    .send()
                    .await
                    .map_err(|error| {
                        anyhow!("{}", aws_sdk_secretsmanager::error::DisplayErrorContext(&error))
                    })?
                    .arn()
                    .unwrap_or_default()
                    .to_string()
            }
            Err(error) => {
                return Err(anyhow!(
                    "{}",
                    aws_sdk_secretsmanager::error::DisplayErrorContext(&error)
                ))
                .with_context(|| format!("creating secret {name}"))
            }
        };
        resolver.resources.insert(
            secret.logical_id.clone(),
            ResourceValues {
                reference: arn.clone(),
                attributes: HashMap::new(),
            },
        );
        secrets.insert(secret.logical_id, arn);
    }

    Ok(Provisioned {
        tables,
        queues,
        buckets,
        secrets,
        resolver,
    })
}
