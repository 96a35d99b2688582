//! The layering rules of `src/` (see `src/lib.rs`), checked by reading the imports.

use std::{fs, path::Path};

/// Every `.rs` file under `dir` (or `dir` itself when it is a file), with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    if dir.is_file() {
        return vec![(dir.display().to_string(), fs::read_to_string(dir).unwrap())];
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push((path.display().to_string(), fs::read_to_string(&path).unwrap()));
        }
    }
    files
}

fn violations(dir: &str, forbidden: &[&str], allowed: &[&str]) -> Vec<String> {
    // Read when the test runs: a binary from the shared build directory may have been built in
    // another checkout.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo test");
    let root = Path::new(&manifest_dir).join("src").join(dir);
    let files = sources(&root);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    files
        .iter()
        .flat_map(|(path, text)| {
            text.lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .filter(|line| forbidden.iter().any(|f| line.contains(f)) && !allowed.iter().any(|a| line.contains(a)))
                .map(move |line| format!("{path}: {}", line.trim()))
        })
        .collect()
}

#[test]
fn the_servicenow_client_knows_nothing_of_kubernetes_or_the_rest_of_the_crate() {
    let found = violations(
        "servicenow",
        &["kube", "k8s_openapi", "crate::"],
        // The two leaves below (no Kubernetes, nothing else of ours) go with it if it becomes a crate.
        &["crate::servicenow", "crate::outbound", "crate::sync"],
    );
    assert!(
        found.is_empty(),
        "src/servicenow must stay a leaf:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_api_imports_only_the_instance_url_rules_of_the_crate() {
    let found = violations("api", &["crate::"], &["crate::api", "crate::servicenow::instance_url"]);
    assert!(found.is_empty(), "src/api must stay a leaf:\n{}", found.join("\n"));
}

#[test]
fn the_outbound_client_and_the_lock_helper_are_leaves() {
    for file in ["outbound.rs", "outbound", "sync.rs"] {
        let found = violations(file, &["kube", "k8s_openapi", "crate::"], &[]);
        assert!(found.is_empty(), "src/{file} must stay a leaf:\n{}", found.join("\n"));
    }
}

/// The modules a file's code names through `crate::` (grouped imports included) or, inside
/// `src/reconcile/`, through `super::`: each path's first segment.
fn imported(text: &str, prefix: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e as f}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if (c.is_alphanumeric() || c == '_') && depth == 0 && item_start => word.push(c),
                    _ => {
                        if !word.is_empty() {
                            found.push(std::mem::take(&mut word));
                            item_start = false;
                        }
                    }
                }
            }
        } else {
            let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !word.is_empty() {
                found.push(word);
            }
        }
    }
    found
}

