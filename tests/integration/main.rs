//! Integration tests: each drives a local stack over real HTTP against moto.

mod webhook_ingest;
