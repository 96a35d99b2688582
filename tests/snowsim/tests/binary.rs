//! The `snowsim` binary: starts, prints where its CA is and the OAuth client, serves HTTPS.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{HOST, get_json, url};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_ca_path_instance_and_oauth_client_then_serves() {
    let state = std::env::temp_dir().join(format!("snowsim-binary-test-{}", std::process::id()));
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_snowsim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--redirect-url",
                "https://operator.example.com/oauth/servicenow/callback",
                "--state-dir",
            ])
            .arg(&state)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn snowsim"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    loop {
        let line = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("snowsim prints its banner");
        if line == "ready" {
            break;
        }
        banner.push(line);
    }
    let value = |prefix: &str| {
        banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{prefix} missing in {banner:?}"))
    };
    let addr: std::net::SocketAddr = value("snowsim listening on ").parse().unwrap();
    let ca_path = value("ca_certificate: ");
    assert_eq!(
        value("redirect_url: "),
        "https://operator.example.com/oauth/servicenow/callback"
    );
    let client_id = value("client_id: ");
    assert_eq!(client_id.len(), 32);
    assert!(value("instance: ").starts_with("https://acme.service-now.com "));
    let ca = std::fs::read(&ca_path).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(HOST, addr)
        .build()
        .unwrap();
    let (status, _) = get_json(
        &client,
        "admin",
        "/api/now/table/sys_user?sysparm_query=user_name=neo.agent",
    )
    .await;
    assert_eq!(status, 200);
    let apps = client.get(url("/snowsim/oauth/apps")).send().await.unwrap();
    let apps: serde_json::Value = apps.json().await.unwrap();
    assert_eq!(apps[0]["client_id"], client_id.as_str());
    drop(child);
    let _ = std::fs::remove_dir_all(&state);
}
