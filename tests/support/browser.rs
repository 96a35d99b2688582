//! A real headless Chromium for the tests that click through pages a person sees (the OAuth
//! consent page), driven over WebDriver ([`fantoccini`]) by Debian's `chromedriver`.
//!
//! * Installed by `tests/browser/install` (Debian's `chromium` and `chromium-driver`; `make`
//!   runs it). Missing binaries make [`Browser::start`] panic with that hint: never skipped.
//! * Each [`Browser`] has its own `chromedriver` on a free loopback port (`--port=0`; the port is
//!   read from its first lines), its own fresh profile, and is killed when dropped — also when the
//!   test panics, and also when the test process dies any other way: a watcher process waits on a
//!   pipe only this process holds and kills the whole process group (chromedriver and every
//!   Chromium process) when it closes.
//! * Host names: `--host-resolver-rules` maps e.g. `acme.service-now.com` to the simulator's
//!   listener, so the browser uses the real host name (SNI, cookies, redirects).
//! * TLS: verification stays on (no `--ignore-certificate-errors`, no `acceptInsecureCerts`). A
//!   certificate is trusted through `--ignore-certificate-errors-spki-list` with the base64
//!   SHA-256 of its SubjectPublicKeyInfo ([`spki_sha256_base64`]). Chromium honours that list
//!   only with an explicit `--user-data-dir` (always given here) and ignores a verification
//!   error only when a certificate of the presented chain has a listed key. The simulator sends
//!   its CA certificate with its leaf, and only the CA's key is known to the test (the leaf's is
//!   made at start and not exposed), so the tests list the CA's key: a chain carrying that CA
//!   certificate is accepted even if the leaf was not signed by it — fine on loopback, where the
//!   only server is the test's own; an unlisted chain still fails (a test proves it). The
//!   alternative, adding the CA to an NSS database under a fresh `$HOME`, needs `certutil`
//!   (another package) and more files.
//! * The WebDriver connection is plain HTTP to loopback, so fantoccini runs without a TLS feature
//!   (its `rustls-tls` feature turns on hyper-rustls' default aws-lc-rs provider).
//! * Screenshots go to [`BrowserOptions::screenshot_dir`], by default
//!   `$CARGO_TARGET_DIR/../artifacts/screenshots/`; an action that fails takes one of the page
//!   it failed on before panicking.
#![allow(dead_code)] // every test binary compiles this module and uses only part of it

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::{Digest as _, Sha256};

/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's ChromeDriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// What installs them (relative to the repository).
const INSTALL_SCRIPT: &str = "tests/browser/install";
/// How long chromedriver may take to listen and to start Chromium.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an action waits for the element it needs (pages load and forms submit meanwhile).
const ELEMENT_TIMEOUT: Duration = Duration::from_secs(15);
/// The flags Chromium needs on this machine (as root, no GPU, closed network).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// Browsers started by this process, to name their directories.
static STARTED: AtomicU32 = AtomicU32::new(0);

/// How to start a [`Browser`].
#[derive(Debug, Clone, Default)]
pub struct BrowserOptions {
    /// `MAP <host pattern> <address>` rules (`--host-resolver-rules`), e.g.
    /// `("acme.service-now.com", simulator address)`; a pattern may start with `*.`.
    pub host_map: Vec<(String, SocketAddr)>,
    /// Base64 SHA-256 of the SubjectPublicKeyInfo of each certificate to accept.
    pub trusted_spki: Vec<String>,
    /// Where [`Browser::screenshot`] puts relative paths; `None`: the default (module docs).
    pub screenshot_dir: Option<PathBuf>,
}

impl BrowserOptions {
    /// No host mapping, no extra trust, default screenshot directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves `host_pattern` (`acme.service-now.com`, `*.service-now.com`) to `address`.
    pub fn map_host(mut self, host_pattern: &str, address: SocketAddr) -> Self {
        self.host_map.push((host_pattern.to_owned(), address));
        self
    }

    /// Accepts chains that contain a certificate of `pem` (one or more PEM certificates): for the
    /// simulator, its CA certificate, which its server sends with its leaf.
    pub fn trust_certificates_pem(mut self, pem: &str) -> Self {
        let hashes = spki_sha256_base64(pem);
        assert!(
            !hashes.is_empty(),
            "no usable certificate in the PEM given to trust_certificates_pem"
        );
        self.trusted_spki.extend(hashes);
        self
    }

    /// Puts screenshots with relative paths into `dir`.
    pub fn screenshot_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.screenshot_dir = Some(dir.into());
        self
    }
}

