//! Reads `template.yaml` so that the local stack creates exactly the tables, queues and secrets
//! the deployed stack declares, and gives each function the environment the template gives it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde_norway::Value;

/// The parsed SAM template.
pub struct Template {
    resources: serde_norway::Mapping,
    parameters: serde_norway::Mapping,
    globals_env: serde_norway::Mapping,
}

/// A DynamoDB table as declared.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub logical_id: String,
    pub key_schema: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
    pub global_indexes: Vec<IndexSpec>,
    pub ttl_attribute: Option<String>,
}

/// A global secondary index as declared.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    pub name: String,
    pub key_schema: Vec<(String, String)>,
    /// `ALL`, `KEYS_ONLY` or `INCLUDE`.
    pub projection: String,
    /// The attributes an `INCLUDE` projection names.
    pub projected: Vec<String>,
}

/// An SQS queue as declared.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub logical_id: String,
    pub properties: serde_norway::Mapping,
}

/// A Secrets Manager secret as declared.
#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub logical_id: String,
    pub value: SecretValue,
}

/// How a secret gets its value.
#[derive(Debug, Clone)]
pub enum SecretValue {
    /// `SecretString`, to resolve.
    Given(Value),
    /// `GenerateSecretString`: the template's JSON with one generated key.
    Generated { template: String, key: String },
}

fn get<'a>(map: &'a serde_norway::Mapping, key: &str) -> Option<&'a Value> {
    map.get(Value::String(key.to_string()))
}

