//! Bounded cost for anonymous traffic on the public listener, which faces the internet:
//!
//! * rate limits (`tower_governor`, GCRA), per client IP and global, for each class of route:
//!   the consent endpoints (human-paced: strict per IP) and the webhook (an instance posts
//!   bursts of events from a handful of addresses: generous per IP). The per-IP limit is checked
//!   first, so one address's burst is refused before it spends the global budget. A refused
//!   request gets 429 with `Retry-After` and costs no read, no write and no call to ServiceNow;
//! * a timeout on reading a request's head (hyper's, which needs a timer: `axum::serve` sets
//!   none) and on the whole request, a slow body included (408);
//! * a cap on open connections, and on what each buffers.
//!
//! Paths with no route (404) cost nothing and are not limited.
//!
//! The client IP is the TCP peer's, unless `--client-ip-header` names a header a trusted proxy
//! sets (off by default: any client can send that header itself).

use std::{
    future::Future,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    pin::pin,
    str::FromStr,
    sync::{Arc, Weak},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderName, HeaderValue, Request, Response, StatusCode, header},
    response::IntoResponse,
};
use governor::middleware::NoOpMiddleware;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt as _;
use tower_governor::{
    GovernorError, GovernorLayer,
    governor::{GovernorConfig, GovernorConfigBuilder},
    key_extractor::{GlobalKeyExtractor, KeyExtractor},
};
use tower_http::timeout::TimeoutLayer;

use super::pages::page;
use crate::api::duration::parse as parse_duration;

/// About the most a public connection buffers (hyper's limit, which one read may overshoot): a
/// request head that does not fit is refused (431).
pub const MAX_BUFFER_BYTES: usize = 64 * 1024;

/// The limits on the public listener (flags of `run`).
#[derive(Clone, Debug, clap::Args)]
pub struct PublicLimitsArgs {
    /// Requests one client IP may make to the consent endpoints (`/oauth/servicenow/start` and
    /// `/oauth/servicenow/callback`), as `COUNT/PERIOD` (all at once, then evenly spread: `30/1m`
    /// is a burst of 30, then one every 2 s). A consent takes two requests; people behind one NAT
    /// share it.
    #[arg(long, env = "CONSENT_RATE_LIMIT_PER_IP", default_value = "30/1m")]
    pub consent_rate_limit_per_ip: Rate,
    /// Requests all clients together may make to the consent endpoints, as `COUNT/PERIOD`.
    #[arg(long, env = "CONSENT_RATE_LIMIT", default_value = "3000/1m")]
    pub consent_rate_limit: Rate,
    /// Requests one client IP may make to the webhook (`POST /callback/servicenow`), as
    /// `COUNT/PERIOD`. An instance posts every task event from a handful of addresses, hundreds a
    /// second at peaks: keep this above an instance's peak rate.
    #[arg(long, env = "WEBHOOK_RATE_LIMIT_PER_IP", default_value = "1000/1s")]
    pub webhook_rate_limit_per_ip: Rate,
    /// Requests all clients together may make to the webhook, as `COUNT/PERIOD`.
    #[arg(long, env = "WEBHOOK_RATE_LIMIT", default_value = "5000/1s")]
    pub webhook_rate_limit: Rate,
    /// Take the client IP for the per-IP limits from this request header (e.g.
    /// `X-Forwarded-For` or `X-Real-IP`): its last address, the one the proxy nearest to the
    /// operator wrote. Off by default: any client can send the header itself, so set it only
    /// when every request reaches the public listener through a proxy (the Ingress) that sets or
    /// appends it. Unset, every request behind an Ingress comes from the Ingress's address.
    #[arg(long, env = "CLIENT_IP_HEADER")]
    pub client_ip_header: Option<HeaderName>,
    /// How long a client may take to send a request's head (request line and headers) on the
    /// public listener; the connection is closed after that (slowloris). An idle keep-alive
    /// connection counts as waiting for a head, so keep this above the idle timeout of the proxy
    /// in front (60 s for ingress-nginx's upstream connections and AWS load balancers), or the
    /// proxy may send a request on a connection the operator is closing (a 502). Exposed without
    /// a proxy, 10s is enough.
    #[arg(long, env = "PUBLIC_HEADER_READ_TIMEOUT", default_value = "75s", value_parser = parse_positive_duration)]
    pub public_header_read_timeout: Duration,
    /// How long one request to the public listener may take, its body included (then 408). Above
    /// the worst case of a consent callback: three calls to ServiceNow of up to
    /// `--request-timeout` each.
    #[arg(long, env = "PUBLIC_REQUEST_TIMEOUT", default_value = "2m", value_parser = parse_positive_duration)]
    pub public_request_timeout: Duration,
    /// Most connections the public listener keeps open at once; more wait in the kernel's
    /// backlog. Each buffers about 64 KiB at most (a bigger request head gets 431), so 1024 of
    /// them hold about 64 MiB.
    #[arg(long, env = "PUBLIC_MAX_CONNECTIONS", default_value_t = NonZeroU32::new(1024).expect("not zero"))]
    pub public_max_connections: NonZeroU32,
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err(format!("{value:?} must be longer than zero")),
        duration => Ok(duration),
    }
}

