//! The data dictionary: the tables the simulator knows, their fields, inheritance (`task` and its
//! children, servicenow-api.md §3.1), display fields, choices and number prefixes. The same for
//! every instance and immutable; the per-instance rows live in `store`.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The type of a dictionary field, which decides how it is stored, rendered and queried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// Text.
    String,
    /// `true` / `false`.
    Boolean,
    /// Integer (choice fields such as `state` are integers too).
    Integer,
    /// `glide_date_time`, `YYYY-MM-DD HH:MM:SS` UTC.
    DateTime,
    /// `glide_duration`, an epoch-offset date time (`1970-01-01 08:00:00` = 8 hours).
    Duration,
    /// A reference to a record of the named table, stored as its sys_id.
    Reference(&'static str),
    /// Comma-separated list of sys_ids or values (`glide_list`).
    List,
    /// A journal input (`comments`, `work_notes`): writes land in `sys_journal_field`, reads are `""`.
    Journal,
    /// A password: accepted on write, never returned.
    Password,
}

/// What a field holds when a new record does not set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initial {
    /// `""`.
    Empty,
    /// A fixed value.
    Text(&'static str),
    /// The current time.
    Now,
    /// The acting user's sys_id.
    CallerId,
    /// The acting user's user name.
    CallerName,
}

/// One dictionary entry.
#[derive(Clone, Copy, Debug)]
pub struct FieldDef {
    /// Column name.
    pub name: &'static str,
    /// Column type.
    pub kind: FieldKind,
    /// Value on insert when not given.
    pub initial: Initial,
    /// Choice list `(value, label)`; empty when the field has none.
    pub choices: &'static [(&'static str, &'static str)],
}

const fn f(name: &'static str, kind: FieldKind) -> FieldDef {
    FieldDef {
        name,
        kind,
        initial: Initial::Empty,
        choices: &[],
    }
}

const fn s(name: &'static str) -> FieldDef {
    f(name, FieldKind::String)
}

const fn r(name: &'static str, table: &'static str) -> FieldDef {
    f(name, FieldKind::Reference(table))
}

const fn b(name: &'static str, initial: &'static str) -> FieldDef {
    f(name, FieldKind::Boolean).init(Initial::Text(initial))
}

const fn i(name: &'static str, initial: &'static str) -> FieldDef {
    f(name, FieldKind::Integer).init(Initial::Text(initial))
}

impl FieldDef {
    const fn init(self, initial: Initial) -> FieldDef {
        FieldDef { initial, ..self }
    }

    const fn choices(self, choices: &'static [(&'static str, &'static str)]) -> FieldDef {
        FieldDef { choices, ..self }
    }

    /// The label of a choice value, or the value itself.
    pub fn choice_label<'a>(&self, value: &'a str) -> &'a str {
        self.choices
            .iter()
            .find(|(v, _)| *v == value)
            .map_or(value, |(_, label)| label)
    }
}

const SYSTEM_FIELDS: &[FieldDef] = &[
    s("sys_id"),
    f("sys_created_on", FieldKind::DateTime).init(Initial::Now),
    s("sys_created_by").init(Initial::CallerName),
    f("sys_updated_on", FieldKind::DateTime).init(Initial::Now),
    s("sys_updated_by").init(Initial::CallerName),
    i("sys_mod_count", "0"),
    s("sys_class_name"),
    s("sys_tags"),
];

const PRIORITY: &[(&str, &str)] = &[
    ("1", "1 - Critical"),
    ("2", "2 - High"),
    ("3", "3 - Moderate"),
    ("4", "4 - Low"),
    ("5", "5 - Planning"),
];
const IMPACT: &[(&str, &str)] = &[("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")];
const TASK_STATE: &[(&str, &str)] = &[
    ("-5", "Pending"),
    ("1", "Open"),
    ("2", "Work in Progress"),
    ("3", "Closed Complete"),
    ("4", "Closed Incomplete"),
    ("7", "Closed Skipped"),
];
const INCIDENT_STATE: &[(&str, &str)] = &[
    ("1", "New"),
    ("2", "In Progress"),
    ("3", "On Hold"),
    ("6", "Resolved"),
    ("7", "Closed"),
    ("8", "Canceled"),
];
const CHANGE_STATE: &[(&str, &str)] = &[
    ("-5", "New"),
    ("-4", "Assess"),
    ("-3", "Authorize"),
    ("-2", "Scheduled"),
    ("-1", "Implement"),
    ("0", "Review"),
    ("3", "Closed"),
    ("4", "Canceled"),
];

