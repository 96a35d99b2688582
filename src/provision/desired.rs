//! What the instance should hold for a connection: the task webhook Business Rule and the
//! callback property, plus the names of what older versions left behind.

use crate::servicenow::{
    SecretString,
    records::{BusinessRuleFields, SystemPropertyFields},
};

use super::{Owner, owner::signed_callback};

/// The Business Rule the operator manages (`—` is an em dash, U+2014).
pub const RULE_NAME: &str = "Neo Agent — Task Webhook";
/// The table the rule runs on: the parent of every task-family table, so one rule covers
/// incident, problem, change_request, sc_request, sc_req_item and sc_task.
pub const RULE_TABLE: &str = "task";
/// The rule an older integration installed on `incident` only; removed wherever found.
pub const LEGACY_RULE_NAME: &str = "Neo Agent — Incident Webhook";
/// The table the legacy rule ran on.
pub const LEGACY_RULE_TABLE: &str = "incident";
/// The System Property holding the callback URL the rule posts to and, after `#key=`, the key it
/// signs events with.
pub const PROPERTY_NAME: &str = "x_neoagent.callback_url";

/// When the rule runs: `after` the write, so it sees the record as saved, inside the
/// transaction's after phase. The script hands the POST to `executeAsync()` (servicenow-api.md
/// §3.5: recommended from business rules), so the user's save never waits on the callback. An
/// `async` rule would only add scheduler queueing before the event leaves, and it needs nothing
/// `after` lacks (the script reads no `previous`).
pub const RULE_WHEN: &str = "after";
/// The rule's order among the table's rules (ServiceNow's default).
pub const RULE_ORDER: &str = "100";
/// The rule's script.
pub const RULE_SCRIPT: &str = include_str!("task_webhook.js");

/// The desired rule and property of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The Business Rule, field by field.
    pub rule: BusinessRuleFields,
    /// The callback property (its `Debug` hides the signing key).
    pub property: SystemPropertyFields,
}

/// The rule's filter condition: the record's class is one of `task_types`
/// (`sys_class_name=a^ORsys_class_name=b`, servicenow-api.md §7 "Business Rules on task").
pub fn task_filter(task_types: &[String]) -> String {
    task_types
        .iter()
        .map(|class| format!("sys_class_name={class}"))
        .collect::<Vec<_>>()
        .join("^OR")
}

/// The desired state for the connection `owner`, whose events of the classes `task_types` go to
/// `callback_url` signed with `key`.
pub fn desired(callback_url: &str, key: &SecretString, task_types: &[String], owner: &Owner) -> Desired {
    Desired {
        rule: BusinessRuleFields {
            name: RULE_NAME.to_owned(),
            collection: RULE_TABLE.to_owned(),
            when: RULE_WHEN.to_owned(),
            order: RULE_ORDER.to_owned(),
            active: true,
            advanced: true,
            action_insert: true,
            action_update: true,
            action_delete: false,
            action_query: false,
            filter_condition: task_filter(task_types),
            description: format!(
                "Posts every insert and update of a task record of the classes in its filter, signed, to the URL in the system property {PROPERTY_NAME}. \
                 Managed by servicenow-operator for {owner}: do not edit by hand, changes are reverted at the next drift \
                 check; delete the ServiceNowConnection to remove it."
            ),
            script: RULE_SCRIPT.to_owned(),
        },
        property: SystemPropertyFields {
            name: PROPERTY_NAME.to_owned(),
            value: signed_callback(callback_url, key),
            property_type: "string".to_owned(),
            // Private: update sets leave it out, so no export carries the signing key to another
            // instance (a clone still copies it: the receiver refuses a clone's events by their
            // `instance`).
            is_private: true,
            description: format!(
                "Callback URL of the Business Rule \"{RULE_NAME}\" and, after #key=, the key it signs events with \
                 (never sent). Owned by servicenow-operator for {owner}: do not edit by hand."
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::owner::tests::owner;

    #[test]
    fn the_rule_fires_after_inserts_and_updates_on_task_and_runs_the_webhook_script() {
        let desired = desired(
            "https://neo.example.com/callback/servicenow?connection=itsm%2Facme",
            &SecretString::new("t"),
            &crate::api::WebhookSpec::default().task_types,
            &owner(),
        );
        let rule = &desired.rule;
        assert_eq!(
            (rule.name.as_str(), rule.collection.as_str(), rule.when.as_str()),
            (RULE_NAME, "task", "after")
        );
        assert!(rule.active && rule.advanced && rule.action_insert && rule.action_update);
        assert!(!rule.action_delete && !rule.action_query);
        assert!(rule.description.contains("servicenow-operator") && rule.description.contains("itsm/acme"));
        assert!(rule.script.starts_with("(function executeRule(current, previous"));
        assert_eq!(
            rule.filter_condition,
            "sys_class_name=incident^ORsys_class_name=problem^ORsys_class_name=change_request\
             ^ORsys_class_name=sc_request^ORsys_class_name=sc_req_item^ORsys_class_name=sc_task"
        );
        assert!(rule.script.trim_end().ends_with("})(current, previous);"));
        assert_eq!(desired.property.name, PROPERTY_NAME);
        assert_eq!(desired.property.property_type, "string");
        assert!(desired.property.is_private, "kept out of update sets");
        assert!(desired.property.description.contains("itsm/acme"));
    }

    #[test]
    fn the_names_use_an_em_dash() {
        assert!(RULE_NAME.contains('\u{2014}') && LEGACY_RULE_NAME.contains('\u{2014}'));
    }

    #[test]
    fn the_script_reads_the_property_and_posts_the_event_without_waiting() {
        for part in [
            "gs.getProperty('x_neoagent.callback_url'",
            "indexOf('#key=')",
            "gs.warn(",
            "gs.generateGUID()",
            "gs.getProperty('glide.servlet.uri'",
            "current.getRecordClassName()",
            "current.getUniqueValue()",
            "current.getValue('number')",
            "current.operation()",
            "current.getValue('sys_updated_on')",
            "current.getValue('sys_updated_by')",
            "new sn_ws.RESTMessageV2()",
            "setHttpMethod('post')",
            "new GlideDateTime().getNumericValue()",
            "new GlideCertificateEncryption().generateMac(key, 'HmacSHA256', timestamp + '.' + body)",
            "setEndpoint(endpoint)",
            "setRequestHeader('Content-Type', 'application/json')",
            "setRequestHeader('X-Neoagent-Timestamp', timestamp)",
            "setRequestHeader('X-Neoagent-Signature', 'v1=' + signature)",
            "setRequestBody(body)",
            "executeAsync()",
            "gs.error(",
        ] {
            assert!(RULE_SCRIPT.contains(part), "the script lacks {part}");
        }
    }

    #[test]
    fn the_desired_state_does_not_show_the_signing_key_in_debug() {
        let key = SecretString::new("s3cret");
        let desired = desired(
            "https://neo.example.com/callback/servicenow?connection=itsm%2Facme",
            &key,
            &["incident".to_owned()],
            &owner(),
        );
        assert_eq!(desired.rule.filter_condition, "sys_class_name=incident");
        assert!(desired.property.value.ends_with("#key=czNjcmV0"));
        assert!(!format!("{desired:?}").contains("czNjcmV0"));
    }
}
