//! The decide phase, table-driven: gathered state → plan → conclusion, for every condition reason
//! (`every_reason_has_a_case` fails when a reason has none), without an instance or an API server.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::{
    api::{CONSENT_RESULT, LocalSecretReference, NotificationsSpec, RECONSENT, ServiceNowConnectionSpec, WebhookSpec},
    servicenow::{BusinessRule, ClientCredentials, SecretString, SystemProperty, SystemPropertyFields},
};

const PUBLIC: &str = "https://neo.example.com";

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn public() -> url::Url {
    url::Url::parse(PUBLIC).unwrap()
}

fn spec() -> ServiceNowConnectionSpec {
    ServiceNowConnectionSpec {
        instance_url: "https://acme.service-now.com".into(),
        credentials_secret_ref: LocalSecretReference {
            name: "acme-oauth".into(),
        },
        token_secret_ref: None,
        webhook: WebhookSpec::default(),
        expected_user_name: None,
        notifications: NotificationsSpec::default(),
        deletion_policy: Default::default(),
        suspend: false,
        resync_interval: "10m".into(),
    }
}

fn connection(spec: ServiceNowConnectionSpec) -> ServiceNowConnection {
    let mut connection = ServiceNowConnection::new("acme", spec);
    connection.metadata.namespace = Some("itsm".into());
    connection.metadata.uid = Some("uid-1".into());
    connection.metadata.generation = Some(1);
    connection
}

fn credentials(secret: &str) -> ClientCredentials {
    ClientCredentials {
        client_id: SecretString::new("client-id"),
        client_secret: SecretString::new(secret),
    }
}

fn stored(expires_in_days: i64) -> StoredToken {
    StoredToken {
        refresh_token: SecretString::new("refresh-1"),
        expires_at: Some(now() + SignedDuration::from_hours(24 * expires_in_days)),
    }
}

fn error(kind: ErrorKind) -> servicenow::Error {
    servicenow::Error {
        action: "call".into(),
        host: "acme.service-now.com".into(),
        kind,
    }
}

fn unauthorized() -> servicenow::Error {
    error(ErrorKind::Unauthorized {
        detail: "access_denied".into(),
    })
}

fn user(name: &str) -> User {
    User {
        sys_id: format!("{name}-sys-id"),
        user_name: name.into(),
        display_name: "Neo Agent".into(),
    }
}

/// Everything read, nothing on the instance yet, the token from memory.
fn ready() -> Gathered {
    Gathered {
        credentials: Some(Ok(credentials("secret"))),
        stored: Some(Some(stored(90))),
        access: Some(Ok(Access {
            token: SecretString::new("access-1"),
            lifetime: Duration::from_secs(1700),
            refreshed: None,
        })),
        user: Some(Ok(user("neo.agent"))),
        roles: Some(Ok(vec![
            "business_rule_admin".into(),
            "itil".into(),
            "x_neoagent_integration".into(),
        ])),
        not_owned: None,
        webhook_token: Some(SecretString::new("webhook-token")),
        records: Some(Ok(InstanceRecords {
            rules: Vec::new(),
            properties: Vec::new(),
        })),
        consent_ticket: None,
    }
}

/// A token (`Token`) or webhook Secret on the connection's name that is not its own.
fn foreign(role: OwnedSecret) -> crate::secrets::NotOwned {
    crate::secrets::NotOwned {
        role,
        secret: "acme-token".into(),
        problem: "it lacks the label app.kubernetes.io/managed-by=servicenow-operator",
    }
}

