//! The container image that `make image` builds (`image/build`): its OCI configuration, its
//! contents, and the binary running inside it.
//!
//! Each test unpacks the archive's layers into an empty directory and runs the image's entrypoint
//! there the way a container runtime would: in a mount namespace of its own (`unshare -m`),
//! chrooted into that root, remounted read-only, as UID/GID 65532, with only the files the chart
//! mounts bound in (the CA bundle at `/etc/servicenow-operator/ca/ca.crt`, plus the `/etc/hosts`
//! and `/etc/resolv.conf` the kubelet provides, a kubeconfig, and the device nodes every runtime
//! provides: `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`). Nothing else of the host's
//! filesystem is visible: a binary that needed a shared library, a shell or a writable root would
//! fail here. The instance's host name is resolved from the root's `/etc/hosts` (no `--resolve`):
//! the binary is static, and a static glibc `getaddrinfo` would need NSS libraries the image does
//! not have, so the operator resolves with reqwest's pure-Rust resolver (hickory).
//!
//! Needs root (mount namespaces, chroot, a listener on port 443 of a loopback address) and the
//! tools `unshare`, `mount`, `chroot` and `tar`; without them the tests fail, they never skip.

mod support;

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use rand::Rng as _;
use serde_json::Value;
use servicenow_operator::api::SyncState;
use sha2::{Digest as _, Sha256};
use support::{Observed, control_plane, instance::HOST, operator::free_port, poll_until, scene::Scene};

/// Where the image runs its binary, and as whom (the Dockerfile's and the chart's user).
const ENTRYPOINT: &str = "/servicenow-operator";
const USER: &str = "65532:65532";
/// The chart's mount of `servicenow.caBundleConfigMap` and the `CA_BUNDLE` it sets.
const CA_MOUNT: &str = "/etc/servicenow-operator/ca/ca.crt";
/// Where the test mounts the kubeconfig of the API server (in a cluster, the ServiceAccount's
/// token is mounted instead).
const KUBECONFIG_MOUNT: &str = "/var/run/servicenow-operator/kubeconfig";
/// The issue's budget for the image (compressed layers, as a registry stores and pulls them).
const SIZE_LIMIT: u64 = 25 * 1024 * 1024;

/// The labels every release image carries.
const LABELS: [&str; 6] = [
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.revision",
];

fn succeeded(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The archive `image/build` prints (built once per test process; a cache hit after `make image`).
fn archive() -> &'static Path {
    static ARCHIVE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let archive = ARCHIVE.get_or_init(|| {
        let mut build = Command::new("bash");
        build
            .arg(support::repo_path("image/build"))
            .current_dir(support::repo_path(""));
        // The build directory this test was built in (make sets CARGO_TARGET_DIR; plain `cargo
        // test` may not), so the image's release build lands beside it.
        if std::env::var_os("CARGO_TARGET_DIR").is_none()
            && let Some(target) = option_env!("CARGO_TARGET_TMPDIR").and_then(|tmp| Path::new(tmp).parent())
        {
            build.env("CARGO_TARGET_DIR", target);
        }
        let build = build
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("could not run image/build: {error}"))?;
        if !build.status.success() {
            return Err(format!(
                "image/build failed ({}):\n{}",
                build.status,
                String::from_utf8_lossy(&build.stderr)
            ));
        }
        let path = String::from_utf8_lossy(&build.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let path = PathBuf::from(path);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("image/build printed no archive: {build:?}"))
        }
    });
    match archive {
        Ok(path) => path,
        Err(reason) => panic!("no image: {reason}"),
    }
}

/// The archive unpacked: its OCI layout and the root filesystem of its layers, in a directory
/// removed on drop.
struct Unpacked {
    dir: PathBuf,
    index: Value,
    manifest: Value,
    config: Value,
    /// Bytes of the compressed layers (what a registry stores and a node pulls).
    compressed: u64,
}

