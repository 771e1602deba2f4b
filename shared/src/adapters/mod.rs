//! Adapters: the ports implemented over real technology, each module named for what it speaks.

pub mod aws;
pub mod cloudwatch;
pub mod crm_http;
pub mod dynamodb;
pub mod hubspot;
pub mod oidc_http;
pub mod pipedrive;
pub mod plan_files;
pub mod s3;
pub mod salesforce;
pub mod secrets_manager;
pub mod sqs;
