//! Salesforce: the REST API client (sObject Collections, 200 records a call, OAuth refresh).

pub mod client;

pub use client::{OAuthRefresh, SalesforceClient};