impl Unpacked {
    fn new() -> Self {
        let archive = archive();
        let suffix: u32 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("snop-image-{}-{suffix:08x}", std::process::id()));
        let layout = dir.join("layout");
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&layout).expect("layout dir");
        fs::create_dir_all(&rootfs).expect("rootfs dir");
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).expect("chmod rootfs");
        let mut unpacked = Self {
            dir,
            index: Value::Null,
            manifest: Value::Null,
            config: Value::Null,
            compressed: 0,
        };
        succeeded(
            "tar -xf (the archive)",
            &Command::new("tar")
                .arg("-xf")
                .arg(archive)
                .arg("-C")
                .arg(&layout)
                .output()
                .expect("run tar"),
        );
        let layout_file: Value = read_json(&layout.join("oci-layout"));
        assert_eq!(layout_file["imageLayoutVersion"], "1.0.0", "not an OCI image layout");
        unpacked.index = read_json(&layout.join("index.json"));
        let manifests = unpacked.index["manifests"].as_array().expect("index.json manifests");
        assert_eq!(manifests.len(), 1, "one image in the archive: {:#}", unpacked.index);
        unpacked.manifest = serde_json::from_slice(&blob(&layout, &manifests[0])).expect("the manifest");
        unpacked.config = serde_json::from_slice(&blob(&layout, &unpacked.manifest["config"])).expect("the config");
        let layers = unpacked.manifest["layers"].as_array().expect("manifest layers");
        assert!(!layers.is_empty(), "the image has no layer");
        for layer in layers {
            assert_eq!(
                layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
                "a layer of another kind: {layer}"
            );
            blob(&layout, layer); // checks size and digest
            unpacked.compressed += layer["size"].as_u64().expect("layer size");
            succeeded(
                "tar -xzf (a layer)",
                &Command::new("tar")
                    .arg("--numeric-owner")
                    .arg("--same-owner")
                    .arg("-xzpf")
                    .arg(blob_path(&layout, layer))
                    .arg("-C")
                    .arg(&rootfs)
                    .output()
                    .expect("run tar"),
            );
        }
        unpacked
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Every path in the root filesystem as unpacked, relative and sorted (directories end with
    /// `/`); call it before [`Self::command`] adds mount points.
    fn tree(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, into: &mut BTreeSet<String>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let entry = entry.expect("dir entry");
                let path = entry.path();
                let relative = path.strip_prefix(root).expect("under root").display().to_string();
                if entry.file_type().expect("file type").is_dir() {
                    into.insert(format!("{relative}/"));
                    walk(root, &path, into);
                } else {
                    into.insert(relative);
                }
            }
        }
        let mut tree = BTreeSet::new();
        walk(&self.rootfs(), &self.rootfs(), &mut tree);
        tree
    }

    /// Creates the (empty) mount points of `mounts` in the root, as a container runtime does
    /// before it makes the root read-only.
    fn make_mount_points(&self, mounts: &[(PathBuf, &str)]) {
        let dev = self.rootfs().join("dev");
        fs::create_dir_all(&dev).expect("/dev mount points");
        for device in ["null", "zero", "full", "random", "urandom", "tty"] {
            fs::write(dev.join(device), "").expect("a device's mount point");
        }
        for (source, target) in mounts {
            let target = self.rootfs().join(target.trim_start_matches('/'));
            fs::create_dir_all(target.parent().expect("a parent")).expect("mount point's directory");
            if source.is_dir() {
                fs::create_dir_all(&target).expect("mount point");
            } else {
                fs::write(&target, "").expect("mount point");
            }
        }
    }

    /// A command running the image's entrypoint with `args` in the unpacked root, read-only, as
    /// the image's user, with `mounts` (host path, path in the root) bound in read-only and only
    /// `env` in its environment.
    fn command(&self, mounts: &[(PathBuf, &str)], env: &[(&str, &str)], args: &[&str]) -> Command {
        self.make_mount_points(mounts);
        let entrypoint = self.config["config"]["Entrypoint"]
            .as_array()
            .expect("an Entrypoint")
            .iter()
            .map(|part| part.as_str().expect("a string").to_owned())
            .collect::<Vec<_>>();
        let user = self.config["config"]["User"].as_str().expect("a User");
        // Runs on the host (bash and mount are the host's) until `exec chroot`, which execs the
        // entrypoint: the child's pid is the operator's.
        let script = r#"set -euo pipefail
root=$1 user=$2; shift 2
mount --make-rprivate /
mount --bind "$root" "$root"
while [[ $1 != -- ]]; do
  mount --bind "$1" "$root$2"
  mount -o remount,bind,ro "$root$2"
  shift 2
done
shift
# The device nodes every container runtime provides (runc's defaults), writable as there.
for device in null zero full random urandom tty; do
  mount --bind "/dev/$device" "$root/dev/$device"
done
mount -o remount,bind,ro "$root"
exec chroot --userspec="$user" --groups="${user#*:}" "$root" "$@"
"#;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--", "bash", "-c", script, "run-in-image"])
            .arg(self.rootfs())
            .arg(user);
        for (source, target) in mounts {
            command.arg(source).arg(target);
        }
        command.arg("--").args(&entrypoint).args(args);
        command.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        command.envs(env.iter().copied());
        command.stdin(Stdio::null());
        command
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().expect("a digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// The blob `descriptor` points at, checked against the descriptor's size and digest.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let bytes = fs::read(blob_path(layout, descriptor)).expect("a blob the descriptor names");
    assert_eq!(
        Some(bytes.len() as u64),
        descriptor["size"].as_u64(),
        "size of {descriptor}"
    );
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    assert_eq!(
        Some(digest.as_str()),
        descriptor["digest"].as_str(),
        "digest of {descriptor}"
    );
    bytes
}

