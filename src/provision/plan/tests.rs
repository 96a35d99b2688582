//! The planner, case by case.

use super::*;
use crate::provision::{Owner, desired};

const CALLBACK: &str = "https://neo.example.com/callback/servicenow?connection=itsm%2Facme";

fn wanted() -> Desired {
    desired(
        CALLBACK,
        &crate::servicenow::SecretString::new("t1"),
        &crate::api::WebhookSpec::default().task_types,
        &Owner {
            public_url: "https://neo.example.com".into(),
            connection: "itsm/acme".into(),
        },
    )
}

/// The desired rule as the instance would hold it.
fn rule(sys_id: &str, created_on: &str) -> BusinessRule {
    BusinessRule {
        sys_id: sys_id.into(),
        sys_created_on: created_on.into(),
        fields: wanted().rule,
    }
}

fn legacy(sys_id: &str) -> BusinessRule {
    let mut rule = rule(sys_id, "2024-01-01 00:00:00");
    rule.fields.name = LEGACY_RULE_NAME.into();
    rule.fields.collection = "incident".into();
    rule
}

fn property(sys_id: &str, created_on: &str) -> SystemProperty {
    SystemProperty {
        sys_id: sys_id.into(),
        sys_created_on: created_on.into(),
        fields: wanted().property,
    }
}

/// The steps as `for step in &plan` walks them (`describe` walks [`Plan::iter`]).
fn steps(plan: &Plan) -> Vec<Step> {
    plan.into_iter().cloned().collect()
}

fn id(sys_id: &str) -> String {
    sys_id.to_owned()
}

#[test]
fn nothing_is_written_when_the_instance_matches() {
    let plan = plan(
        &[rule("r1", "2025-01-01 00:00:00")],
        &[property("p1", "2025-01-01 00:00:00")],
        &wanted(),
    );
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(describe(&plan).to_string(), "nothing to do");
}

#[test]
fn a_fresh_instance_gets_the_property_then_the_rule() {
    let plan = plan(&[], &[], &wanted());
    assert!(!plan.is_empty());
    assert_eq!(steps(&plan), [Step::CreateProperty, Step::CreateRule]);
}

#[test]
fn a_missing_rule_is_created() {
    let plan = plan(&[], &[property("p1", "")], &wanted());
    assert_eq!(steps(&plan), [Step::CreateRule]);
}

#[test]
fn a_deactivated_rule_is_repaired_not_created_again() {
    let mut off = rule("r1", "2025-01-01 00:00:00");
    off.fields.active = false;
    let plan = plan(&[off], &[property("p1", "")], &wanted());
    assert_eq!(steps(&plan), [Step::RepairRule { sys_id: id("r1") }]);
    assert_eq!(plan.rule_drift(), ["active"]);
    assert_eq!(
        describe(&plan).to_string(),
        "repaired the Business Rule \"Neo Agent — Task Webhook\" (active)"
    );
}

#[test]
fn an_edited_script_is_repaired() {
    let mut edited = rule("r1", "2025-01-01 00:00:00");
    edited.fields.script.push_str("\ngs.info('hand edit');");
    let plan = plan(&[edited], &[property("p1", "")], &wanted());
    assert_eq!(steps(&plan), [Step::RepairRule { sys_id: id("r1") }]);
    assert_eq!(plan.rule_drift(), ["script"]);
}

#[test]
fn a_rule_moved_to_another_table_with_other_triggers_is_repaired_field_by_field() {
    let mut moved = rule("r1", "2025-01-01 00:00:00");
    moved.fields.collection = "incident".into();
    moved.fields.when = "before".into();
    moved.fields.action_delete = true;
    moved.fields.filter_condition = "active=true^EQ".into();
    let plan = plan(&[moved], &[property("p1", "")], &wanted());
    assert_eq!(steps(&plan), [Step::RepairRule { sys_id: id("r1") }]);
    assert_eq!(
        plan.rule_drift(),
        ["collection", "when", "action_delete", "filter_condition"]
    );
}

#[test]
fn line_endings_trailing_space_and_an_empty_condition_terminator_are_not_drift() {
    let mut saved = rule("r1", "2025-01-01 00:00:00");
    saved.fields.script = format!("{}\r\n\r\n", saved.fields.script.replace('\n', "\r\n"));
    saved.fields.filter_condition = format!("{}^EQ", saved.fields.filter_condition);
    let plan = plan(&[saved], &[property("p1", "")], &wanted());
    assert!(plan.is_empty(), "{plan:?}");
}

#[test]
fn of_duplicate_rules_the_oldest_is_kept_and_the_others_deleted() {
    let rules = [
        rule("r-new", "2025-03-01 00:00:00"),
        rule("r-old", "2025-01-01 00:00:00"),
        rule("r-undated", ""),
    ];
    let plan = plan(&rules, &[property("p1", "")], &wanted());
    assert_eq!(
        steps(&plan),
        [
            Step::DeleteDuplicateRule { sys_id: id("r-new") },
            Step::DeleteDuplicateRule {
                sys_id: id("r-undated")
            }
        ]
    );
    assert_eq!(kept_rule(&rules).map(|rule| rule.sys_id.as_str()), Some("r-old"));
}

