//! Gives OAuth consent for the demo (`make demo`, `tests/demo/run`) in a headless Chromium, as a
//! person would: opens the connection's `status.consentUrl`, signs in to the simulated instance as
//! the service account, clicks Allow and waits for the operator's "Consent recorded" page.
//!
//! ```sh
//! cargo run --example demo_consent -- --consent-url URL --simulator 127.0.0.1:8443 \
//!     --ca-certificate CA.pem --screenshot-dir DIR
//! ```
//!
//! The browser reaches the instance under its real host name (mapped to `--simulator`) with TLS
//! verification on, trusting only the simulator's CA in addition to the system roots (see
//! `tests/support/browser.rs`, which drives Debian's chromium through chromedriver). Exits 0 once
//! the operator confirms; otherwise 1 with what went wrong and a screenshot of the page. SIGINT and
//! SIGTERM stop the browser and exit 130 / 143.

#[path = "../tests/support/browser.rs"]
mod browser;

use std::{
    any::Any,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use browser::{Browser, BrowserOptions};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Consents for the demo connection in a headless Chromium.
#[derive(Debug, Parser)]
#[command(name = "demo_consent")]
struct Args {
    /// The connection's `status.consentUrl` (the operator's `/oauth/servicenow/start?...`).
    #[arg(long)]
    consent_url: url::Url,
    /// The simulator's listener; the instance host is resolved to it.
    #[arg(long)]
    simulator: SocketAddr,
    /// The simulator's CA certificate (PEM), trusted by the browser.
    #[arg(long)]
    ca_certificate: PathBuf,
    /// Where the screenshots of each page go.
    #[arg(long)]
    screenshot_dir: PathBuf,
    /// The instance's host name.
    #[arg(long, default_value = "acme.service-now.com")]
    instance_host: String,
    /// The service account to sign in as.
    #[arg(long, default_value = "neo.agent")]
    user: String,
    /// Its password (the simulator's well-known demo password by default).
    #[arg(long, default_value = "neo.agent")]
    password: String,
    /// Deadline for the whole consent.
    #[arg(long, default_value = "120s", value_parser = servicenow_operator::api::duration::parse)]
    timeout: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The browser harness reports failures by panicking; say them once, plainly.
    std::panic::set_hook(Box::new(|_| {}));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo_consent: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        eprintln!("demo_consent: failed to install the signal handlers");
        return ExitCode::FAILURE;
    };
    let timeout = args.timeout;
    // On its own task so that a panic of the harness (a failed step) and a signal both end with the
    // browser dropped, which kills chromedriver and Chromium.
    let mut consent = tokio::spawn(consent(args));
    let outcome = tokio::select! {
        joined = &mut consent => joined,
        () = tokio::time::sleep(timeout) => {
            eprintln!("demo_consent: the consent did not complete within {timeout:?}");
            consent.abort();
            let _ = consent.await;
            return ExitCode::FAILURE;
        }
        _ = interrupt.recv() => {
            consent.abort();
            let _ = consent.await;
            return ExitCode::from(130);
        }
        _ = terminate.recv() => {
            consent.abort();
            let _ = consent.await;
            return ExitCode::from(143);
        }
    };
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(message)) => {
            eprintln!("demo_consent: {message}");
            ExitCode::FAILURE
        }
        Err(error) if error.is_panic() => {
            eprintln!("demo_consent: {}", panic_message(error.into_panic()));
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("demo_consent: the consent task ended unexpectedly: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Login, Allow, and the operator's answer. Browser steps panic with a screenshot on failure.
async fn consent(args: Args) -> Result<(), String> {
    let ca = std::fs::read_to_string(&args.ca_certificate)
        .map_err(|error| format!("failed to read {}: {error}", args.ca_certificate.display()))?;
    let browser = Browser::start(
        BrowserOptions::new()
            .map_host(&args.instance_host, args.simulator)
            .trust_certificates_pem(&ca)
            .screenshot_dir(&args.screenshot_dir),
    )
    .await;

    let pages = browser
        .answer_consent(
            args.consent_url.as_str(),
            &args.instance_host,
            &args.user,
            &args.password,
            "#allow",
            Path::new(""),
        )
        .await?;
    eprintln!(
        "demo_consent: login page of {} ({}); signed in as {}; consent page ({})",
        args.instance_host,
        pages.login_shot.display(),
        args.user,
        pages.consent_shot.display()
    );

    let operator = args.consent_url.host_str().unwrap_or_default().to_owned();
    browser
        .wait_for_url("the operator's consent callback", |url| {
            url.host_str() == Some(operator.as_str()) && url.path() == "/oauth/servicenow/callback"
        })
        .await;
    let title = browser.find("#title").await.text().await.unwrap_or_default();
    let message = match browser.find("#message").await.text().await {
        Ok(text) => text,
        Err(error) => format!("(unreadable: {error})"),
    };
    let shot = browser.screenshot("3-operator.png").await;
    browser.close().await;
    if title == "Consent recorded" {
        eprintln!(
            "demo_consent: allowed; the operator says: {title}: {message} ({})",
            shot.display()
        );
        Ok(())
    } else {
        Err(format!(
            "the operator did not record the consent: {title}: {message} ({})",
            shot.display()
        ))
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "the browser step failed".to_owned(),
        },
    }
}
