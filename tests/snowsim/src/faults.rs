//! Things that make an instance misbehave on purpose: inbound REST rate limits
//! (servicenow-api.md §2.7) and injected faults (latency, a status code for a share of requests,
//! dropped connections).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Who a rate-limit rule applies to. Precedence: a user rule beats role rules, which beat
/// all-users rules; among several matching rules of one kind the lowest limit wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitTarget {
    /// Every user.
    AllUsers,
    /// Users holding the role.
    Role(String),
    /// One user, by user name.
    User(String),
}

/// A `sys_rate_limit_rules` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Rule name.
    pub name: String,
    /// HTTP method the rule counts; all methods when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Resource path prefix without the version segment, e.g. `/api/now/table/incident` or
    /// `/api/now/table` for the whole Table API.
    pub resource: String,
    /// Who it applies to.
    pub applies_to: RateLimitTarget,
    /// Requests per hour.
    pub requests_per_hour: u32,
    /// The rule's sys_id (sent as `X-RateLimit-Rule`); derived from the name when absent.
    #[serde(default)]
    pub sys_id: Option<String>,
}

/// The outcome of counting one request against the rate-limit rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateVerdict {
    /// `X-RateLimit-Limit`.
    pub limit: u32,
    /// `X-RateLimit-Reset`: UNIX seconds of the next window.
    pub reset: i64,
    /// `X-RateLimit-Rule`.
    pub rule_sys_id: String,
    /// `Retry-After` seconds when the request is refused.
    pub retry_after: Option<i64>,
}

/// Rate-limit rules and their hourly counters.
#[derive(Debug, Default)]
pub struct RateLimiter {
    rules: Vec<RateLimitRule>,
    counts: HashMap<(String, String, i64), u32>,
}

impl RateLimiter {
    /// Adds a rule (its sys_id filled in) and returns that sys_id.
    pub fn add(&mut self, mut rule: RateLimitRule) -> String {
        let sys_id = rule
            .sys_id
            .clone()
            .unwrap_or_else(|| crate::store::stable_sys_id(&format!("rate:{}", rule.name)));
        rule.sys_id = Some(sys_id.clone());
        self.rules.push(rule);
        sys_id
    }

    /// Removes every rule and counter.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.counts.clear();
    }

    /// Counts a request by `user_name` holding `roles`; `None` when no rule applies.
    pub fn check(
        &mut self,
        method: &str,
        resource: &str,
        user_name: &str,
        roles: &std::collections::HashSet<String>,
        now_secs: i64,
    ) -> Option<RateVerdict> {
        let applicable = |r: &&RateLimitRule| {
            r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method)) && resource.starts_with(&r.resource)
        };
        let rank = |target: &RateLimitTarget| match target {
            RateLimitTarget::User(name) if name == user_name => Some(0),
            RateLimitTarget::Role(role) if roles.contains(role) => Some(1),
            RateLimitTarget::AllUsers => Some(2),
            _ => None,
        };
        let rule = self
            .rules
            .iter()
            .filter(applicable)
            .filter_map(|r| rank(&r.applies_to).map(|k| (k, r.requests_per_hour, r)))
            .min_by_key(|(k, limit, _)| (*k, *limit))
            .map(|(_, _, r)| r.clone())?;
        let window = now_secs.div_euclid(3600);
        let reset = (window + 1) * 3600;
        let sys_id = rule.sys_id.clone().unwrap_or_default();
        let count = self
            .counts
            .entry((sys_id.clone(), user_name.to_string(), window))
            .or_insert(0);
        let refused = *count >= rule.requests_per_hour;
        if !refused {
            *count += 1;
        }
        Some(RateVerdict {
            limit: rule.requests_per_hour,
            reset,
            rule_sys_id: sys_id,
            retry_after: refused.then_some(reset - now_secs),
        })
    }
}

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Delay the answer.
    Latency {
        /// Milliseconds added.
        ms: u64,
    },
    /// Answer this status instead of serving the request (with the error envelope, or `body`).
    Status {
        /// HTTP status code.
        code: u16,
        /// Body to send instead of the standard error envelope.
        #[serde(default)]
        body: Option<String>,
    },
    /// Answer a page of another kind than the Table API's JSON: what a load balancer or an
    /// instance's error handler sends (an HTML error page, plain text, an empty 200, a huge body).
    Page {
        /// HTTP status code.
        code: u16,
        /// `Content-Type` of the page.
        content_type: String,
        /// The page.
        body: String,
    },
    /// Close the connection without an answer.
    DropConnection,
}

/// An injected fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Requests whose path starts with this prefix (e.g. `/oauth_token.do`, `/api/now/table`).
    pub path_prefix: String,
    /// Only this method, when given.
    #[serde(default)]
    pub method: Option<String>,
    /// What happens.
    pub action: FaultAction,
    /// Share of matching requests affected, 0.0–1.0 (default 1.0), spread evenly and
    /// deterministically (a share of 0.5 hits every second request).
    #[serde(default = "one")]
    pub share: f64,
    /// Stop after affecting this many requests.
    #[serde(default)]
    pub times: Option<u32>,
}

