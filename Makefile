# servicenow-operator — the two commands a fresh machine needs: `make test` and `make demo`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CACHE_DIR ?= $(HOME)/.cache/servicenow-operator
# Rust build output lives outside the repository so a fresh clone reuses a warm build.
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
# One control plane for the whole test run; tests attach to it through ENVTEST_KUBECONFIG.
ENVTEST_RUN ?= $(CACHE_DIR)/run/envtest-$(shell echo $$PPID)

.PHONY: test lint integration crds envtest-bins browser-deps clean-cache

## test: everything CI runs — format, lints, unit and integration tests against a real API server.
test: lint integration

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

envtest-bins:
	tests/envtest/build >/dev/null

## integration: starts etcd + kube-apiserver + kube-controller-manager, runs every test, stops them.
## browser-deps: Debian's chromium + chromedriver for the consent tests (apt-get, once).
browser-deps:
	tests/browser/install

integration: envtest-bins browser-deps
	rm -rf "$(ENVTEST_RUN)"
	ENVTEST_WATCH_PID=$$$$ tests/envtest/up "$(ENVTEST_RUN)" >/dev/null; \
	trap 'tests/envtest/down "$(ENVTEST_RUN)"' EXIT; \
	ENVTEST_KUBECONFIG="$(ENVTEST_RUN)/kubeconfig" cargo test --workspace --locked --no-fail-fast

## crds: regenerate crds/ from the code.
crds:
	cargo run --quiet --locked -- crd > crds/servicenowconnection.yaml

clean-cache:
	rm -rf "$(CACHE_DIR)"
