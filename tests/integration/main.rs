//! Integration tests: each drives a local stack over real HTTP against moto.

mod sync_outbound;
mod webhook_ingest;
