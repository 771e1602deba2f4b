//! Integration tests: each drives a local stack over real HTTP against moto.

mod adoption;
mod chaos;
mod contract;
mod dashboard;
mod dashboard_browser;
mod dashboard_sign_in;
mod event_journal;
mod hubspot_adapters;
mod identity;
mod local_api;
mod local_dynamodb;
mod pipedrive_client;
mod pipedrive_webhooks;
mod reconcile;
mod salesforce_client;
mod salesforce_webhooks;
mod scenarios;
mod sync_inbound;
mod sync_outbound;
mod sync_pipedrive;
mod sync_salesforce;
mod webhook_ingest;
