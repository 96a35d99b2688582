//! The ServiceNow client against snowsim, over real HTTPS: the instance is reached under its own
//! host name through `resolve`, and trusted only through the simulator's CA in `ca_bundle`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use servicenow_operator::{
    provision::{self, Owner},
    servicenow::{
        CallObserver, Client, ClientConfig, ClientCredentials, Error, ErrorKind, InstanceUrl, SecretString, ServiceNow,
        TokenGrant,
        oauth::{self, Pkce},
    },
};
use snowsim::{
    Fault, FaultAction, RateLimitRule, RateLimitTarget, UserSpec,
    drive::{self, Decision},
};

const HOST: &str = "acme.service-now.com";
const CALLBACK: &str = "https://neo.example.com/callback/servicenow?connection=itsm%2Facme";

/// The default task classes of a connection.
fn task_types() -> Vec<String> {
    servicenow_operator::api::WebhookSpec::default().task_types
}

/// Every call the client reported, as (action, status).
#[derive(Default)]
struct Calls(Mutex<Vec<(&'static str, u16)>>);

impl CallObserver for Calls {
    fn observe(&self, action: &'static str, status: u16) {
        self.0.lock().unwrap().push((action, status));
    }
}

impl Calls {
    fn seen(&self) -> Vec<(&'static str, u16)> {
        self.0.lock().unwrap().clone()
    }
}

struct Fixture {
    server: snowsim::Server,
    client: Client,
    calls: Arc<Calls>,
    instance: InstanceUrl,
    credentials: ClientCredentials,
}

/// A PKCE authorization that `neo.agent` allowed.
struct Consented {
    /// The final redirect.
    location: String,
    /// The code in it.
    code: SecretString,
    pkce: Pkce,
    /// The application's registered redirect URL, which the authorization named.
    redirect_uri: String,
}

impl Fixture {
    async fn start() -> Fixture {
        let config = snowsim::Config {
            instances: vec![snowsim::InstanceConfig::new(HOST).least_privilege("neo.agent")],
            ..snowsim::Config::default()
        };
        let server = snowsim::Server::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let calls = Arc::new(Calls::default());
        let client = client(&server, server.addr(), calls.clone());
        let app = server
            .admin()
            .oauth_app("Neo Agent")
            .expect("the default OAuth application");
        let credentials = ClientCredentials {
            client_id: SecretString::new(app.client_id),
            client_secret: SecretString::new(app.client_secret),
        };
        Fixture {
            server,
            client,
            calls,
            instance: InstanceUrl::parse(&format!("https://{HOST}")).unwrap(),
            credentials,
        }
    }

    /// A refresh token of `user` (password = user name), from the password grant.
    async fn refresh_token_of(&self, user: &str) -> SecretString {
        let app = self
            .server
            .admin()
            .oauth_app("Neo Agent")
            .expect("the default OAuth application");
        let answer = drive::password_grant(&self.server, HOST, &app, user).await;
        SecretString::new(answer["refresh_token"].as_str().expect("a refresh token"))
    }

    /// An access token of `user`, through the client's refresh grant.
    async fn access_token_of(&self, user: &str) -> SecretString {
        let refresh_token = self.refresh_token_of(user).await;
        self.refresh(&refresh_token).await.unwrap().access_token
    }

    /// The client's refresh grant with the application's credentials.
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, Error> {
        self.client
            .refresh_token(&self.instance, &self.credentials, refresh_token)
            .await
    }

    /// Consents as `neo.agent` to the client's authorize URL with `state` and a fresh PKCE pair.
    async fn consent_with_pkce(&self, state: &str) -> Consented {
        let redirect_uri = self.server.admin().oauth_app("Neo Agent").unwrap().redirect_urls[0].clone();
        let pkce = Pkce::generate();
        let authorize = oauth::authorize_url(
            &self.instance,
            self.credentials.client_id.expose(),
            &redirect_uri,
            state,
            &pkce.challenge,
        );
        let location = drive::consent(&self.server, &authorize, "neo.agent", Decision::Allow).await;
        let code = SecretString::new(drive::query_param(&location, "code").expect("a code"));
        Consented {
            location,
            code,
            pkce,
            redirect_uri,
        }
    }

    /// The client's code exchange for `consented` with `verifier`.
    async fn exchange(&self, consented: &Consented, verifier: &SecretString) -> Result<TokenGrant, Error> {
        self.client
            .exchange_code(
                &self.instance,
                &self.credentials,
                &consented.code,
                &consented.redirect_uri,
                verifier,
            )
            .await
    }
}

/// The call failed as [`ErrorKind::Unauthorized`].
#[track_caller]
fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, Error>) {
    let error = result.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Unauthorized { .. }), "{error:?}");
}