/// A rate limit: at most `count` requests per `period`, the whole count at once (the burst),
/// then one every `period / count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    period: Duration,
}

/// Why a rate limit could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRate {
    /// Not `COUNT/PERIOD`.
    #[error("{0:?} is not COUNT/PERIOD, such as 30/1m or 1000/1s")]
    Syntax(String),
    /// The count is not a whole number above zero.
    #[error("{0:?}: the count must be a whole number above zero")]
    Count(String),
    /// The period is not a duration.
    #[error("{0}")]
    Period(String),
    /// One request every less than a microsecond.
    #[error("{0:?}: more than one request per microsecond")]
    TooFast(String),
}

impl FromStr for Rate {
    type Err = InvalidRate;

    fn from_str(value: &str) -> Result<Rate, InvalidRate> {
        let (count, period) = value
            .split_once('/')
            .ok_or_else(|| InvalidRate::Syntax(value.to_owned()))?;
        let count: NonZeroU32 = count.parse().map_err(|_| InvalidRate::Count(value.to_owned()))?;
        let period = parse_duration(period).map_err(InvalidRate::Period)?;
        let rate = Rate { count, period };
        if rate.interval() < Duration::from_micros(1) {
            return Err(InvalidRate::TooFast(value.to_owned()));
        }
        Ok(rate)
    }
}

impl Rate {
    /// How often one more request is allowed.
    fn interval(&self) -> Duration {
        self.period / self.count.get()
    }

    /// The limiter's configuration for this rate, keyed by `key`.
    fn config<K: KeyExtractor>(&self, key: K) -> GovernorConfig<K, NoOpMiddleware> {
        GovernorConfigBuilder::default()
            .period(self.interval())
            .burst_size(self.count.get())
            .key_extractor(key)
            .finish()
            .expect("a rate's count and interval are above zero")
    }
}

/// The rate-limit key of a request: the client's IP address (an IPv6 address by its /64, which a
/// single client commonly holds whole).
#[derive(Clone, Debug, Default)]
pub struct ClientIp {
    /// The header a trusted proxy writes the client's address into; `None`: the TCP peer.
    header: Option<HeaderName>,
}

impl ClientIp {
    /// The client IP from the TCP peer, or from `header` when set.
    pub fn new(header: Option<HeaderName>) -> Self {
        ClientIp { header }
    }

