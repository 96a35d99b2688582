//! A record as the Table API returns it (servicenow-api.md §2.2): every value a string, `""` for
//! empty, references as `{"link", "value"}` (the link repeating the request's version segment),
//! display values on request, dot-walked fields under their dotted names.

use serde_json::{Map, Value, json};

use crate::schema::{FieldKind, Schema, Table};
use crate::store::{Db, Record};

/// `sysparm_display_value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayMode {
    /// `false`: raw values.
    Raw,
    /// `true`: display values.
    Display,
    /// `all`: both.
    Both,
}

/// How to render records for one request.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// `https://<host>` as the client addressed it.
    pub base_url: String,
    /// `v1` / `v2` when the request URL had one.
    pub version: Option<String>,
    /// `sysparm_display_value`.
    pub display: DisplayMode,
    /// `sysparm_exclude_reference_link`.
    pub exclude_reference_link: bool,
    /// `sysparm_fields`, when given.
    pub fields: Option<Vec<String>>,
}

impl RenderOptions {
    /// The Table API URL of a record, as used in links and `Location`.
    pub fn record_url(&self, table: &str, sys_id: &str) -> String {
        match &self.version {
            Some(v) => format!("{}/api/now/{v}/table/{table}/{sys_id}", self.base_url),
            None => format!("{}/api/now/table/{table}/{sys_id}", self.base_url),
        }
    }
}

/// Renders `record` as seen through `table`.
pub fn render(db: &Db, table: &Table, record: &Record, options: &RenderOptions) -> Value {
    let mut out = Map::new();
    match &options.fields {
        Some(fields) => {
            for path in fields {
                if db.is_valid_path(table, path) {
                    out.insert(path.clone(), render_path(db, table, record, path, options));
                }
            }
        }
        None => {
            for field in &table.fields {
                if field.kind != FieldKind::Password {
                    out.insert(
                        field.name.to_string(),
                        render_path(db, table, record, field.name, options),
                    );
                }
            }
        }
    }
    Value::Object(out)
}

fn render_path(db: &Db, table: &Table, record: &Record, path: &str, options: &RenderOptions) -> Value {
    let schema = Schema::get();
    let (owner, field): (Option<&Record>, &str) = match path.rsplit_once('.') {
        None => (Some(record), path),
        Some((prefix, last)) => {
            let sys_id = db.lookup(record, &format!("{prefix}.sys_id")).value;
            let owner = reference_target(table, prefix)
                .and_then(|t| schema.table(t))
                .and_then(|t| db.get(t, &sys_id));
            (owner, last)
        }
    };
    let Some(owner) = owner else {
        return Value::String(String::new());
    };
    let owner_table = schema.table(owner.class).unwrap_or(table);
    let def = owner_table.field(field);
    let value = db.lookup(owner, field).value;
    if def.is_some_and(|d| matches!(d.kind, FieldKind::Journal | FieldKind::Password)) {
        return render_plain(String::new(), String::new(), options.display);
    }
    let display = || db.field_display(owner_table, owner, field);
    match def.map(|d| d.kind) {
        Some(FieldKind::Reference(target)) if !value.is_empty() => {
            let link = (!options.exclude_reference_link).then(|| options.record_url(target, &value));
            match (options.display, link) {
                (DisplayMode::Raw, Some(link)) => json!({"link": link, "value": value}),
                (DisplayMode::Raw, None) => Value::String(value),
                (DisplayMode::Display, Some(link)) => {
                    json!({"display_value": display(), "link": link})
                }
                (DisplayMode::Display, None) => Value::String(display()),
                (DisplayMode::Both, Some(link)) => {
                    json!({"display_value": display(), "link": link, "value": value})
                }
                (DisplayMode::Both, None) => json!({"display_value": display(), "value": value}),
            }
        }
        _ => {
            let shown = if options.display == DisplayMode::Raw {
                String::new()
            } else {
                display()
            };
            render_plain(value, shown, options.display)
        }
    }
}

fn render_plain(value: String, display: String, mode: DisplayMode) -> Value {
    match mode {
        DisplayMode::Raw => Value::String(value),
        DisplayMode::Display => Value::String(display),
        DisplayMode::Both => json!({"display_value": display, "value": value}),
    }
}

/// The table a dot-walk prefix (`user`, `role.super_class`) ends on.
fn reference_target(table: &Table, prefix: &str) -> Option<&'static str> {
    let schema = Schema::get();
    let mut current = table;
    let mut target = None;
    for segment in prefix.split('.') {
        match current.field(segment)?.kind {
            FieldKind::Reference(next) => {
                target = Some(next);
                current = schema.table(next)?;
            }
            _ => return None,
        }
    }
    target
}
