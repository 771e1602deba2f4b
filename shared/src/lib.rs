//! crm-sync: keeps a web app and its CRM in step without the CRM ever sitting in the app's
//! request path.
//!
//! Layout (hexagonal):
//! - [`domain`]: the product's vocabulary and rules, free of AWS and HTTP framework types;
//! - [`ports`]: the traits the domain needs from the outside world, with their contracts;
//! - [`adapters`]: implementations of the ports, each named by the technology it speaks;
//! - [`ingest`]: the webhook ingest use case, written against ports only;
//! - [`entrypoints`]: how Lambda events reach the use cases (what `functions/*` wire up);
//! - `testing` (feature `test-util`): in-memory adapters of the ports, for fast use-case tests.

pub mod adapters;
pub mod adoption;
pub mod adoption_runs;
pub mod config;
pub mod dashboard;
pub mod dead_letters;
pub mod domain;
pub mod entrypoints;
pub mod inbound;
pub mod ingest;
pub mod merges;
pub mod ports;
pub mod reconcile;
pub mod sync;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod worker;