/// `gather`'s stop on a token Secret that is not the connection's: nothing read past it.
fn foreign_token() -> Gathered {
    Gathered {
        stored: None,
        access: None,
        user: None,
        roles: None,
        not_owned: Some(foreign(OwnedSecret::Token)),
        webhook_token: None,
        records: None,
        ..ready()
    }
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A ticket as `gather` draws one, at `now() + seconds`.
fn fresh_ticket(random: u8, seconds: i64) -> crate::ticket::Issued {
    crate::ticket::issue(
        KEY,
        "itsm/acme",
        [random; crate::ticket::RANDOM_LEN],
        now() + SignedDuration::from_secs(seconds),
    )
}

/// The desired records of the `ready()` connection, as the instance would hold them.
fn in_place() -> InstanceRecords {
    let owner = provision::Owner {
        public_url: public().to_string(),
        connection: "itsm/acme".into(),
    };
    let desired = provision::desired(
        &paths::callback_url(&public(), "itsm", "acme"),
        &SecretString::new("webhook-token"),
        &crate::api::WebhookSpec::default().task_types,
        &owner,
    );
    InstanceRecords {
        rules: vec![BusinessRule {
            sys_id: "rule-1".into(),
            sys_created_on: "2026-01-01 00:00:00".into(),
            fields: desired.rule,
        }],
        properties: vec![SystemProperty {
            sys_id: "property-1".into(),
            sys_created_on: "2026-01-01 00:00:00".into(),
            fields: desired.property,
        }],
    }
}

fn with_records(records: InstanceRecords) -> Gathered {
    Gathered {
        records: Some(Ok(records)),
        ..ready()
    }
}

/// A reconcile's decision and conclusion; `failed` is the instance's answer to the first write.
struct Run {
    acts: Vec<Act>,
    conclusion: Conclusion,
}

fn run(connection: &ServiceNowConnection, gathered: &Gathered, failed: Option<servicenow::Error>) -> Run {
    let plan = decide(connection, gathered, &public(), now());
    let acts = plan.acts.clone();
    let created = |step: Step, id: &str| acts.contains(&Act::Instance(step)).then(|| id.to_owned());
    let outcome = match failed {
        Some(error) => Outcome {
            failed: Some(error),
            ..Outcome::default()
        },
        None => Outcome {
            created_rule: created(Step::CreateRule, "rule-1"),
            created_property: created(Step::CreateProperty, "property-1"),
            failed: None,
        },
    };
    Run {
        acts,
        conclusion: conclude(connection, plan, outcome, now()),
    }
}

impl Run {
    fn condition(&self, type_: ConditionType) -> Option<(&str, &str)> {
        self.conclusion
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == type_.as_str())
            .map(|c| (c.status.as_str(), c.reason.as_str()))
    }

    fn ready(&self) -> (&str, &str) {
        self.condition(ConditionType::Ready).expect("Ready is always set")
    }

    fn reasons(&self) -> BTreeSet<String> {
        self.conclusion
            .status
            .conditions
            .iter()
            .map(|c| c.reason.clone())
            .collect()
    }
}

/// One row: a name, a connection, what was gathered, the instance's answer to the first write,
/// and the condition expected (type, status, reason), with the syncState and next look.
struct Case {
    name: &'static str,
    connection: ServiceNowConnection,
    gathered: Gathered,
    failed: Option<servicenow::Error>,
    condition: ConditionType,
    truth: &'static str,
    reason: Reason,
    state: SyncStateName,
    next: Option<Retry>,
}

type SyncStateName = &'static str;

/// The retry of a stopped reconcile; `None` for a ready one (resync).
fn retry_of(next: &Next) -> Option<Retry> {
    match next {
        Next::Resync { .. } => None,
        Next::Stopped { retry, .. } => Some(*retry),
    }
}

const RESYNC: Option<Retry> = None;
const TERMINAL: Option<Retry> = Some(Retry::Resync);
const ON_CHANGE: Option<Retry> = Some(Retry::OnChange);
const BACKOFF: Option<Retry> = Some(Retry::Backoff);

fn with_spec(change: impl FnOnce(&mut ServiceNowConnectionSpec)) -> ServiceNowConnection {
    let mut spec = spec();
    change(&mut spec);
    connection(spec)
}

fn with_annotation(key: &str, value: &str) -> ServiceNowConnection {
    let mut connection = connection(spec());
    connection
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    connection
}

fn with_status(status: ServiceNowConnectionStatus) -> ServiceNowConnection {
    let mut connection = connection(spec());
    connection.status = Some(status);
    connection
}

fn rejected_access() -> Gathered {
    Gathered {
        access: Some(Err(unauthorized())),
        ..ready()
    }
}

