# issuelock — `make help` lists the targets.
SHELL := bash
.DEFAULT_GOAL := help
# Cargo builds are cached outside the repository (under $ISSUELOCK_CACHE, as the test
# binaries and images are) and reused across clones.
ISSUELOCK_CACHE ?= $(HOME)/.cache/issuelock
export CARGO_TARGET_DIR ?= $(ISSUELOCK_CACHE)/target

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## The story in pods: single-node cluster, controller via Helm, worker pods racing, one killed (root).
	bash e2e/demo.sh

.PHONY: demo-processes
demo-processes: ## The same story with host processes on a throwaway control plane (no root needed).
	bash e2e/demo-processes.sh

.PHONY: test
test: fmt-check clippy test-unit test-crate test-python test-e2e test-chaos test-node test-chaos-node ## Everything CI runs: fmt, clippy, unit and doc tests, the library alone, Python, end-to-end, chaos smokes and node tests.

.PHONY: fmt-check
fmt-check: ## Check formatting.
	cargo fmt --all -- --check

.PHONY: clippy
clippy: ## Lint with warnings as errors.
	cargo clippy --all-targets -- -D warnings

.PHONY: test-unit
test-unit: ## Unit tests and doc-tests (no cluster needed), including the CRD-in-sync check and the README's Rust example.
	cargo test --lib --bins
	cargo test --doc

.PHONY: test-crate
test-crate: ## The crate as a library user gets it: no-CLI lint, examples/other-k8s-version (k8s-openapi v1_35) built and its tree checked, the package's file list.
	cargo clippy --lib --tests --no-default-features -- -D warnings
	cd examples/other-k8s-version && cargo fmt -- --check && CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)-other" cargo build --locked
	bash examples/other-k8s-version/check-tree.sh
	@set -o pipefail; files="$$(cargo package --list --allow-dirty --quiet)" || exit 1; \
	extra="$$(grep -vE '^(src/.*\.rs|crds/[^/]+\.yaml|protocol/[^/]+\.json|README\.md|PROTOCOL\.md|Cargo\.(toml|toml\.orig|lock)|\.cargo_vcs_info\.json)$$' <<<"$$files")"; \
	if [ -n "$$extra" ]; then echo "files that do not belong in the crate package:" >&2; echo "$$extra" >&2; exit 1; fi; \
	for f in src/lib.rs src/main.rs crds/issuelock.dev_issuelocks.yaml README.md; do \
	  grep -qxF "$$f" <<<"$$files" || { echo "the crate package lacks $$f" >&2; exit 1; }; done; \
	echo "cargo package: $$(wc -l <<<"$$files") files, only src, crds, protocol, README, PROTOCOL, Cargo files"

.PHONY: test-python
test-python: ## The Python reference worker's tests (lock-name vectors); creates its venv once.
	python="$$(bash e2e/python-env.sh)" && "$$python" -m unittest discover -s examples/python -v

.PHONY: test-e2e
test-e2e: ## End-to-end tests on a local control plane (or $$ISSUELOCK_E2E_KUBECONFIG's cluster).
	bash e2e/run.sh

.PHONY: test-chaos
test-chaos: ## 2-minute chaos smoke: one seed, every fault, fencing on; fails on any violation.
	bash e2e/chaos.sh --seeds 1 --minutes 2

SEEDS ?= 30
MINUTES ?= 5
FIRST_SEED ?= 1
JOBS ?= 1
.PHONY: chaos
chaos: ## Seeded chaos soak (SEEDS=30 MINUTES=5 FIRST_SEED=1 JOBS=1: lanes at once, a control plane each); exits 0 only when the checker finds no violation.
	bash e2e/chaos.sh --seeds $(SEEDS) --minutes $(MINUTES) --first-seed $(FIRST_SEED) --jobs $(JOBS)

.PHONY: chaos-node
chaos-node: ## The soak with worker pods on a single-node cluster (root; SEEDS MINUTES FIRST_SEED as for chaos): container kills, pod deletions, pauses, control-plane faults.
	bash e2e/chaos.sh --node --seeds $(SEEDS) --minutes $(MINUTES) --first-seed $(FIRST_SEED)

.PHONY: test-chaos-node
test-chaos-node: ## 2-minute chaos smoke with worker pods, seed 5 (its schedule has all seven faults; root; ISSUELOCK_E2E_NODE=0 skips it).
	@if [[ "$${ISSUELOCK_E2E_NODE:-1}" == 0 ]]; then echo "[chaos-node] skipped (ISSUELOCK_E2E_NODE=0)" >&2; \
	else bash e2e/chaos.sh --node --seeds 1 --first-seed 5 --minutes 2; fi

.PHONY: chaos-sensitivity
chaos-sensitivity: ## Fencing off, whole-tree pauses past the lease: exits 0 only when the checker DOES report violations.
	bash e2e/chaos.sh --seeds 1 --minutes $(or $(SENSITIVITY_MINUTES),2) --profile sensitivity --no-fencing --expect-violations

.PHONY: test-node
test-node: ## The user's story in real pods on a single-node cluster in its own network namespace (root).
	bash e2e/run-node.sh

.PHONY: image
image: ## Build the controller image (OCI archive, no Docker); prints the archive's path last.
	@bash e2e/image.sh controller

.PHONY: bench
bench: ## Print acquire/release latency percentiles and throughput vs raw API calls.
	bash e2e/bench.sh

.PHONY: bench-workers
bench-workers: ## 16 `work` processes over 1,000 issues: shared vs rendezvous order (conflicts, wall time), per-issue overhead.
	bash e2e/bench-workers.sh

.PHONY: bench-scale
bench-scale: ## Print the controller's cost at 1k/10k held locks (RSS, CPU, API writes, restart, reclaim).
	bash e2e/bench-scale.sh

.PHONY: bench-peers
bench-peers: ## issuelock vs the raw API, kube-lease-manager, client-go LeaseLock and Redis (BENCHMARKS.md).
	bash bench/peers/run.sh

.PHONY: assets
assets: ## Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, kubectl, helm, kubelet, kube-scheduler, kube-proxy.
	bash e2e/assets.sh

.PHONY: crds
crds: ## Regenerate crds/ (and the chart's copy) from the Rust types.
	cargo run --quiet -- crd > crds/issuelock.dev_issuelocks.yaml
	cp crds/issuelock.dev_issuelocks.yaml charts/issuelock/files/issuelock.dev_issuelocks.yaml

.PHONY: build
build: ## Build the issuelock binary.
	cargo build