#[tokio::test]
async fn the_image_is_small_non_root_without_a_shell_labelled_and_named_as_the_chart_renders_it() {
    let image = tokio::task::spawn_blocking(Unpacked::new).await.expect("unpack");
    let config = &image.config;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], USER, "the image's user");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!([ENTRYPOINT]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
    let labels = &config["config"]["Labels"];
    for label in LABELS {
        let value = labels[label].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "label {label} missing: {labels:#}");
    }
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.licenses"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(labels["org.opencontainers.image.title"], "servicenow-operator");
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
    assert!(
        revision.len() >= 40 && revision[..40].chars().all(|c| c.is_ascii_hexdigit()),
        "the revision label is not a commit: {revision:?}"
    );

    // Nothing but the binary, the CA bundle, the user database and /tmp: no shell, no libc.
    let tree = image.tree();
    let expected: BTreeSet<String> = [
        "etc/",
        "etc/group",
        "etc/passwd",
        "etc/ssl/",
        "etc/ssl/certs/",
        "etc/ssl/certs/ca-certificates.crt",
        "servicenow-operator",
        "tmp/",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(tree, expected, "the image's files");
    let rootfs = image.rootfs();
    assert!(
        fs::symlink_metadata(rootfs.join("bin/sh")).is_err(),
        "/bin/sh in the image"
    );
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd.lines().any(|line| line.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let binary = fs::metadata(rootfs.join("servicenow-operator")).expect("the binary");
    assert_eq!(
        (binary.uid(), binary.mode() & 0o777),
        (0, 0o755),
        "the binary's owner and mode"
    );
    let bundle = fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).expect("CA bundle");
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 100,
        "the CA bundle is not Debian's"
    );

    let uncompressed: u64 = tree
        .iter()
        .filter(|path| !path.ends_with('/'))
        .map(|path| fs::metadata(rootfs.join(path)).expect("a file").len())
        .sum();
    let archive_size = fs::metadata(archive()).expect("the archive").len();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "image: {:.1} MiB compressed (layers), {:.1} MiB unpacked, archive {:.1} MiB: {}",
        mib(image.compressed),
        mib(uncompressed),
        mib(archive_size),
        archive().display()
    );
    assert!(
        image.compressed < SIZE_LIMIT,
        "the image is {:.1} MiB compressed, over the 25 MiB budget",
        mib(image.compressed)
    );

    // The chart, with its defaults, runs the image the archive carries.
    let plane = control_plane().await;
    let rendered = plane
        .command("helm")
        .args([
            "template",
            "t",
            &support::repo_path("charts/servicenow-operator").display().to_string(),
        ])
        .args(["--set", "publicUrl=https://neo.example.com"])
        .output()
        .expect("run helm");
    let rendered = succeeded("helm template", &rendered);
    let reference = image.index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the archive's reference (org.opencontainers.image.ref.name)");
    assert!(
        rendered.contains(&format!("image: \"{reference}\"")),
        "the chart does not render the image {reference}:\n{rendered}"
    );
    assert!(
        reference.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{reference}"
    );
}

