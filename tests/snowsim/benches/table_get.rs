//! Benchmark of the acceptance figures: the `snowsim` binary's startup time (spawn → "ready")
//! and its throughput on simple Table API GETs over HTTPS on loopback (keep-alive connections,
//! Basic auth). Prints both; exits non-zero when the binary does not come up. Bounded: 5 s of
//! load from 16 concurrent connections, loopback only.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 16;
const LOAD: Duration = Duration::from_secs(5);

fn main() {
    let state = std::env::temp_dir().join(format!("snowsim-bench-{}", std::process::id()));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowsim"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .spawn()
        .expect("snowsim starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut port = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(addr) = line.strip_prefix("snowsim listening on ") {
            port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        }
        if line == "ready" {
            break;
        }
    }
    let startup = started.elapsed();
    let Some(port) = port else {
        let _ = child.kill();
        eprintln!("snowsim did not report its address");
        std::process::exit(1);
    };
    println!("startup: {:.0} ms (spawn to ready)", startup.as_secs_f64() * 1000.0);
    let ca = std::fs::read(state.join("ca.pem")).expect("CA written");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rate = runtime.block_on(load(port, &ca));
    println!(
        "throughput: {rate:.0} req/s (GET /api/now/table/sys_user/<admin>, {CONNECTIONS} connections, {} s)",
        LOAD.as_secs()
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&state);
}

async fn load(port: u16, ca: &[u8]) -> f64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + LOAD;
    let url = format!(
        "https://acme.service-now.com/api/now/table/sys_user/{}",
        snowsim::ADMIN_SYS_ID
    );
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca).expect("CA"))
            .resolve("acme.service-now.com", addr)
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let (done, failed, url) = (done.clone(), failed.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let response = client.get(&url).basic_auth("admin", Some("admin")).send().await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        eprintln!("{failures} requests failed");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