/// What [`Browser::answer_consent`] saw on the way.
#[derive(Clone, Debug)]
pub struct ConsentPages {
    /// The screenshot of the login page.
    pub login_shot: PathBuf,
    /// The screenshot of the MFA page, when the instance asked for a code.
    pub mfa_shot: Option<PathBuf>,
    /// The screenshot of the consent page.
    pub consent_shot: PathBuf,
    /// The visible text of the consent page.
    pub consent_text: String,
}

/// Where signing in to the instance led.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The consent page (`#consent_form`).
    Consent,
    /// A page that refused the login: the text of its error (`#login_error`, `#mfa_error`).
    Refused(String),
}

/// What [`Browser::sign_in`] saw.
#[derive(Clone, Debug)]
pub struct SignIn {
    /// The screenshot of the login page.
    pub login_shot: PathBuf,
    /// The screenshot of the MFA page, when the instance asked for a code.
    pub mfa_shot: Option<PathBuf>,
    /// Where it led.
    pub outcome: LoginOutcome,
}

/// What the page after the password may be: the consent page, the MFA step or a refusal.
const AFTER_PASSWORD: &str = "#consent_form, #mfa_form, #login_error";
/// What the page after the MFA code may be.
const AFTER_MFA_CODE: &str = "#consent_form, #mfa_error, #login_error";
/// Asks snowsim's management interface, from the instance's own page (same origin, trusted TLS),
/// for the user's current MFA code (`GET /snowsim/mfa/{user}`, servicenow-api.md §7): what a
/// person would read off an authenticator app. WebDriver waits for the promise.
const FETCH_MFA_CODE: &str = "return fetch('/snowsim/mfa/' + encodeURIComponent(arguments[0])) \
     .then(r => r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))).then(j => j.code);";

/// A headless Chromium with its chromedriver. Dropping it kills both (see the module docs).
pub struct Browser {
    /// Number of this browser in this process (names its directory and failure screenshot).
    id: u32,
    client: Client,
    chromedriver: Child,
    /// Held open so the watcher stays put; closing it (drop, death) makes the watcher kill the group.
    watcher_pipe: Option<ChildStdin>,
    watcher: Child,
    /// Profile and chromedriver log.
    dir: PathBuf,
    screenshot_dir: PathBuf,
}

