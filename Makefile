# servicenow-operator — the two commands a fresh machine needs: `make test` and `make demo`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CACHE_DIR ?= $(HOME)/.cache/servicenow-operator
# Rust build output lives outside the repository so a fresh clone reuses a warm build.
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
# One control plane for the whole test run; tests attach to it through ENVTEST_KUBECONFIG.
ENVTEST_RUN ?= $(CACHE_DIR)/run/envtest-$(shell echo $$PPID)

# A hung test fails the run with the names of the tests still running instead of eating CI's budget.
TEST_TIMEOUT ?= 40m

.PHONY: test lint integration crds envtest-bins browser-deps clean-cache demo demo-bins demo-check bench bench-scale image image-archive mutants fuzz

## test: everything CI runs — format, lints, unit and integration tests against a real API server,
## and the demo once through (on ports of its own).
test: lint integration demo-check

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

envtest-bins:
	tests/envtest/build >/dev/null

## integration: starts etcd + kube-apiserver + kube-controller-manager, runs every test, stops them
## (their directory, logs included, is removed after a run that passed and kept after one that failed).
## browser-deps: Debian's chromium + chromedriver for the consent tests (apt-get, once).
browser-deps:
	tests/browser/install

## integration also needs the image archive (tests/image.rs runs it), built first so that its
## release build does not compete with the tests for the CPU.
integration: envtest-bins browser-deps image-archive
	rm -rf "$(ENVTEST_RUN)"
	ENVTEST_WATCH_PID=$$$$ tests/envtest/up "$(ENVTEST_RUN)" >/dev/null; \
	trap 'status=$$?; tests/envtest/down "$(ENVTEST_RUN)"; [[ $$status -ne 0 ]] || rm -rf "$(ENVTEST_RUN)"' EXIT; \
	ENVTEST_KUBECONFIG="$(ENVTEST_RUN)/kubeconfig" timeout --kill-after=30s $(TEST_TIMEOUT) cargo test --workspace --locked --no-fail-fast

## demo: the operator end to end on this machine (tests/demo/run): control plane, snowsim, the CRD and
## examples/acme.yaml, consent in headless Chromium, READY_TO_SYNC; then waits for Ctrl-C.
##   make demo CONSENT=manual   print the consent URL for a person instead of the headless browser
##   make demo DEMO_EXIT=1      tear down and exit 0 right after the results (to test the demo)
## Ports: DEMO_SNOWSIM_PORT (8443), DEMO_PUBLIC_PORT (8080), DEMO_ADMIN_PORT (8081).
CONSENT ?= browser
DEMO_EXIT ?= 0
demo-bins:
	cargo build --locked --bins --examples -p servicenow-operator -p snowsim

demo: envtest-bins browser-deps demo-bins
	$(if $(filter-out browser manual,$(CONSENT)),$(error CONSENT must be browser or manual, not '$(CONSENT)'))
	tests/demo/run $(if $(filter manual,$(CONSENT)),--manual-consent) $(if $(filter-out 0,$(DEMO_EXIT)),--exit-when-ready)

## demo-check: `make demo DEMO_EXIT=1` on ports the tests do not use, after the integration tests.
demo-check: integration demo-bins
	DEMO_SNOWSIM_PORT=18443 DEMO_PUBLIC_PORT=18080 DEMO_ADMIN_PORT=18081 tests/demo/run --exit-when-ready

## bench: the benchmarks, which print their figures: snowsim's startup and Table API GETs per second;
## the operator's start to READY_TO_SYNC, requested-reconcile latency and instance calls per
## reconcile (against a control plane of its own).
bench: envtest-bins
	cargo bench --locked -p snowsim
	cargo bench --locked -p servicenow-operator --bench reconcile
	cargo bench --locked -p servicenow-operator --bench webhook

## bench-scale: one operator holding N connections (default 1000), each to an instance of its own in
## snowsim, against a control plane of its own; prints start to all READY_TO_SYNC against the floor
## (the necessary calls alone), calls per connection and per resync, RSS, CPU and Secret-change
## latency (benches/scale, BENCHMARKS.md). Not part of `make test`.
##   make bench-scale N=10000 CONCURRENCY=16
N ?= 1000
CONCURRENCY ?= 8
bench-scale: envtest-bins
	SCALE_N=$(N) SCALE_CONCURRENCY=$(CONCURRENCY) cargo bench --locked -p servicenow-operator --bench scale

## mutants: mutation testing of the pure core (tests/mutants/run): cargo-mutants (installed on first
## use) mutates the modules .cargo/mutants.toml names, runs the unit tests against each mutant,
## prints the score per module and in total, and fails below 95 % caught. Not part of `make test`
## (it takes long on 2 cores): run it before a change to those modules lands.
mutants:
	tests/mutants/run

## fuzz: the fuzz targets of tests/fuzz.rs (instance URL, encoded query, duration, webhook body and
## signature, consent state and ticket), FUZZ_ITERATIONS inputs each from a fresh seed it prints
## (replay one with FUZZ_SEED=<seed>); `make test` runs 2,000 each from a fixed seed.
FUZZ_ITERATIONS ?= 1000000
fuzz:
	seed=$${FUZZ_SEED:-$$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}; echo "FUZZ_SEED=$$seed"; \
	FUZZ_SEED=$$seed FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) cargo test --release --locked --test fuzz -- --nocapture

## image: the container image as an OCI archive, built without a Docker daemon (image/build: a
## static binary, Debian's umoci and CA bundle), and its CycloneDX SBOM beside it (image/sbom);
## both in ~/.cache/servicenow-operator/image/<content hash>/ (…/image/latest links the last one).
image:
	archive=$$(image/build); image/sbom "$$(dirname "$$archive")"; ls -l "$$(dirname "$$archive")"

image-archive:
	image/build >/dev/null

## crds: regenerate crds/ from the code.
crds:
	cargo run --quiet --locked -- crd > crds/servicenowconnection.yaml

clean-cache:
	rm -rf "$(CACHE_DIR)"