/// The top-level module of a path under `src/`: `reconcile/decide/mod.rs` → `reconcile`.
fn module_of(path: &Path, src: &Path) -> String {
    let relative = path.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Edges `from → to` between distinct modules, found in `files` with `prefix`, named by `name`.
fn edges(
    files: &[(String, String)],
    prefix: &str,
    name: impl Fn(&str) -> String,
) -> std::collections::BTreeSet<(String, String)> {
    let mut edges = std::collections::BTreeSet::new();
    for (path, text) in files {
        let from = name(path);
        for to in imported(text, prefix) {
            if to != from && to != "self" {
                edges.insert((from.clone(), to));
            }
        }
    }
    edges
}

/// A cycle among `edges`, if there is one (depth-first search).
fn cycle(edges: &std::collections::BTreeSet<(String, String)>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &std::collections::BTreeSet<(String, String)>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(found) = visit(to, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

fn src_dir() -> std::path::PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo test");
    Path::new(&manifest_dir).join("src")
}

/// Which top-level modules each module may import. Leaves first; a module missing here may
/// import nothing of the crate.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("sync", &[]),
    ("retry", &[]),
    ("outbound", &[]),
    ("servicenow", &["outbound", "sync"]),
    ("api", &["servicenow"]),
    ("provision", &["api", "servicenow"]),
    ("secrets", &["api", "servicenow", "sync"]),
    ("telemetry", &["servicenow", "sync"]),
    (
        "reconcile",
        &[
            "api",
            "provision",
            "retry",
            "secrets",
            "servicenow",
            "sync",
            "telemetry",
            "ticket",
        ],
    ),
    (
        "webhook",
        &["api", "outbound", "retry", "secrets", "servicenow", "sync", "telemetry"],
    ),
    (
        "http",
        &["api", "secrets", "servicenow", "sync", "telemetry", "ticket", "webhook"],
    ),
    (
        "controller",
        &["api", "reconcile", "secrets", "servicenow", "sync", "telemetry"],
    ),
    ("crd", &["api"]),
    ("cli", &["api", "http", "servicenow", "telemetry"]),
    (
        "run",
        &[
            "api",
            "cli",
            "controller",
            "http",
            "reconcile",
            "secrets",
            "servicenow",
            "telemetry",
            "webhook",
        ],
    ),
    ("main", &["cli", "crd", "run", "telemetry"]),
];

#[test]
fn modules_import_only_what_the_layering_table_allows_and_form_no_cycle() {
    let src = src_dir();
    let files = sources(&src);
    let edges = edges(&files, "crate::", |path| module_of(Path::new(path), &src));
    assert!(edges.len() > 20, "the import scan found too little: {edges:?}");
    let refused: Vec<String> = edges
        .iter()
        .filter(|(from, to)| {
            !MAY_IMPORT
                .iter()
                .find(|(module, _)| module == from)
                .is_some_and(|(_, allowed)| allowed.contains(&to.as_str()))
        })
        .map(|(from, to)| format!("{from} → {to}"))
        .collect();
    assert!(
        refused.is_empty(),
        "imports the layering table (MAY_IMPORT) does not allow:\n{}",
        refused.join("\n")
    );
    assert_eq!(cycle(&edges), None, "a cycle among the modules");
}

#[test]
fn the_reconcile_phases_form_no_cycle_and_decide_does_no_io() {
    let src = src_dir();
    let reconcile = src.join("reconcile");
    let files = sources(&reconcile);
    let name = |path: &str| module_of(Path::new(path), &reconcile);
    let mut edges = edges(&files, "super::", name);
    // `mod.rs` is the driver: its `super::` is the crate, and every phase may name it (`Context`).
    edges.retain(|(from, to)| from != "mod" && to != "mod");
    assert!(
        edges.contains(&("act".into(), "decide".into())),
        "the scan found no act → decide edge: {edges:?}"
    );
    assert_eq!(cycle(&edges), None, "a cycle among the reconcile's phases");
    let decide: Vec<_> = files
        .iter()
        .filter(|(path, _)| name(path) == "decide" && !path.ends_with("tests.rs"))
        .collect();
    assert!(!decide.is_empty());
    for (path, text) in decide {
        for io in [
            "async ",
            ".await",
            "kube::Api",
            "kube::Client",
            "reqwest",
            "Context<",
            "tokio",
        ] {
            assert!(
                !text.contains(io),
                "{path}: the decide phase must stay pure, found {io:?}"
            );
        }
    }
}

#[test]
fn the_import_scan_reads_grouped_imports() {
    let text = "use crate::{\n    api::{a, b},\n    servicenow::{self, X},\n    sync::LockExt as _,\n};\nlet x = crate::retry::f();\n// crate::ignored\n";
    assert_eq!(imported(text, "crate::"), ["api", "servicenow", "sync", "retry"]);
    let mut edges = std::collections::BTreeSet::new();
    edges.insert(("a".to_owned(), "b".to_owned()));
    edges.insert(("b".to_owned(), "c".to_owned()));
    assert_eq!(cycle(&edges), None);
    edges.insert(("c".to_owned(), "a".to_owned()));
    assert!(cycle(&edges).is_some());
}