impl Browser {
    /// Starts chromedriver and, through it, a headless Chromium with a fresh profile. Panics with
    /// what to do when Chromium or chromedriver is missing or does not start.
    pub async fn start(options: BrowserOptions) -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).is_file(),
                "{binary} is missing: run {INSTALL_SCRIPT} (as root; `make` does) to install Debian's chromium and \
                 chromium-driver"
            );
        }
        let runs = target_tmpdir();
        remove_stopped_runs(&runs);
        let id = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = runs.join(format!("browser-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).unwrap_or_else(|error| panic!("could not create {}: {error}", dir.display()));
        let log_path = dir.join("chromedriver.log");

        let Driver {
            process: mut chromedriver,
            group,
            watcher,
            watcher_pipe,
            port,
        } = start_driver(&log_path)
            .await
            .unwrap_or_else(|error| panic!("{CHROMEDRIVER} did not start: {error}"));
        Browser {
            id,
            client: match connect(port, &options, &profile).await {
                Ok(client) => client,
                Err(error) => {
                    kill_group(group, &mut chromedriver);
                    panic!(
                        "chromedriver could not start {CHROMIUM}: {error}\nchromedriver log ({}): {}",
                        log_path.display(),
                        tail(&log_path)
                    );
                }
            },
            chromedriver,
            watcher_pipe,
            watcher,
            dir,
            screenshot_dir: options.screenshot_dir.clone().unwrap_or_else(default_screenshot_dir),
        }
    }

    /// The underlying WebDriver client, for what this API lacks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        if let Err(error) = self.client.goto(url).await {
            self.fail(&format!("open {url}"), error).await;
        }
    }

    /// Waits for the element at `css` and returns it.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(ELEMENT_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(error) => {
                self.fail(&format!("find `{css}` within {ELEMENT_TIMEOUT:?}"), error)
                    .await
            }
        }
    }

    /// Clears the field at `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        if let Err(error) = element.clear().await {
            self.fail(&format!("clear `{css}`"), error).await;
        }
        if let Err(error) = element.send_keys(text).await {
            self.fail(&format!("type into `{css}`"), error).await;
        }
    }

    /// Clicks the element at `css` (a submit button: the next page has loaded when this returns,
    /// as far as WebDriver can tell; wait for an element of it with [`Self::find`]).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        if let Err(error) = element.click().await {
            self.fail(&format!("click `{css}`"), error).await;
        }
    }

    /// The URL of the page shown.
    pub async fn current_url(&self) -> url::Url {
        match self.client.current_url().await {
            Ok(url) => url,
            Err(error) => self.fail("read the current URL", error).await,
        }
    }

    /// Waits until the URL of the page shown satisfies `done` and returns it.
    pub async fn wait_for_url(&self, what: &str, done: impl Fn(&url::Url) -> bool) -> url::Url {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        loop {
            let url = self.current_url().await;
            if done(&url) {
                return url;
            }
            if Instant::now() >= deadline {
                self.fail(
                    &format!("see {what} within {ELEMENT_TIMEOUT:?}"),
                    format!("still at {url}"),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the page (`document.body.innerText`).
    pub async fn page_text(&self) -> String {
        let body = self.find("body").await;
        match body.text().await {
            Ok(text) => text,
            Err(error) => self.fail("read the page text", error).await,
        }
    }

    /// Answers the instance's consent pages as a person does: opens `url` (which leads to the
    /// login page of the instance `host`), signs in as `user` with `password` (and, when the
    /// instance asks, the MFA code: [`Self::sign_in`]), waits for the consent page and clicks
    /// `button` (`#allow` or `#deny`). Screenshots `1-login.png`, `1-mfa.png` (with MFA) and
    /// `2-consent.png` under `shots`. Fails, before signing in, when the login page is not served
    /// under `host`; a refused login and the rest panic like every action.
    pub async fn answer_consent(
        &self,
        url: &str,
        host: &str,
        user: &str,
        password: &str,
        button: &str,
        shots: &Path,
    ) -> Result<ConsentPages, String> {
        let SignIn {
            login_shot,
            mfa_shot,
            outcome,
        } = self.sign_in(url, host, user, password, shots).await?;
        if let LoginOutcome::Refused(message) = outcome {
            self.fail("reach the consent page", format!("the login was refused: {message}"))
                .await;
        }
        let consent_text = self.page_text().await;
        let consent_shot = self.screenshot(shots.join("2-consent.png")).await;
        self.click(button).await;
        Ok(ConsentPages {
            login_shot,
            mfa_shot,
            consent_shot,
            consent_text,
        })
    }

    /// Signs in to the instance as a person does: opens `url` (which leads to the login page of
    /// the instance `host`), submits `user` and `password`, and when the instance asks for an MFA
    /// code, submits the user's current one (from snowsim's management interface). Returns where
    /// that led — the consent page or a refusal — with screenshots `1-login.png` and `1-mfa.png`
    /// under `shots`. Fails when the login page is not served under `host`.
    pub async fn sign_in(
        &self,
        url: &str,
        host: &str,
        user: &str,
        password: &str,
        shots: &Path,
    ) -> Result<SignIn, String> {
        self.goto(url).await;
        self.find("#login_form").await;
        let login = self.current_url().await;
        if login.host_str() != Some(host) {
            return Err(format!("{url} led to {login}, not to the instance {host}"));
        }
        let login_shot = self.screenshot(shots.join("1-login.png")).await;
        self.fill("#user_name", user).await;
        self.fill("#user_password", password).await;
        self.click("#sysverb_login").await;
        let mut next = self.find(AFTER_PASSWORD).await;
        let mut mfa_shot = None;
        if self.id_of(&next).await == "mfa_form" {
            mfa_shot = Some(self.screenshot(shots.join("1-mfa.png")).await);
            let code = self.mfa_code(user).await;
            self.fill("#mfa_code", &code).await;
            self.click("#mfa_verify").await;
            next = self.find(AFTER_MFA_CODE).await;
        }
        let outcome = match self.id_of(&next).await.as_str() {
            "consent_form" => LoginOutcome::Consent,
            _ => LoginOutcome::Refused(match next.text().await {
                Ok(text) => text,
                Err(error) => self.fail("read the login error", error).await,
            }),
        };
        Ok(SignIn {
            login_shot,
            mfa_shot,
            outcome,
        })
    }

    /// The `id` of `element`.
    async fn id_of(&self, element: &Element) -> String {
        match element.attr("id").await {
            Ok(id) => id.unwrap_or_default(),
            Err(error) => self.fail("read an element's id", error).await,
        }
    }

    /// `user`'s current MFA code, asked from the page shown (an instance page of snowsim).
    async fn mfa_code(&self, user: &str) -> String {
        match self.client.execute(FETCH_MFA_CODE, vec![serde_json::json!(user)]).await {
            Ok(serde_json::Value::String(code)) => code,
            Ok(other) => self.fail("get the MFA code", format!("not a code: {other}")).await,
            Err(error) => self.fail("get the MFA code", error).await,
        }
    }

    /// Saves a PNG of the page to `path` (relative: under the screenshot directory) and returns
    /// where it went.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> PathBuf {
        match self.try_screenshot(path.as_ref()).await {
            Ok(path) => path,
            Err(error) => panic!("could not take a screenshot to {}: {error}", path.as_ref().display()),
        }
    }

    /// Ends the WebDriver session (Chromium quits), then stops chromedriver. Dropping does the
    /// same abruptly.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    async fn try_screenshot(&self, path: &Path) -> Result<PathBuf, String> {
        let path = self.screenshot_dir.join(path);
        let png = self.client.screenshot().await.map_err(|error| error.to_string())?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| format!("create {}: {error}", parent.display()))?;
        }
        std::fs::write(&path, png).map_err(|error| format!("write {}: {error}", path.display()))?;
        Ok(path)
    }

    /// Panics with what could not be done, where, and a screenshot of the page.
    async fn fail(&self, action: &str, error: impl std::fmt::Display) -> ! {
        let url = match self.client.current_url().await {
            Ok(url) => url.to_string(),
            Err(_) => "an unknown page".to_owned(),
        };
        let name = format!("failure-{}-{}.png", std::process::id(), self.id);
        let shot = match self.try_screenshot(Path::new(&name)).await {
            Ok(path) => format!("screenshot: {}", path.display()),
            Err(error) => format!("no screenshot: {error}"),
        };
        panic!("browser: could not {action} on {url}: {error} ({shot})");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.chromedriver.id(), &mut self.chromedriver);
        drop(self.watcher_pipe.take());
        let _ = self.watcher.wait();
        if std::thread::panicking() {
            eprintln!(
                "browser: profile and chromedriver log kept in {} (chromedriver.log)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of each certificate in `pem`, as Chromium's
/// `--ignore-certificate-errors-spki-list` wants them.
pub fn spki_sha256_base64(pem: &str) -> Vec<String> {
    pem_certificates(pem)
        .iter()
        .filter_map(|der| subject_public_key_info(der))
        .map(|spki| STANDARD.encode(Sha256::digest(spki)))
        .collect()
}

/// The DER of each `CERTIFICATE` block of `pem`.
fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut certificates = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => body = Some(String::new()),
            "-----END CERTIFICATE-----" => {
                if let Some(der) = body.take().and_then(|text| STANDARD.decode(text).ok()) {
                    certificates.push(der);
                }
            }
            _ => {
                if let Some(text) = body.as_mut() {
                    text.push_str(line);
                }
            }
        }
    }
    certificates
}

