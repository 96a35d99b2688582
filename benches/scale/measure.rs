//! What the benchmark reads off the parts: the API server's own request counters, snowsim's
//! request logs, the operator process's memory and CPU, and the machine's load.

use std::collections::BTreeMap;

use kube::Client;

/// `apiserver_request_total` summed by (verb, resource, subresource).
#[derive(Clone, Debug, Default)]
pub struct ApiRequests(BTreeMap<(String, String, String), f64>);

impl ApiRequests {
    /// The counters now, from the API server's `/metrics`.
    pub async fn read(client: &Client) -> ApiRequests {
        let request = http::Request::get("/metrics").body(Vec::new()).expect("a GET request");
        let page = client
            .request_text(request)
            .await
            .expect("GET the API server's /metrics");
        ApiRequests::parse(&page)
    }

    /// The counters of a Prometheus text page.
    fn parse(page: &str) -> ApiRequests {
        let mut sums = BTreeMap::new();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let key = (label("verb"), label("resource"), label("subresource"));
            *sums.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
        }
        ApiRequests(sums)
    }

    /// What `self` counts beyond `before`, non-zero entries only.
    pub fn since(&self, before: &ApiRequests) -> ApiRequests {
        let mut delta = BTreeMap::new();
        for (key, value) in &self.0 {
            let grew = value - before.0.get(key).copied().unwrap_or(0.0);
            if grew > 0.0 {
                delta.insert(key.clone(), grew);
            }
        }
        ApiRequests(delta)
    }

    /// Requests whose verb and resource (and subresource, when given) match.
    pub fn count(&self, verbs: &[&str], resource: &str, subresource: Option<&str>) -> f64 {
        self.0
            .iter()
            .filter(|((verb, res, sub), _)| {
                verbs.contains(&verb.as_str()) && res == resource && subresource.is_none_or(|s| s == sub)
            })
            .fold(0.0, |sum, (_, value)| sum + value)
    }

    /// Reads (GET, LIST, WATCH) and writes (the rest) of every resource.
    pub fn reads_and_writes(&self) -> (f64, f64) {
        self.0
            .iter()
            .fold((0.0, 0.0), |(reads, writes), ((verb, _, _), value)| {
                if matches!(verb.as_str(), "GET" | "LIST" | "WATCH") {
                    (reads + value, writes)
                } else {
                    (reads, writes + value)
                }
            })
    }

    /// One line per (verb, resource[/subresource]): `count (per unit)`.
    pub fn breakdown(&self, per: f64) -> String {
        self.0
            .iter()
            .map(|((verb, resource, sub), value)| {
                let resource = if sub.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{sub}")
                };
                format!("    {verb:<6} {resource:<40} {value:>8.0}  ({:.3} each)", value / per)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Calls the instances received: token endpoint, Table API reads and writes, the rest.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstanceCalls {
    pub token: usize,
    pub reads: usize,
    /// Batch API requests (`POST /api/now/v1/batch`): one call each.
    pub batches: usize,
    /// The items of those batches (logged each): not calls of their own.
    pub batched: usize,
    pub writes: usize,
    pub other: usize,
}

impl InstanceCalls {
    /// The calls in the request logs of `instances` (then forgotten).
    pub fn take(instances: &[snowsim::Admin]) -> InstanceCalls {
        let mut calls = InstanceCalls::default();
        for admin in instances {
            for call in admin.request_log() {
                match (call.path.as_str(), call.method.as_str()) {
                    _ if call.batch_item => calls.batched += 1,
                    (snowsim::batch::PATH, _) => calls.batches += 1,
                    ("/oauth_token.do", _) => calls.token += 1,
                    (path, "GET") if path.starts_with("/api/") => calls.reads += 1,
                    (path, _) if path.starts_with("/api/") => calls.writes += 1,
                    _ => calls.other += 1,
                }
            }
            admin.clear_request_log();
        }
        calls
    }

    /// Every call (a batch is one, whatever it carries).
    pub fn total(&self) -> usize {
        self.token + self.reads + self.batches + self.writes + self.other
    }

    /// `token + reads + batches + writes (+ other)` per unit, and the batches' items.
    pub fn per(&self, units: f64) -> String {
        format!(
            "{:.2} calls: {:.2} token, {:.2} reads, {:.2} batches (of {:.2} items), {:.2} writes, {:.2} other",
            self.total() as f64 / units,
            self.token as f64 / units,
            self.reads as f64 / units,
            self.batches as f64 / units,
            self.batched as f64 / units,
            self.writes as f64 / units,
            self.other as f64 / units
        )
    }
}

/// Peak resident memory (MiB) and CPU seconds (user + system) of process `pid` so far.
pub fn process_usage(pid: u32) -> (f64, f64) {
    let (user, system) = cpu_split(pid);
    (peak_rss(pid), user + system)
}

/// Peak resident memory (MiB) of process `pid` so far.
fn peak_rss(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let peak_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    peak_kib / 1024.0
}

/// CPU seconds of process `pid` so far: in user space, in the kernel (its system calls, and the
/// loopback deliveries its writes cause).
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The fields after the command name (which may hold spaces) end with `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    // USER_HZ is 100 on Linux.
    let seconds = |field: &str| field.parse::<f64>().expect("a tick count") / 100.0;
    (seconds(fields[11]), seconds(fields[12]))
}

/// The machine's load averages, as /proc/loadavg shows them (1, 5, 15 minutes).
pub fn load() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPU seconds of the processes that share the machine in a phase: the control plane's
/// kube-apiserver and etcd (their pids from the `env` file `tests/envtest/up` writes beside the
/// kubeconfig) and this process (snowsim and the floor's client or the benchmark's watches).
pub struct CpuLedger {
    processes: Vec<(&'static str, u32)>,
}

impl CpuLedger {
    /// The control plane's processes and this one.
    pub fn of_control_plane(kubeconfig: &std::path::Path) -> CpuLedger {
        let env = kubeconfig.with_file_name("env");
        let text = std::fs::read_to_string(&env).unwrap_or_else(|e| panic!("read {}: {e}", env.display()));
        let pid = |name: &str| -> u32 {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {}", env.display()))
        };
        CpuLedger {
            processes: vec![
                ("kube-apiserver", pid("ENVTEST_APISERVER_PID")),
                ("etcd", pid("ENVTEST_ETCD_PID")),
                ("bench (snowsim, clients)", std::process::id()),
            ],
        }
    }

    /// CPU seconds of each process so far.
    pub fn read(&self) -> Vec<f64> {
        self.processes.iter().map(|(_, pid)| process_usage(*pid).1).collect()
    }

    /// The CPU seconds each process spent since `before` (a [`CpuLedger::read`]), per `per`.
    pub fn since(&self, before: &[f64], per: f64) -> String {
        self.processes
            .iter()
            .zip(self.read())
            .zip(before)
            .map(|(((name, _), now), then)| format!("{name} {:.2} ms", (now - then) / per * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The whole number above 0 in the environment variable `name`, or `default` when it is unset.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |value| {
        value
            .parse::<usize>()
            .ok()
            .filter(|&value| value > 0)
            .unwrap_or_else(|| panic!("{name}={value:?} is not a whole number above 0; set it to e.g. 1000"))
    })
}
