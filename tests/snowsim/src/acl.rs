//! Role-based access rules per table and operation (servicenow-api.md §3.2, §3.4, §6 item 9).
//! A rule on a parent table covers its children (a rule on `task` covers `incident`); a table
//! without a rule for an operation is open to `admin` only, like the instance's `*` ACLs. The
//! `admin` role passes every rule.

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
}

impl AclRule {
    /// A rule granting `operation` on `table` to holders of any of `roles`.
    pub fn new(table: &str, operation: Operation, roles: &[&str]) -> Self {
        AclRule {
            table: table.to_string(),
            operation,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            own_rows_field: None,
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

    /// Adds a rule, replacing an existing one for the same table and operation.
    pub fn set(&mut self, rule: AclRule) {
        self.rules
            .retain(|r| !(r.table == rule.table && r.operation == rule.operation));
        self.rules.push(rule);
    }

    /// What a user holding `roles` may do on `table`.
    pub fn access(&self, table: &Table, operation: Operation, roles: &HashSet<String>) -> Access {
        if roles.contains("admin") {
            return Access::All;
        }
        let rule = table
            .lineage
            .iter()
            .find_map(|name| self.rules.iter().find(|r| r.table == *name && r.operation == operation));
        match rule {
            Some(rule) if rule.roles.is_empty() || rule.roles.iter().any(|r| roles.contains(r)) => Access::All,
            Some(AclRule {
                own_rows_field: Some(field),
                ..
            }) => Access::OwnRows(field.clone()),
            _ => Access::Denied,
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
    grant(
        "sys_properties",
        &[Read, Create, Write, Delete],
        &["sys_properties_admin"],
    );
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
    fn overrides_replace_seeded_rules() {
        let acl = Acl::with_overrides(&[AclRule::new("sys_script", Operation::Create, &["itil"])]);
        let t = Schema::get().table("sys_script").unwrap();
        assert_eq!(acl.access(t, Operation::Create, &roles(&["itil"])), Access::All);
        assert_eq!(acl.access(t, Operation::Write, &roles(&["itil"])), Access::Denied);
    }
}
