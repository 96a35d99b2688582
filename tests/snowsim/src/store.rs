//! One instance's rows, stored "table per hierarchy" (servicenow-api.md §3.1): every record of
//! the task family lives in the `task` table with `sys_class_name` naming its class. Pure data
//! operations: no access control, no business rules, no HTTP.

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;

use crate::query::FieldValue;
use crate::schema::{FieldKind, Initial, Schema, Table};

/// A stored record: every field of its class, as strings (`""` when empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's class (`sys_class_name`).
    pub class: &'static str,
    /// Field values by name, including `sys_id`.
    pub values: BTreeMap<String, String>,
}

impl Record {
    /// The record's sys_id.
    pub fn sys_id(&self) -> &str {
        self.get("sys_id")
    }

    /// A field's value (`""` when absent).
    pub fn get(&self, field: &str) -> &str {
        self.values.get(field).map_or("", String::as_str)
    }
}

/// Who writes a record (for `sys_created_by`, `opened_by`, journal authors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The user's sys_id.
    pub sys_id: String,
    /// The user's login name.
    pub user_name: String,
}

/// A journal input (`comments` / `work_notes`) carried by a write, stored after the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// `comments` or `work_notes`.
    pub element: String,
    /// The entry text.
    pub value: String,
}

/// A record ready to be committed, with the journal entries its write carried.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The record as it will be stored.
    pub record: Record,
    /// Journal entries to add once the record is stored.
    pub journal: Vec<JournalEntry>,
    /// False when an update would change nothing (no write, no business rules).
    pub changed: bool,
}

/// Why a write cannot be stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// An insert named a sys_id that is already taken.
    #[error("a record with sys_id {sys_id} already exists in {table}")]
    DuplicateSysId {
        /// The table written to.
        table: String,
        /// The clashing sys_id.
        sys_id: String,
    },
}

/// The rows of one instance.
#[derive(Debug, Default)]
pub struct Db {
    rows: HashMap<&'static str, IndexMap<String, Record>>,
    numbers: HashMap<&'static str, u64>,
}

/// The first auto-number of every numbered table (`INC0010001`).
const FIRST_NUMBER: u64 = 10_001;

impl Db {
    /// A record of `table` (or of a table extending it) by sys_id.
    pub fn get(&self, table: &Table, sys_id: &str) -> Option<&Record> {
        self.rows
            .get(table.root())?
            .get(sys_id)
            .filter(|r| Schema::get().extends(r.class, table.name))
    }