fn client(server: &snowsim::Server, address: SocketAddr, calls: Arc<Calls>) -> Client {
    Client::new(ClientConfig {
        ca_bundle: Some(server.ca_path().unwrap()),
        resolve: vec![(HOST.to_owned(), address)],
        request_timeout: Duration::from_secs(10),
        observer: calls,
    })
    .unwrap()
}

fn owner() -> Owner {
    Owner {
        public_url: "https://neo.example.com".into(),
        connection: "itsm/acme".into(),
    }
}

#[tokio::test]
async fn the_refresh_grant_sends_the_client_credentials_as_form_fields() {
    let fixture = Fixture::start().await;
    // snowsim ignores HTTP Basic client authentication by default: only form fields can succeed.
    assert!(!fixture.server.admin().behaviour().accept_basic_client_auth);
    let refresh_token = fixture.refresh_token_of("neo.agent").await;
    fixture.server.admin().clear_request_log();

    let grant = fixture.refresh(&refresh_token).await.unwrap();

    assert!(!grant.access_token.expose().is_empty());
    assert_eq!(grant.refresh_token.as_ref(), Some(&refresh_token));
    assert!(grant.expires_in > Duration::from_secs(1700) && grant.expires_in <= Duration::from_secs(1800));
    let log = fixture.server.admin().request_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str(), log[0].status),
        ("POST", "/oauth_token.do", 200)
    );
    assert_eq!(log[0].query, "", "nothing in the query string");
    assert_eq!(fixture.calls.seen(), [("refresh_token", 200)]);
}

#[tokio::test]
async fn a_refresh_answer_without_a_refresh_token_keeps_the_one_sent() {
    let fixture = Fixture::start().await;
    let refresh_token = fixture.refresh_token_of("neo.agent").await;
    let mut behaviour = fixture.server.admin().behaviour();
    behaviour.omit_refresh_token_on_refresh = true;
    fixture.server.admin().set_behaviour(behaviour);

    let grant = fixture.refresh(&refresh_token).await.unwrap();

    assert_eq!(grant.refresh_token, Some(refresh_token));
}

