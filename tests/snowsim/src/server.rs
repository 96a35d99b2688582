//! The HTTPS listener and the request gateway: TLS, instance selection by `Host`, injected faults,
//! authentication of `/api/*`, rate limits, the standard headers and the request log. Handlers
//! behind it stay thin.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth;
use crate::batch::BatchCaller;
use crate::clock::Clock;
use crate::envelope::{ApiError, add_standard_headers};
use crate::faults::FaultOutcome;
use crate::instance::Instance;
use crate::logs::RequestLogEntry;
use crate::table::RequestHost;

/// State shared by every connection.
pub struct Shared {
    /// The server's clock.
    pub clock: Clock,
    /// Instances; the first is the default one.
    pub instances: RwLock<Instances>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl Shared {
    /// The instance serving `host` (port ignored, case-insensitive).
    pub fn instance(&self, host: &str) -> Option<Arc<Instance>> {
        let name = strip_port(host).to_ascii_lowercase();
        self.instances.read().by_host.get(&name).cloned()
    }

    /// The default (first) instance.
    pub fn default_instance(&self) -> Option<Arc<Instance>> {
        self.instances.read().in_order.first().cloned()
    }
}

/// The instances served, in the order they were added and by host name (a server may serve
/// thousands: one per customer in the operator's scale benchmark).
#[derive(Default)]
pub struct Instances {
    in_order: Vec<Arc<Instance>>,
    by_host: std::collections::HashMap<String, Arc<Instance>>,
}

impl Instances {
    /// Adds `instance`, replacing one with the same host (which keeps its place).
    pub fn insert(&mut self, instance: Arc<Instance>) {
        match self.by_host.insert(instance.host.clone(), instance.clone()) {
            Some(_) => {
                if let Some(slot) = self.in_order.iter_mut().find(|i| i.host == instance.host) {
                    *slot = instance;
                }
            }
            None => self.in_order.push(instance),
        }
    }

    /// Every instance, the default one first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.in_order.iter()
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Marks an answer that must not be sent: the connection is closed instead.
#[derive(Clone, Copy, Debug)]
struct DropConnection;

#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct DroppedByFault;

/// The whole HTTP surface.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/oauth_auth.do",
            get(crate::consent::authorize).post(crate::consent::decide),
        )
        .route("/login.do", get(crate::consent::login_form).post(crate::consent::login))
        .route("/logout.do", get(crate::consent::logout))
        .route(crate::mfa::VALIDATE_PATH, axum::routing::post(crate::mfa::validate))
        .route("/oauth_token.do", axum::routing::post(crate::oauth::token_endpoint))
        .route(
            "/oauth_revoke_token.do",
            get(crate::oauth::revoke_endpoint).post(crate::oauth::revoke_endpoint),
        )
        .route("/api/now/ui/user/current_user", get(crate::table::current_user))
        .merge(crate::table::router())
        .merge(crate::batch::router())
        .merge(crate::email::router())
        .merge(crate::manage::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), gateway))
        .layer(axum::Extension(shared))
}

/// What a hibernating developer instance answers to every request, API calls included: HTTP 200
/// and an HTML page that says so (servicenow-api.md §7: clients detect it by its text, whatever
/// the status; the page carries `class="instance-hibernating-page"`).
fn hibernation_page() -> Response {
    (
        StatusCode::OK,
        Html(
            "<!DOCTYPE html><html><head><title>Instance Hibernating page</title></head>\n\
             <body class=\"instance-hibernating-page\"><h1>Your instance is hibernating</h1>\n\
             <p>Developer instances hibernate when idle. Sign in to the developer site to wake it up.</p>\n\
             </body></html>\n",
        ),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::NoResource.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Html("<!DOCTYPE html><html><body><h1>Page not found</h1></body></html>"),
        )
            .into_response()
    }
}

fn request_host(request: &Request) -> String {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The resource a rate-limit rule names: the path without its version segment.
fn resource(path: &str) -> String {
    for version in ["/api/now/v1/", "/api/now/v2/"] {
        if let Some(rest) = path.strip_prefix(version) {
            return format!("/api/now/{rest}");
        }
    }
    path.to_string()
}

fn api_name(resource: &str) -> &'static str {
    if resource.starts_with("/api/now/table") {
        "Table API"
    } else if resource.starts_with("/api/now/email") {
        "Email API"
    } else {
        "REST API"
    }
}

