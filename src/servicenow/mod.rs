//! The ServiceNow client library. No Kubernetes types here.

pub mod instance_url;

pub use instance_url::{InstanceUrl, InvalidInstanceUrl, UrlRule};
