//! Observed records + desired state → the writes that make the instance right, in order, or
//! none at all when it already is (zero writes at steady state).
//!
//! Order: the property first (so a new rule never fires without its URL), then the rule, then
//! duplicates, and the legacy rule last (incident events keep flowing until the task rule is in
//! place). Of several records with the managed name, the oldest is kept and repaired — a rule
//! with the name is never created again, whatever its state (inactive, edited, on another
//! table) — and the others are deleted.

use std::fmt;

use crate::servicenow::records::{BusinessRule, BusinessRuleFields, SystemProperty, SystemPropertyFields};

use super::{Desired, LEGACY_RULE_NAME, PROPERTY_NAME, RULE_NAME};

/// One write to the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the callback property.
    CreateProperty,
    /// Overwrite the managed fields of the kept property.
    UpdateProperty {
        /// The property.
        sys_id: String,
    },
    /// Create the Business Rule.
    CreateRule,
    /// Overwrite the managed fields of the kept rule.
    RepairRule {
        /// The rule.
        sys_id: String,
    },
    /// Delete a second (or later) rule with the managed name.
    DeleteDuplicateRule {
        /// The rule.
        sys_id: String,
    },
    /// Delete a second (or later) callback property.
    DeleteDuplicateProperty {
        /// The property.
        sys_id: String,
    },
    /// Delete the legacy incident rule.
    DeleteLegacyRule {
        /// The rule.
        sys_id: String,
    },
}

/// The steps, in order, and which fields drifted (for the condition message).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    steps: Vec<Step>,
    rule_drift: Vec<&'static str>,
    property_drift: Vec<&'static str>,
}

impl Plan {
    /// `true` when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Step> {
        self.steps.iter()
    }

    /// The rule's fields that differ from the desired ones (empty unless a `RepairRule`).
    pub fn rule_drift(&self) -> &[&'static str] {
        &self.rule_drift
    }

    /// The property's fields that differ from the desired ones (empty unless an `UpdateProperty`).
    pub fn property_drift(&self) -> &[&'static str] {
        &self.property_drift
    }
}

impl<'a> IntoIterator for &'a Plan {
    type Item = &'a Step;
    type IntoIter = std::slice::Iter<'a, Step>;

    fn into_iter(self) -> Self::IntoIter {
        self.steps.iter()
    }
}

/// The writes that turn `rules` (those named [`RULE_NAME`] or [`LEGACY_RULE_NAME`]) and
/// `properties` (those named [`PROPERTY_NAME`]) into `desired`.
pub fn plan(rules: &[BusinessRule], properties: &[SystemProperty], desired: &Desired) -> Plan {
    let mut plan = Plan::default();

    let kept_property = kept_property(properties);
    match kept_property {
        None => plan.steps.push(Step::CreateProperty),
        Some(property) => {
            plan.property_drift = property_drift(&property.fields, &desired.property);
            if !plan.property_drift.is_empty() {
                plan.steps.push(Step::UpdateProperty {
                    sys_id: property.sys_id.clone(),
                });
            }
        }
    }

    let kept_rule = kept_rule(rules);
    match kept_rule {
        None => plan.steps.push(Step::CreateRule),
        Some(rule) => {
            plan.rule_drift = rule_drift(&rule.fields, &desired.rule);
            if !plan.rule_drift.is_empty() {
                plan.steps.push(Step::RepairRule {
                    sys_id: rule.sys_id.clone(),
                });
            }
        }
    }

    let is_kept_rule = |rule: &BusinessRule| kept_rule.is_some_and(|kept| kept.sys_id == rule.sys_id);
    plan.steps.extend(
        rules
            .iter()
            .filter(|rule| rule.fields.name == RULE_NAME && !is_kept_rule(rule))
            .map(|rule| Step::DeleteDuplicateRule {
                sys_id: rule.sys_id.clone(),
            }),
    );
    let is_kept_property = |property: &SystemProperty| kept_property.is_some_and(|kept| kept.sys_id == property.sys_id);
    plan.steps.extend(
        properties
            .iter()
            .filter(|property| property.fields.name == PROPERTY_NAME && !is_kept_property(property))
            .map(|property| Step::DeleteDuplicateProperty {
                sys_id: property.sys_id.clone(),
            }),
    );
    plan.steps.extend(
        rules
            .iter()
            .filter(|rule| rule.fields.name == LEGACY_RULE_NAME)
            .map(|rule| Step::DeleteLegacyRule {
                sys_id: rule.sys_id.clone(),
            }),
    );
    plan
}

/// The rule named [`RULE_NAME`] the operator keeps: the oldest (by `sys_created_on`, then
/// `sys_id`; records without a creation time last).
pub fn kept_rule(rules: &[BusinessRule]) -> Option<&BusinessRule> {
    rules
        .iter()
        .filter(|rule| rule.fields.name == RULE_NAME)
        .min_by(|a, b| age(&a.sys_created_on, &a.sys_id).cmp(&age(&b.sys_created_on, &b.sys_id)))
}

