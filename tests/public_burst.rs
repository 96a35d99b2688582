//! The public listener under anonymous traffic (`src/http/limits.rs`): a burst of junk consent
//! and webhook requests from one address costs no write through the API server and no call to
//! the instance, is mostly refused with 429 once the per-IP limits kick in, and leaves a real
//! consent from another address working while it goes on; a request head that trickles in is cut
//! off at the header-read timeout.
//!
//! The burst comes from 127.0.0.2 (Linux routes all of 127/8 to the loopback interface), the
//! browser from 127.0.0.1, so the per-IP limits tell them apart.

mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use reqwest::{StatusCode, redirect::Policy};
use servicenow_operator::{api::SyncState, http::SECURITY_HEADERS, servicenow::SecretString, webhook::signature};
use support::{
    TestNamespace,
    audit::AuditLog,
    consent::{awaiting_consent, browser, consent_as, consent_url},
    install_crd,
    instance::{AGENT, simulator},
    operator::{Operator, free_port},
    scene::CONNECTION,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where the burst comes from.
const BURST_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Requests in the burst before the consent starts (counted alone: writes, calls), and at least
/// as many again while the consent runs.
const HALF: usize = 2500;
/// Requests of the burst in flight at once.
const IN_FLIGHT: usize = 32;
/// The webhook's per-IP limit in this test: the default (1000/1s) lets an instance's peaks
/// through, so a test machine cannot be relied on to outrun it; the consent endpoints keep their
/// default (30/1m), the one a person meets.
const WEBHOOK_PER_IP: &str = "100/10s";
/// The statuses an anonymous junk request may get: refused by a limit (429), the generic consent
/// page (404), a state the browser did not start (400), an unknown webhook connection or signing key
/// (401).
const EXPECTED: [u16; 4] = [400, 401, 404, 429];

/// What a burst got back.
#[derive(Debug, Default)]
struct Tally {
    /// Answers by status.
    statuses: BTreeMap<u16, usize>,
    /// 429s without a `Retry-After` of at least one second.
    without_retry_after: usize,
    /// Answers without the security headers.
    without_security_headers: usize,
    /// Requests that got no answer (the error of the first).
    failed: usize,
    first_failure: Option<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.failed
    }

    fn limited(&self) -> usize {
        self.statuses.get(&429).copied().unwrap_or(0)
    }

    fn count(&mut self, answer: Result<reqwest::Response, reqwest::Error>) {
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                self.failed += 1;
                self.first_failure.get_or_insert(error.to_string());
                return;
            }
        };
        *self.statuses.entry(answer.status().as_u16()).or_default() += 1;
        let headers = answer.headers();
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = headers
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
            if retry_after.is_none_or(|seconds| seconds < 1) {
                self.without_retry_after += 1;
            }
        }
        if SECURITY_HEADERS
            .iter()
            .any(|(name, value)| headers.get(*name).is_none_or(|got| got != value))
        {
            self.without_security_headers += 1;
        }
    }
}

/// A sender of junk anonymous requests to the operator's public listener, from [`BURST_FROM`].
#[derive(Clone)]
struct Burst {
    client: reqwest::Client,
    base: String,
    namespace: String,
    /// Requests answered (or failed) so far.
    answered: Arc<AtomicUsize>,
}

