//! An HTTP `CONNECT` proxy on 127.0.0.1, as a corporate egress proxy is for the operator: it
//! tunnels every `CONNECT` to one address (the simulator) and records the authority each asked
//! for, so a test can prove that calls went through `HTTPS_PROXY` — with TLS still end to end.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use servicenow_operator::sync::LockExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Longest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// A running proxy; stops when dropped.
pub struct ConnectProxy {
    /// `http://127.0.0.1:<port>`, for `HTTPS_PROXY`.
    pub url: String,
    connects: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// Starts a proxy that tunnels every `CONNECT` to `target`.
    pub async fn start(target: SocketAddr) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("the proxy's address"));
        let connects = Arc::new(Mutex::new(Vec::new()));
        let seen = connects.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, target, seen.clone()));
            }
        });
        ConnectProxy { url, connects, task }
    }

    /// The authorities (`host:port`) of every `CONNECT` so far.
    pub fn connects(&self) -> Vec<String> {
        self.connects.locked().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one client: reads its request head; a `CONNECT` is recorded, answered 200 and tunnelled
/// to `target`; anything else gets a 405.
async fn tunnel(mut client: TcpStream, target: SocketAddr, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let authority = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("CONNECT "))
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_owned);
    let Some(authority) = authority else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    seen.locked().push(authority);
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}