/// The SubjectPublicKeyInfo (tag, length and content) of a DER X.509 certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }`.
fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der_element(certificate, 0x30)?;
    let (_, mut tbs, _) = der_element(certificate, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs, 0xa0)?.2;
    }
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        tbs = der_element(tbs, tag)?.2; // serial, signature, issuer, validity, subject
    }
    der_element(tbs, 0x30).map(|(whole, _, _)| whole)
}

/// Splits the DER element with tag `tag` at the start of `input`: (the element, its content, the
/// rest). Definite lengths only, as DER requires.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = input.get(2..2 + count)?;
        (
            bytes.iter().fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte)),
            2 + count,
        )
    };
    let end = header.checked_add(length)?;
    let whole = input.get(..end)?;
    Some((whole, &whole[header..], &input[end..]))
}

/// Removes the directories of browsers (`browser-<pid>-<n>`) whose test process is gone: those
/// kept because their test failed.
fn remove_stopped_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("browser-")?.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Where browsers keep their profiles: `CARGO_TARGET_TMPDIR`, which cargo sets when it compiles
/// tests; an example (where it is unset) uses a directory of its own under the system's temp dir.
fn target_tmpdir() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR").map_or_else(
        || std::env::temp_dir().join("servicenow-operator-browser"),
        PathBuf::from,
    )
}