const TASK_FIELDS: &[FieldDef] = &[
    s("number"),
    s("short_description"),
    s("description"),
    i("state", "1").choices(TASK_STATE),
    b("active", "true"),
    i("priority", "4").choices(PRIORITY),
    i("impact", "3").choices(IMPACT),
    i("urgency", "3").choices(IMPACT),
    r("assigned_to", "sys_user"),
    r("assignment_group", "sys_user_group"),
    f("opened_at", FieldKind::DateTime).init(Initial::Now),
    r("opened_by", "sys_user").init(Initial::CallerId),
    f("closed_at", FieldKind::DateTime),
    r("closed_by", "sys_user"),
    f("comments", FieldKind::Journal),
    f("work_notes", FieldKind::Journal),
    f("comments_and_work_notes", FieldKind::Journal),
    f("time_worked", FieldKind::Duration),
    f("watch_list", FieldKind::List),
    f("work_notes_list", FieldKind::List),
    r("parent", "task"),
    r("sys_domain", "sys_user_group").init(Initial::Text("global")),
    s("sys_domain_path").init(Initial::Text("/")),
    s("task_effective_number"),
    i("escalation", "0"),
    s("approval").init(Initial::Text("not requested")),
    s("contact_type"),
    f("due_date", FieldKind::DateTime),
    f("business_duration", FieldKind::Duration),
    f("calendar_duration", FieldKind::Duration),
    b("made_sla", "true"),
    b("knowledge", "false"),
    s("correlation_id"),
    s("correlation_display"),
];

/// A table of the dictionary, before inheritance is applied.
struct TableSpec {
    name: &'static str,
    label: &'static str,
    super_class: Option<&'static str>,
    display: &'static str,
    number_prefix: Option<&'static str>,
    fields: &'static [FieldDef],
}

