//! Conformance: servicenow-api.md §2 (REST / Table API), §6 items 5–8, 12, 13, 16, 17.

mod common;

use common::*;
use serde_json::{Value, json};
use snowsim::{ADMIN_SYS_ID, Behaviour};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_1_crud_answers_200_201_200_204_with_location_and_envelope() {
    let (_server, client) = start().await;
    let (status, created) = post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"short_description": "printer"}),
    )
    .await;
    assert_eq!(status, 201);
    let sys_id = created["result"]["sys_id"].as_str().unwrap().to_string();
    let response = client
        .post(url("/api/now/table/incident"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .json(&json!({"short_description": "second"}))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://acme.service-now.com/api/now/table/incident/"),
        "{location}"
    );
    let (status, read) = get_json(&client, "neo.agent", &format!("/api/now/table/incident/{sys_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["result"]["short_description"], "printer");
    let patched = client
        .patch(url(&format!("/api/now/table/incident/{sys_id}")))
        .basic_auth("neo.agent", Some("neo.agent"))
        .json(&json!({"short_description": "printer on fire", "state": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["result"]["state"], "2");
    assert_eq!(patched["result"]["sys_mod_count"], "1");
    assert!(patched["result"]["number"].as_str().unwrap().starts_with("INC"));
    let put = client
        .put(url(&format!("/api/now/table/incident/{sys_id}")))
        .basic_auth("neo.agent", Some("neo.agent"))
        .json(&json!({"urgency": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let deleted = client
        .delete(url(&format!("/api/now/table/incident/{sys_id}")))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(deleted.text().await.unwrap().is_empty());
    let (status, body) = get_json(&client, "neo.agent", &format!("/api/now/table/incident/{sys_id}")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"message": "No Record found", "detail": "Record doesn't exist or ACL restricts the record retrieval"}, "status": "failure"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_2_every_value_is_a_string_and_references_link_with_the_version_segment() {
    let (_server, client) = start().await;
    let (_, created) = post_json(
        &client,
        "neo.agent",
        "/api/now/v2/table/incident",
        json!({"short_description": "x", "caller_id": ADMIN_SYS_ID, "active": true, "impact": 2}),
    )
    .await;
    let record = created["result"].as_object().unwrap();
    for (name, value) in record {
        assert!(value.is_string() || value.is_object(), "{name} = {value}");
        assert!(!value.is_null());
    }
    assert_eq!(record["active"], "true");
    assert_eq!(record["impact"], "2");
    assert_eq!(record["assigned_to"], "");
    assert_eq!(
        record["caller_id"],
        json!({"link": format!("https://acme.service-now.com/api/now/v2/table/sys_user/{ADMIN_SYS_ID}"), "value": ADMIN_SYS_ID})
    );
    assert_eq!(record["sys_domain"]["value"], "global");
    let sys_id = record["sys_id"].as_str().unwrap();
    assert!(sys_id.len() == 32 && sys_id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let created_on = record["sys_created_on"].as_str().unwrap();
    assert_eq!(created_on.len(), 19);
    assert_eq!(&created_on[10..11], " ");
    let (_, plain) = get_json(
        &client,
        "neo.agent",
        &format!("/api/now/table/incident/{sys_id}?sysparm_exclude_reference_link=true&sysparm_fields=caller_id"),
    )
    .await;
    assert_eq!(plain["result"], json!({"caller_id": ADMIN_SYS_ID}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_2_display_value_modes_false_true_all() {
    let (_server, client) = start().await;
    let (_, created) = post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"caller_id": ADMIN_SYS_ID, "state": "6"}),
    )
    .await;
    let sys_id = created["result"]["sys_id"].as_str().unwrap();
    let path = |mode: &str| {
        format!("/api/now/table/incident/{sys_id}?sysparm_fields=caller_id,state&sysparm_display_value={mode}")
    };
    let (_, shown) = get_json(&client, "neo.agent", &path("true")).await;
    assert_eq!(shown["result"]["state"], "Resolved");
    assert_eq!(shown["result"]["caller_id"]["display_value"], "System Administrator");
    assert!(shown["result"]["caller_id"]["link"].is_string());
    let (_, all) = get_json(&client, "neo.agent", &path("all")).await;
    assert_eq!(
        all["result"]["state"],
        json!({"display_value": "Resolved", "value": "6"})
    );
    assert_eq!(all["result"]["caller_id"]["value"], ADMIN_SYS_ID);
    assert_eq!(all["result"]["caller_id"]["display_value"], "System Administrator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_3_fields_dot_walks_limit_offset_and_name_value_pairs() {
    let (server, client) = start().await;
    let neo = server.admin().user_sys_id("neo.agent").unwrap();
    let (status, body) = get_json(&client, "neo.agent",
        &format!("/api/now/table/sys_user_has_role?sysparm_query=user={neo}^role.name=itil&sysparm_fields=role.name,user.user_name,bogus&sysparm_limit=1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"],
        json!([{"role.name": "itil", "user.user_name": "neo.agent"}])
    );
    let (_, by_pair) = get_json(
        &client,
        "admin",
        "/api/now/table/sys_user?user_name=neo.agent&sysparm_fields=user_name",
    )
    .await;
    assert_eq!(by_pair["result"], json!([{"user_name": "neo.agent"}]));
    for n in 0..3 {
        post_json(
            &client,
            "neo.agent",
            "/api/now/table/problem",
            json!({"short_description": format!("p{n}")}),
        )
        .await;
    }
    let (_, page) = get_json(&client, "neo.agent",
        "/api/now/table/problem?sysparm_query=ORDERBYshort_description&sysparm_fields=short_description&sysparm_limit=2&sysparm_offset=1").await;
    assert_eq!(
        page["result"],
        json!([{"short_description": "p1"}, {"short_description": "p2"}])
    );
    let (_, walk) = get_json(
        &client,
        "admin",
        "/api/now/table/sys_db_object?sysparm_query=name=incident&sysparm_fields=name,super_class.name",
    )
    .await;
    assert_eq!(
        walk["result"],
        json!([{"name": "incident", "super_class.name": "task"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_4_pagination_headers_follow_the_observed_format() {
    let (_server, client) = start().await;
    for n in 0..5 {
        post_json(
            &client,
            "neo.agent",
            "/api/now/table/incident",
            json!({"short_description": format!("i{n}")}),
        )
        .await;
    }
    let response = client
        .get(url(
            "/api/now/v2/table/incident?sysparm_query=active=true&sysparm_limit=2&sysparm_offset=0",
        ))
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-total-count"], "5");
    let base = "https://acme.service-now.com/api/now/v2/table/incident?sysparm_query=active=true";
    assert_eq!(
        response.headers()["link"].to_str().unwrap(),
        format!(
            "<{base}&sysparm_limit=2&sysparm_offset=0>;rel=\"first\",<{base}&sysparm_limit=2&sysparm_offset=-2>;rel=\"prev\",<{base}&sysparm_limit=2&sysparm_offset=2>;rel=\"next\",<{base}&sysparm_limit=2&sysparm_offset=4>;rel=\"last\""
        )
    );
    let last = client
        .get(url("/api/now/table/incident?sysparm_limit=2&sysparm_offset=4"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
        .unwrap();
    let link = last.headers()["link"].to_str().unwrap();
    assert!(!link.contains("rel=\"next\""), "{link}");
    let suppressed = client
        .get(url(
            "/api/now/table/incident?sysparm_limit=2&sysparm_suppress_pagination_header=true",
        ))
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
        .unwrap();
    assert!(suppressed.headers().get("link").is_none());
    assert_eq!(suppressed.headers()["x-total-count"], "5");
    let no_count = client
        .get(url("/api/now/table/incident?sysparm_no_count=true"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
        .unwrap();
    assert!(no_count.headers().get("x-total-count").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_1_v1_empty_list_is_404_v2_and_unversioned_are_200_empty() {
    let (_server, client) = start().await;
    let query = "table/incident?sysparm_query=short_description=nothing-like-this";
    assert_eq!(
        get_json(&client, "neo.agent", &format!("/api/now/v1/{query}")).await.0,
        404
    );
    let (status, body) = get_json(&client, "neo.agent", &format!("/api/now/v2/{query}")).await;
    assert_eq!((status, body), (200, json!({"result": []})));
    assert_eq!(
        get_json(&client, "neo.agent", &format!("/api/now/{query}")).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_6_error_bodies_are_exact() {
    let (_server, client) = start().await;
    let (status, body) = get_json(&client, "admin", "/api/now/table/no_such_table").await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": {"message": "Invalid table no_such_table", "detail": null}, "status": "failure"})
        )
    );
    let (status, body) = post_json(&client, "neo.agent", "/api/now/table/no_such_table", json!({})).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("Invalid table no_such_table"))
    );
    let bad_json = client
        .post(url("/api/now/table/incident"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let body: Value = bad_json.json().await.unwrap();
    assert_eq!(body["status"], "failure");
    let (status, body) = get_json(&client, "admin", "/api/now/v3/table/incident").await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("Requested URI does not represent any resource"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_5_encoded_queries_over_http_or_binds_tighter_nq_javascript_and_utf8() {
    let (server, client) = start().await;
    for (desc, urgency, impact) in [
        ("a", "1", "1"),
        ("b", "1", "3"),
        ("c", "3", "3"),
        ("Neo Agent — Task Webhook", "2", "2"),
    ] {
        post_json(
            &client,
            "neo.agent",
            "/api/now/table/incident",
            json!({"short_description": desc, "urgency": urgency, "impact": impact}),
        )
        .await;
    }
    let names = |body: &Value| -> Vec<String> {
        body["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["short_description"].as_str().unwrap().to_string())
            .collect()
    };
    let q = |query: &str| {
        format!(
            "/api/now/table/incident?sysparm_fields=short_description&sysparm_query={}",
            url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
        )
    };
    let (_, body) = get_json(
        &client,
        "neo.agent",
        &q("urgency=1^impact=1^ORimpact=2^ORDERBYshort_description"),
    )
    .await;
    assert_eq!(names(&body), vec!["a"]);
    let (_, body) = get_json(
        &client,
        "neo.agent",
        &q("urgency=3^NQimpact=2^ORDERBYDESCshort_description"),
    )
    .await;
    assert_eq!(names(&body), vec!["Neo Agent — Task Webhook", "c"]);
    let (_, body) = get_json(&client, "neo.agent", &q("short_description=Neo Agent — Task Webhook")).await;
    assert_eq!(names(&body), vec!["Neo Agent — Task Webhook"]);
    let (_, body) = get_json(
        &client,
        "neo.agent",
        &q("short_descriptionINa,b^no_such_field=1^ORDERBYshort_description"),
    )
    .await;
    assert_eq!(names(&body), vec!["a", "b"], "invalid parts are ignored");
    server
        .admin()
        .set_property("glide.invalid_query.returns_no_rows", "true");
    let (_, body) = get_json(&client, "neo.agent", &q("short_descriptionINa,b^no_such_field=1")).await;
    assert!(names(&body).is_empty());
    let neo = server.admin().user_sys_id("neo.agent").unwrap();
    let (_, me) = get_json(
        &client,
        "neo.agent",
        "/api/now/table/sys_user?sysparm_query=sys_id=javascript:gs.getUserID()&sysparm_limit=1&sysparm_fields=sys_id",
    )
    .await;
    assert_eq!(me["result"], json!([{"sys_id": neo}]));
    let (_, roles) = get_json(&client, "neo.agent", "/api/now/table/sys_user_has_role?sysparm_query=user=javascript:gs.getUserID()%5Einherited=false%5Estate=active%5Erole.name=itil&sysparm_fields=role.name").await;
    assert_eq!(roles["result"], json!([{"role.name": "itil"}]));
    let (_, users) = get_json(
        &client,
        "admin",
        "/api/now/table/sys_user?sysparm_query=roles=itil&sysparm_fields=user_name",
    )
    .await;
    // admin holds itil too: it contains it (servicenow-api.md §7).
    assert_eq!(
        users["result"],
        json!([{"user_name": "admin"}, {"user_name": "neo.agent"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_1_method_override_no_response_body_and_unknown_fields() {
    let (_server, client) = start().await;
    let created = client
        .post(url("/api/now/table/incident"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .header("X-no-response-body", "true")
        .json(&json!({"short_description": "quiet", "bunk_field": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    assert!(created.text().await.unwrap().is_empty());
    let sys_id = location.rsplit('/').next().unwrap();
    let overridden = client
        .post(url(&format!("/api/now/table/incident/{sys_id}")))
        .basic_auth("neo.agent", Some("neo.agent"))
        .header("X-HTTP-Method-Override", "PATCH")
        .json(&json!({"short_description": "loud"}))
        .send()
        .await
        .unwrap();
    assert_eq!(overridden.status(), 200);
    let body: Value = overridden.json().await.unwrap();
    assert_eq!(body["result"]["short_description"], "loud");
    assert!(body["result"].get("bunk_field").is_none());
    let supplied = post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"sys_id": "AAAABBBBCCCCDDDDEEEEFFFF00001111"}),
    )
    .await;
    assert_eq!(supplied.1["result"]["sys_id"], "AAAABBBBCCCCDDDDEEEEFFFF00001111");
    let head = client
        .head(url("/api/now/table/incident"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers().contains_key("x-total-count"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_8_standard_headers_and_session_cookies() {
    let (_server, client) = start().await;
    let response = client
        .get(url("/api/now/table/incident"))
        .basic_auth("neo.agent", Some("neo.agent"))
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["content-type"], "application/json;charset=UTF-8");
    assert_eq!(headers["x-is-logged-in"], "true");
    assert_eq!(headers["server"], "ServiceNow");
    let transaction = headers["x-transaction-id"].to_str().unwrap();
    assert!(transaction.len() == 12 && transaction.bytes().all(|b| b.is_ascii_hexdigit()));
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(cookies.iter().any(|c| c.starts_with("JSESSIONID=")));
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("glide_session_store=") && c.contains("Max-Age=1800"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_9_current_user_names_the_caller() {
    let (server, client) = start().await;
    let (status, body) = get_json(&client, "neo.agent", "/api/now/ui/user/current_user").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"]["user_sys_id"],
        server.admin().user_sys_id("neo.agent").unwrap()
    );
    assert_eq!(body["result"]["user_name"], "neo.agent");
    // servicenow-api.md §7: the display name is `user_display_name`; there is no `name` member.
    assert_eq!(body["result"]["user_display_name"], "Neo Agent");
    assert!(body["result"].get("name").is_none(), "{body}");
    assert_eq!(body["result"]["email"], "neo.agent@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_5_case_sensitivity_is_a_switch_defaulting_to_insensitive() {
    let (server, client) = start().await;
    post_json(
        &client,
        "neo.agent",
        "/api/now/table/incident",
        json!({"short_description": "Printer"}),
    )
    .await;
    let path = "/api/now/table/incident?sysparm_query=short_description=printer";
    let (_, body) = get_json(&client, "neo.agent", path).await;
    assert_eq!(body["result"].as_array().unwrap().len(), 1);
    server.admin().set_behaviour(Behaviour {
        case_sensitive_queries: true,
        ..Behaviour::default()
    });
    let (_, body) = get_json(&client, "neo.agent", path).await;
    assert_eq!(body["result"].as_array().unwrap().len(), 0);
}