fn cases() -> Vec<Case> {
    let forbidden = || {
        error(ErrorKind::Forbidden {
            table: "sys_script".into(),
            operation: "create",
            message: "ACL Exception Insert Failed due to security constraints".into(),
        })
    };
    let mut drifted = in_place();
    drifted.rules[0].fields.active = false;
    let mut legacy = in_place();
    legacy.rules.push(BusinessRule {
        sys_id: "legacy-1".into(),
        sys_created_on: "2025-01-01 00:00:00".into(),
        fields: crate::servicenow::BusinessRuleFields {
            name: provision::LEGACY_RULE_NAME.into(),
            collection: provision::LEGACY_RULE_TABLE.into(),
            ..Default::default()
        },
    });
    let mut claimed = in_place();
    claimed.properties[0].fields = SystemPropertyFields {
        value: provision::signed_callback(
            &paths::callback_url(&url::Url::parse("https://other.example.com").unwrap(), "x", "y"),
            &SecretString::new("other-token"),
        ),
        ..claimed.properties[0].fields.clone()
    };
    let provisioned_before = ServiceNowConnectionStatus {
        webhook: Some(WebhookStatus {
            business_rule_sys_id: Some("rule-1".into()),
            callback_property_sys_id: Some("property-1".into()),
            ..Default::default()
        }),
        credentials_hash: Some(credentials("secret").fingerprint()),
        ..Default::default()
    };
    vec![
        Case {
            name: "a fresh instance gets the property and the rule",
            connection: connection(spec()),
            gathered: ready(),
            failed: None,
            condition: ConditionType::WebhookProvisioned,
            truth: "True",
            reason: Reason::Provisioned,
            state: "READY_TO_SYNC",
            next: RESYNC,
        },
        Case {
            name: "a suspended connection reads nothing",
            connection: with_spec(|s| s.suspend = true),
            gathered: Gathered::default(),
            failed: None,
            condition: ConditionType::Ready,
            truth: "False",
            reason: Reason::Suspended,
            state: "SUSPENDED",
            next: ON_CHANGE,
        },
        Case {
            name: "an instance URL the CRD would refuse",
            connection: with_spec(|s| s.instance_url = "https://acme.example.com".into()),
            gathered: Gathered::default(),
            failed: None,
            condition: ConditionType::Ready,
            truth: "False",
            reason: Reason::InvalidSpec,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a resync interval that is no duration",
            connection: with_spec(|s| s.resync_interval = "10 minutes".into()),
            gathered: Gathered::default(),
            failed: None,
            condition: ConditionType::Ready,
            truth: "False",
            reason: Reason::InvalidSpec,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "no credentials Secret",
            connection: connection(spec()),
            gathered: Gathered {
                credentials: Some(Err(CredentialsError::SecretMissing {
                    secret: "acme-oauth".into(),
                })),
                ..Gathered::default()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::CredentialsMissing,
            state: "ERROR",
            next: ON_CHANGE,
        },
        Case {
            name: "a client secret with a trailing newline",
            connection: connection(spec()),
            gathered: Gathered {
                credentials: Some(Err(CredentialsError::Malformed {
                    secret: "acme-oauth".into(),
                    key: "clientSecret",
                    problem: "ends with a newline",
                })),
                ..Gathered::default()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::CredentialsMalformed,
            state: "ERROR",
            next: ON_CHANGE,
        },
        Case {
            name: "a token Secret that is not the connection's",
            connection: connection(spec()),
            gathered: foreign_token(),
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::SecretNotOwned,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a webhook Secret that is not the connection's",
            connection: connection(spec()),
            gathered: Gathered {
                not_owned: Some(foreign(OwnedSecret::Webhook)),
                webhook_token: None,
                records: None,
                ..ready()
            },
            failed: None,
            condition: ConditionType::WebhookProvisioned,
            truth: "False",
            reason: Reason::SecretNotOwned,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "no refresh token yet",
            connection: connection(spec()),
            gathered: Gathered {
                stored: Some(None),
                access: None,
                user: None,
                roles: None,
                webhook_token: None,
                records: None,
                ..ready()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::ConsentRequired,
            state: "AWAITING_CONSENT",
            next: ON_CHANGE,
        },
        Case {
            name: "consent denied",
            connection: with_annotation(CONSENT_RESULT, "denied"),
            gathered: Gathered {
                stored: Some(None),
                ..Gathered::default()
            }
            .with_credentials(),
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::ConsentDenied,
            state: "AWAITING_CONSENT",
            next: ON_CHANGE,
        },
        Case {
            name: "the instance refuses the refresh",
            connection: connection(spec()),
            gathered: rejected_access(),
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::TokenRejected,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "credentials rotated since the last good refresh, and refused",
            connection: with_status(ServiceNowConnectionStatus {
                credentials_hash: Some(credentials("old-secret").fingerprint()),
                ..Default::default()
            }),
            gathered: rejected_access(),
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::CredentialsChanged,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a refresh token past its lifespan, refused",
            connection: connection(spec()),
            gathered: Gathered {
                stored: Some(Some(stored(-1))),
                ..rejected_access()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "False",
            reason: Reason::RefreshTokenExpired,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a refresh token that ends within two weeks",
            connection: connection(spec()),
            gathered: Gathered {
                stored: Some(Some(stored(3))),
                ..ready()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "True",
            reason: Reason::RefreshTokenExpiring,
            state: "READY_TO_SYNC",
            next: RESYNC,
        },
        Case {
            name: "the token endpoint cannot be reached",
            connection: connection(spec()),
            gathered: Gathered {
                access: Some(Err(error(ErrorKind::Unreachable {
                    reason: "timed out".into(),
                }))),
                ..ready()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "Unknown",
            reason: Reason::Unreachable,
            state: "PROVISIONING",
            next: BACKOFF,
        },
        Case {
            name: "a hibernating developer instance answers its page to the refresh",
            connection: connection(spec()),
            gathered: Gathered {
                access: Some(Err(error(ErrorKind::Hibernating))),
                ..ready()
            },
            failed: None,
            condition: ConditionType::Authorized,
            truth: "Unknown",
            reason: Reason::InstanceHibernating,
            state: "PROVISIONING",
            next: Some(Retry::After(stop::HIBERNATION_RETRY)),
        },
        Case {
            name: "a 429 with Retry-After while reading the user",
            connection: connection(spec()),
            gathered: Gathered {
                user: Some(Err(error(ErrorKind::RateLimited {
                    retry_after: Some(Duration::from_secs(7)),
                }))),
                ..ready()
            },
            failed: None,
            condition: ConditionType::IdentityResolved,
            truth: "Unknown",
            reason: Reason::RateLimited,
            state: "PROVISIONING",
            next: Some(Retry::After(Duration::from_secs(7))),
        },
        Case {
            name: "an account without itil",
            connection: connection(spec()),
            gathered: Gathered {
                roles: Some(Ok(vec!["snc_internal".into()])),
                ..ready()
            },
            failed: None,
            condition: ConditionType::IdentityResolved,
            truth: "False",
            reason: Reason::InsufficientPrivileges,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a token whose application's auth scopes leave out the UI API",
            connection: connection(spec()),
            gathered: Gathered {
                user: Some(Err(error(ErrorKind::ScopeRestricted {
                    api: "/api/now/ui/user/current_user".into(),
                    message: "Missing required api access scope".into(),
                }))),
                roles: None,
                webhook_token: None,
                records: None,
                ..ready()
            },
            failed: None,
            condition: ConditionType::IdentityResolved,
            truth: "False",
            reason: Reason::TokenScopeRestricted,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "an itil-only account, before any write",
            connection: connection(spec()),
            gathered: Gathered {
                roles: Some(Ok(vec!["itil".into(), "business_rule_admin".into()])),
                records: None,
                ..ready()
            },
            failed: None,
            condition: ConditionType::IdentityResolved,
            truth: "False",
            reason: Reason::MissingProvisioningPrivileges,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a 403 creating the rule",
            connection: connection(spec()),
            gathered: ready(),
            failed: Some(forbidden()),
            condition: ConditionType::WebhookProvisioned,
            truth: "False",
            reason: Reason::InsufficientPrivileges,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "consent given by someone else than expectedUserName",
            connection: with_spec(|s| s.expected_user_name = Some("neo.agent".into())),
            gathered: Gathered {
                user: Some(Ok(user("admin"))),
                ..ready()
            },
            failed: None,
            condition: ConditionType::IdentityResolved,
            truth: "False",
            reason: Reason::IdentityMismatch,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a rule deactivated by hand is repaired",
            connection: with_status(provisioned_before.clone()),
            gathered: with_records(drifted),
            failed: None,
            condition: ConditionType::WebhookProvisioned,
            truth: "True",
            reason: Reason::DriftRepaired,
            state: "READY_TO_SYNC",
            next: RESYNC,
        },
        Case {
            name: "the legacy incident rule is removed",
            connection: connection(spec()),
            gathered: with_records(legacy),
            failed: None,
            condition: ConditionType::WebhookProvisioned,
            truth: "True",
            reason: Reason::LegacyRuleRemoved,
            state: "READY_TO_SYNC",
            next: RESYNC,
        },
        Case {
            name: "another operator's connection owns the property",
            connection: connection(spec()),
            gathered: with_records(claimed),
            failed: None,
            condition: ConditionType::WebhookProvisioned,
            truth: "False",
            reason: Reason::InstanceClaimedElsewhere,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "the instance answers a write with something unexpected",
            connection: connection(spec()),
            gathered: ready(),
            failed: Some(error(ErrorKind::Protocol {
                reason: "unexpected answer HTTP 400".into(),
            })),
            condition: ConditionType::WebhookProvisioned,
            truth: "False",
            reason: Reason::ProvisioningFailed,
            state: "PROVISIONING",
            next: BACKOFF,
        },
        Case {
            name: "the instance answers the read of the webhook records with something unexpected",
            connection: connection(spec()),
            gathered: Gathered {
                records: Some(Err(error(ErrorKind::Protocol {
                    reason: "unexpected answer HTTP 400".into(),
                }))),
                ..ready()
            },
            failed: None,
            condition: ConditionType::WebhookProvisioned,
            truth: "False",
            reason: Reason::ProvisioningFailed,
            state: "PROVISIONING",
            next: BACKOFF,
        },
        Case {
            name: "email asked for and granted",
            connection: with_spec(|s| s.notifications.email_via_psa = true),
            gathered: Gathered {
                roles: Some(Ok(vec!["admin".into(), "email_api_send".into(), "itil".into()])),
                ..ready()
            },
            failed: None,
            condition: ConditionType::EmailViaPsa,
            truth: "True",
            reason: Reason::EmailApiSendGranted,
            state: "READY_TO_SYNC",
            next: RESYNC,
        },
        Case {
            name: "email asked for without email_api_send",
            connection: with_spec(|s| s.notifications.email_via_psa = true),
            gathered: ready(),
            failed: None,
            condition: ConditionType::EmailViaPsa,
            truth: "False",
            reason: Reason::MissingEmailApiSendRole,
            state: "ERROR",
            next: TERMINAL,
        },
        Case {
            name: "a layer gather did not read is reported, not trusted",
            connection: connection(spec()),
            gathered: Gathered { user: None, ..ready() },
            failed: None,
            condition: ConditionType::Ready,
            truth: "False",
            reason: Reason::Progressing,
            state: "PROVISIONING",
            next: BACKOFF,
        },
    ]
}

impl Gathered {
    fn with_credentials(self) -> Gathered {
        Gathered {
            credentials: Some(Ok(credentials("secret"))),
            ..self
        }
    }
}

#[test]
fn each_case_reaches_its_condition_state_and_next_look() {
    for case in cases() {
        let run = run(&case.connection, &case.gathered, case.failed);
        assert_eq!(
            run.condition(case.condition),
            Some((case.truth, case.reason.as_str())),
            "{}: {:#?}",
            case.name,
            run.conclusion.status.conditions
        );
        let state = serde_json::to_value(run.conclusion.status.sync_state).unwrap();
        assert_eq!(state, case.state, "{}", case.name);
        assert_eq!(retry_of(&run.conclusion.next), case.next, "{}", case.name);
        let ready = run.ready();
        assert_eq!(
            ready.0 == "True",
            case.state == "READY_TO_SYNC",
            "{}: {ready:?}",
            case.name
        );
        for condition in &run.conclusion.status.conditions {
            assert!(
                !condition.message.contains("refresh-1")
                    && !condition.message.contains("access-1")
                    && !condition.message.contains("webhook-token")
                    && !condition.message.contains("secret\""),
                "{}: a secret in {condition:?}",
                case.name
            );
        }
    }
}

#[test]
fn a_secret_that_is_not_the_connections_is_neither_written_nor_deleted() {
    // A re-consent request would revoke and forget the stored token: not one that is not ours.
    let reconsent = with_annotation(RECONSENT, "1");
    let run = run(&reconsent, &foreign_token(), None);
    assert!(run.acts.is_empty(), "{:?}", run.acts);
    assert_eq!(run.conclusion.status.consent_url, None);
    let message = run
        .conclusion
        .status
        .conditions
        .iter()
        .find(|condition| condition.reason == "SecretNotOwned")
        .map(|condition| condition.message.clone())
        .unwrap_or_default();
    assert!(
        message.starts_with("spec.tokenSecretRef: the Secret \"acme-token\""),
        "{message}"
    );
    assert!(message.contains("neoagent.io/connection-uid="), "{message}");
}

#[test]
fn every_reason_has_a_case() {
    let covered: BTreeSet<String> = cases()
        .into_iter()
        .flat_map(|case| run(&case.connection, &case.gathered, case.failed).reasons())
        .collect();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .filter(|reason| !covered.contains(*reason))
        .collect();
    assert!(missing.is_empty(), "reasons without a case: {missing:?}");
}

#[test]
fn a_fresh_instance_gets_the_property_before_the_rule() {
    let run = run(&connection(spec()), &ready(), None);
    assert_eq!(
        run.acts,
        [Act::Instance(Step::CreateProperty), Act::Instance(Step::CreateRule)]
    );
    let webhook = run.conclusion.status.webhook.as_ref().unwrap();
    assert_eq!(webhook.business_rule_sys_id.as_deref(), Some("rule-1"));
    assert_eq!(webhook.callback_property_sys_id.as_deref(), Some("property-1"));
}

#[test]
fn the_steady_state_plans_nothing_and_changes_no_status() {
    let first = run(&connection(spec()), &ready(), None);
    let settled = with_status(first.conclusion.status.clone());
    let again = run(&settled, &with_records(in_place()), None);
    assert!(again.acts.is_empty(), "{:?}", again.acts);
    assert_eq!(again.conclusion.status, first.conclusion.status);
    assert!(again.conclusion.events.is_empty());
    let Next::Resync { every, due } = again.conclusion.next else {
        panic!("{:?}", again.conclusion.next)
    };
    assert_eq!(every, Duration::from_secs(600));
    assert_eq!(
        due,
        Some(Duration::from_secs(1700) - crate::reconcile::tokens::REFRESH_AHEAD)
    );
}

#[test]
fn a_write_that_fails_half_way_keeps_what_was_created() {
    let plan = decide(&connection(spec()), &ready(), &public(), now());
    let conclusion = conclude(
        &connection(spec()),
        plan,
        Outcome {
            created_property: Some("property-1".into()),
            created_rule: None,
            failed: Some(error(ErrorKind::Server { status: 503 })),
        },
        now(),
    );
    let webhook = conclusion.status.webhook.as_ref().unwrap();
    assert_eq!(webhook.callback_property_sys_id.as_deref(), Some("property-1"));
    assert_eq!(webhook.business_rule_sys_id, None);
    assert!(
        !conclusion
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "WebhookProvisioned" && c.status == "True")
    );
}

#[test]
fn a_reconsent_request_forgets_both_tokens_once_and_issues_a_ticket() {
    let connection = with_annotation(RECONSENT, "2026-12-04T10:00:00Z");
    let ticket = fresh_ticket(1, 0);
    let gathered = Gathered {
        stored: Some(None),
        consent_ticket: Some(ticket.clone()),
        ..Gathered::default().with_credentials()
    };
    let run = run(&connection, &gathered, None);
    assert_eq!(run.acts, [Act::ForgetStoredToken, Act::ForgetAccessToken]);
    let status = &run.conclusion.status;
    assert_eq!(
        status.last_handled_reconsent_at.as_deref(),
        Some("2026-12-04T10:00:00Z")
    );
    assert_eq!(
        status.consent_url.as_deref(),
        Some(
            format!(
                "https://neo.example.com/oauth/servicenow/start?ticket={}",
                ticket.ticket
            )
            .as_str()
        )
    );
    let kept = status.consent_ticket.as_ref().expect("the ticket's hash");
    assert_eq!(
        (kept.hash.as_str(), kept.expires_at.0),
        (ticket.hash.as_str(), ticket.expires_at)
    );
    assert!(
        !serde_json::to_string(&status.consent_ticket)
            .unwrap()
            .contains(&ticket.ticket)
    );
    let mut handled = connection.clone();
    handled.status = Some(status.clone());
    assert_eq!(reconsent_request(&handled, status), None);
}

#[test]
fn a_reconsent_request_revokes_the_refresh_token_it_replaces() {
    let connection = with_annotation(RECONSENT, "again");
    let gathered = Gathered {
        consent_ticket: Some(fresh_ticket(1, 0)),
        ..Gathered::default().with_credentials()
    };
    let gathered = Gathered {
        stored: Some(Some(stored(90))),
        ..gathered
    };
    let run = run(&connection, &gathered, None);
    assert_eq!(
        run.acts,
        [
            Act::RevokeStoredToken(SecretToken(stored(90))),
            Act::ForgetStoredToken,
            Act::ForgetAccessToken
        ]
    );
}

/// The connection after a reconcile that concluded `status`, with `annotations`.
fn after(status: &ServiceNowConnectionStatus, annotations: &[(&str, &str)]) -> ServiceNowConnection {
    let mut connection = connection(spec());
    connection.status = Some(status.clone());
    connection.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    connection
}

#[test]
fn a_consent_ticket_stays_until_it_is_used_or_expires_and_the_reconcile_looks_again_at_its_expiry() {
    let awaiting = |random: u8, seconds: i64| Gathered {
        stored: Some(None),
        consent_ticket: Some(fresh_ticket(random, seconds)),
        ..Gathered::default().with_credentials()
    };
    let first = run(&connection(spec()), &awaiting(1, 0), None).conclusion;
    let issued = first.status.consent_ticket.clone().expect("a ticket");
    assert_eq!(
        first.next,
        Next::Stopped {
            retry: Retry::ChangeOrAfter(Duration::from_secs(3600)),
            every: Duration::from_secs(600)
        }
    );

    // Next reconcile, another ticket drawn: the status keeps the first one — no status change.
    let later = after(&first.status, &[]);
    let plan = decide(
        &later,
        &awaiting(2, 600),
        &public(),
        now() + SignedDuration::from_secs(600),
    );
    assert_eq!(plan.status.consent_url, first.status.consent_url);
    assert_eq!(plan.status.consent_ticket.as_ref(), Some(&issued));
    assert!(matches!(
        plan.end,
        Err(Stop { retry: Retry::ChangeOrAfter(left), .. }) if left == Duration::from_secs(3000)
    ));

    // Used by /start (its hash in the session annotation): a new one.
    let session = serde_json::to_string(&crate::api::ConsentSession {
        ticket: issued.hash.clone(),
        state: "nonce".into(),
        done: false,
    })
    .unwrap();
    let used = after(&first.status, &[(crate::api::CONSENT_SESSION, &session)]);
    let plan = decide(
        &used,
        &awaiting(3, 60),
        &public(),
        now() + SignedDuration::from_secs(60),
    );
    assert_eq!(
        plan.status.consent_ticket.as_ref().map(|t| &t.hash),
        Some(&fresh_ticket(3, 60).hash)
    );
    assert_ne!(plan.status.consent_url, first.status.consent_url);

    // Expired: a new one.
    let plan = decide(
        &later,
        &awaiting(4, 3600),
        &public(),
        now() + SignedDuration::from_secs(3600),
    );
    assert_eq!(
        plan.status.consent_ticket.as_ref().map(|t| &t.hash),
        Some(&fresh_ticket(4, 3600).hash)
    );

    // Under another public URL: a new one.
    let moved = url::Url::parse("https://moved.example.com").unwrap();
    let plan = decide(&later, &awaiting(5, 60), &moved, now() + SignedDuration::from_secs(60));
    assert!(
        plan.status
            .consent_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://moved.example.com/oauth/servicenow/start?ticket=t1."))
    );

    // Consent given: no ticket, no consent URL.
    let consented = after(&first.status, &[]);
    let done = run(&consented, &with_records(in_place()), None).conclusion;
    assert_eq!((done.status.consent_url, done.status.consent_ticket), (None, None));
}

#[test]
fn a_renewed_refresh_token_is_stored_and_a_refresh_recorded() {
    let gathered = Gathered {
        access: Some(Ok(Access {
            token: SecretString::new("access-2"),
            lifetime: Duration::from_secs(1799),
            refreshed: Some(Refreshed {
                refresh_token: SecretString::new("refresh-2"),
            }),
        })),
        ..with_records(in_place())
    };
    let run = run(&connection(spec()), &gathered, None);
    assert_eq!(
        run.acts,
        [Act::StoreRefreshToken(SecretToken(StoredToken {
            refresh_token: SecretString::new("refresh-2"),
            expires_at: stored(90).expires_at,
        }))]
    );
    let token = run.conclusion.status.token.as_ref().unwrap();
    assert_eq!(token.last_refresh_time.as_ref().map(|t| t.0), Some(now()));
    assert_eq!(
        token.access_token_expires_at.as_ref().map(|t| t.0),
        Some(now() + SignedDuration::from_secs(1799))
    );
    let same = Gathered {
        access: Some(Ok(Access {
            token: SecretString::new("access-2"),
            lifetime: Duration::from_secs(1799),
            refreshed: Some(Refreshed {
                refresh_token: SecretString::new("refresh-1"),
            }),
        })),
        ..with_records(in_place())
    };
    assert!(super::tests::run(&connection(spec()), &same, None).acts.is_empty());
}

#[test]
fn a_401_on_a_table_read_forgets_the_access_token() {
    let gathered = Gathered {
        roles: Some(Err(unauthorized())),
        ..ready()
    };
    let run = run(&connection(spec()), &gathered, None);
    assert_eq!(run.acts, [Act::ForgetAccessToken]);
    assert_eq!(
        run.condition(ConditionType::Authorized),
        Some(("False", "TokenRejected"))
    );
}

#[test]
fn an_identity_change_is_an_event() {
    let before = with_status(ServiceNowConnectionStatus {
        identity: Some(Identity {
            sys_id: "admin-sys-id".into(),
            user_name: "admin".into(),
            display_name: None,
        }),
        ..Default::default()
    });
    let run = run(&before, &ready(), None);
    assert!(
        run.conclusion
            .events
            .iter()
            .any(|e| e.reason == "IdentityChanged" && e.note.contains("neo.agent")),
        "{:?}",
        run.conclusion.events
    );
}

#[test]
fn the_expiry_warning_and_the_refresh_are_due_before_the_resync() {
    let gathered = Gathered {
        stored: Some(Some(stored(15))),
        ..with_records(in_place())
    };
    let plan = decide(&connection(spec()), &gathered, &public(), now());
    assert_eq!(
        plan.due,
        Some(Duration::from_secs(1700) - crate::reconcile::tokens::REFRESH_AHEAD)
    );
    let soon = Gathered {
        stored: Some(Some(StoredToken {
            expires_at: Some(now() + SignedDuration::from_secs(14 * 24 * 3600 + 60)),
            ..stored(15)
        })),
        ..with_records(in_place())
    };
    assert_eq!(
        decide(&connection(spec()), &soon, &public(), now()).due,
        Some(Duration::from_secs(60))
    );
}

#[test]
fn identity_checks_gate_provisioning() {
    let spec = spec();
    let roles = |names: &[&str]| -> Vec<String> { names.iter().map(|name| (*name).to_owned()).collect() };
    let least = roles(&["itil", "business_rule_admin", "x_neoagent_integration"]);
    assert!(identity(&spec, &user("neo.agent"), &least).is_ok());
    assert!(identity(&spec, &user("neo.agent"), &roles(&["itil", "admin"])).is_ok());
    assert!(identity(&spec, &user("neo.agent"), &[]).is_err());
    let reason = |held: &[&str]| identity(&spec, &user("neo.agent"), &roles(held)).unwrap_err().verdict;
    let itil_only = reason(&["itil"]);
    assert_eq!(itil_only.reason, Reason::MissingProvisioningPrivileges);
    assert!(
        itil_only.message.contains("business_rule_admin") && itil_only.message.contains("x_neoagent_integration"),
        "{}",
        itil_only.message
    );
    let no_property_role = reason(&["itil", "business_rule_admin"]);
    assert!(
        !no_property_role.message.contains("business_rule_admin (or admin)"),
        "{}",
        no_property_role.message
    );
    assert!(no_property_role.message.contains("x_neoagent_integration"));
    let no_rule_role = reason(&["itil", "x_neoagent_integration"]);
    assert!(
        no_rule_role.message.contains("business_rule_admin")
            && !no_rule_role.message.contains("x_neoagent_integration with")
    );
    assert_eq!(
        reason(&["admin"]).reason,
        Reason::InsufficientPrivileges,
        "itil comes first"
    );
    let mut email = spec.clone();
    email.notifications.email_via_psa = true;
    assert!(identity(&email, &user("neo.agent"), &least).is_err());
    let with_email = [least.clone(), roles(&["email_api_send"])].concat();
    assert!(identity(&email, &user("neo.agent"), &with_email).is_ok());
    let mut expected = spec.clone();
    expected.expected_user_name = Some("neo.agent".into());
    assert!(identity(&expected, &user("admin"), &least).is_err());
}

/// A `neoagent.io/reconnect` request is pending (for `gather`, which forgets the token) until a
/// ready reconcile records it as handled.
#[test]
fn a_reconnect_request_is_pending_until_a_ready_reconcile_records_it() {
    let requested = with_annotation(RECONNECT, "2026-12-04T10:00:00Z");
    let unhandled = ServiceNowConnectionStatus::default();
    assert_eq!(
        reconnect_request(&requested, &unhandled).map(String::as_str),
        Some("2026-12-04T10:00:00Z")
    );
    let handled = run(&requested, &with_records(in_place()), None).conclusion.status;
    assert_eq!(reconnect_request(&requested, &handled), None);
    assert_eq!(reconnect_request(&connection(spec()), &unhandled), None);
}

/// Acts carry their token: another refresh token, or the same one with another expiry, is
/// another act.
#[test]
fn tokens_to_store_differ_by_value_and_by_expiry() {
    let token = SecretToken(stored(90));
    assert_eq!(token, SecretToken(stored(90)));
    let renewed = StoredToken {
        refresh_token: SecretString::new("refresh-2"),
        ..stored(90)
    };
    assert_ne!(token, SecretToken(renewed));
    assert_ne!(token, SecretToken(stored(30)));
}

/// The warning starts once the refresh token has less than [`EXPIRY_WARNING`] left, and says
/// "expired" from its expiry on (while the access token obtained before still works).
#[test]
fn the_expiry_warning_starts_two_weeks_ahead_and_says_when_the_token_expired() {
    let ending_in = |seconds: i64| {
        let stored = StoredToken {
            expires_at: Some(now() + SignedDuration::from_secs(seconds)),
            ..stored(90)
        };
        let verdict = expiry_verdict(&stored, now());
        (verdict.reason, verdict.message)
    };
    let warning = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap();
    assert_eq!(ending_in(warning).0, Reason::TokenValid);
    assert_eq!(
        ending_in(warning - 1),
        (
            Reason::RefreshTokenExpiring,
            format!(
                "The refresh token expires at {}.",
                now() + SignedDuration::from_secs(warning - 1)
            )
        )
    );
    assert_eq!(
        ending_in(0),
        (
            Reason::RefreshTokenExpiring,
            format!(
                "The refresh token expired at {}; the access token obtained before still works.",
                now()
            )
        )
    );
}

/// The status names the identity (its display name when it has one) and whether it may send
/// email, whether or not email is asked for.
#[test]
fn the_status_shows_the_identity_and_whether_it_may_send_email() {
    let plain = run(&connection(spec()), &ready(), None).conclusion.status;
    assert_eq!(
        plain.identity,
        Some(Identity {
            sys_id: "neo.agent-sys-id".into(),
            user_name: "neo.agent".into(),
            display_name: Some("Neo Agent".into()),
        })
    );
    assert_eq!(
        plain.capabilities,
        Some(Capabilities {
            email_via_psa: Some(false)
        })
    );
    let nameless = Gathered {
        user: Some(Ok(User {
            display_name: String::new(),
            ..user("neo.agent")
        })),
        roles: Some(Ok(vec!["admin".into(), "itil".into(), "email_api_send".into()])),
        ..ready()
    };
    let status = run(&connection(spec()), &nameless, None).conclusion.status;
    assert_eq!(status.identity.and_then(|identity| identity.display_name), None);
    assert_eq!(
        status.capabilities,
        Some(Capabilities {
            email_via_psa: Some(true)
        })
    );
}

/// Records fixed on the instance by hand after a failed provisioning: nothing to write, and
/// `WebhookProvisioned` turns True (only a condition that is True already is left as it is).
#[test]
fn records_fixed_by_hand_after_a_failure_make_the_webhook_provisioned_without_a_write() {
    let refused = error(ErrorKind::Protocol {
        reason: "unexpected answer HTTP 400".into(),
    });
    let failed = run(&connection(spec()), &ready(), Some(refused));
    assert_eq!(
        failed.condition(ConditionType::WebhookProvisioned),
        Some(("False", "ProvisioningFailed"))
    );
    // The failed write takes back only the webhook's verdict.
    assert_eq!(
        failed.condition(ConditionType::IdentityResolved),
        Some(("True", "IdentityResolved"))
    );
    let fixed = run(&with_status(failed.conclusion.status), &with_records(in_place()), None);
    assert!(fixed.acts.is_empty(), "{:?}", fixed.acts);
    assert_eq!(
        fixed.condition(ConditionType::WebhookProvisioned),
        Some(("True", "Provisioned"))
    );
}

#[test]
fn the_records_are_read_with_the_roles_only_once_the_identity_passed() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let with = |type_: &str, status: &str| ServiceNowConnectionStatus {
        conditions: vec![Condition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            message: String::new(),
            reason: "Test".into(),
            observed_generation: None,
        }],
        ..ServiceNowConnectionStatus::default()
    };
    assert!(!identity_resolved(&ServiceNowConnectionStatus::default()));
    assert!(!identity_resolved(&with("IdentityResolved", "False")));
    assert!(!identity_resolved(&with("IdentityResolved", "Unknown")));
    assert!(!identity_resolved(&with("Authorized", "True")));
    assert!(identity_resolved(&with("IdentityResolved", "True")));
}
