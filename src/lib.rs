//! servicenow-operator: keeps `ServiceNowConnection`s healthy — OAuth consent and token refresh,
//! the integration's identity, the webhook Business Rule and its callback property on the
//! instance — and reports their health where people look.
//!
//! Layering (enforced by `tests/architecture.rs`): `api` is the Kubernetes API and imports only
//! the pure URL rules of `servicenow::instance_url`; `servicenow` is the ServiceNow client and
//! knows nothing of Kubernetes; `outbound` (every outbound HTTP client) and `sync` (the lock
//! helper) are leaves that anything may use, `servicenow` included.

pub mod api;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod http;
pub mod outbound;
pub mod provision;
pub mod reconcile;
pub mod retry;
pub mod run;
pub mod secrets;
pub mod servicenow;
pub mod sync;
pub mod telemetry;
pub mod ticket;
pub mod webhook;
