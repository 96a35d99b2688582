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
    for file in ["outbound.rs", "sync.rs"] {
        let found = violations(file, &["kube", "k8s_openapi", "crate::"], &[]);
        assert!(found.is_empty(), "src/{file} must stay a leaf:\n{}", found.join("\n"));
    }
}