#[test]
fn duplicates_created_in_the_same_second_keep_the_lowest_sys_id() {
    let rules = [rule("b", "2025-01-01 00:00:00"), rule("a", "2025-01-01 00:00:00")];
    assert_eq!(kept_rule(&rules).map(|rule| rule.sys_id.as_str()), Some("a"));
}

#[test]
fn a_drifted_oldest_duplicate_is_repaired_and_the_younger_one_deleted() {
    let mut old = rule("r-old", "2025-01-01 00:00:00");
    old.fields.active = false;
    let plan = plan(
        &[rule("r-new", "2025-02-01 00:00:00"), old],
        &[property("p1", "")],
        &wanted(),
    );
    assert_eq!(
        steps(&plan),
        [
            Step::RepairRule { sys_id: id("r-old") },
            Step::DeleteDuplicateRule { sys_id: id("r-new") }
        ]
    );
}

#[test]
fn the_legacy_rule_is_deleted_after_the_task_rule_is_in_place() {
    let plan = plan(&[legacy("l1")], &[property("p1", "")], &wanted());
    assert_eq!(
        steps(&plan),
        [Step::CreateRule, Step::DeleteLegacyRule { sys_id: id("l1") }]
    );
    let plan = super::plan(&[legacy("l1"), rule("r1", "")], &[property("p1", "")], &wanted());
    assert_eq!(steps(&plan), [Step::DeleteLegacyRule { sys_id: id("l1") }]);
}

#[test]
fn a_missing_property_is_created() {
    let plan = plan(&[rule("r1", "")], &[], &wanted());
    assert_eq!(steps(&plan), [Step::CreateProperty]);
}

#[test]
fn a_property_that_is_not_private_is_made_private() {
    let mut public = property("p1", "");
    public.fields.is_private = false;
    let plan = plan(&[rule("r1", "")], &[public], &wanted());
    assert_eq!(steps(&plan), [Step::UpdateProperty { sys_id: id("p1") }]);
    assert_eq!(plan.property_drift(), ["is_private"]);
}

#[test]
fn a_changed_property_value_is_updated_without_showing_it() {
    let mut changed = property("p1", "");
    changed.fields.value = "https://neo.example.com/callback/servicenow?connection=itsm%2Facme#key=b2xk".into();
    let plan = plan(&[rule("r1", "")], &[changed], &wanted());
    assert_eq!(steps(&plan), [Step::UpdateProperty { sys_id: id("p1") }]);
    assert_eq!(plan.property_drift(), ["value"]);
    let text = describe(&plan).to_string();
    assert_eq!(text, "updated the property x_neoagent.callback_url (value)");
}

#[test]
fn a_property_of_another_type_is_updated() {
    let mut typed = property("p1", "");
    typed.fields.property_type = "password2".into();
    let plan = plan(&[rule("r1", "")], &[typed], &wanted());
    assert_eq!(plan.property_drift(), ["type"]);
}

#[test]
fn of_duplicate_properties_the_oldest_is_kept_and_the_others_deleted() {
    let plan = plan(
        &[rule("r1", "")],
        &[
            property("p2", "2025-02-01 00:00:00"),
            property("p1", "2025-01-01 00:00:00"),
        ],
        &wanted(),
    );
    assert_eq!(steps(&plan), [Step::DeleteDuplicateProperty { sys_id: id("p2") }]);
}

#[test]
fn records_with_other_names_are_left_alone() {
    let mut stranger = rule("x1", "");
    stranger.fields.name = "Someone Else's Rule".into();
    let mut other_property = property("x2", "");
    other_property.fields.name = "glide.other".into();
    let plan = plan(
        &[stranger, rule("r1", "")],
        &[other_property, property("p1", "")],
        &wanted(),
    );
    assert!(plan.is_empty(), "{plan:?}");
}

#[test]
fn everything_wrong_at_once_is_fixed_in_order() {
    let mut drifted = rule("r-old", "2025-01-01 00:00:00");
    drifted.fields.order = "50".into();
    let mut stale = property("p-old", "2025-01-01 00:00:00");
    stale.fields.description = "hand written".into();
    let plan = plan(
        &[legacy("l1"), rule("r-new", "2025-06-01 00:00:00"), drifted],
        &[property("p-new", "2025-06-01 00:00:00"), stale],
        &wanted(),
    );
    assert_eq!(
        steps(&plan),
        [
            Step::UpdateProperty { sys_id: id("p-old") },
            Step::RepairRule { sys_id: id("r-old") },
            Step::DeleteDuplicateRule { sys_id: id("r-new") },
            Step::DeleteDuplicateProperty { sys_id: id("p-new") },
            Step::DeleteLegacyRule { sys_id: id("l1") },
        ]
    );
    assert_eq!(
        describe(&plan).to_string(),
        "updated the property x_neoagent.callback_url (description); repaired the Business Rule \
         \"Neo Agent — Task Webhook\" (order); deleted the duplicate Business Rule r-new; deleted the duplicate \
         property p-new; deleted the legacy Business Rule \"Neo Agent — Incident Webhook\" (l1)"
    );
}