#[tokio::test]
async fn the_images_binary_prints_its_version_and_the_crd_in_an_empty_read_only_root() {
    let image = tokio::task::spawn_blocking(Unpacked::new).await.expect("unpack");
    let version = succeeded(
        "servicenow-operator --version in the image",
        &image.command(&[], &[], &["--version"]).output().expect("run unshare"),
    );
    assert_eq!(
        version.trim(),
        format!("servicenow-operator {}", env!("CARGO_PKG_VERSION"))
    );
    let crd = succeeded(
        "servicenow-operator crd in the image",
        &image.command(&[], &[], &["crd"]).output().expect("run unshare"),
    );
    let committed = fs::read_to_string(support::repo_path("crds/servicenowconnection.yaml")).expect("the CRD");
    assert_eq!(crd, committed, "the image's binary prints another CRD");
}

/// A random loopback address (127.0.0.0/8 is all loopback on Linux) with nobody on port 443.
async fn simulator_on_port_443() -> snowsim::Server {
    let mut last = String::new();
    for _ in 0..20 {
        let mut rng = rand::rng();
        let ip = Ipv4Addr::new(127, rng.random_range(1..=254), rng.random(), rng.random_range(1..=254));
        let addr = SocketAddr::new(IpAddr::V4(ip), 443);
        match snowsim::Server::start(support::instance::least_privilege(), addr).await {
            Ok(server) => return server,
            Err(error) => last = error.to_string(),
        }
    }
    panic!("could not start snowsim on port 443 of a loopback address (root needed): {last}");
}

