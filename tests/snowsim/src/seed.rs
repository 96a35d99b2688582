//! What a fresh instance holds (servicenow-api.md §3): the out-of-box roles with their fixed
//! sys_ids, `sys_db_object` rows for the dictionary, the configured users and grants, the
//! system properties that govern OAuth and queries, and the OAuth applications.

use std::collections::BTreeMap;

use crate::config::{InstanceConfig, UserSpec};
use crate::instance::State;
use crate::schema::Schema;
use crate::store::{Actor, Db, stable_sys_id};

/// The out-of-box admin user's sys_id (the same on every instance).
pub const ADMIN_SYS_ID: &str = "6816f79cc0a8016401c5a33be04be441";
/// The out-of-box `itil` role's sys_id.
pub const ITIL_ROLE_SYS_ID: &str = "282bf1fac6112285017366cb5f867469";
/// The out-of-box `admin` role's sys_id.
pub const ADMIN_ROLE_SYS_ID: &str = "2831a114c611228501d4ea6c309d626d";

/// Seeded roles: name, description. Roles other than `itil` and `admin` get a sys_id derived
/// from their name, the same on every instance and every start.
const ROLES: &[(&str, &str)] = &[
    ("admin", "Administrator"),
    ("itil", "ITIL fulfiller: works on tasks"),
    ("itil_admin", "ITIL administrator"),
    ("email_api_send", "May send email through the Email API"),
    ("user_admin", "Manages users, groups and role grants"),
    ("business_rule_admin", "May read and write Business Rules (sys_script)"),
    (
        "snc_required_script_writer_permission",
        "May write script fields (granted through the group Conditional Script Writer)",
    ),
    ("security_admin", "Elevated role: may write ACLs"),
    ("snc_internal", "Internal user"),
];

/// Roles that contain others: a user granted the container holds the contained roles too, each
/// with an inherited `sys_user_has_role` row (Role Management V2: one row per user and role,
/// servicenow-api.md §7). `admin` does not contain `snc_required_script_writer_permission` nor
/// `security_admin`.
const CONTAINS: &[(&str, &[&str])] = &[
    (
        "admin",
        &[
            "itil",
            "itil_admin",
            "user_admin",
            "business_rule_admin",
            "email_api_send",
        ],
    ),
    ("itil_admin", &["itil"]),
];

/// System properties seeded on every instance (name, value, type).
const PROPERTIES: &[(&str, &str, &str)] = &[
    ("com.snc.platform.security.oauth.is.active", "true", "boolean"),
    ("glide.oauth.state.parameter.required", "true", "boolean"),
    ("glide.oauth.allow.parameters.in.post.body.only", "true", "boolean"),
    (
        "glide.oauth.inbound.client.credential.grant_type.enabled",
        "false",
        "boolean",
    ),
    ("glide.invalid_query.returns_no_rows", "false", "boolean"),
];

/// The sys_id of a role by name.
pub fn role_sys_id(name: &str) -> String {
    match name {
        "itil" => ITIL_ROLE_SYS_ID.to_string(),
        "admin" => ADMIN_ROLE_SYS_ID.to_string(),
        other => stable_sys_id(&format!("sys_user_role:{other}")),
    }
}

fn system() -> Actor {
    Actor {
        sys_id: String::new(),
        user_name: "system".to_string(),
    }
}

/// Inserts a record without access checks or business rules; returns its sys_id.
pub fn put(db: &mut Db, table: &str, pairs: &[(&str, &str)], now: &str) -> Option<String> {
    let table = Schema::get().table(table)?;
    let input: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let prepared = db.prepare_insert(table, &input, &system(), now).ok()?;
    db.commit(&prepared, &system(), now);
    Some(prepared.record.sys_id().to_string())
}

/// Ensures a role exists; returns its sys_id.
pub fn ensure_role(db: &mut Db, name: &str, now: &str) -> String {
    let sys_id = role_sys_id(name);
    let roles = Schema::get().table("sys_user_role").expect("sys_user_role");
    if db.get(roles, &sys_id).is_none() {
        let description = ROLES.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| d);
        put(
            db,
            "sys_user_role",
            &[("sys_id", &sys_id), ("name", name), ("description", description)],
            now,
        );
    }
    sys_id
}