    /// The key of `request`: the last address in the configured header, else the TCP peer's
    /// address, else (no peer known) one key shared by all such requests.
    pub fn of<T>(&self, request: &Request<T>) -> IpAddr {
        let forwarded = self.header.as_ref().and_then(|name| {
            let value = request.headers().get_all(name).iter().next_back()?;
            let last = value.to_str().ok()?.rsplit(',').next()?.trim();
            last.parse::<IpAddr>()
                .ok()
                .or_else(|| last.parse::<SocketAddr>().ok().map(|address| address.ip()))
        });
        let peer = || {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(address)| address.ip())
        };
        match forwarded.or_else(peer) {
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
            },
            Some(v4) => v4,
            None => IpAddr::from([0, 0, 0, 0]),
        }
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        Ok(self.of(request))
    }
}

/// Labels of the requests a rate limit refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitedLabels {
    /// `consent` or `webhook`.
    pub routes: &'static str,
    /// `per_ip` or `global`.
    pub limit: &'static str,
}

/// The limits of the public listener, from its flags, and the count of what they refused.
#[derive(Clone, Debug)]
pub struct PublicLimits {
    args: PublicLimitsArgs,
    limited: Family<LimitedLabels, Counter>,
}

/// A class of routes with limits of its own. A refused request is answered with a page for a
/// person (consent), with plain text for a machine (webhook).
#[derive(Clone, Copy)]
enum Routes {
    Consent,
    Webhook,
}

impl Routes {
    fn label(self) -> &'static str {
        match self {
            Routes::Consent => "consent",
            Routes::Webhook => "webhook",
        }
    }
}

impl PublicLimits {
    /// The limits `args` set; registers `servicenow_operator_public_requests_limited_total`
    /// (by `routes` and `limit`) in `registry`.
    pub fn new(args: PublicLimitsArgs, registry: &mut Registry) -> Self {
        let limited = Family::<LimitedLabels, Counter>::default();
        registry.register(
            "servicenow_operator_public_requests_limited",
            "Requests to the public listener refused by a rate limit (429), by route class and limit",
            limited.clone(),
        );
        PublicLimits { args, limited }
    }

    /// The public router: the consent routes and the webhook route, each class with its rate
    /// limits, and the whole-request timeout on both. The security headers go on top
    /// (`super::with_security_headers`), so the limits' answers carry them too.
    pub fn router(&self, consent: Router, webhook: Router) -> Router {
        let client_ip = ClientIp::new(self.args.client_ip_header.clone());
        let consent = self.rate_limited(
            consent,
            Routes::Consent,
            self.args.consent_rate_limit_per_ip,
            self.args.consent_rate_limit,
            &client_ip,
        );
        let webhook = self.rate_limited(
            webhook,
            Routes::Webhook,
            self.args.webhook_rate_limit_per_ip,
            self.args.webhook_rate_limit,
            &client_ip,
        );
        consent.merge(webhook).layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            self.args.public_request_timeout,
        ))
    }

    /// `router` (the routes of `routes`) limited to `per_ip` per client IP and `global` in all,
    /// the per-IP limit checked first; the keyed limiter forgets idle clients every minute.
    fn rate_limited(&self, router: Router, routes: Routes, per_ip: Rate, global: Rate, client_ip: &ClientIp) -> Router {
        let per_ip = per_ip.config(client_ip.clone());
        forget_idle_clients(Arc::downgrade(per_ip.limiter()));
        let refuse = |limit: &'static str| {
            let counted = self
                .limited
                .get_or_create(&LimitedLabels {
                    routes: routes.label(),
                    limit,
                })
                .clone();
            move |error| too_many_requests(error, routes, &counted)
        };
        router
            .layer(GovernorLayer::new(global.config(GlobalKeyExtractor)).error_handler(refuse("global")))
            .layer(GovernorLayer::new(per_ip).error_handler(refuse("per_ip")))
    }

    /// Serves `router` (the client's address in each request as `ConnectInfo<SocketAddr>`) over
    /// HTTP/1.1 on `listener` ([`super::bind`]), with the header-read timeout and the connection
    /// cap, until `shutdown` resolves; then the connections open get the whole-request timeout to
    /// finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let permits = Arc::new(Semaphore::new(self.args.public_max_connections.get() as usize));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.args.public_header_read_timeout)
            .max_buf_size(MAX_BUFFER_BYTES);
        let graceful = GracefulShutdown::new();
        let mut shutdown = pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(error).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let service = router
                .clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
            let connection =
                graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %peer, "public connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        if tokio::time::timeout(self.args.public_request_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("public connections still open after the request timeout: dropped");
        }
    }
}