    /// Every record of `table` and of the tables extending it, in insertion order.
    pub fn rows<'a>(&'a self, table: &'a Table) -> impl Iterator<Item = &'a Record> + 'a {
        self.rows
            .get(table.root())
            .into_iter()
            .flat_map(|rows| rows.values())
            .filter(move |r| r.class == table.name || Schema::get().extends(r.class, table.name))
    }

    /// Builds a new record of class `table` from `input` (unknown fields and `sys_*` fields other
    /// than `sys_id` are ignored), filling defaults and auto-numbers.
    pub fn prepare_insert(
        &mut self,
        table: &'static Table,
        input: &BTreeMap<String, String>,
        actor: &Actor,
        now: &str,
    ) -> Result<Prepared, StoreError> {
        let mut values = BTreeMap::new();
        let mut journal = Vec::new();
        for field in &table.fields {
            let initial = match field.initial {
                Initial::Empty => String::new(),
                Initial::Text(text) => text.to_string(),
                Initial::Now => now.to_string(),
                Initial::CallerId => actor.sys_id.clone(),
                Initial::CallerName => actor.user_name.clone(),
            };
            values.insert(field.name.to_string(), initial);
        }
        let sys_id = match input.get("sys_id").filter(|id| !id.is_empty()) {
            Some(id) => id.clone(),
            None => new_sys_id(),
        };
        if self.get(table, &sys_id).is_some()
            || self
                .rows
                .get(table.root())
                .is_some_and(|rows| rows.contains_key(&sys_id))
        {
            return Err(StoreError::DuplicateSysId {
                table: table.name.to_string(),
                sys_id,
            });
        }
        apply_input(table, &mut values, input, &mut journal);
        values.insert("sys_id".into(), sys_id);
        values.insert("sys_class_name".into(), table.name.to_string());
        if let Some(prefix) = table.number_prefix
            && values.get("number").is_none_or(|n| n.is_empty())
        {
            let counter = self.numbers.entry(table.name).or_insert(FIRST_NUMBER);
            values.insert("number".into(), format!("{prefix}{:07}", *counter));
            *counter += 1;
        }
        derive_fields(table, &mut values);
        Ok(Prepared {
            record: Record {
                class: table.name,
                values,
            },
            journal,
            changed: true,
        })
    }

    /// Builds the updated version of `current` from `input`; `changed` is false when nothing
    /// would change.
    pub fn prepare_update(
        &self,
        current: &Record,
        input: &BTreeMap<String, String>,
        actor: &Actor,
        now: &str,
    ) -> Prepared {
        let table = Schema::get()
            .table(current.class)
            .expect("stored records have known classes");
        let mut values = current.values.clone();
        let mut journal = Vec::new();
        apply_input(table, &mut values, input, &mut journal);
        derive_fields(table, &mut values);
        let changed = values != current.values || !journal.is_empty();
        if changed {
            let count: u64 = current.get("sys_mod_count").parse().unwrap_or(0);
            values.insert("sys_mod_count".into(), (count + 1).to_string());
            values.insert("sys_updated_on".into(), now.to_string());
            values.insert("sys_updated_by".into(), actor.user_name.clone());
        }
        Prepared {
            record: Record {
                class: current.class,
                values,
            },
            journal,
            changed,
        }
    }

    /// Stores a prepared record (insert or replace) and its journal entries.
    pub fn commit(&mut self, prepared: &Prepared, actor: &Actor, now: &str) {
        let record = &prepared.record;
        let root = Schema::get().table(record.class).map_or(record.class, Table::root);
        let sys_id = record.sys_id().to_string();
        self.rows
            .entry(root)
            .or_default()
            .insert(sys_id.clone(), record.clone());
        let journal_table = Schema::get()
            .table("sys_journal_field")
            .expect("sys_journal_field is in the dictionary");
        for entry in &prepared.journal {
            let input = BTreeMap::from([
                ("element_id".to_string(), sys_id.clone()),
                ("element".to_string(), entry.element.clone()),
                ("name".to_string(), record.class.to_string()),
                ("value".to_string(), entry.value.clone()),
            ]);
            if let Ok(journal) = self.prepare_insert(journal_table, &input, actor, now) {
                self.rows
                    .entry(journal_table.root())
                    .or_default()
                    .insert(journal.record.sys_id().to_string(), journal.record);
            }
        }
    }

    /// Removes a record of `table` (or of a child table) by sys_id.
    pub fn remove(&mut self, table: &Table, sys_id: &str) -> Option<Record> {
        self.get(table, sys_id)?;
        self.rows.get_mut(table.root())?.shift_remove(sys_id)
    }

    /// True when `path` (possibly dot-walked) names a field reachable from `table`.
    pub fn is_valid_path(&self, table: &Table, path: &str) -> bool {
        let schema = Schema::get();
        let mut current = table;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            if current.name == "sys_user" && segment == "roles" {
                return segments.peek().is_none();
            }
            let Some(field) = current.field(segment) else {
                return false;
            };
            if segments.peek().is_some() {
                match field.kind {
                    FieldKind::Reference(target) => match schema.table(target) {
                        Some(next) => current = next,
                        None => return false,
                    },
                    _ => return false,
                }
            }
        }
        true
    }

    /// The value of a (possibly dot-walked) field of `record`, for queries and `sysparm_fields`.
    pub fn lookup(&self, record: &Record, path: &str) -> FieldValue {
        let schema = Schema::get();
        let mut current = record;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            if current.class == "sys_user" && segment == "roles" {
                let members = self.role_names(current.sys_id());
                return FieldValue {
                    value: members.join(","),
                    members: Some(members),
                };
            }
            let value = current.get(segment);
            if segments.peek().is_none() {
                return FieldValue::from(value.to_string());
            }
            let target = schema
                .table(current.class)
                .and_then(|t| t.field(segment))
                .and_then(|f| match f.kind {
                    FieldKind::Reference(target) => schema.table(target),
                    _ => None,
                })
                .and_then(|t| self.get(t, value));
            match target {
                Some(next) => current = next,
                None => return FieldValue::default(),
            }
        }
        FieldValue::default()
    }

    /// The display value of a record: its table's display field, rendered.
    pub fn record_display(&self, record: &Record) -> String {
        let schema = Schema::get();
        match schema.table(record.class) {
            Some(table) => self.field_display(table, record, table.display),
            None => record.sys_id().to_string(),
        }
    }

    /// The display value of one field of `record` as seen through `table`.
    pub fn field_display(&self, table: &Table, record: &Record, field: &str) -> String {
        let value = record.get(field);
        let Some(def) = Schema::get()
            .table(record.class)
            .and_then(|t| t.field(field))
            .or_else(|| table.field(field))
        else {
            return value.to_string();
        };
        match def.kind {
            FieldKind::Reference(target) if !value.is_empty() => {
                match Schema::get().table(target).and_then(|t| self.get(t, value)) {
                    Some(referenced) if referenced.sys_id() != record.sys_id() => self.record_display(referenced),
                    Some(_) => value.to_string(),
                    None if value == "global" => "global".to_string(),
                    None => String::new(),
                }
            }
            FieldKind::Journal | FieldKind::Password => String::new(),
            _ => def.choice_label(value).to_string(),
        }
    }

    /// The `sys_user_has_role` rows of `user_sys_id` for the role `role_sys_id`.
    pub fn grant_rows<'a>(
        &'a self,
        user_sys_id: &'a str,
        role_sys_id: &'a str,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        Schema::get()
            .table("sys_user_has_role")
            .into_iter()
            .flat_map(move |grants| self.rows(grants))
            .filter(move |g| g.get("user") == user_sys_id && g.get("role") == role_sys_id)
    }

    /// Names of the roles granted to a user (active `sys_user_has_role` rows).
    pub fn role_names(&self, user_sys_id: &str) -> Vec<String> {
        let schema = Schema::get();
        let (Some(grants), Some(roles)) = (schema.table("sys_user_has_role"), schema.table("sys_user_role")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = self
            .rows(grants)
            .filter(|g| g.get("user") == user_sys_id && g.get("state") == "active")
            .filter_map(|g| self.get(roles, g.get("role")))
            .map(|role| role.get("name").to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn apply_input(
    table: &Table,
    values: &mut BTreeMap<String, String>,
    input: &BTreeMap<String, String>,
    journal: &mut Vec<JournalEntry>,
) {
    for (name, value) in input {
        if name.starts_with("sys_") {
            continue;
        }
        let Some(field) = table.field(name) else {
            continue;
        };
        if field.kind == FieldKind::Journal {
            if !value.is_empty() && name != "comments_and_work_notes" {
                journal.push(JournalEntry {
                    element: name.clone(),
                    value: value.clone(),
                });
            }
            continue;
        }
        values.insert(name.clone(), value.clone());
    }
}

/// Calculated fields: a user's full name, a task's effective number, a rule's update name.
fn derive_fields(table: &Table, values: &mut BTreeMap<String, String>) {
    let get = |values: &BTreeMap<String, String>, f: &str| values.get(f).cloned().unwrap_or_default();
    if table.name == "sys_user" {
        let full = format!("{} {}", get(values, "first_name"), get(values, "last_name"));
        if !full.trim().is_empty() {
            values.insert("name".into(), full.trim().to_string());
        }
    }
    if table.lineage.contains(&"task") {
        let number = get(values, "number");
        values.insert("task_effective_number".into(), number);
    }
    if table.name == "sys_script" {
        let name = get(values, "name");
        let sys_id = get(values, "sys_id");
        values.insert("sys_name".into(), name);
        values.insert("sys_update_name".into(), format!("sys_script_{sys_id}"));
    }
}

/// A new random sys_id: 32 lowercase hex characters.
pub fn new_sys_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex(&bytes)
}

/// A stable sys_id derived from a seed text, for seeded records that must be the same on every
/// start of the same configuration.
pub fn stable_sys_id(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(seed.as_bytes())[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            sys_id: "u1".into(),
            user_name: "admin".into(),
        }
    }

    fn insert(db: &mut Db, table: &str, pairs: &[(&str, &str)]) -> Record {
        let table = Schema::get().table(table).unwrap();
        let input = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let prepared = db
            .prepare_insert(table, &input, &actor(), "2026-01-01 00:00:00")
            .unwrap();
        db.commit(&prepared, &actor(), "2026-01-01 00:00:00");
        prepared.record
    }

    #[test]
    fn children_are_numbered_per_table_and_listed_under_task() {
        let mut db = Db::default();
        let a = insert(&mut db, "incident", &[("short_description", "a")]);
        let b = insert(&mut db, "incident", &[]);
        let c = insert(&mut db, "sc_task", &[]);
        assert_eq!(a.get("number"), "INC0010001");
        assert_eq!(b.get("number"), "INC0010002");
        assert_eq!(c.get("number"), "SCTASK0010001");
        assert_eq!(c.get("sys_class_name"), "sc_task");
        let schema = Schema::get();
        assert_eq!(db.rows(schema.table("task").unwrap()).count(), 3);
        assert_eq!(db.rows(schema.table("incident").unwrap()).count(), 2);
        assert!(db.get(schema.table("incident").unwrap(), c.sys_id()).is_none());
        assert!(db.get(schema.table("task").unwrap(), c.sys_id()).is_some());
    }

    #[test]
    fn journal_inputs_land_in_sys_journal_field_and_read_empty() {
        let mut db = Db::default();
        let inc = insert(&mut db, "incident", &[("work_notes", "hello"), ("bunk_field", "x")]);
        assert_eq!(inc.get("work_notes"), "");
        assert!(!inc.values.contains_key("bunk_field"));
        let journal = Schema::get().table("sys_journal_field").unwrap();
        let entries: Vec<_> = db.rows(journal).collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].get("element_id"), inc.sys_id());
        assert_eq!(entries[0].get("value"), "hello");
    }

    #[test]
    fn updates_bump_mod_count_only_when_something_changes() {
        let mut db = Db::default();
        let inc = insert(&mut db, "incident", &[("short_description", "a")]);
        let same = BTreeMap::from([("short_description".to_string(), "a".to_string())]);
        assert!(!db.prepare_update(&inc, &same, &actor(), "x").changed);
        let other = BTreeMap::from([("short_description".to_string(), "b".to_string())]);
        let prepared = db.prepare_update(&inc, &other, &actor(), "x");
        assert!(prepared.changed);
        assert_eq!(prepared.record.get("sys_mod_count"), "1");
    }

    #[test]
    fn dot_walks_follow_references() {
        let mut db = Db::default();
        let role = insert(&mut db, "sys_user_role", &[("name", "itil")]);
        let user = insert(
            &mut db,
            "sys_user",
            &[("user_name", "neo"), ("first_name", "Neo"), ("last_name", "Agent")],
        );
        let grant = insert(
            &mut db,
            "sys_user_has_role",
            &[("user", user.sys_id()), ("role", role.sys_id())],
        );
        assert_eq!(db.lookup(&grant, "role.name").value, "itil");
        assert_eq!(db.lookup(&grant, "user.name").value, "Neo Agent");
        assert_eq!(db.lookup(&user, "roles").members, Some(vec!["itil".to_string()]));
        let grants = Schema::get().table("sys_user_has_role").unwrap();
        assert!(db.is_valid_path(grants, "role.name"));
        assert!(!db.is_valid_path(grants, "role.bogus"));
        assert!(!db.is_valid_path(grants, "state.name"));
        assert_eq!(db.field_display(grants, &grant, "user"), "Neo Agent");
    }

    #[test]
    fn duplicate_sys_ids_are_refused() {
        let mut db = Db::default();
        insert(&mut db, "incident", &[("sys_id", "AAAABBBBCCCCDDDDEEEEFFFF00001111")]);
        let table = Schema::get().table("problem").unwrap();
        let input = BTreeMap::from([("sys_id".to_string(), "AAAABBBBCCCCDDDDEEEEFFFF00001111".to_string())]);
        assert!(db.prepare_insert(table, &input, &actor(), "x").is_err());
    }
}