/// Adds a user with its roles; returns the user's sys_id.
pub fn add_user(state: &mut State, host: &str, spec: &UserSpec, now: &str) -> Option<String> {
    let sys_id = spec
        .sys_id
        .clone()
        .unwrap_or_else(|| stable_sys_id(&format!("{host}:sys_user:{}", spec.user_name)));
    put(
        &mut state.db,
        "sys_user",
        &[
            ("sys_id", &sys_id),
            ("user_name", &spec.user_name),
            ("user_password", &spec.password),
            ("first_name", &spec.first_name),
            ("last_name", &spec.last_name),
            ("email", &spec.email),
            (
                "web_service_access_only",
                if spec.web_service_access_only { "true" } else { "false" },
            ),
        ],
        now,
    )?;
    for role in &spec.roles {
        grant_role(&mut state.db, &sys_id, role, now);
    }
    Some(sys_id)
}

/// Grants a role (creating it when unknown) unless the user already holds it directly, and the
/// roles it contains as inherited grants (one row per user and role: a role the user already
/// holds gets no second row).
pub fn grant_role(db: &mut Db, user_sys_id: &str, role: &str, now: &str) {
    let role_id = ensure_role(db, role, now);
    if db
        .grant_rows(user_sys_id, &role_id)
        .any(|grant| grant.get("inherited") != "true")
    {
        return;
    }
    let inherited: Vec<String> = db
        .grant_rows(user_sys_id, &role_id)
        .map(|g| g.sys_id().to_string())
        .collect();
    let grants = Schema::get().table("sys_user_has_role").expect("sys_user_has_role");
    for id in inherited {
        db.remove(grants, &id);
    }
    put(
        db,
        "sys_user_has_role",
        &[("user", user_sys_id), ("role", &role_id), ("state", "active")],
        now,
    );
    let mut contained: Vec<&str> = contained_roles(role);
    while let Some(inner) = contained.pop() {
        let inner_id = ensure_role(db, inner, now);
        if db.grant_rows(user_sys_id, &inner_id).next().is_none() {
            put(
                db,
                "sys_user_has_role",
                &[
                    ("user", user_sys_id),
                    ("role", &inner_id),
                    ("state", "active"),
                    ("inherited", "true"),
                    ("included_in_role", &role_id),
                    ("inh_count", "1"),
                ],
                now,
            );
            contained.extend(contained_roles(inner));
        }
    }
}

/// The roles `role` contains directly.
pub fn contained_roles(role: &str) -> Vec<&'static str> {
    CONTAINS
        .iter()
        .find(|(container, _)| *container == role)
        .map(|(_, inner)| inner.to_vec())
        .unwrap_or_default()
}

/// Seeds a fresh instance from its configuration.
pub fn seed(state: &mut State, config: &InstanceConfig, now: &str) {
    for (name, _) in ROLES {
        ensure_role(&mut state.db, name, now);
    }
    let schema = Schema::get();
    for table in schema.tables() {
        let super_class = table
            .super_class
            .map(|p| stable_sys_id(&format!("sys_db_object:{p}")))
            .unwrap_or_default();
        put(
            &mut state.db,
            "sys_db_object",
            &[
                ("sys_id", &stable_sys_id(&format!("sys_db_object:{}", table.name))),
                ("name", table.name),
                ("label", table.label),
                ("super_class", &super_class),
                ("number_ref", table.number_prefix.unwrap_or("")),
            ],
            now,
        );
    }
    let servlet = format!("https://{}/", config.host);
    let mut properties: Vec<(String, String, String)> = PROPERTIES
        .iter()
        .map(|(n, v, t)| (n.to_string(), v.to_string(), t.to_string()))
        .collect();
    properties.push(("glide.servlet.uri".into(), servlet, "string".into()));
    for (name, value) in &config.properties {
        properties.retain(|(n, _, _)| n != name);
        properties.push((name.clone(), value.clone(), "string".into()));
    }
    for (name, value, kind) in &properties {
        put(
            &mut state.db,
            "sys_properties",
            &[("name", name), ("value", value), ("type", kind)],
            now,
        );
    }
    for user in &config.users {
        add_user(state, &config.host, user, now);
    }
    for app in &config.oauth_apps {
        state.oauth.add_app(app);
    }
    for rule in &config.rate_limits {
        state.rate.add(rule.clone());
    }
}