/// `$CARGO_TARGET_DIR/../artifacts/screenshots` (the target directory is the parent of
/// `CARGO_TARGET_TMPDIR`); without `CARGO_TARGET_TMPDIR` (an example), `screenshots` under
/// [`target_tmpdir`].
fn default_screenshot_dir() -> PathBuf {
    let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR").map(Path::new) else {
        return target_tmpdir().join("screenshots");
    };
    let target = tmp.parent().unwrap_or(tmp);
    target.parent().unwrap_or(target).join("artifacts").join("screenshots")
}

/// Reads chromedriver's stdout (on a thread of its own, which keeps draining it afterwards) until
/// it says which port it listens on.
async fn read_port(chromedriver: &mut Child) -> Result<u16, String> {
    let stdout = chromedriver.stdout.take().ok_or("no stdout")?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let port = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = port
                && let Some(sender) = sender.take()
            {
                let _ = sender.send(port);
            }
        }
    });
    let outcome = match tokio::time::timeout(START_TIMEOUT, receiver).await {
        Ok(Ok(port)) => return Ok(port),
        Ok(Err(_)) => "it closed its output without reporting its port",
        Err(_) => "it did not report its port in time",
    };
    Err(format!(
        "{outcome} ({START_TIMEOUT:?}; {})",
        match chromedriver.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            _ => "still running".to_owned(),
        }
    ))
}

/// Opens a WebDriver session on chromedriver at `port`, which starts Chromium.
async fn connect(port: u16, options: &BrowserOptions, profile: &Path) -> Result<Client, String> {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    if !options.host_map.is_empty() {
        let rules: Vec<String> = options
            .host_map
            .iter()
            .map(|(pattern, address)| format!("MAP {pattern} {address}"))
            .collect();
        args.push(format!("--host-resolver-rules={}", rules.join(",")));
    }
    if !options.trusted_spki.is_empty() {
        args.push(format!(
            "--ignore-certificate-errors-spki-list={}",
            options.trusted_spki.join(",")
        ));
    }
    let capabilities = serde_json::json!({
        "browserName": "chrome",
        "acceptInsecureCerts": false,
        "pageLoadStrategy": "normal",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal")
    };
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(capabilities);
    let url = format!("http://127.0.0.1:{port}");
    tokio::time::timeout(START_TIMEOUT, builder.connect(&url))
        .await
        .map_err(|_| format!("no session within {START_TIMEOUT:?}"))?
        .map_err(|error| error.to_string())
}

/// Kills chromedriver's process group (chromedriver and Chromium) and reaps chromedriver.
/// A running chromedriver: its process (leader of its own process group), the watcher that kills
/// the group once this process lets go of the watcher's stdin, and its port.
struct Driver {
    process: Child,
    group: u32,
    watcher: Child,
    watcher_pipe: Option<std::process::ChildStdin>,
    port: u16,
}

/// How many times chromedriver is started when it loses the race for a port: given `--port=0`
/// it picks a port itself and now and then finds it taken (`ERR_ADDRESS_IN_USE`).
const DRIVER_ATTEMPTS: u32 = 3;

/// Starts chromedriver, logging to `log_path`; retried only when its port was taken.
async fn start_driver(log_path: &Path) -> Result<Driver, String> {
    let mut attempt = 1;
    loop {
        let _ = std::fs::remove_file(log_path);
        let mut process = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|error| format!("could not start it: {error}"))?;
        let group = process.id();
        // Kills the group when this process lets go of the pipe, however it ends.
        let mut watcher = match Command::new("sh")
            .arg("-c")
            .arg(format!("read _ ; kill -9 -{group} 2>/dev/null"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(watcher) => watcher,
            Err(error) => {
                kill_group(group, &mut process);
                return Err(format!("could not start its watcher (sh): {error}"));
            }
        };
        let watcher_pipe = watcher.stdin.take();
        match read_port(&mut process).await {
            Ok(port) => {
                return Ok(Driver {
                    process,
                    group,
                    watcher,
                    watcher_pipe,
                    port,
                });
            }
            Err(error) => {
                kill_group(group, &mut process);
                drop(watcher_pipe);
                let _ = watcher.wait();
                let log = tail(log_path);
                if attempt < DRIVER_ATTEMPTS && log.contains("ERR_ADDRESS_IN_USE") {
                    attempt += 1;
                    continue;
                }
                return Err(format!("{error} (attempt {attempt}); its log: {log}"));
            }
        }
    }
}

fn kill_group(group: u32, chromedriver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = chromedriver.kill();
    let _ = chromedriver.wait();
}

/// The last lines of the file at `path`, for a failure message.
fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(error) => format!("(unreadable: {error})"),
    }
}