fn mapping<'a>(map: &'a serde_norway::Mapping, key: &str) -> Option<&'a serde_norway::Mapping> {
    get(map, key).and_then(Value::as_mapping)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn pairs(list: Option<&Value>, name_key: &str, value_key: &str) -> Vec<(String, String)> {
    list.and_then(Value::as_sequence)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_mapping)
                .filter_map(|item| Some((text(get(item, name_key)?)?, text(get(item, value_key)?)?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Template {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&source).with_context(|| format!("reading {}", path.display()))
    }

    pub fn parse(source: &str) -> anyhow::Result<Self> {
        let document: Value = serde_norway::from_str(source)?;
        let root = document
            .as_mapping()
            .ok_or_else(|| anyhow!("the template is not a mapping"))?;
        let resources = mapping(root, "Resources")
            .cloned()
            .ok_or_else(|| anyhow!("no Resources"))?;
        let parameters = mapping(root, "Parameters").cloned().unwrap_or_default();
        let globals_env = mapping(root, "Globals")
            .and_then(|globals| mapping(globals, "Function"))
            .and_then(|function| mapping(function, "Environment"))
            .and_then(|environment| mapping(environment, "Variables"))
            .cloned()
            .unwrap_or_default();
        Ok(Self {
            resources,
            parameters,
            globals_env,
        })
    }

    /// The logical ids of the resources of type `kind`.
    pub fn logical_ids_of(&self, kind: &str) -> Vec<String> {
        self.resources_of(kind).map(|(id, _)| id).collect()
    }

    fn resources_of(&self, kind: &str) -> impl Iterator<Item = (String, &serde_norway::Mapping)> + '_ {
        let kind = kind.to_string();
        self.resources.iter().filter_map(move |(id, resource)| {
            let resource = resource.as_mapping()?;
            (get(resource, "Type")?.as_str()? == kind).then(|| {
                let properties = mapping(resource, "Properties");
                (
                    id.as_str().unwrap_or_default().to_string(),
                    properties.unwrap_or(&EMPTY),
                )
            })
        })
    }

    /// Parameter defaults, to be overlaid with local values.
    pub fn parameter_defaults(&self) -> HashMap<String, String> {
        self.parameters
            .iter()
            .filter_map(|(name, spec)| {
                let default = get(spec.as_mapping()?, "Default")?;
                Some((name.as_str()?.to_string(), text(default)?))
            })
            .collect()
    }

    pub fn tables(&self) -> Vec<TableSpec> {
        self.resources_of("AWS::DynamoDB::Table")
            .map(|(logical_id, properties)| TableSpec {
                logical_id,
                key_schema: pairs(get(properties, "KeySchema"), "AttributeName", "KeyType"),
                attributes: pairs(
                    get(properties, "AttributeDefinitions"),
                    "AttributeName",
                    "AttributeType",
                ),
                global_indexes: get(properties, "GlobalSecondaryIndexes")
                    .and_then(Value::as_sequence)
                    .map(|indexes| {
                        indexes
                            .iter()
                            .filter_map(Value::as_mapping)
                            .filter_map(|index| {
                                let projection = mapping(index, "Projection");
                                Some(IndexSpec {
                                    name: text(get(index, "IndexName")?)?,
                                    key_schema: pairs(get(index, "KeySchema"), "AttributeName", "KeyType"),
                                    projection: projection
                                        .and_then(|p| text(get(p, "ProjectionType")?))
                                        .unwrap_or_else(|| "ALL".into()),
                                    projected: projection
                                        .and_then(|p| get(p, "NonKeyAttributes"))
                                        .and_then(Value::as_sequence)
                                        .map(|names| names.iter().filter_map(text).collect())
                                        .unwrap_or_default(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                ttl_attribute: mapping(properties, "TimeToLiveSpecification")
                    .and_then(|ttl| text(get(ttl, "AttributeName")?)),
            })
            .collect()
    }

    /// The logical ids of the S3 buckets.
    pub fn buckets(&self) -> Vec<String> {
        self.resources_of("AWS::S3::Bucket")
            .map(|(logical_id, _)| logical_id)
            .collect()
    }

    pub fn queues(&self) -> Vec<QueueSpec> {
        self.resources_of("AWS::SQS::Queue")
            .map(|(logical_id, properties)| QueueSpec {
                logical_id,
                properties: properties.clone(),
            })
            .collect()
    }

    pub fn secrets(&self) -> Vec<SecretSpec> {
        self.resources_of("AWS::SecretsManager::Secret")
            .filter_map(|(logical_id, properties)| {
                let value = match get(properties, "SecretString") {
                    Some(value) => SecretValue::Given(value.clone()),
                    None => {
                        let generate = get(properties, "GenerateSecretString")?.as_mapping()?;
                        SecretValue::Generated {
                            template: get(generate, "SecretStringTemplate")
                                .and_then(Value::as_str)
                                .unwrap_or("{}")
                                .to_string(),
                            key: get(generate, "GenerateStringKey")?.as_str()?.to_string(),
                        }
                    }
                };
                Some(SecretSpec { logical_id, value })
            })
            .collect()
    }

    /// The environment of a function: the Globals' variables overlaid with its own, resolved.
    pub fn function_environment(
        &self,
        function: &str,
        resolver: &Resolver,
    ) -> anyhow::Result<HashMap<String, String>> {
        let resource = get(&self.resources, function)
            .and_then(Value::as_mapping)
            .ok_or_else(|| anyhow!("the template has no resource {function}"))?;
        let own = mapping(resource, "Properties")
            .and_then(|properties| mapping(properties, "Environment"))
            .and_then(|environment| mapping(environment, "Variables"))
            .cloned()
            .unwrap_or_default();
        let mut environment = HashMap::new();
        for (name, value) in self.globals_env.iter().chain(own.iter()) {
            let name = name.as_str().unwrap_or_default().to_string();
            let resolved = resolver
                .resolve(value)
                .with_context(|| format!("{function}: environment variable {name}"))?;
            environment.insert(name, resolved);
        }
        Ok(environment)
    }
}

/// An SQS event source of a function, as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsEventSpec {
    pub queue_arn: String,
    pub batch_size: usize,
    pub batching_window_secs: u64,
    pub maximum_concurrency: usize,
    pub report_batch_item_failures: bool,
}

impl Template {
    fn function(&self, function: &str) -> anyhow::Result<&serde_norway::Mapping> {
        get(&self.resources, function)
            .and_then(Value::as_mapping)
            .and_then(|resource| mapping(resource, "Properties"))
            .ok_or_else(|| anyhow!("the template has no function {function}"))
    }

    /// The function's timeout in seconds (Lambda's default is 3).
    pub fn function_timeout_secs(&self, function: &str, resolver: &Resolver) -> anyhow::Result<u64> {
        match get(self.function(function)?, "Timeout") {
            Some(value) => Ok(resolver.resolve(value)?.parse()?),
            None => Ok(3),
        }
    }

    /// The function's SQS event sources, resolved.
    pub fn sqs_event_sources(
        &self,
        function: &str,
        resolver: &Resolver,
    ) -> anyhow::Result<Vec<SqsEventSpec>> {
        let events = mapping(self.function(function)?, "Events")
            .cloned()
            .unwrap_or_default();
        let mut sources = Vec::new();
        for (name, event) in &events {
            let Some(event) = event.as_mapping() else { continue };
            if get(event, "Type").and_then(Value::as_str) != Some("SQS") {
                continue;
            }
            let properties = mapping(event, "Properties").cloned().unwrap_or_default();
            let number = |key: &str, default: u64| -> anyhow::Result<u64> {
                match get(&properties, key) {
                    Some(value) => Ok(resolver
                        .resolve(value)
                        .and_then(|v| v.parse().map_err(anyhow::Error::from))
                        .with_context(|| {
                            format!("{function}.Events.{}.{key}", name.as_str().unwrap_or_default())
                        })?),
                    None => Ok(default),
                }
            };
            let concurrency =
                match mapping(&properties, "ScalingConfig").and_then(|c| get(c, "MaximumConcurrency")) {
                    Some(value) => resolver.resolve(value)?.parse()?,
                    None => 5,
                };
            let responses = get(&properties, "FunctionResponseTypes")
                .and_then(Value::as_sequence)
                .is_some_and(|types| {
                    types
                        .iter()
                        .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
                });
            sources.push(SqsEventSpec {
                queue_arn: resolver
                    .resolve(get(&properties, "Queue").ok_or_else(|| anyhow!("SQS event without Queue"))?)?,
                batch_size: number("BatchSize", 10)? as usize,
                batching_window_secs: number("MaximumBatchingWindowInSeconds", 0)?,
                maximum_concurrency: concurrency,
                report_batch_item_failures: responses,
            });
        }
        Ok(sources)
    }
}

static EMPTY: std::sync::LazyLock<serde_norway::Mapping> =
    std::sync::LazyLock::new(serde_norway::Mapping::new);

/// What `!Ref` and `!GetAtt` of a created resource give.
#[derive(Debug, Clone, Default)]
pub struct ResourceValues {
    pub reference: String,
    pub attributes: HashMap<String, String>,
}

/// Resolves CloudFormation intrinsics (`Ref`, `Fn::GetAtt`, `Fn::Sub`) against local values.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    pub parameters: HashMap<String, String>,
    pub pseudo: HashMap<String, String>,
    pub resources: HashMap<String, ResourceValues>,
}

impl Resolver {
    fn reference(&self, name: &str) -> anyhow::Result<String> {
        if let Some(value) = self.parameters.get(name).or_else(|| self.pseudo.get(name)) {
            return Ok(value.clone());
        }
        self.resources
            .get(name)
            .map(|resource| resource.reference.clone())
            .ok_or_else(|| anyhow!("!Ref {name}: nothing local by that name"))
    }

    fn attribute(&self, resource: &str, attribute: &str) -> anyhow::Result<String> {
        self.resources
            .get(resource)
            .and_then(|values| values.attributes.get(attribute))
            .cloned()
            .ok_or_else(|| anyhow!("!GetAtt {resource}.{attribute}: nothing local by that name"))
    }

    fn substitute(&self, template: &str, variables: &HashMap<String, String>) -> anyhow::Result<String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| anyhow!("!Sub: unclosed ${{ in `{template}`"))?;
            let name = &rest[start + 2..start + end];
            let value = match variables.get(name) {
                Some(value) => value.clone(),
                None => match name.split_once('.') {
                    Some((resource, attribute)) if !name.starts_with("AWS::") => {
                        self.attribute(resource, attribute)?
                    }
                    _ => self.reference(name)?,
                },
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn get_att(&self, target: &Value) -> anyhow::Result<String> {
        match target {
            Value::String(dotted) => {
                let (resource, attribute) = dotted
                    .split_once('.')
                    .ok_or_else(|| anyhow!("!GetAtt {dotted}: expected Resource.Attribute"))?;
                self.attribute(resource, attribute)
            }
            Value::Sequence(parts) if parts.len() == 2 => {
                let part = |i: usize| text(&parts[i]).ok_or_else(|| anyhow!("!GetAtt: expected names"));
                self.attribute(&part(0)?, &part(1)?)
            }
            _ => bail!("!GetAtt: unsupported form"),
        }
    }

    fn sub(&self, argument: &Value) -> anyhow::Result<String> {
        match argument {
            Value::String(template) => self.substitute(template, &HashMap::new()),
            Value::Sequence(parts) if parts.len() == 2 => {
                let template = parts[0]
                    .as_str()
                    .ok_or_else(|| anyhow!("!Sub: expected a string"))?;
                let mut variables = HashMap::new();
                for (name, value) in parts[1].as_mapping().into_iter().flatten() {
                    variables.insert(
                        name.as_str().unwrap_or_default().to_string(),
                        self.resolve(value)?,
                    );
                }
                self.substitute(template, &variables)
            }
            _ => bail!("!Sub: unsupported form"),
        }
    }

    /// The local value of a template value.
    pub fn resolve(&self, value: &Value) -> anyhow::Result<String> {
        if let Some(plain) = text(value) {
            return Ok(plain);
        }
        match value {
            Value::Tagged(tagged) => match tagged.tag.to_string().as_str() {
                "!Ref" => self.reference(&text(&tagged.value).unwrap_or_default()),
                "!GetAtt" => self.get_att(&tagged.value),
                "!Sub" => self.sub(&tagged.value),
                other => bail!("{other} is not supported locally"),
            },
            Value::Mapping(map) if map.len() == 1 => {
                let (key, argument) = map.iter().next().expect("one entry");
                match key.as_str() {
                    Some("Ref") => self.reference(&text(argument).unwrap_or_default()),
                    Some("Fn::GetAtt") => self.get_att(argument),
                    Some("Fn::Sub") => self.sub(argument),
                    _ => bail!("{key:?} is not supported locally"),
                }
            }
            _ => bail!("a value of this shape is not supported locally"),
        }
    }
}

/// Every function's `Policies` entry, as written: (function, entry).
impl Template {
    pub fn function_policies(&self) -> Vec<(String, Value)> {
        self.resources_of("AWS::Serverless::Function")
            .flat_map(|(id, properties)| {
                get(properties, "Policies")
                    .and_then(Value::as_sequence)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |entry| (id.clone(), entry))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Parameters:
  Name: {Type: String, Default: world}
  Secret: {Type: String, NoEcho: true}
Globals:
  Function:
    Environment:
      Variables:
        SHARED: one
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}]
      TimeToLiveSpecification: {AttributeName: expires_at, Enabled: true}
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub ${AWS::StackName}-q
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Timeout: 60
      Events:
        Feed:
          Type: SQS
          Properties:
            Queue: !GetAtt Queue.Arn
            BatchSize: 500
            MaximumBatchingWindowInSeconds: 2
            FunctionResponseTypes: [ReportBatchItemFailures]
            ScalingConfig:
              MaximumConcurrency: !Ref Name
      Environment:
        Variables:
          TABLE: !Ref Table
          QUEUE_ARN: !GetAtt Queue.Arn
          GREETING: !Sub hello ${Name} from ${AWS::Region}
          LONG: {"Fn::GetAtt": [Queue, Arn]}
"#;

    fn resolver() -> Resolver {
        let mut resolver = Resolver::default();
        resolver.parameters.insert("Name".into(), "world".into());
        resolver.pseudo.insert("AWS::Region".into(), "us-east-1".into());
        resolver.resources.insert(
            "Table".into(),
            ResourceValues {
                reference: "local-Table".into(),
                attributes: HashMap::new(),
            },
        );
        resolver.resources.insert(
            "Queue".into(),
            ResourceValues {
                reference: "http://q".into(),
                attributes: [("Arn".to_string(), "arn:q".to_string())].into(),
            },
        );
        resolver
    }

    #[test]
    fn tables_are_read_with_their_keys_and_ttl() {
        let tables = Template::parse(TEMPLATE).unwrap().tables();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].logical_id, "Table");
        assert_eq!(tables[0].key_schema, vec![("pk".to_string(), "HASH".to_string())]);
        assert_eq!(tables[0].ttl_attribute.as_deref(), Some("expires_at"));
    }

    #[test]
    fn a_function_environment_resolves_every_intrinsic_used() {
        let template = Template::parse(TEMPLATE).unwrap();
        let environment = template.function_environment("Fn", &resolver()).unwrap();
        assert_eq!(environment["SHARED"], "one");
        assert_eq!(environment["TABLE"], "local-Table");
        assert_eq!(environment["QUEUE_ARN"], "arn:q");
        assert_eq!(environment["GREETING"], "hello world from us-east-1");
        assert_eq!(environment["LONG"], "arn:q");
    }

    #[test]
    fn an_unresolvable_reference_names_the_variable() {
        let template = Template::parse(&TEMPLATE.replace("!Ref Table", "!Ref Missing")).unwrap();
        let error = template.function_environment("Fn", &resolver()).unwrap_err();
        assert!(
            format!("{error:#}").contains("environment variable TABLE"),
            "{error:#}"
        );
    }

    #[test]
    fn sqs_event_sources_are_read_with_their_batching_and_concurrency() {
        let template = Template::parse(TEMPLATE).unwrap();
        let mut resolver = resolver();
        resolver.parameters.insert("Name".into(), "3".into());
        let sources = template.sqs_event_sources("Fn", &resolver).unwrap();
        assert_eq!(
            sources,
            vec![SqsEventSpec {
                queue_arn: "arn:q".into(),
                batch_size: 500,
                batching_window_secs: 2,
                maximum_concurrency: 3,
                report_batch_item_failures: true,
            }]
        );
        assert_eq!(template.function_timeout_secs("Fn", &resolver).unwrap(), 60);
    }

    #[test]
    fn parameter_defaults_skip_parameters_without_one() {
        let defaults = Template::parse(TEMPLATE).unwrap().parameter_defaults();
        assert_eq!(defaults.get("Name").map(String::as_str), Some("world"));
        assert!(!defaults.contains_key("Secret"));
    }

    /// SAM policy templates as SAM expands them (`samtranslator/policy_templates_data/
    /// policy_templates.json` in aws/serverless-application-model): name, actions, resources.
    /// The review expands every template a function uses with this table; a template missing from
    /// it fails the review until its expansion is added here.
    const SAM_POLICY_TEMPLATES: &[(&str, &[&str], &[&str])] = &[
        (
            "AWSSecretsManagerGetSecretValuePolicy",
            &["secretsmanager:GetSecretValue"],
            &["${secretArn}"],
        ),
        (
            "SQSSendMessagePolicy",
            &["sqs:SendMessage*"],
            &["arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${queueName}"],
        ),
        (
            "SQSPollerPolicy",
            &[
                "sqs:ChangeMessageVisibility",
                "sqs:ChangeMessageVisibilityBatch",
                "sqs:DeleteMessage",
                "sqs:DeleteMessageBatch",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
            ],
            &["arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${queueName}"],
        ),
        (
            "DynamoDBCrudPolicy",
            &[
                "dynamodb:GetItem",
                "dynamodb:DeleteItem",
                "dynamodb:PutItem",
                "dynamodb:Scan",
                "dynamodb:Query",
                "dynamodb:UpdateItem",
                "dynamodb:BatchWriteItem",
                "dynamodb:BatchGetItem",
                "dynamodb:DescribeTable",
                "dynamodb:ConditionCheckItem",
            ],
            &[
                "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${tableName}",
                "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${tableName}/index/*",
            ],
        ),
        (
            "DynamoDBReadPolicy",
            &[
                "dynamodb:GetItem",
                "dynamodb:Scan",
                "dynamodb:Query",
                "dynamodb:BatchGetItem",
                "dynamodb:DescribeTable",
            ],
            &[
                "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${tableName}",
                "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${tableName}/index/*",
            ],
        ),
        (
            "LambdaInvokePolicy",
            &["lambda:InvokeFunction"],
            &["arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${functionName}*"],
        ),
        (
            "SNSPublishMessagePolicy",
            &["sns:Publish"],
            &["arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${topicName}"],
        ),
        (
            "S3ReadPolicy",
            &[
                "s3:GetObject",
                "s3:ListBucket",
                "s3:GetBucketLocation",
                "s3:GetObjectVersion",
                "s3:GetLifecycleConfiguration",
            ],
            &[
                "arn:${AWS::Partition}:s3:::${bucketName}",
                "arn:${AWS::Partition}:s3:::${bucketName}/*",
            ],
        ),
    ];

    /// What the IAM review finds wrong with a template's function policies (nothing: empty).
    fn iam_findings(template: &Template) -> Vec<String> {
        let mut findings = Vec::new();
        for (function, entry) in template.function_policies() {
            let Some(entry) = entry.as_mapping() else {
                findings.push(format!(
                    "{function}: policy {entry:?} is a managed policy or not a mapping"
                ));
                continue;
            };
            let Some((kind, body)) = entry.iter().next() else {
                findings.push(format!("{function}: an empty policy entry"));
                continue;
            };
            let kind = kind.as_str().unwrap_or_default();
            if kind == "Statement" {
                for statement in body.as_sequence().into_iter().flatten() {
                    review_statement(&function, statement, &mut findings);
                }
                continue;
            }
            let Some((_, actions, resources)) = SAM_POLICY_TEMPLATES.iter().find(|(name, ..)| *name == kind)
            else {
                findings.push(format!(
                    "{function}: policy {kind} is not a SAM policy template the review knows; \
                     write a Statement, or add its expansion to SAM_POLICY_TEMPLATES"
                ));
                continue;
            };
            for action in actions.iter().filter(|action| action.contains('*')) {
                findings.push(format!("{function}: {kind} grants the wildcard action {action}"));
            }
            for resource in resources.iter().filter(|resource| resource.contains('*')) {
                findings.push(format!(
                    "{function}: {kind} grants the wildcard resource {resource}"
                ));
            }
            // Its parameters name resources of this template (`!Ref`, `!GetAtt`), never text.
            for (name, value) in body.as_mapping().into_iter().flatten() {
                if !matches!(value, Value::Tagged(_)) {
                    let name = name.as_str().unwrap_or_default();
                    findings.push(format!(
                        "{function}: {kind}.{name} is written out by hand: {value:?}"
                    ));
                }
            }
        }
        // A policy of its own, attached to a function's role (one that would close a dependency
        // loop inside the function), is held to the same rules.
        for (policy, properties) in template.resources_of("AWS::IAM::Policy") {
            let statements = mapping(properties, "PolicyDocument")
                .and_then(|document| get(document, "Statement"))
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            if statements.is_empty() {
                findings.push(format!("{policy}: no statements"));
            }
            for statement in &statements {
                review_statement(&policy, statement, &mut findings);
            }
        }
        findings
    }

    fn review_statement(function: &str, statement: &Value, findings: &mut Vec<String>) {
        let Some(statement) = statement.as_mapping() else {
            findings.push(format!("{function}: a statement that is not a mapping"));
            return;
        };
        if get(statement, "Effect").and_then(Value::as_str) != Some("Allow") {
            findings.push(format!("{function}: a statement that is not Effect: Allow"));
        }
        let actions = match get(statement, "Action") {
            Some(Value::Sequence(many)) => many.clone(),
            Some(one) => vec![one.clone()],
            None => Vec::new(),
        };
        for action in actions {
            match action.as_str() {
                Some(action) if !action.contains('*') => {}
                _ => findings.push(format!("{function}: wildcard or odd action {action:?}")),
            }
        }
        let resources = match get(statement, "Resource") {
            Some(Value::Sequence(many)) => many.clone(),
            Some(one) => vec![one.clone()],
            None => Vec::new(),
        };
        for resource in resources {
            // `!GetAtt`, `!Ref` or `!Sub` of a resource of this template: never an ARN written
            // out, never `*` (a `${Table.Arn}/index/*` names that table's indexes).
            let Value::Tagged(tagged) = &resource else {
                findings.push(format!(
                    "{function}: a resource written out by hand: {resource:?}"
                ));
                continue;
            };
            let text = tagged.value.as_str().unwrap_or_default();
            let wildcard_outside_a_reference = !text.starts_with("${") && text.contains('*');
            if wildcard_outside_a_reference || text.ends_with(":*") {
                findings.push(format!("{function}: resource {text}"));
            }
        }
    }

    /// The operator pool's client sends browsers back to the paths the dashboard serves, and the
    /// dashboard requires the group the template creates.
    #[test]
    fn the_operator_pools_client_returns_browsers_to_the_dashboards_own_paths() {
        let path = crate::moto::repo_root().join("template.yaml");
        let template = Template::load(&path).unwrap();
        let (_, client) = template
            .resources_of("AWS::Cognito::UserPoolClient")
            .next()
            .expect("the operator pool's client");
        let url = |list: &str| -> String {
            let urls = get(client, list).and_then(Value::as_sequence).expect(list);
            assert_eq!(urls.len(), 1, "{list}");
            match &urls[0] {
                Value::Tagged(tagged) => tagged.value.as_str().unwrap_or_default().to_string(),
                other => panic!("{list}: {other:?}"),
            }
        };
        assert!(url("CallbackURLs").ends_with(crm_sync::dashboard::oidc::CALLBACK_PATH));
        assert!(url("LogoutURLs").ends_with("/admin/login"));
        let (_, group) = template
            .resources_of("AWS::Cognito::UserPoolGroup")
            .next()
            .expect("the operators' group");
        let name = get(group, "GroupName").and_then(Value::as_str).unwrap();
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(source.contains(&format!("DASHBOARD_OIDC_REQUIRED_GROUP: {name}\n")));
    }

    /// The shipped template grants each function named actions on named resources only: no
    /// wildcard action, no `*` resource, and SAM policy templates only where their expansion has
    /// neither.
    #[test]
    fn the_shipped_template_grants_no_wildcard_action_or_resource() {
        let template = Template::load(&crate::moto::repo_root().join("template.yaml")).unwrap();
        assert!(
            template.function_policies().len() >= 4,
            "every function has a policy"
        );
        let findings = iam_findings(&template);
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn the_review_refuses_sam_policy_templates_that_expand_to_a_wildcard_or_are_unknown() {
        let template = Template::parse(
            r#"
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - SQSSendMessagePolicy:
            QueueName: !GetAtt Queue.QueueName
        - DynamoDBCrudPolicy:
            TableName: !Ref Table
        - SomeNewPolicy:
            Name: !Ref Table
        - AWSLambdaExecute
        - AWSSecretsManagerGetSecretValuePolicy:
            SecretArn: arn:aws:secretsmanager:us-east-1:123456789012:secret:x
        - AWSSecretsManagerGetSecretValuePolicy:
            SecretArn: !Ref Secret
        - SQSPollerPolicy:
            QueueName: !GetAtt Queue.QueueName
        - Statement:
            - Effect: Allow
              Action: [sqs:SendMessage]
              Resource: !GetAtt Queue.Arn
"#,
        )
        .unwrap();
        let findings = iam_findings(&template);
        for expected in [
            "SQSSendMessagePolicy grants the wildcard action sqs:SendMessage*",
            "DynamoDBCrudPolicy grants the wildcard resource",
            "policy SomeNewPolicy is not a SAM policy template the review knows",
            "AWSLambdaExecute",
            "AWSSecretsManagerGetSecretValuePolicy.SecretArn is written out by hand",
        ] {
            assert!(
                findings.iter().any(|finding| finding.contains(expected)),
                "no finding says {expected:?}: {findings:#?}"
            );
        }
        assert_eq!(findings.len(), 5, "{findings:#?}");
    }

    /// The AllowedPattern every parameter written into a secret's JSON must carry: no double
    /// quote, no backslash, no control character; anything else, the empty string included.
    const JSON_SAFE_PATTERN: &str = r#"^[^"\\\x00-\x1f]*$"#;

    /// Whether `value` matches `pattern`, for the one shape of pattern the template uses:
    /// `^[^CLASS]*$` or `^[CLASS]*$`, the class made of literal characters, `\\`-escapes,
    /// `\xHH` and ranges. (The workspace has no regex crate; CloudFormation reads the pattern as a
    /// Java regex, which reads this shape the same way.) `None` for any other shape.
    fn char_class_match(pattern: &str, value: &str) -> Option<bool> {
        let inner = pattern.strip_prefix("^[")?.strip_suffix("]*$")?;
        let (negated, class) = match inner.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, inner),
        };
        let mut chars = class.chars();
        let mut singles = Vec::new();
        while let Some(c) = chars.next() {
            let c = if c == '\\' {
                match chars.next()? {
                    'x' => {
                        let hex: String = [chars.next()?, chars.next()?].iter().collect();
                        char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                    }
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    escaped if escaped.is_ascii_punctuation() => escaped,
                    _ => return None,
                }
            } else if c == '[' || c == ']' {
                return None;
            } else {
                c
            };
            singles.push(c);
        }
        // `a-b` in the class: the middle `-` joins its neighbours into a range.
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < singles.len() {
            if i + 2 < singles.len() && singles[i + 1] == '-' {
                ranges.push((singles[i], singles[i + 2]));
                i += 3;
            } else {
                ranges.push((singles[i], singles[i]));
                i += 1;
            }
        }
        let in_class = |c: char| ranges.iter().any(|(low, high)| *low <= c && c <= *high);
        Some(value.chars().all(|c| in_class(c) != negated))
    }

    #[test]
    fn the_json_safe_pattern_refuses_quotes_backslashes_and_control_characters_only() {
        for refused in ["a\"b", "a\\b", "a\nb", "\u{0}", "tab\there", "\u{1f}"] {
            assert_eq!(
                char_class_match(JSON_SAFE_PATTERN, refused),
                Some(false),
                "{refused:?}"
            );
        }
        for allowed in [
            "pat-na1-11111111-2222-3333-4444-555555555555",
            "00D5g000004abcd",
            "5Aep861.x!y_z",
            "",
            "it's é/+=~",
        ] {
            assert_eq!(
                char_class_match(JSON_SAFE_PATTERN, allowed),
                Some(true),
                "{allowed:?}"
            );
        }
    }

    /// Every `${Parameter}` inside a secret's `SecretString: !Sub` JSON is a parameter whose
    /// AllowedPattern refuses what would break that JSON, so that CloudFormation refuses such a
    /// value before it changes anything rather than the function failing at its cold start.
    #[test]
    fn every_parameter_written_into_a_secret_s_json_refuses_what_would_break_it() {
        let source = std::fs::read_to_string(crate::moto::repo_root().join("template.yaml")).unwrap();
        let template = Template::parse(&source).unwrap();
        let mut checked = Vec::new();
        for secret in template.secrets() {
            let SecretValue::Given(value) = &secret.value else {
                continue;
            };
            let text = match value {
                Value::Tagged(tagged) if tagged.tag == "!Sub" => match &tagged.value {
                    Value::String(text) => text.clone(),
                    other => panic!("{}: a !Sub of this shape: {other:?}", secret.logical_id),
                },
                Value::String(_) => continue,
                other => panic!("{}: a SecretString of this shape: {other:?}", secret.logical_id),
            };
            if !text.trim_start().starts_with('{') {
                continue;
            }
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                let end = rest[start..].find('}').expect("a closed ${") + start;
                let name = &rest[start + 2..end];
                rest = &rest[end + 1..];
                // A resource's own id (a Cognito client id) is AWS's, safe in JSON.
                if name.starts_with('!')
                    || name.contains('.')
                    || name.starts_with("AWS::")
                    || get(&template.resources, name).is_some()
                {
                    continue;
                }
                let parameter = mapping(&template.parameters, name)
                    .unwrap_or_else(|| panic!("{}: ${{{name}}} is no parameter", secret.logical_id));
                let pattern = get(parameter, "AllowedPattern")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{name} (in {}) has no AllowedPattern", secret.logical_id));
                assert!(
                    get(parameter, "ConstraintDescription")
                        .and_then(Value::as_str)
                        .is_some(),
                    "{name} has no ConstraintDescription saying why a value is refused"
                );
                let matches = |value: &str| {
                    char_class_match(pattern, value).unwrap_or_else(|| {
                        panic!("{name}: write its AllowedPattern as {JSON_SAFE_PATTERN}, not {pattern}")
                    })
                };
                for refused in ["a\"b", "a\\b", "a\nb"] {
                    assert!(
                        !matches(refused),
                        "{name}'s AllowedPattern lets {refused:?} through"
                    );
                }
                for allowed in [
                    "pat-na1-11111111-2222-3333-4444-555555555555",
                    "00D5g000004abcd",
                    "5Aep861.x!y_z",
                    "",
                ] {
                    assert!(matches(allowed), "{name}'s AllowedPattern refuses {allowed:?}");
                }
                checked.push(name.to_string());
            }
        }
        checked.sort();
        assert_eq!(
            checked,
            [
                "HubSpotAccessToken",
                "HubSpotClientSecret",
                "PipedriveApiToken",
                "PipedriveWebhookPassword",
                "SalesforceAccessToken",
                "SalesforceClientSecret",
                "SalesforceRefreshToken",
                "SalesforceWebhookToken",
            ]
        );
    }
}
