//! Integration tests: each drives a local stack over real HTTP against moto.

mod hubspot_adapters;
mod reconcile;
mod sync_inbound;
mod sync_outbound;
mod webhook_ingest;