impl Burst {
    fn new(operator: &Operator, namespace: &str) -> Burst {
        let client = reqwest::Client::builder()
            .local_address(BURST_FROM)
            .redirect(Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client bound to 127.0.0.2");
        Burst {
            client,
            base: operator.public_url.clone(),
            namespace: namespace.to_owned(),
            answered: Arc::default(),
        }
    }

    /// The `n`th request, in turn: a `/start` with a junk ticket, a `/callback` with a junk state,
    /// a webhook event for a connection that does not exist, and one for the real connection,
    /// both signed now with a junk key (so they pass the cheap checks and reach the lookup).
    fn request(&self, n: usize) -> reqwest::RequestBuilder {
        let (base, namespace) = (&self.base, &self.namespace);
        let event = |connection: String, key: String| {
            let body = serde_json::json!({"table": "incident", "sys_id": format!("{n:032x}"), "operation": "insert"})
                .to_string();
            let timestamp = k8s_openapi::jiff::Timestamp::now().as_millisecond().to_string();
            let signature = signature::sign(&SecretString::new(key), &timestamp, body.as_bytes());
            self.client
                .post(format!("{base}/callback/servicenow"))
                .query(&[("connection", connection)])
                .header(signature::TIMESTAMP_HEADER, timestamp)
                .header(signature::SIGNATURE_HEADER, signature)
                .header("content-type", "application/json")
                .body(body)
        };
        match n % 4 {
            0 => self
                .client
                .get(format!("{base}/oauth/servicenow/start?ticket=t1.junk{n}.x")),
            1 => self
                .client
                .get(format!("{base}/oauth/servicenow/callback?state=junk{n}&code=x")),
            2 => event(format!("{namespace}/junk-{n}"), format!("junk{n}")),
            _ => event(format!("{namespace}/{CONNECTION}"), format!("junk{n}")),
        }
    }

    /// Sends requests `from..` ([`IN_FLIGHT`] at once) until `until` says stop, and tallies the
    /// answers.
    async fn run(&self, from: usize, until: impl Fn(usize) -> bool) -> Tally {
        futures::stream::iter(from..)
            .take_while(|n| std::future::ready(!until(*n)))
            .map(|n| {
                let request = self.request(n);
                let answered = self.answered.clone();
                async move {
                    let answer = request.send().await;
                    answered.fetch_add(1, Ordering::Relaxed);
                    answer
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .fold(Tally::default(), |mut tally, answer| async move {
                tally.count(answer);
                tally
            })
            .await
    }
}

/// Asserts what every part of the burst must show: every request answered, with an expected
/// status and the security headers, every 429 with a `Retry-After`, and most of them 429.
fn assert_refused(tally: &Tally, what: &str) {
    assert_eq!(tally.failed, 0, "{what}: requests without an answer: {tally:?}");
    assert!(
        tally.statuses.keys().all(|status| EXPECTED.contains(status)),
        "{what}: unexpected statuses: {tally:?}"
    );
    assert_eq!(
        tally.without_retry_after, 0,
        "{what}: 429s without Retry-After: {tally:?}"
    );
    assert_eq!(
        tally.without_security_headers, 0,
        "{what}: answers without the security headers: {tally:?}"
    );
    assert!(
        tally.limited() * 2 > tally.total(),
        "{what}: fewer than half the requests were refused: {tally:?}"
    );
}

#[tokio::test]
async fn a_burst_of_anonymous_requests_writes_nothing_calls_no_instance_and_a_real_consent_still_succeeds() {
    let (scene, operator) =
        awaiting_consent(serde_json::json!({}), &["--webhook-rate-limit-per-ip", WEBHOOK_PER_IP]).await;
    let url = consent_url(&scene).await;
    // Once this request is echoed, the reconciles so far are over: nothing else writes in the
    // namespace but the Lease, and nothing calls the instance.
    scene.reconcile_now("before-the-burst").await;
    let burst = Burst::new(&operator, scene.ns.name());
    let audit = AuditLog::of(&scene.client, scene.ns.name()).await;

    // The first half alone: counted through the API server's audit log and the instance's
    // request log.
    let mark = audit.mark().await;
    let calls_before = scene.simulator.admin().request_log().len();
    let started = Instant::now();
    let alone = burst.run(0, |n| n >= HALF).await;
    let alone_took = started.elapsed();
    let requests = audit.since(&mark).await;
    let calls = scene.simulator.admin().request_log().len() - calls_before;
    assert_eq!(alone.total(), HALF);
    assert_refused(&alone, "the burst alone");
    let by_operator = |r: &support::audit::Request| r.client() == "operator";
    let writes = requests.matching(|r| by_operator(r) && r.is_write() && r.object_ref.resource != "leases");
    assert!(writes.is_empty(), "the burst made the operator write:\n{requests}");
    assert_eq!(calls, 0, "the burst made the operator call the instance");
    // The junk webhooks let through were looked up (the window does hold the operator's
    // requests), but the per-IP limit kept the lookups to a fraction of the requests.
    let lookups = requests
        .matching(|r| by_operator(r) && r.verb == "get" && r.object_ref.resource == "servicenowconnections")
        .len();
    assert!(
        lookups > 0,
        "no lookup of a webhook's connection in the window:\n{requests}"
    );
    eprintln!(
        "burst alone: {alone:?} in {alone_took:?}; {} writes and {lookups} connection lookups by the operator, {calls} \
         calls to the instance",
        writes.len()
    );
    assert!(
        lookups * 2 < HALF / 4,
        "{lookups} lookups for {} junk connection names: the limit did not hold",
        HALF / 4
    );

    // The second half (and on, until the consent is done) while a person consents from
    // 127.0.0.1.
    let consented = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn({
        let (burst, consented) = (burst.clone(), consented.clone());
        async move {
            burst
                .run(HALF, |n| n >= 2 * HALF && consented.load(Ordering::Acquire))
                .await
        }
    });
    let answered_before = burst.answered.load(Ordering::Relaxed);
    let consent_started = Instant::now();
    let browser = browser(&scene).await;
    let title = consent_as(&browser, &url, AGENT, AGENT, "#allow", "public-burst/consent").await;
    assert_eq!(title, "Consent recorded", "{}", browser.page_text().await);
    let status = scene
        .wait_for("READY_TO_SYNC", |s| s.sync_state == Some(SyncState::ReadyToSync))
        .await;
    let consent_took = consent_started.elapsed();
    let answered_during = burst.answered.load(Ordering::Relaxed) - answered_before;
    consented.store(true, Ordering::Release);
    browser.close().await;
    let during = during.await.expect("the burst task");
    eprintln!(
        "burst during the consent: {during:?}; consent to READY_TO_SYNC in {consent_took:?}, {answered_during} burst \
         requests answered meanwhile"
    );
    assert!(status.identity.is_some_and(|identity| identity.user_name == AGENT));
    assert!(answered_during > 0, "the burst did not run during the consent");
    assert!(during.total() >= HALF);
    assert_refused(&during, "the burst during the consent");
    // Every 429 is counted, each by the per-IP limit: the burst never reached the global ones.
    let limited = |routes: &str, limit: &str| {
        let series =
            format!("servicenow_operator_public_requests_limited_total{{routes=\"{routes}\",limit=\"{limit}\"}}");
        let operator = &operator;
        async move { operator.metric(&series).await }
    };
    let per_ip = limited("consent", "per_ip").await + limited("webhook", "per_ip").await;
    let global = limited("consent", "global").await + limited("webhook", "global").await;
    assert_eq!(
        (per_ip, global),
        ((alone.limited() + during.limited()) as f64, 0.0),
        "the refusals counted (per IP, global)"
    );
    scene.assert_no_secret_leaked().await;
    drop(operator);
}

#[tokio::test]
async fn a_request_head_that_trickles_in_or_never_comes_is_cut_off_at_the_header_read_timeout() {
    let client = install_crd().await;
    let ns = TestNamespace::new(&client).await;
    let simulator = simulator().await;
    let port = free_port();
    let operator = Operator::start_with(ns.name(), &simulator, port, &["--public-header-read-timeout", "1s"]).await;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let head = "GET /oauth/servicenow/start HTTP/1.1\r\nHost: operator\r\n";

    // A whole head at once is answered (the generic consent page): the listener is there.
    let mut whole = tokio::net::TcpStream::connect(address).await.expect("connect");
    whole
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("send a request");
    let mut answer = String::new();
    whole.read_to_string(&mut answer).await.expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // A head sent one header line every 200 ms, never finished: the connection is closed after
    // the timeout, without an answer (with no timeout, the test's 20 s of trickling end first).
    let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.expect("send the request line");
    let started = Instant::now();
    let trickle = async {
        for line in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer
                .write_all(format!("X-Slow-{line}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
        panic!("the listener took a request head for 20 s");
    };
    let closed = async {
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::select! {
        answer = closed => answer,
        () = trickle => Vec::new(),
    };
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&took),
        "cut off after {took:?}"
    );
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // A connection that sends nothing at all is closed after the timeout too.
    let mut silent = tokio::net::TcpStream::connect(address).await.expect("connect");
    let started = Instant::now();
    let mut nothing = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut nothing)).await;
    let silent_for = started.elapsed();
    assert!(closed.is_ok(), "a silent connection stayed open for 5 s");
    assert!(silent_for >= Duration::from_millis(900), "closed after {silent_for:?}");
    assert!(nothing.is_empty(), "{}", String::from_utf8_lossy(&nothing));
    eprintln!("a trickling head was cut off after {took:?}, a silent connection after {silent_for:?}");
    drop(operator);
}
