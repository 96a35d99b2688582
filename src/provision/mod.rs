//! Pure planning of what a connection provisions on its instance: the desired Business Rule and
//! callback property ([`desired()`]), who owns an instance's webhook ([`Owner`],
//! [`claimed_by_other`]), and the ordered writes from what was observed to what is desired
//! ([`plan()`]). Sync functions over plain values: no I/O, nothing of the crate but
//! `servicenow::records` and the webhook path of `api::paths`.

pub mod desired;
pub mod owner;
pub mod plan;

pub use desired::{
    Desired, LEGACY_RULE_NAME, LEGACY_RULE_TABLE, PROPERTY_NAME, RULE_NAME, RULE_ORDER, RULE_SCRIPT, RULE_TABLE,
    RULE_WHEN, desired,
};
pub use owner::{Owner, claimed_by_other, signed_callback};
pub use plan::{Description, Plan, Step, describe, kept_property, kept_rule, plan};