#[tokio::test]
async fn a_rejected_grant_is_unauthorized_and_the_error_shows_no_secret() {
    let fixture = Fixture::start().await;
    let refresh_token = fixture.refresh_token_of("neo.agent").await;
    let wrong = ClientCredentials {
        client_id: fixture.credentials.client_id.clone(),
        client_secret: SecretString::new("not-the-secret"),
    };

    let error = fixture
        .client
        .refresh_token(&fixture.instance, &wrong, &refresh_token)
        .await
        .unwrap_err();

    assert!(
        matches!(&error.kind, ErrorKind::Unauthorized { detail } if detail == "server_error: access_denied"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    let shown = format!("{error} {error:?}");
    for secret in [
        "not-the-secret",
        refresh_token.expose(),
        fixture.credentials.client_id.expose(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert_eq!(
        error.to_string(),
        "failed to refresh the access token on acme.service-now.com: the instance answered 401 Unauthorized (server_error: access_denied)"
    );

    let unknown = SecretString::new("no-such-refresh-token");
    assert_unauthorized(fixture.refresh(&unknown).await);
}

#[tokio::test]
async fn a_consent_code_is_exchanged_with_its_pkce_verifier_and_a_revoked_token_stops_working() {
    let fixture = Fixture::start().await;
    let consented = fixture.consent_with_pkce("state-1").await;
    assert_eq!(
        drive::query_param(&consented.location, "state").as_deref(),
        Some("state-1")
    );

    let grant = fixture.exchange(&consented, &consented.pkce.verifier).await.unwrap();
    let refresh_token = grant.refresh_token.expect("a refresh token");
    let user = fixture
        .client
        .current_user(&fixture.instance, &grant.access_token)
        .await
        .unwrap();
    assert_eq!(user.user_name, "neo.agent");

    fixture
        .client
        .revoke(&fixture.instance, &fixture.credentials, &refresh_token)
        .await
        .unwrap();
    assert_unauthorized(fixture.refresh(&refresh_token).await);
    assert_unauthorized(
        fixture
            .client
            .current_user(&fixture.instance, &grant.access_token)
            .await,
    );
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_unauthorized() {
    let fixture = Fixture::start().await;
    let consented = fixture.consent_with_pkce("s").await;

    let other = Pkce::generate();
    let answer = fixture.exchange(&consented, &other.verifier).await;

    assert_unauthorized(answer);
}

#[tokio::test]
async fn the_current_user_and_its_active_roles_are_read() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;

    let user = fixture.client.current_user(&fixture.instance, &token).await.unwrap();
    let roles = fixture
        .client
        .user_roles(
            &fixture.instance,
            &token,
            &user.sys_id,
            &["itil", "email_api_send", "admin"],
        )
        .await
        .unwrap();

    assert_eq!(user.user_name, "neo.agent");
    assert_eq!(user.display_name, "Neo Agent", "read from user_display_name");
    assert_eq!(
        Some(user.sys_id.clone()),
        fixture.server.admin().user_sys_id("neo.agent")
    );
    // Only the roles asked for, of those the account holds (it holds others too).
    let held = fixture.server.admin().roles("neo.agent").unwrap();
    assert!(held.len() > 1, "{held:?}");
    let mut expected: Vec<String> = held
        .into_iter()
        .filter(|role| ["itil", "email_api_send", "admin"].contains(&role.as_str()))
        .collect();
    expected.sort();
    assert_eq!(roles, expected);
    assert_eq!(roles, ["itil"]);
    let log = fixture.server.admin().request_log();
    let roles_read = log
        .iter()
        .find(|entry| entry.path.ends_with("/sys_user_has_role"))
        .expect("one read of the roles");
    assert!(roles_read.query.contains("role.name"), "{}", roles_read.query);
}

#[tokio::test]
async fn a_business_rule_is_created_found_repaired_and_deleted() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;
    let desired = provision::desired(CALLBACK, &SecretString::new("webhook-key"), &task_types(), &owner());
    let names = [provision::RULE_NAME, provision::LEGACY_RULE_NAME];
    let legacy_id = fixture
        .server
        .admin()
        .insert(
            "sys_script",
            [
                ("name", provision::LEGACY_RULE_NAME),
                ("collection", "incident"),
                ("when", "after"),
            ],
        )
        .await
        .unwrap();

    let created = fixture
        .client
        .create_business_rule(&fixture.instance, &token, &desired.rule)
        .await
        .unwrap();
    assert_eq!(created.fields, desired.rule);
    let found = fixture
        .client
        .business_rules(&fixture.instance, &token, &names)
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    let rule = found
        .iter()
        .find(|rule| rule.sys_id == created.sys_id)
        .expect("the created rule");
    assert_eq!(rule.fields, desired.rule, "the rule reads back as written");
    assert!(!rule.sys_created_on.is_empty());
    let properties = [];
    assert_eq!(
        provision::plan(&found, &properties, &desired)
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        [
            provision::Step::CreateProperty,
            provision::Step::DeleteLegacyRule {
                sys_id: legacy_id.clone()
            }
        ]
    );

    fixture
        .server
        .admin()
        .update(
            "sys_script",
            &created.sys_id,
            [("active", "false"), ("script", "// edited")],
        )
        .await
        .unwrap();
    let drifted = fixture
        .client
        .business_rules(&fixture.instance, &token, &names)
        .await
        .unwrap();
    let drifted_rule = provision::kept_rule(&drifted).unwrap();
    assert!(!drifted_rule.fields.active);
    let repaired = fixture
        .client
        .update_business_rule(&fixture.instance, &token, &created.sys_id, &desired.rule)
        .await
        .unwrap();
    assert_eq!(repaired.fields, desired.rule);

    fixture
        .client
        .delete_business_rule(&fixture.instance, &token, &created.sys_id)
        .await
        .unwrap();
    fixture
        .client
        .delete_business_rule(&fixture.instance, &token, &legacy_id)
        .await
        .unwrap();
    assert!(
        fixture
            .client
            .business_rules(&fixture.instance, &token, &names)
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting what is already gone is fine.
    fixture
        .client
        .delete_business_rule(&fixture.instance, &token, &legacy_id)
        .await
        .unwrap();
    let seen = fixture.calls.seen();
    for expected in [
        ("create_sys_script", 201),
        ("list_sys_script", 200),
        ("update_sys_script", 200),
        ("delete_sys_script", 204),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
}

#[tokio::test]
async fn the_provisioned_rule_posts_each_task_event_to_the_callback_property() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;
    // Nothing listens on port 9: the call fails, but the outbound log keeps what the script sent.
    let callback = "http://127.0.0.1:9/callback/servicenow?connection=itsm%2Facme";
    let desired = provision::desired(callback, &SecretString::new("webhook-key"), &task_types(), &owner());
    fixture
        .client
        .create_property(&fixture.instance, &token, &desired.property)
        .await
        .unwrap();
    fixture
        .client
        .create_business_rule(&fixture.instance, &token, &desired.rule)
        .await
        .unwrap();

    let admin = fixture.server.admin();
    let incident = admin
        .insert("incident", [("short_description", "printer on fire")])
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let sent = loop {
        let sent: Vec<_> = admin
            .outbound_log()
            .into_iter()
            .filter(|entry| entry.rule == provision::RULE_NAME)
            .collect();
        if !sent.is_empty() || Instant::now() > deadline {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sent.len(),
        1,
        "one event per insert: {sent:?} (system log: {:?})",
        admin.system_log()
    );
    let event = &sent[0];
    assert_eq!(
        (event.method.to_ascii_lowercase().as_str(), event.endpoint.as_str()),
        ("post", callback)
    );
    assert!(!event.synchronous, "executeAsync");
    let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(body["table"], "incident");
    assert_eq!(body["sys_id"], incident.as_str());
    assert_eq!(body["operation"], "insert");
    assert!(
        body["number"].as_str().is_some_and(|number| number.starts_with("INC")),
        "{body}"
    );
    assert!(
        body["sys_updated_on"].as_str().is_some_and(|at| !at.is_empty()),
        "{body}"
    );
    assert_eq!(body["sys_updated_by"], "system");
}

#[tokio::test]
async fn the_callback_property_is_created_read_updated_and_deleted() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;
    let desired = provision::desired(CALLBACK, &SecretString::new("webhook-key"), &task_types(), &owner());

    assert!(
        fixture
            .client
            .properties(&fixture.instance, &token, provision::PROPERTY_NAME)
            .await
            .unwrap()
            .is_empty()
    );
    let created = fixture
        .client
        .create_property(&fixture.instance, &token, &desired.property)
        .await
        .unwrap();
    assert_eq!(created.fields, desired.property);
    assert_eq!(
        fixture.server.admin().property(provision::PROPERTY_NAME),
        Some(format!("{CALLBACK}#key=d2ViaG9vay1rZXk="))
    );

    let found = fixture
        .client
        .properties(&fixture.instance, &token, provision::PROPERTY_NAME)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(owner().owns(&found[0].fields.value));

    let mut changed = desired.property.clone();
    changed.value = provision::signed_callback(CALLBACK, &SecretString::new("rotated"));
    let updated = fixture
        .client
        .update_property(&fixture.instance, &token, &created.sys_id, &changed)
        .await
        .unwrap();
    assert_eq!(updated.fields.value, changed.value);

    fixture
        .client
        .delete_property(&fixture.instance, &token, &created.sys_id)
        .await
        .unwrap();
    assert!(
        fixture
            .client
            .properties(&fixture.instance, &token, provision::PROPERTY_NAME)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_itil_only_user_is_forbidden_to_write_business_rules() {
    let fixture = Fixture::start().await;
    fixture
        .server
        .admin()
        .add_user(&UserSpec {
            user_name: "itil.only".into(),
            password: "itil.only".into(),
            roles: vec!["itil".into()],
            ..UserSpec::default()
        })
        .unwrap();
    let token = fixture.access_token_of("itil.only").await;
    let desired = provision::desired(CALLBACK, &SecretString::new("webhook-key"), &task_types(), &owner());

    let error = fixture
        .client
        .create_business_rule(&fixture.instance, &token, &desired.rule)
        .await
        .unwrap_err();

    match &error.kind {
        ErrorKind::Forbidden {
            table,
            operation,
            message,
        } => {
            assert_eq!((table.as_str(), *operation), ("sys_script", "create"));
            assert!(message.contains("ACL Exception Insert Failed"), "{message}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(!error.is_transient());
    assert!(fixture.calls.seen().contains(&("create_sys_script", 403)));
}

#[tokio::test]
async fn a_rate_limited_call_says_when_to_retry() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;
    fixture.server.admin().add_rate_limit(RateLimitRule {
        name: "one per hour".into(),
        method: None,
        resource: "/api/now/table/sys_script".into(),
        applies_to: RateLimitTarget::AllUsers,
        requests_per_hour: 1,
        sys_id: None,
    });
    let names = [provision::RULE_NAME];
    fixture
        .client
        .business_rules(&fixture.instance, &token, &names)
        .await
        .unwrap();

    let error = fixture
        .client
        .business_rules(&fixture.instance, &token, &names)
        .await
        .unwrap_err();

    assert!(
        matches!(error.kind, ErrorKind::RateLimited { retry_after: Some(_) }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(
        error
            .retry_after()
            .is_some_and(|wait| wait > Duration::ZERO && wait <= Duration::from_secs(3600))
    );
    assert!(fixture.calls.seen().contains(&("list_sys_script", 429)));
}

#[tokio::test]
async fn a_server_failure_is_transient() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;
    fixture.server.admin().inject_fault(Fault::new(
        "/api/now/v2/table/sys_properties",
        FaultAction::Status { code: 503, body: None },
    ));

    let error = fixture
        .client
        .properties(&fixture.instance, &token, provision::PROPERTY_NAME)
        .await
        .unwrap_err();

    assert!(matches!(error.kind, ErrorKind::Server { status: 503 }), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn calls_to_one_instance_are_limited_in_flight() {
    let fixture = Fixture::start().await;
    let token = fixture.access_token_of("neo.agent").await;
    fixture.server.admin().inject_fault(Fault::new(
        "/api/now/ui/user/current_user",
        FaultAction::Latency { ms: 300 },
    ));
    let calls = servicenow_operator::servicenow::http::IN_FLIGHT_PER_INSTANCE * 2;

    let started = Instant::now();
    let users =
        futures::future::join_all((0..calls).map(|_| fixture.client.current_user(&fixture.instance, &token))).await;

    assert!(users.iter().all(Result::is_ok), "{users:?}");
    // Twice the limit at 300 ms each: two rounds at least.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_instance_that_does_not_answer_is_unreachable() {
    let fixture = Fixture::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let calls = Arc::new(Calls::default());
    let client = client(&fixture.server, closed, calls.clone());
    let refresh_token = SecretString::new("some-refresh-token");

    let error = client
        .refresh_token(&fixture.instance, &fixture.credentials, &refresh_token)
        .await
        .unwrap_err();

    assert!(matches!(error.kind, ErrorKind::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(!error.to_string().contains("some-refresh-token"), "{error}");
    assert_eq!(calls.seen(), [("refresh_token", 0)]);
}

#[tokio::test]
async fn tls_is_verified_so_an_untrusted_instance_is_unreachable() {
    let fixture = Fixture::start().await;
    let untrusting = Client::new(ClientConfig {
        ca_bundle: None,
        resolve: vec![(HOST.to_owned(), fixture.server.addr())],
        request_timeout: Duration::from_secs(10),
        observer: Arc::new(Calls::default()),
    })
    .unwrap();

    let error = untrusting
        .refresh_token(&fixture.instance, &fixture.credentials, &SecretString::new("x"))
        .await
        .unwrap_err();

    assert!(
        matches!(&error.kind, ErrorKind::Unreachable { reason } if reason.contains("certificate")),
        "{error:?}"
    );
}
