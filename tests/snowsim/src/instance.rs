//! One simulated instance: all of its state behind one lock, and the write path every insert,
//! update and delete takes (Table API and admin handle alike), which runs the Business Rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::acl::Acl;
use crate::auth::Caller;
use crate::clock::Clock;
use crate::config::{Behaviour, InstanceConfig};
use crate::consent::Sessions;
use crate::faults::{Faults, RateLimiter};
use crate::logs::{Level, Logs, SystemLogEntry};
use crate::oauth::OAuthState;
use crate::rules::{self, Trigger};
use crate::schema::{Schema, Table};
use crate::store::{Db, Record, StoreError};

/// Everything an instance holds; guarded by [`Instance::state`].
#[derive(Debug, Default)]
pub struct State {
    /// Records.
    pub db: Db,
    /// Access rules.
    pub acl: Acl,
    /// Applications, codes and tokens.
    pub oauth: OAuthState,
    /// Browser sessions of the login form.
    pub sessions: Sessions,
    /// MFA codes and logins waiting for one.
    pub mfa: crate::mfa::Mfa,
    /// Request, system and outbound logs.
    pub logs: Logs,
    /// Injected faults.
    pub faults: Faults,
    /// Rate-limit rules and counters.
    pub rate: RateLimiter,
    /// Switches for UNCERTAIN behaviours.
    pub behaviour: Behaviour,
    /// REST API Auth Scope policies: resource path prefix → required auth scope.
    pub api_auth_scopes: std::collections::BTreeMap<String, String>,
}

impl State {
    /// A system property's value.
    pub fn property(&self, name: &str) -> Option<String> {
        let table = Schema::get().table("sys_properties")?;
        self.db
            .rows(table)
            .find(|r| r.get("name") == name)
            .map(|r| r.get("value").to_string())
    }

    /// True when a system property is `true`.
    pub fn property_is_true(&self, name: &str) -> bool {
        self.property(name).is_some_and(|v| v == "true")
    }

    /// A user by login name.
    pub fn user_by_name(&self, user_name: &str) -> Option<&Record> {
        let table = Schema::get().table("sys_user")?;
        self.db.rows(table).find(|r| r.get("user_name") == user_name)
    }

    /// A user by sys_id.
    pub fn user(&self, sys_id: &str) -> Option<&Record> {
        self.db.get(Schema::get().table("sys_user")?, sys_id)
    }

    /// Appends to the system log.
    pub fn syslog(&mut self, level: Level, source: &str, message: &str, time: &str) {
        self.logs.system.push(SystemLogEntry {
            level,
            source: source.to_string(),
            message: message.to_string(),
            time: time.to_string(),
        });
    }
}

/// One instance (one host name).
pub struct Instance {
    /// Host name, e.g. `acme.service-now.com`.
    pub host: String,
    /// All state, behind one lock.
    pub state: Mutex<State>,
    /// The server's clock.
    pub clock: Clock,
    /// HTTP client for Business Rule outbound calls.
    pub outbound: reqwest::Client,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("host", &self.host).finish()
    }
}

impl Instance {
    /// A seeded instance.
    pub fn new(config: &InstanceConfig, clock: Clock, outbound: reqwest::Client) -> Instance {
        let mut state = State {
            acl: Acl::with_overrides(&config.acl),
            behaviour: config.behaviour.clone(),
            api_auth_scopes: config.api_auth_scopes.clone(),
            ..State::default()
        };
        crate::seed::seed(&mut state, config, &clock.glide_now());
        Instance {
            host: config.host.to_ascii_lowercase(),
            state: Mutex::new(state),
            clock,
            outbound,
        }
    }

    /// Inserts a record as `caller`, running Business Rules. Access is the caller's business.
    pub async fn insert(
        self: &Arc<Self>,
        table: &'static Table,
        input: &BTreeMap<String, String>,
        caller: &Caller,
    ) -> Result<Record, StoreError> {
        let now = self.clock.glide_now();
        let actor = caller.actor();
        let (prepared, rules) = {
            let mut state = self.state.lock();
            let prepared = state.db.prepare_insert(table, input, &actor, &now)?;
            let rules = rules::matching(&state, &prepared.record, Trigger::Insert, caller);
            (prepared, rules)
        };
        let event = rules::Event::new(&prepared.record, None, Trigger::Insert, caller, &now);
        rules::run_before(self, &rules, &event).await;
        self.state.lock().db.commit(&prepared, &actor, &now);
        rules::run_after(self, rules, event).await;
        Ok(prepared.record)
    }

    /// Updates a record as `caller`, running Business Rules when something changed; `None` when
    /// the record does not exist.
    pub async fn update(
        self: &Arc<Self>,
        table: &'static Table,
        sys_id: &str,
        input: &BTreeMap<String, String>,
        caller: &Caller,
    ) -> Option<Record> {
        let now = self.clock.glide_now();
        let actor = caller.actor();
        let (previous, prepared, rules) = {
            let state = self.state.lock();
            let previous = state.db.get(table, sys_id)?.clone();
            let prepared = state.db.prepare_update(&previous, input, &actor, &now);
            if !prepared.changed {
                return Some(previous);
            }
            let rules = rules::matching(&state, &prepared.record, Trigger::Update, caller);
            (previous, prepared, rules)
        };
        let event = rules::Event::new(&prepared.record, Some(&previous), Trigger::Update, caller, &now);
        rules::run_before(self, &rules, &event).await;
        self.state.lock().db.commit(&prepared, &actor, &now);
        rules::run_after(self, rules, event).await;
        Some(prepared.record)
    }

    /// Deletes a record as `caller`, running Business Rules; `None` when it does not exist.
    pub async fn delete(self: &Arc<Self>, table: &'static Table, sys_id: &str, caller: &Caller) -> Option<Record> {
        let now = self.clock.glide_now();
        let (record, rules) = {
            let state = self.state.lock();
            let record = state.db.get(table, sys_id)?.clone();
            let rules = rules::matching(&state, &record, Trigger::Delete, caller);
            (record, rules)
        };
        let event = rules::Event::new(&record, Some(&record), Trigger::Delete, caller, &now);
        rules::run_before(self, &rules, &event).await;
        let removed = self.state.lock().db.remove(table, sys_id)?;
        rules::run_after(self, rules, event).await;
        Some(removed)
    }
}