/// An accept error: a connection the peer gave up is skipped; anything else (out of file
/// descriptors, say) is logged and the next accept waits a second, so the loop does not spin.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "failed to accept a connection on the public listener");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The per-IP limiter.
type KeyedLimiter = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    governor::clock::DefaultClock,
    NoOpMiddleware,
>;

/// Drops the state of clients that are back to a full quota, every minute, while the limiter
/// lives (its memory stays bounded by the clients of the last minute).
fn forget_idle_clients(limiter: Weak<KeyedLimiter>) {
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(Duration::from_secs(60));
        loop {
            every_minute.tick().await;
            let Some(limiter) = limiter.upgrade() else { return };
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
}

/// The answer to a refused request: 429 with `Retry-After` (whole seconds, at least 1) for a
/// rate limit, counted in `counted`; 500 for anything else the limiter reports (it reports
/// nothing else with [`ClientIp`]).
fn too_many_requests(error: GovernorError, routes: Routes, counted: &Counter) -> Response<Body> {
    let GovernorError::TooManyRequests { wait_time, .. } = error else {
        tracing::error!(%error, "the rate limiter failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    counted.inc();
    let seconds = wait_time.max(1);
    let mut response = match routes {
        Routes::Consent => page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            &format!("Too many requests came from your network. Try again in {seconds} seconds."),
        ),
        Routes::Webhook => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests; retry after {seconds} s\n"),
        )
            .into_response(),
    };
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Bytes,
        routing::{get, post},
    };
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: PublicLimitsArgs,
    }

    fn limits(flags: &[&str]) -> PublicLimits {
        let args = Flags::parse_from(std::iter::once("run").chain(flags.iter().copied())).limits;
        PublicLimits::new(args, &mut Registry::default())
    }

    /// What `limits` refused on `routes` by `limit`.
    fn limited(limits: &PublicLimits, routes: &'static str, limit: &'static str) -> u64 {
        limits.limited.get_or_create(&LimitedLabels { routes, limit }).get()
    }

    /// The public router of `limits` over stand-in routes: `/start` and `/callback` (consent),
    /// `/webhook` (which reads the body), with the security headers on top.
    fn app(limits: &PublicLimits) -> Router {
        let consent = Router::new()
            .route("/start", get(|| async { "consent" }))
            .route("/callback", get(|| async { "consent" }));
        let webhook = Router::new().route("/webhook", post(|body: Bytes| async move { body }));
        crate::http::with_security_headers(limits.router(consent, webhook))
    }

    fn request(method: &str, path: &str, peer: [u8; 4], body: Body) -> Request<Body> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .expect("a request");
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
        request
    }

    async fn status(app: &Router, method: &str, path: &str, peer: [u8; 4]) -> StatusCode {
        app.clone()
            .oneshot(request(method, path, peer, Body::empty()))
            .await
            .expect("infallible")
            .status()
    }

    #[test]
    fn rates_are_count_per_period() {
        let rate: Rate = "30/1m".parse().unwrap();
        assert_eq!((rate.count.get(), rate.interval()), (30, Duration::from_secs(2)));
        let rate: Rate = "1000/1s".parse().unwrap();
        assert_eq!(rate.interval(), Duration::from_millis(1));
        assert!(matches!("30".parse::<Rate>(), Err(InvalidRate::Syntax(_))));
        assert!(matches!("0/1m".parse::<Rate>(), Err(InvalidRate::Count(_))));
        assert!(matches!("x/1m".parse::<Rate>(), Err(InvalidRate::Count(_))));
        assert!(matches!("30/1y".parse::<Rate>(), Err(InvalidRate::Period(_))));
        assert!(matches!("2000000/1s".parse::<Rate>(), Err(InvalidRate::TooFast(_))));
        assert!(matches!("5/0s".parse::<Rate>(), Err(InvalidRate::TooFast(_))));
    }

    #[test]
    fn the_defaults_parse_and_the_timeouts_must_be_positive() {
        let defaults = Flags::parse_from(["run"]).limits;
        assert_eq!(defaults.consent_rate_limit_per_ip, "30/1m".parse().unwrap());
        assert_eq!(defaults.client_ip_header, None);
        assert_eq!(defaults.public_header_read_timeout, Duration::from_secs(75));
        assert!(Flags::try_parse_from(["run", "--public-header-read-timeout", "0s"]).is_err());
        assert!(Flags::try_parse_from(["run", "--public-max-connections", "0"]).is_err());
    }

    #[test]
    fn the_client_ip_is_the_peers_unless_a_header_is_configured_then_its_last_address() {
        let with = |headers: &[(&str, &str)]| {
            let mut request = request("GET", "/", [192, 0, 2, 7], Body::empty());
            for (name, value) in headers {
                request.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            request
        };
        let peer = IpAddr::from([192, 0, 2, 7]);
        let spoofed = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(
            ClientIp::default().of(&with(&spoofed)),
            peer,
            "the header is ignored unless configured"
        );
        let forwarded = ClientIp::new(Some(HeaderName::from_static("x-forwarded-for")));
        assert_eq!(
            forwarded.of(&with(&[("x-forwarded-for", "203.0.113.9, 198.51.100.4")])),
            IpAddr::from([198, 51, 100, 4]),
            "the last address: the one the nearest proxy wrote"
        );
        assert_eq!(
            forwarded.of(&with(&[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "198.51.100.5")
            ])),
            IpAddr::from([198, 51, 100, 5])
        );
        assert_eq!(forwarded.of(&with(&[])), peer, "no header: the peer");
        assert_eq!(forwarded.of(&with(&[("x-forwarded-for", "junk")])), peer);
        let v6 = |text: &str| forwarded.of(&with(&[("x-forwarded-for", text)]));
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"), "one /64, one key");
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:198.51.100.4"), IpAddr::from([198, 51, 100, 4]));
        assert_eq!(v6("[2001:db8::1]:443"), v6("2001:db8::2"));
        let no_peer = Request::new(());
        assert_eq!(ClientIp::default().of(&no_peer), IpAddr::from([0, 0, 0, 0]));
    }

    #[tokio::test]
    async fn a_client_over_its_limit_gets_429_with_retry_after_and_the_security_headers() {
        let app = app(&limits(&["--consent-rate-limit-per-ip", "2/1h"]));
        let client = [192, 0, 2, 1];
        assert_eq!(status(&app, "GET", "/start", client).await, StatusCode::OK);
        assert_eq!(status(&app, "GET", "/callback", client).await, StatusCode::OK);
        let refused = app
            .clone()
            .oneshot(request("GET", "/start", client, Body::empty()))
            .await
            .expect("infallible");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1700..=1800).contains(&retry_after), "{retry_after}");
        for (name, value) in crate::http::SECURITY_HEADERS {
            assert_eq!(refused.headers()[name], value, "{name}");
        }
        assert_eq!(
            status(&app, "GET", "/start", [192, 0, 2, 2]).await,
            StatusCode::OK,
            "another client"
        );
        assert_eq!(
            status(&app, "POST", "/webhook", client).await,
            StatusCode::OK,
            "the webhook has limits of its own"
        );
    }

    #[tokio::test]
    async fn the_global_limit_counts_only_what_the_per_ip_limit_let_through() {
        let limits = limits(&["--webhook-rate-limit-per-ip", "2/1h", "--webhook-rate-limit", "3/1h"]);
        let app = app(&limits);
        let (a, b, c) = ([192, 0, 2, 1], [192, 0, 2, 2], [192, 0, 2, 3]);
        let mut seen = Vec::new();
        for peer in [a, a, a, a, b, b, c] {
            seen.push(status(&app, "POST", "/webhook", peer).await.as_u16());
        }
        // a's third and fourth are refused per IP without spending the global budget, so b's
        // first still passes; then the global budget (3) is spent for everyone.
        assert_eq!(seen, [200, 200, 429, 429, 200, 429, 429]);
        assert_eq!(
            [
                limited(&limits, "webhook", "per_ip"),
                limited(&limits, "webhook", "global"),
                limited(&limits, "consent", "per_ip"),
            ],
            [2, 2, 0]
        );
        assert_eq!(
            status(&app, "GET", "/start", c).await,
            StatusCode::OK,
            "consent has its own budget"
        );
    }

    /// The answer to a `GET /start` on `stream` (read up to its body, `consent`, or the end).
    async fn answer(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt as _;
        let (mut seen, mut buffer) = (Vec::new(), [0; 1024]);
        loop {
            let read = stream.read(&mut buffer).await.expect("read the answer");
            seen.extend_from_slice(&buffer[..read]);
            if read == 0 || seen.ends_with(b"consent") {
                return String::from_utf8_lossy(&seen).into_owned();
            }
        }
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_waits_until_one_closes_and_idle_ones_do_not_hold_shutdown() {
        use tokio::io::AsyncWriteExt as _;
        let limits = limits(&["--public-max-connections", "1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let limits = limits.clone();
            async move {
                limits
                    .serve(listener, app(&limits), async {
                        let _ = stopped.await;
                    })
                    .await;
            }
        });
        let get = b"GET /start HTTP/1.1\r\nHost: operator\r\n\r\n";
        let mut first = tokio::net::TcpStream::connect(address).await.expect("connect");
        first.write_all(get).await.expect("send");
        assert!(answer(&mut first).await.starts_with("HTTP/1.1 200"));
        // The first connection stays open (keep-alive): the second is accepted by the kernel but
        // not served.
        let mut second = tokio::net::TcpStream::connect(address).await.expect("connect");
        second.write_all(get).await.expect("send");
        let early = tokio::time::timeout(Duration::from_millis(300), answer(&mut second)).await;
        assert!(early.is_err(), "served past the cap: {early:?}");
        drop(first);
        let late = tokio::time::timeout(Duration::from_secs(10), answer(&mut second))
            .await
            .expect("served once the first connection closed");
        assert!(late.starts_with("HTTP/1.1 200"), "{late}");
        // The second connection is idle, not in a request: shutdown closes it at once.
        stop.send(()).expect("the server runs");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the listener stopped within 10 s")
            .expect("the server task");
        assert!(answer(&mut second).await.is_empty(), "the idle connection is closed");
    }

    #[tokio::test]
    async fn a_request_head_that_does_not_fit_the_buffer_is_refused() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let limits = limits(&[]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn({
            let limits = limits.clone();
            async move { limits.serve(listener, app(&limits), std::future::pending()).await }
        });
        let mut answers = Vec::new();
        for size in [MAX_BUFFER_BYTES / 2, 2 * MAX_BUFFER_BYTES] {
            let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
            let head = format!(
                "GET /start HTTP/1.1\r\nHost: operator\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(size)
            );
            // The server may answer and close before it has read all of a head too large.
            let _ = stream.write_all(head.as_bytes()).await;
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer).await;
            answers.push(answer.lines().next().unwrap_or_default().to_owned());
        }
        assert_eq!(
            answers,
            ["HTTP/1.1 200 OK", "HTTP/1.1 431 Request Header Fields Too Large"]
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_gets_408() {
        let app = app(&limits(&["--public-request-timeout", "200ms"]));
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            app.oneshot(request("POST", "/webhook", [192, 0, 2, 1], body)),
        )
        .await
        .expect("an answer within 10 s, not a request held open")
        .expect("infallible");
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(answer.headers()["cache-control"], "no-store");
    }
}