fn one() -> f64 {
    1.0
}

impl Fault {
    /// A fault hitting every request under `path_prefix`.
    pub fn new(path_prefix: &str, action: FaultAction) -> Self {
        Fault {
            path_prefix: path_prefix.to_string(),
            method: None,
            action,
            share: 1.0,
            times: None,
        }
    }
}

/// What the faults decided for one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Total delay in milliseconds.
    pub latency_ms: u64,
    /// A status or a dropped connection replacing the answer.
    pub outcome: Option<FaultOutcome>,
}

/// A fault that replaces the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Answer this status (with this body, or the standard error envelope).
    Status(u16, Option<String>),
    /// Answer this status with this content type and body.
    Page(u16, String, String),
    /// Close the connection.
    Drop,
}

#[derive(Debug)]
struct ActiveFault {
    fault: Fault,
    credit: f64,
    used: u32,
}

/// The faults injected into one instance.
#[derive(Debug, Default)]
pub struct Faults {
    active: Vec<ActiveFault>,
}

impl Faults {
    /// Adds a fault.
    pub fn inject(&mut self, fault: Fault) {
        self.active.push(ActiveFault {
            fault,
            credit: 0.0,
            used: 0,
        });
    }

    /// Removes every fault.
    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// Decides what happens to a request.
    pub fn plan(&mut self, method: &str, path: &str) -> FaultPlan {
        let mut plan = FaultPlan::default();
        for active in &mut self.active {
            let fault = &active.fault;
            let matches = path.starts_with(&fault.path_prefix)
                && fault.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && fault.times.is_none_or(|t| active.used < t);
            if !matches {
                continue;
            }
            active.credit += fault.share.clamp(0.0, 1.0);
            if active.credit < 1.0 - 1e-9 {
                continue;
            }
            active.credit -= 1.0;
            active.used += 1;
            let outcome = match &fault.action {
                FaultAction::Latency { ms } => {
                    plan.latency_ms += ms;
                    None
                }
                FaultAction::Status { code, body } => Some(FaultOutcome::Status(*code, body.clone())),
                FaultAction::Page {
                    code,
                    content_type,
                    body,
                } => Some(FaultOutcome::Page(*code, content_type.clone(), body.clone())),
                FaultAction::DropConnection => Some(FaultOutcome::Drop),
            };
            if plan.outcome.is_none() {
                plan.outcome = outcome;
            }
        }
        self.active.retain(|a| a.fault.times.is_none_or(|t| a.used < t));
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_share_of_requests_is_hit_evenly_and_times_limits() {
        let mut faults = Faults::default();
        faults.inject(Fault {
            share: 0.5,
            times: Some(2),
            ..Fault::new("/api/now/table", FaultAction::Status { code: 503, body: None })
        });
        let hits: Vec<bool> = (0..6)
            .map(|_| faults.plan("GET", "/api/now/table/incident").outcome.is_some())
            .collect();
        assert_eq!(hits, vec![false, true, false, true, false, false]);
        assert!(faults.plan("GET", "/oauth_token.do").outcome.is_none());
    }

    #[test]
    fn user_rules_beat_role_rules_and_lowest_role_limit_wins() {
        let mut limiter = RateLimiter::default();
        let rule = |name: &str, target, n| RateLimitRule {
            name: name.into(),
            method: None,
            resource: "/api/now/table".into(),
            applies_to: target,
            requests_per_hour: n,
            sys_id: None,
        };
        limiter.add(rule("all", RateLimitTarget::AllUsers, 100));
        limiter.add(rule("itil", RateLimitTarget::Role("itil".into()), 5));
        limiter.add(rule("itil2", RateLimitTarget::Role("itil".into()), 2));
        limiter.add(rule("neo", RateLimitTarget::User("neo".into()), 1));
        let roles: HashSet<String> = ["itil".to_string()].into();
        let v = limiter
            .check("GET", "/api/now/table/incident", "bob", &roles, 7200)
            .unwrap();
        assert_eq!((v.limit, v.reset, v.retry_after), (2, 10800, None));
        limiter.check("GET", "/api/now/table/incident", "bob", &roles, 7200);
        let refused = limiter
            .check("GET", "/api/now/table/incident", "bob", &roles, 7300)
            .unwrap();
        assert_eq!(refused.retry_after, Some(3500));
        assert_eq!(
            limiter
                .check("GET", "/api/now/table/x", "neo", &roles, 7200)
                .unwrap()
                .limit,
            1
        );
        assert_eq!(
            limiter
                .check("GET", "/api/now/table/x", "eve", &HashSet::new(), 7200)
                .unwrap()
                .limit,
            100
        );
        assert!(
            limiter
                .check("GET", "/api/now/v1/email", "eve", &HashSet::new(), 7200)
                .is_none()
        );
    }
}
