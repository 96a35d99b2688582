//! A TCP forwarder on 127.0.0.1 whose target the test switches: one address behind which the
//! server changes (an impostor with another certificate, then the instance again), as when an
//! instance's certificate is replaced.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use servicenow_operator::sync::LockExt as _;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// A running forwarder; stops when dropped.
pub struct Forwarder {
    /// The address it listens on.
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding every new connection to `target`.
    pub async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the forwarder");
        let addr = listener.local_addr().expect("the forwarder's address");
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = *current.locked();
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Forwarder { addr, target, task }
    }

    /// Forwards the connections made from now on to `target`.
    pub fn switch_to(&self, target: SocketAddr) {
        *self.target.locked() = target;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
