//! Role-based access rules per table and operation (servicenow-api.md §3.2, §3.4, §6 item 9, §7).
//! A rule on a parent table covers its children (a rule on `task` covers `incident`); a table
//! without a rule for an operation is open to `admin` only, like the instance's `*` ACLs. The
//! `admin` role passes every rule. Several rules on one table and operation are alternatives
//! (the instance grants access when one of them passes); a rule may hold only for the rows that
//! match a condition (an encoded query, e.g. `nameSTARTSWITHx_neoagent.` — how a `security_admin`
//! opens a few System Properties to a custom role).
//!
//! The seeded rules are the "Security jump-start" ACLs of a new instance
//! (`platform-security/access-control/r_SecurityJumpStartACLRules.md`): `sys_script` is written
//! by `admin` or `business_rule_admin` (`r_SpecialAdministrativeRoles.md`,
//! `c_DefaultDenyProperty.md`); `sys_properties` has no role but `admin`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::schema::Table;

/// A table operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Read rows and fields.
    Read,
    /// Insert.
    Create,
    /// Update.
    Write,
    /// Delete.
    Delete,
}

impl Operation {
    /// The word the instance uses in `ACL Exception <word> Failed due to security constraints`.
    pub fn exception_word(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Create => "Insert",
            Operation::Write => "Update",
            Operation::Delete => "Delete",
        }
    }
}

/// One access rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Table the rule is on.
    pub table: String,
    /// Operation it guards.
    pub operation: Operation,
    /// Roles of which the user needs one; empty means any authenticated user.
    #[serde(default)]
    pub roles: Vec<String>,
    /// For users without one of `roles`: rows whose this reference field is the user are still
    /// allowed (e.g. `user` on `sys_user_has_role`: everybody reads their own grants).
    #[serde(default)]
    pub own_rows_field: Option<String>,
    /// When set, the rule holds only for rows matching this encoded query (for a create: the
    /// record as it would be inserted).
    #[serde(default)]
    pub condition: Option<String>,
}

impl AclRule {
    /// A rule granting `operation` on `table` to holders of any of `roles`.
    pub fn new(table: &str, operation: Operation, roles: &[&str]) -> Self {
        AclRule {
            table: table.to_string(),
            operation,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            own_rows_field: None,
            condition: None,
        }
    }

    /// The same rule, holding only for rows that match `condition`.
    pub fn on_rows(self, condition: &str) -> Self {
        AclRule {
            condition: Some(condition.to_string()),
            ..self
        }
    }
}

/// What a user may do on a table for one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every row.
    All,
    /// Only rows whose named field holds the user's sys_id.
    OwnRows(String),
    /// Only rows matching one of these encoded queries.
    Matching(Vec<String>),
    /// Nothing.
    Denied,
}

/// The access rules of one instance.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

impl Acl {
    /// The seeded rules, then `overrides` replacing any seeded rule for the same table and
    /// operation.
    pub fn with_overrides(overrides: &[AclRule]) -> Acl {
        let mut acl = Acl { rules: seeded_rules() };
        for rule in overrides {
            acl.set(rule.clone());
        }
        acl
    }

    /// Adds a rule, replacing an existing one for the same table, operation and condition.
    pub fn set(&mut self, rule: AclRule) {
        self.rules
            .retain(|r| !(r.table == rule.table && r.operation == rule.operation && r.condition == rule.condition));
        self.rules.push(rule);
    }

    /// What a user holding `roles` may do on `table`.
    pub fn access(&self, table: &Table, operation: Operation, roles: &HashSet<String>) -> Access {
        if roles.contains("admin") {
            return Access::All;
        }
        let held = |rule: &AclRule| rule.roles.is_empty() || rule.roles.iter().any(|r| roles.contains(r));
        // The nearest table with rules for this operation decides.
        let Some(rules) = table.lineage.iter().find_map(|name| {
            let rules: Vec<&AclRule> = self
                .rules
                .iter()
                .filter(|r| r.table == *name && r.operation == operation)
                .collect();
            (!rules.is_empty()).then_some(rules)
        }) else {
            return Access::Denied;
        };
        if rules.iter().any(|rule| held(rule) && rule.condition.is_none()) {
            return Access::All;
        }
        let conditions: Vec<String> = rules
            .iter()
            .filter(|rule| held(rule))
            .filter_map(|rule| rule.condition.clone())
            .collect();
        if !conditions.is_empty() {
            return Access::Matching(conditions);
        }
        match rules.iter().find_map(|rule| rule.own_rows_field.clone()) {
            Some(field) => Access::OwnRows(field),
            None => Access::Denied,
        }
    }
}

