//! Conformance: servicenow-api.md §2.7 (rate limits), §6 item 15; plus the management interface:
//! injected faults and the request log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use snowsim::{Fault, FaultAction, RateLimitRule, RateLimitTarget};

/// GET `address` (a full URL) as `neo.agent`, the response or the transport error.
async fn get_as_agent(client: &reqwest::Client, address: &str) -> reqwest::Result<reqwest::Response> {
    client
        .get(address)
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
}

/// The status of `GET /api/now/table/incident` as `user`.
async fn incidents_status(client: &reqwest::Client, user: &str) -> u16 {
    get_json(client, user, "/api/now/table/incident").await.0
}

/// Sends `request` and reads its JSON answer.
async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_7_rate_limits_answer_429_with_retry_after_and_rate_limit_headers() {
    let (server, client) = start().await;
    let rule = server.admin().add_rate_limit(RateLimitRule {
        name: "itil table reads".into(),
        method: Some("GET".into()),
        resource: "/api/now/table/incident".into(),
        applies_to: RateLimitTarget::Role("itil".into()),
        requests_per_hour: 2,
        sys_id: None,
    });
    for _ in 0..2 {
        let ok = get_as_agent(&client, &url("/api/now/v2/table/incident")).await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-ratelimit-limit"], "2");
        assert_eq!(ok.headers()["x-ratelimit-rule"].to_str().unwrap(), rule);
        assert!(ok.headers().contains_key("x-ratelimit-reset"));
    }
    let refused = get_as_agent(&client, &url("/api/now/table/incident")).await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: i64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Rate limit exceeded");
    assert_eq!(
        body["error"]["detail"],
        "Rate limit of 2 requests per hour for Table API exceeded"
    );
    assert_eq!(incidents_status(&client, "admin").await, 200, "admin lacks the role");
    server.admin().advance_clock(Duration::from_secs(retry_after as u64));
    assert_eq!(incidents_status(&client, "neo.agent").await, 200, "new window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_inject_a_status_for_a_share_of_requests_latency_and_dropped_connections() {
    let (server, client) = start().await;
    server.admin().inject_fault(Fault {
        share: 0.5,
        ..Fault::new("/api/now/table/incident", FaultAction::Status { code: 503, body: None })
    });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(incidents_status(&client, "neo.agent").await);
    }
    assert_eq!(statuses, vec![200, 503, 200, 503]);
    server.admin().clear_faults();
    server
        .admin()
        .inject_fault(Fault::new("/oauth_token.do", FaultAction::Latency { ms: 300 }));
    let start = Instant::now();
    client
        .post(url("/oauth_token.do"))
        .form(&[("grant_type", "x")])
        .send()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    server.admin().clear_faults();
    server.admin().inject_fault(Fault {
        times: Some(1),
        ..Fault::new("/api/now/table", FaultAction::DropConnection)
    });
    let dropped = get_as_agent(&client, &url("/api/now/table/incident")).await;
    assert!(dropped.is_err(), "connection should drop: {dropped:?}");
    assert_eq!(incidents_status(&client, "neo.agent").await, 200, "fault used up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_revokes_tokens_and_removes_roles() {
    let (server, client) = start().await;
    let app = server.admin().oauth_app("Neo Agent").unwrap();
    let tokens = snowsim::drive::password_grant(&server, HOST, &app, "neo.agent").await;
    let access = tokens["access_token"].as_str().unwrap();
    let call = || client.get(url("/api/now/table/incident")).bearer_auth(access).send();
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(server.admin().revoke_tokens(Some("neo.agent")).unwrap(), 2);
    assert_eq!(call().await.unwrap().status(), 401);
    server.admin().remove_role("neo.agent", "itil").unwrap();
    let (status, _) = post_json(&client, "neo.agent", "/api/now/table/incident", serde_json::json!({})).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_counts_exactly_the_calls_made() {
    let (server, client) = start().await;
    server.admin().clear_request_log();
    get_json(&client, "neo.agent", "/api/now/table/incident?sysparm_query=name=x").await;
    client.get(url("/api/now/table/incident")).send().await.unwrap();
    let log = server.admin().request_log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("GET", "/api/now/table/incident")
    );
    assert_eq!(log[0].query, "sysparm_query=name=x");
    assert_eq!((log[0].user.as_deref(), log[0].status), (Some("neo.agent"), 200));
    assert_eq!((log[1].user.as_deref(), log[1].status), (None, 401));
    let via_http = json_of(client.get(url("/snowsim/requests"))).await;
    assert_eq!(via_http.as_array().unwrap().len(), 2, "management calls are not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_are_chosen_by_host_and_keep_their_own_data() {
    let mut config = snowsim::Config::default();
    config
        .instances
        .push(snowsim::InstanceConfig::new("globex.servicenowservices.com"));
    let (server, client) = start_with(config).await;
    post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        serde_json::json!({"short_description": "acme only"}),
    )
    .await;
    let globex = get_as_agent(&client, "https://globex.servicenowservices.com/api/now/table/incident")
        .await
        .unwrap();
    assert_eq!(globex.status(), 200);
    let body: serde_json::Value = globex.json().await.unwrap();
    assert_eq!(body["result"], serde_json::json!([]));
    assert_eq!(
        server
            .instance("globex.servicenowservices.com")
            .unwrap()
            .request_log()
            .len(),
        1
    );
    assert_ne!(
        server.admin().oauth_app("Neo Agent").unwrap().client_id,
        server
            .instance("globex.servicenowservices.com")
            .unwrap()
            .oauth_app("Neo Agent")
            .unwrap()
            .client_id
    );
}

/// servicenow-api.md §7: a hibernating developer instance answers every request — REST API,
/// token endpoint, login page — with HTTP 200 and its HTML "instance hibernating" page; the
/// management interface stays up to wake it.
#[tokio::test]
async fn a_hibernating_instance_answers_its_page_with_200_to_everything() {
    let (server, client) = common::start().await;
    let admin = server.admin();
    admin.set_behaviour(snowsim::Behaviour {
        hibernating: true,
        ..admin.behaviour()
    });
    for request in [
        client
            .get(common::url("/api/now/table/incident"))
            .basic_auth("admin", Some("admin")),
        client
            .post(common::url("/oauth_token.do"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]),
        client.get(common::url("/login.do")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let body = response.text().await.unwrap();
        assert!(body.contains("class=\"instance-hibernating-page\""), "{body}");
        assert!(body.contains("Instance Hibernating page"), "{body}");
    }
    assert!(admin.request_log().iter().all(|entry| entry.status == 200));

    admin.set_behaviour(snowsim::Behaviour {
        hibernating: false,
        ..admin.behaviour()
    });
    let (status, _) = common::get_json(&client, "admin", "/api/now/table/incident").await;
    assert_eq!(status, 200);
}
