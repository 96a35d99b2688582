//! The operator's HTTP surface (axum): the admin listener, and the public one with the consent
//! and webhook endpoints; handlers stay thin.

pub mod admin;
pub mod consent;
pub mod consent_state;
pub mod pages;
pub mod receiver;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Serves `router` on `address` until `shutdown` resolves.
pub async fn serve(
    address: SocketAddr,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
