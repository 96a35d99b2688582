//! The operator's HTTP surface (axum): the admin listener, the public one with the consent
//! and webhook endpoints, and the hand-off between the public and the controller component
//! (`handoff`); handlers stay thin.

pub mod admin;
pub mod consent;
pub mod consent_state;
pub mod handoff;
pub mod limits;
pub mod pages;
pub mod receiver;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds `address`: done before anything is served, so that a listener that cannot be had (the
/// port taken, the address not this host's) stops the start with an error that names it, rather
/// than leave a process that looks ready without it.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "listening");
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// The headers every page of the public listener carries: never cached, never framed, no
/// content sniffing, no referrer (the consent pages' URLs carry a ticket, a state or a code).
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// `router` with [`SECURITY_HEADERS`] on every response (errors and 404s included).
pub fn with_security_headers(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(
        |mut response: axum::response::Response| async move {
            let headers = response.headers_mut();
            for (name, value) in SECURITY_HEADERS {
                headers.insert(
                    axum::http::HeaderName::from_static(name),
                    axum::http::HeaderValue::from_static(value),
                );
            }
            response
        },
    ))
}