async fn gateway(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let host = request_host(&request);
    let path = request.uri().path().to_string();
    request.extensions_mut().insert(RequestHost(host.clone()));
    if path == "/snowsim" || path.starts_with("/snowsim/") {
        return next.run(request).await;
    }
    let Some(instance) = shared.instance(&host) else {
        return (StatusCode::NOT_FOUND, "No such instance\n").into_response();
    };
    let method = request.method().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let batch_item = request.extensions().get::<BatchCaller>().is_some();
    if instance.state.lock().behaviour.hibernating {
        log_request(&instance, (&method, &path, &query, batch_item), None, 200);
        return hibernation_page();
    }
    let transaction_id = transaction_id();
    let plan = instance.state.lock().faults.plan(&method, &path);
    if plan.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
    }
    let is_api = path.starts_with("/api/");
    let mut user = None;
    let mut response = match plan.outcome {
        Some(FaultOutcome::Drop) => {
            log_request(&instance, (&method, &path, &query, batch_item), None, 0);
            let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            response.extensions_mut().insert(DropConnection);
            return response;
        }
        Some(FaultOutcome::Status(code, body)) => match body {
            Some(body) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, body).into_response()
            }
            None if code == 429 => ApiError::RateLimited {
                limit: 0,
                api: api_name(&resource(&path)).to_string(),
                retry_after: 1,
            }
            .into_response(),
            None => ApiError::Injected(code).into_response(),
        },
        Some(FaultOutcome::Page(code, content_type, body)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        None if is_api => {
            let now = shared.clock.now_ms();
            // A Batch API item runs as the batch's caller (its own credentials are not asked for).
            let caller = match request.extensions().get::<BatchCaller>() {
                Some(BatchCaller(caller)) => Some(caller.clone()),
                None => {
                    let state = instance.state.lock();
                    auth::authenticate(&state, request.headers(), request.uri().query(), now)
                }
            };
            let missing_scope = caller.is_some() && {
                let state = instance.state.lock();
                auth::missing_scope(&state, request.headers(), request.uri().query(), &resource(&path), now)
            };
            match caller {
                None => ApiError::NotAuthenticated.into_response(),
                Some(caller) if missing_scope => {
                    user = Some(caller.user_name.clone());
                    ApiError::ScopeMissing.into_response()
                }
                Some(caller) => {
                    user = Some(caller.user_name.clone());
                    let resource = resource(&path);
                    let verdict = instance.state.lock().rate.check(
                        &method,
                        &resource,
                        &caller.user_name,
                        &caller.roles,
                        shared.clock.now_secs(),
                    );
                    let mut response = match verdict.as_ref().and_then(|v| v.retry_after) {
                        Some(retry_after) => ApiError::RateLimited {
                            limit: verdict.as_ref().map_or(0, |v| v.limit),
                            api: api_name(&resource).to_string(),
                            retry_after,
                        }
                        .into_response(),
                        None => {
                            request.extensions_mut().insert(instance.clone());
                            request.extensions_mut().insert(caller);
                            next.run(request).await
                        }
                    };
                    if let Some(verdict) = verdict {
                        let headers = response.headers_mut();
                        headers.insert("x-ratelimit-limit", HeaderValue::from(verdict.limit));
                        headers.insert("x-ratelimit-reset", HeaderValue::from(verdict.reset));
                        if let Ok(rule) = HeaderValue::from_str(&verdict.rule_sys_id) {
                            headers.insert("x-ratelimit-rule", rule);
                        }
                    }
                    response
                }
            }
        }
        None => {
            request.extensions_mut().insert(instance.clone());
            next.run(request).await
        }
    };
    add_standard_headers(response.headers_mut(), &transaction_id, user.is_some());
    if is_api && user.is_some() {
        add_session_cookies(&mut response, &instance.host);
    }
    log_request(
        &instance,
        (&method, &path, &query, batch_item),
        user,
        response.status().as_u16(),
    );
    response
}

/// Logs a request: `(method, path, query, batch item)`, who made it, and the answer's status.
fn log_request(
    instance: &Instance,
    (method, path, query, batch_item): (&str, &str, &str, bool),
    user: Option<String>,
    status: u16,
) {
    let time = instance.clock.glide_now();
    instance.state.lock().logs.requests.push(RequestLogEntry {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        user,
        status,
        time,
        batch_item,
    });
}

fn transaction_id() -> String {
    use rand::Rng;
    format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}

/// The session cookies an authenticated REST answer carries (servicenow-api.md §2.8). The
/// simulator sets them but does not authenticate REST calls by them.
fn add_session_cookies(response: &mut Response, host: &str) {
    let session = crate::oauth::random_text(32);
    let pool = host.split('.').next().unwrap_or("instance");
    let cookies = [
        format!("JSESSIONID={session}; Path=/; HttpOnly; SameSite=None; Secure"),
        format!("glide_session_store={session}; Max-Age=1800; Path=/; HttpOnly; SameSite=None; Secure"),
        format!("glide_user_route=glide.{session}; Max-Age=2147483647; Path=/; HttpOnly; SameSite=None; Secure"),
        format!("BIGipServerpool_{pool}=snowsim; Path=/; HttpOnly; SameSite=None; Secure"),
    ];
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

/// Accepts TLS connections until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(tcp, acceptor.clone(), app.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn connection(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, app: Router) {
    let Ok(stream) = acceptor.accept(tcp).await else {
        return;
    };
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let mut request = request.map(Body::new);
            override_method(&mut request);
            let response = match app.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            if response.extensions().get::<DropConnection>().is_some() {
                Err(DroppedByFault)
            } else {
                Ok(response)
            }
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// `X-HTTP-Method-Override` on a POST replaces the method (servicenow-api.md §2.1).
pub(crate) fn override_method(request: &mut Request) {
    if request.method() != Method::POST {
        return;
    }
    let method = request
        .headers()
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Method::from_bytes(v.trim().to_ascii_uppercase().as_bytes()).ok());
    if let Some(method) = method {
        *request.method_mut() = method;
    }
}
