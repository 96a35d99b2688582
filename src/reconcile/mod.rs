//! One connection's reconcile: gather → validate → plan → execute → status.

pub mod backoff;
pub mod error;
pub mod events;
pub mod status;
pub mod tokens;