fn seeded_rules() -> Vec<AclRule> {
    use Operation::*;
    let mut rules = Vec::new();
    let mut grant = |table: &str, ops: &[Operation], roles: &[&str]| {
        for op in ops {
            rules.push(AclRule::new(table, *op, roles));
        }
    };
    grant("task", &[Read, Create, Write], &["itil"]);
    grant("task", &[Delete], &["itil_admin"]);
    grant("sys_user", &[Read], &[]);
    grant("sys_user", &[Create, Write, Delete], &["user_admin"]);
    grant("sys_user_role", &[Read], &[]);
    grant("sys_user_group", &[Read], &[]);
    grant("sys_user_group", &[Create, Write, Delete], &["user_admin"]);
    grant("sys_user_grmember", &[Read], &[]);
    grant("sys_user_grmember", &[Create, Write, Delete], &["user_admin"]);
    grant("sys_user_has_role", &[Create, Write, Delete], &["user_admin"]);
    grant("sys_db_object", &[Read], &[]);
    grant("sys_journal_field", &[Read], &["itil"]);
    grant("task_time_worked", &[Read, Create, Write], &["itil"]);
    grant("sys_script", &[Read, Create, Write, Delete], &["business_rule_admin"]);
    // sys_properties: no rule, so admin only.
    grant("sys_email", &[Create, Read], &["email_api_send"]);
    rules.push(AclRule {
        own_rows_field: Some("user".into()),
        ..AclRule::new("sys_user_has_role", Read, &["user_admin"])
    });
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;

    fn roles(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn itil_writes_tasks_but_not_rules_or_properties() {
        let acl = Acl::with_overrides(&[]);
        let schema = Schema::get();
        let itil = roles(&["itil"]);
        for table in ["incident", "sc_task", "change_request", "task"] {
            let t = schema.table(table).unwrap();
            assert_eq!(acl.access(t, Operation::Create, &itil), Access::All, "{table}");
        }
        for table in ["sys_script", "sys_properties"] {
            let t = schema.table(table).unwrap();
            assert_eq!(acl.access(t, Operation::Create, &itil), Access::Denied);
            assert_eq!(acl.access(t, Operation::Read, &itil), Access::Denied);
        }
        let grants = schema.table("sys_user_has_role").unwrap();
        assert_eq!(
            acl.access(grants, Operation::Read, &itil),
            Access::OwnRows("user".into())
        );
        assert_eq!(acl.access(grants, Operation::Read, &roles(&["admin"])), Access::All);
    }

    #[test]
    fn rules_run_on_the_jump_start_acls() {
        let acl = Acl::with_overrides(&[]);
        let schema = Schema::get();
        let (rules, properties) = (
            schema.table("sys_script").unwrap(),
            schema.table("sys_properties").unwrap(),
        );
        let rule_admin = roles(&["business_rule_admin"]);
        for operation in [Operation::Read, Operation::Create, Operation::Write, Operation::Delete] {
            assert_eq!(acl.access(rules, operation, &rule_admin), Access::All);
            assert_eq!(acl.access(properties, operation, &rule_admin), Access::Denied);
            assert_eq!(acl.access(properties, operation, &roles(&["admin"])), Access::All);
        }
    }

    #[test]
    fn a_conditional_rule_opens_only_matching_rows_and_adds_to_the_others() {
        let neo = || AclRule::new("sys_properties", Operation::Write, &["x_neoagent_integration"]);
        let mut acl = Acl::with_overrides(&[neo().on_rows("nameSTARTSWITHx_neoagent.")]);
        let properties = Schema::get().table("sys_properties").unwrap();
        let integration = roles(&["x_neoagent_integration"]);
        assert_eq!(
            acl.access(properties, Operation::Write, &integration),
            Access::Matching(vec!["nameSTARTSWITHx_neoagent.".into()])
        );
        assert_eq!(acl.access(properties, Operation::Read, &integration), Access::Denied);
        assert_eq!(
            acl.access(properties, Operation::Write, &roles(&["itil"])),
            Access::Denied
        );
        // Another condition is another rule; an unconditional one opens every row.
        acl.set(neo().on_rows("name=glide.servlet.uri"));
        assert_eq!(
            acl.access(properties, Operation::Write, &integration),
            Access::Matching(vec![
                "nameSTARTSWITHx_neoagent.".into(),
                "name=glide.servlet.uri".into()
            ])
        );
        acl.set(neo());
        assert_eq!(acl.access(properties, Operation::Write, &integration), Access::All);
    }

    #[test]
    fn overrides_replace_seeded_rules() {
        let acl = Acl::with_overrides(&[AclRule::new("sys_script", Operation::Create, &["itil"])]);
        let t = Schema::get().table("sys_script").unwrap();
        assert_eq!(acl.access(t, Operation::Create, &roles(&["itil"])), Access::All);
        assert_eq!(acl.access(t, Operation::Write, &roles(&["itil"])), Access::Denied);
    }
}