/// The property named [`PROPERTY_NAME`] the operator keeps: the oldest, as for rules.
pub fn kept_property(properties: &[SystemProperty]) -> Option<&SystemProperty> {
    properties
        .iter()
        .filter(|property| property.fields.name == PROPERTY_NAME)
        .min_by(|a, b| age(&a.sys_created_on, &a.sys_id).cmp(&age(&b.sys_created_on, &b.sys_id)))
}

/// Sort key, oldest first: `YYYY-MM-DD HH:MM:SS` sorts as text; an empty time sorts last.
fn age<'a>(created_on: &'a str, sys_id: &'a str) -> (bool, &'a str, &'a str) {
    (created_on.is_empty(), created_on, sys_id)
}

/// The managed fields of `observed` that differ from `desired`.
fn rule_drift(observed: &BusinessRuleFields, desired: &BusinessRuleFields) -> Vec<&'static str> {
    let texts = [
        ("collection", &observed.collection, &desired.collection),
        ("when", &observed.when, &desired.when),
        ("order", &observed.order, &desired.order),
        ("description", &observed.description, &desired.description),
        ("script", &observed.script, &desired.script),
    ];
    let flags = [
        ("active", observed.active, desired.active),
        ("advanced", observed.advanced, desired.advanced),
        ("action_insert", observed.action_insert, desired.action_insert),
        ("action_update", observed.action_update, desired.action_update),
        ("action_delete", observed.action_delete, desired.action_delete),
        ("action_query", observed.action_query, desired.action_query),
    ];
    let mut drift: Vec<&'static str> = texts
        .into_iter()
        .filter(|(_, observed, desired)| text(observed) != text(desired))
        .map(|(field, _, _)| field)
        .chain(
            flags
                .into_iter()
                .filter(|(_, observed, desired)| observed != desired)
                .map(|(field, _, _)| field),
        )
        .collect();
    if condition(&observed.filter_condition) != condition(&desired.filter_condition) {
        drift.push("filter_condition");
    }
    drift
}

/// The managed fields of `observed` that differ from `desired`.
fn property_drift(observed: &SystemPropertyFields, desired: &SystemPropertyFields) -> Vec<&'static str> {
    let mut drift: Vec<&'static str> = [
        ("value", &observed.value, &desired.value),
        ("type", &observed.property_type, &desired.property_type),
        ("description", &observed.description, &desired.description),
    ]
    .into_iter()
    .filter(|(_, observed, desired)| text(observed) != text(desired))
    .map(|(field, _, _)| field)
    .collect();
    if observed.is_private != desired.is_private {
        drift.push("is_private");
    }
    drift
}

/// Text as compared: line endings as `\n`, trailing whitespace ignored (an instance or an
/// editor may change either without changing the meaning).
fn text(value: &str) -> String {
    value.replace("\r\n", "\n").trim_end().to_owned()
}

/// An encoded condition as compared: the condition builder's `^EQ` terminator is not a
/// condition (`""`, `EQ` and `^EQ` all mean "always").
fn condition(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_suffix("^EQ")
        .or_else(|| value.strip_suffix("EQ").filter(|rest| rest.is_empty()))
        .unwrap_or(value)
}

/// What `plan` does, in words, for a condition message. Never shows a value.
pub fn describe(plan: &Plan) -> Description<'_> {
    Description(plan)
}

/// The text of [`describe`].
#[derive(Clone, Copy, Debug)]
pub struct Description<'a>(&'a Plan);

impl fmt::Display for Description<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.0;
        let parts: Vec<String> = plan
            .iter()
            .map(|step| match step {
                Step::CreateProperty => format!("created the property {PROPERTY_NAME}"),
                Step::UpdateProperty { .. } => {
                    format!(
                        "updated the property {PROPERTY_NAME} ({})",
                        plan.property_drift.join(", ")
                    )
                }
                Step::CreateRule => format!("created the Business Rule {RULE_NAME:?}"),
                Step::RepairRule { .. } => {
                    format!(
                        "repaired the Business Rule {RULE_NAME:?} ({})",
                        plan.rule_drift.join(", ")
                    )
                }
                Step::DeleteDuplicateRule { sys_id } => format!("deleted the duplicate Business Rule {sys_id}"),
                Step::DeleteDuplicateProperty { sys_id } => format!("deleted the duplicate property {sys_id}"),
                Step::DeleteLegacyRule { sys_id } => {
                    format!("deleted the legacy Business Rule {LEGACY_RULE_NAME:?} ({sys_id})")
                }
            })
            .collect();
        if parts.is_empty() {
            f.write_str("nothing to do")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests;