const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "sys_user",
        label: "User",
        super_class: None,
        display: "name",
        number_prefix: None,
        fields: &[
            s("user_name"),
            s("first_name"),
            s("last_name"),
            s("name"),
            s("email"),
            b("active", "true"),
            b("locked_out", "false"),
            b("web_service_access_only", "false"),
            s("title"),
            s("department"),
            r("manager", "sys_user"),
            s("mobile_phone"),
            s("phone"),
            s("time_zone"),
            f("user_password", FieldKind::Password),
            r("sys_domain", "sys_user_group").init(Initial::Text("global")),
        ],
    },
    TableSpec {
        name: "sys_user_role",
        label: "Role",
        super_class: None,
        display: "name",
        number_prefix: None,
        fields: &[
            s("name"),
            s("description"),
            s("suffix"),
            b("elevated_privilege", "false"),
            b("grantable", "true"),
            b("can_delegate", "true"),
        ],
    },
    TableSpec {
        name: "sys_user_has_role",
        label: "User Role",
        super_class: None,
        display: "role",
        number_prefix: None,
        fields: &[
            r("user", "sys_user"),
            r("role", "sys_user_role"),
            s("state").init(Initial::Text("active")),
            b("inherited", "false"),
            r("granted_by", "sys_user_group"),
            r("included_in_role", "sys_user_role"),
            i("inh_count", "0"),
        ],
    },
    TableSpec {
        name: "sys_user_group",
        label: "Group",
        super_class: None,
        display: "name",
        number_prefix: None,
        fields: &[
            s("name"),
            s("description"),
            r("manager", "sys_user"),
            s("email"),
            b("active", "true"),
            r("parent", "sys_user_group"),
            s("type"),
            s("roles"),
        ],
    },
    TableSpec {
        name: "sys_user_grmember",
        label: "Group Member",
        super_class: None,
        display: "user",
        number_prefix: None,
        fields: &[r("user", "sys_user"), r("group", "sys_user_group")],
    },
    TableSpec {
        name: "sys_properties",
        label: "System Property",
        super_class: None,
        display: "name",
        number_prefix: None,
        fields: &[
            s("name"),
            s("value"),
            s("type").init(Initial::Text("string")),
            s("description"),
            s("choices"),
            b("ignore_cache", "false"),
            b("is_private", "false"),
            s("read_roles"),
            s("write_roles"),
            s("suffix"),
        ],
    },
    TableSpec {
        name: "sys_script",
        label: "Business Rule",
        super_class: None,
        display: "name",
        number_prefix: None,
        fields: &[
            s("name"),
            s("collection"),
            s("when").init(Initial::Text("before")),
            i("order", "100"),
            i("priority", "100"),
            b("active", "true"),
            b("advanced", "false"),
            b("action_insert", "false"),
            b("action_update", "false"),
            b("action_delete", "false"),
            b("action_query", "false"),
            s("filter_condition"),
            s("condition"),
            s("role_conditions"),
            s("script"),
            s("description"),
            b("abort_action", "false"),
            b("add_message", "false"),
            s("message"),
            s("template"),
            b("client_callable", "false"),
            b("is_rest", "false"),
            b("execute_function", "false"),
            s("change_fields"),
            s("access").init(Initial::Text("package_private")),
            s("sys_scope").init(Initial::Text("global")),
            s("sys_package").init(Initial::Text("global")),
            s("sys_policy"),
            s("sys_name"),
            s("sys_update_name"),
            r("sys_domain", "sys_user_group").init(Initial::Text("global")),
        ],
    },
    TableSpec {
        name: "sys_db_object",
        label: "Table",
        super_class: None,
        display: "label",
        number_prefix: None,
        fields: &[
            s("name"),
            s("label"),
            r("super_class", "sys_db_object"),
            b("is_extendable", "true"),
            s("number_ref"),
            s("sys_package").init(Initial::Text("global")),
            s("sys_scope").init(Initial::Text("global")),
        ],
    },
    TableSpec {
        name: "sys_journal_field",
        label: "Journal Entry",
        super_class: None,
        display: "value",
        number_prefix: None,
        fields: &[s("element_id"), s("element"), s("name"), s("value")],
    },
    TableSpec {
        name: "task_time_worked",
        label: "Time Worked",
        super_class: None,
        display: "task",
        number_prefix: None,
        fields: &[
            r("task", "task"),
            r("user", "sys_user").init(Initial::CallerId),
            f("time_worked", FieldKind::Duration),
            s("comments"),
            s("category"),
        ],
    },
    TableSpec {
        name: "sys_email",
        label: "Email",
        super_class: None,
        display: "subject",
        number_prefix: None,
        fields: &[
            s("type").init(Initial::Text("send-ready")),
            s("state").init(Initial::Text("ready")),
            s("subject"),
            s("body"),
            s("body_text"),
            s("recipients"),
            s("copied"),
            s("blind_copied"),
            s("headers"),
            s("importance"),
            s("target_table"),
            s("instance"),
            s("content_type").init(Initial::Text("multipart/mixed")),
            s("error_string"),
        ],
    },
    TableSpec {
        name: "task",
        label: "Task",
        super_class: None,
        display: "number",
        number_prefix: Some("TASK"),
        fields: TASK_FIELDS,
    },
    TableSpec {
        name: "incident",
        label: "Incident",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("INC"),
        fields: &[
            i("state", "1").choices(INCIDENT_STATE),
            i("incident_state", "1").choices(INCIDENT_STATE),
            i("priority", "5").choices(PRIORITY),
            r("caller_id", "sys_user"),
            s("category").init(Initial::Text("inquiry")),
            s("subcategory"),
            i("severity", "3"),
            s("close_code"),
            s("close_notes"),
            r("problem_id", "problem"),
            f("resolved_at", FieldKind::DateTime),
            r("resolved_by", "sys_user"),
            i("child_incidents", "0"),
            i("reopen_count", "0"),
            s("hold_reason"),
        ],
    },
    TableSpec {
        name: "problem",
        label: "Problem",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("PRB"),
        fields: &[
            i("problem_state", "101"),
            b("known_error", "false"),
            s("cause_notes"),
            s("fix_notes"),
            r("first_reported_by_task", "task"),
        ],
    },
    TableSpec {
        name: "change_request",
        label: "Change Request",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("CHG"),
        fields: &[
            i("state", "-5").choices(CHANGE_STATE),
            s("type").init(Initial::Text("normal")),
            i("risk", "3"),
            s("category").init(Initial::Text("Other")),
            f("start_date", FieldKind::DateTime),
            f("end_date", FieldKind::DateTime),
            r("requested_by", "sys_user").init(Initial::CallerId),
            b("cab_required", "false"),
            s("implementation_plan"),
            s("backout_plan"),
            s("test_plan"),
            s("justification"),
        ],
    },
    TableSpec {
        name: "sc_request",
        label: "Request",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("REQ"),
        fields: &[
            r("requested_for", "sys_user").init(Initial::CallerId),
            s("request_state").init(Initial::Text("requested")),
            s("price").init(Initial::Text("0")),
        ],
    },
    TableSpec {
        name: "sc_req_item",
        label: "Requested Item",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("RITM"),
        fields: &[
            r("request", "sc_request"),
            s("cat_item"),
            i("quantity", "1"),
            r("requested_for", "sys_user").init(Initial::CallerId),
            s("stage").init(Initial::Text("request_approved")),
        ],
    },
    TableSpec {
        name: "sc_task",
        label: "Catalog Task",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("SCTASK"),
        fields: &[r("request_item", "sc_req_item"), r("request", "sc_request")],
    },
    TableSpec {
        name: "change_task",
        label: "Change Task",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("CTASK"),
        fields: &[r("change_request", "change_request")],
    },
    // One of the task classes a real instance has beyond the ticket types (approvals, chat queue
    // entries, interactions, planned tasks…): a rule on `task` fires for it too.
    TableSpec {
        name: "sysapproval_group",
        label: "Group approval",
        super_class: Some("task"),
        display: "number",
        number_prefix: Some("GAPV"),
        fields: &[s("approval").init(Initial::Text("not requested"))],
    },
];