/// The operator running in the image, killed on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- operator log in the image ({}) ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_image_runs_the_operator_to_ready_to_sync_resolving_the_instance_from_etc_hosts() {
    let plane = control_plane().await;
    let image = tokio::task::spawn_blocking(Unpacked::new).await.expect("unpack");
    // The instance answers on port 443 of its own loopback address; only the root's /etc/hosts
    // says so.
    let simulator = simulator_on_port_443().await;
    let instance_ip = simulator.addr().ip();
    let scene = Scene::with_simulator(simulator, serde_json::json!({})).await;
    let ns = scene.ns.name().to_owned();

    // What the kubelet and the chart would mount, readable by the image's user only.
    let files = image.dir.join("mounts");
    fs::create_dir_all(&files).expect("mounts dir");
    let write = |name: &str, text: &str, mode: u32| {
        let path = files.join(name);
        fs::write(&path, text).expect("write a mounted file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        std::os::unix::fs::chown(&path, Some(65532), Some(65532)).expect("chown");
        path
    };
    let hosts = write("hosts", &format!("127.0.0.1 localhost\n{instance_ip} {HOST}\n"), 0o644);
    // A resolver configuration as a pod's, but pointing at no DNS server: the name must come
    // from /etc/hosts.
    let resolv = write(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        0o644,
    );
    let ca = write(
        "ca.crt",
        &fs::read_to_string(scene.simulator.ca_path().expect("the simulator's CA")).expect("read the CA"),
        0o644,
    );
    let flattened = succeeded(
        "kubectl config view --flatten",
        &plane.kubectl(&["config", "view", "--raw", "--flatten", "--minify"]),
    );
    let kubeconfig = write("kubeconfig", &flattened, 0o600);
    let ca_dir = files.join("ca");
    fs::create_dir_all(&ca_dir).expect("ca dir");
    fs::rename(&ca, ca_dir.join("ca.crt")).expect("move the CA");
    let mounts = [
        (hosts, "/etc/hosts"),
        (resolv, "/etc/resolv.conf"),
        (ca_dir, CA_MOUNT.trim_end_matches("/ca.crt")),
        (kubeconfig, KUBECONFIG_MOUNT),
    ];

    let public_port = free_port();
    let admin_port = free_port();
    let public_url = format!("http://127.0.0.1:{public_port}");
    let listen = format!("127.0.0.1:{public_port}");
    let admin_listen = format!("127.0.0.1:{admin_port}");
    // The chart's environment (deployment.yaml), with the test's ports and namespace.
    let env = [
        ("PUBLIC_URL", public_url.as_str()),
        ("POD_NAMESPACE", ns.as_str()),
        ("POD_NAME", "servicenow-operator-image-test"),
        ("LEASE_NAME", "servicenow-operator"),
        ("LOG_FORMAT", "json"),
        ("LOG_FILTER", "info,servicenow_operator=debug"),
        ("WATCH_NAMESPACE", ns.as_str()),
        ("CA_BUNDLE", CA_MOUNT),
        ("KUBECONFIG", KUBECONFIG_MOUNT),
        ("LISTEN", listen.as_str()),
        ("ADMIN_LISTEN", admin_listen.as_str()),
    ];
    let mut command = image.command(&mounts, &env, &["run"]);
    // The log goes where the harness's leak check reads operator logs.
    let log_dir = std::env::temp_dir().join(format!("snop-{ns}"));
    fs::create_dir_all(&log_dir).expect("log dir");
    let log = log_dir.join("operator-image.log");
    let log_file = fs::File::create(&log).expect("log file");
    command.stdout(log_file.try_clone().expect("log file")).stderr(log_file);
    let running = Running {
        child: command.spawn().expect("run unshare"),
        log,
    };
    let pid = running.child.id();

    let readyz = format!("http://{admin_listen}/readyz");
    poll_until(Duration::from_secs(60), "the image's operator /readyz", || {
        let readyz = readyz.clone();
        let running = &running;
        async move {
            match reqwest::get(&readyz).await {
                Ok(answer) if answer.status().is_success() => Observed::Done(()),
                other => Observed::not_yet(format!("{other:?}; log: {}", running.logs())),
            }
        }
    })
    .await;
    // It runs as 65532 with no other group, in a read-only root.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the operator's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), "65532 65532 65532 65532", "{status}");
    assert_eq!(field("Gid:"), "65532 65532 65532 65532", "{status}");
    assert!(matches!(field("Groups:").as_str(), "" | "65532"), "{status}");
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("the operator's mountinfo");
    let root_options = mountinfo
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"/"))
        .map(|fields| fields[5].to_owned())
        .unwrap_or_else(|| panic!("no / in the operator's mountinfo:\n{mountinfo}"));
    assert!(
        root_options.split(',').any(|option| option == "ro"),
        "the root is not read-only: {root_options}"
    );
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("the operator's exe");
    assert!(exe.ends_with("rootfs/servicenow-operator"), "{}", exe.display());

    scene
        .wait_for("READY_TO_SYNC from the image", |s| {
            s.sync_state == Some(SyncState::ReadyToSync)
        })
        .await;
    let logs = running.logs();
    assert!(
        !logs.contains("--resolve") && !logs.contains("RESOLVE"),
        "the run was given an address override:\n{logs}"
    );
    scene.assert_no_secret_leaked().await;
}