/// A table with inheritance applied.
#[derive(Debug)]
pub struct Table {
    /// Table name.
    pub name: &'static str,
    /// Label.
    pub label: &'static str,
    /// Parent table.
    pub super_class: Option<&'static str>,
    /// Field whose value is the record's display value.
    pub display: &'static str,
    /// Prefix of auto-numbers (`INC`), when the table numbers its records.
    pub number_prefix: Option<&'static str>,
    /// Own and inherited fields, system fields first, parents before children; a child's
    /// redefinition (dictionary override) replaces the parent's entry in place.
    pub fields: Vec<FieldDef>,
    index: HashMap<&'static str, usize>,
    /// This table then its ancestors, nearest first.
    pub lineage: Vec<&'static str>,
}

impl Table {
    /// The dictionary entry of a field of this table (own or inherited).
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.index.get(name).map(|&i| &self.fields[i])
    }

    /// The table at the top of this table's hierarchy (its physical table).
    pub fn root(&self) -> &'static str {
        self.lineage.last().copied().unwrap_or(self.name)
    }
}

/// The whole dictionary.
#[derive(Debug)]
pub struct Schema {
    tables: HashMap<&'static str, Table>,
}

impl Schema {
    /// The dictionary shared by every instance.
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(Schema::build)
    }

    fn build() -> Schema {
        let mut tables: HashMap<&'static str, Table> = HashMap::new();
        for spec in TABLES {
            let (mut fields, mut lineage) = match spec.super_class.and_then(|p| tables.get(p)) {
                Some(parent) => (parent.fields.clone(), parent.lineage.clone()),
                None => (SYSTEM_FIELDS.to_vec(), Vec::new()),
            };
            for field in spec.fields {
                match fields.iter_mut().find(|existing| existing.name == field.name) {
                    Some(existing) => *existing = *field,
                    None => fields.push(*field),
                }
            }
            lineage.insert(0, spec.name);
            let index = fields.iter().enumerate().map(|(i, f)| (f.name, i)).collect();
            tables.insert(
                spec.name,
                Table {
                    name: spec.name,
                    label: spec.label,
                    super_class: spec.super_class,
                    display: spec.display,
                    number_prefix: spec.number_prefix,
                    fields,
                    index,
                    lineage,
                },
            );
        }
        Schema { tables }
    }

    /// A table by name.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Every table, parents before children.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        TABLES.iter().filter_map(|spec| self.tables.get(spec.name))
    }

    /// True when `class` is `table` or extends it.
    pub fn extends(&self, class: &str, table: &str) -> bool {
        self.table(class).is_some_and(|t| t.lineage.contains(&table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_children_inherit_fields_and_override_choices() {
        let schema = Schema::get();
        let incident = schema.table("incident").unwrap();
        assert_eq!(incident.lineage, vec!["incident", "task"]);
        assert_eq!(incident.root(), "task");
        assert!(incident.field("short_description").is_some());
        assert!(incident.field("caller_id").is_some());
        assert_eq!(incident.field("state").unwrap().choice_label("6"), "Resolved");
        assert_eq!(
            schema.table("task").unwrap().field("state").unwrap().choice_label("3"),
            "Closed Complete"
        );
        assert!(schema.table("task").unwrap().field("caller_id").is_none());
        for child in [
            "incident",
            "problem",
            "change_request",
            "sc_request",
            "sc_req_item",
            "sc_task",
        ] {
            assert!(schema.extends(child, "task"), "{child}");
        }
        assert!(!schema.extends("task", "incident"));
    }
}
