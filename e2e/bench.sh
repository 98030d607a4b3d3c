#!/usr/bin/env bash
# `make bench`: acquire/release latency and throughput against the floor (the same raw
# API calls through the same API server), on a throwaway local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}"
dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-bench.XXXXXX")"
trap 'bash e2e/controlplane.sh down "$dir/cp" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
cargo build --release --quiet
bash e2e/controlplane.sh up "$dir/cp"
# shellcheck disable=SC1091
source "$dir/cp/env"
"$CARGO_TARGET_DIR/release/issuelock" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
kubectl create namespace bench >/dev/null
RUST_LOG=warn "$CARGO_TARGET_DIR/release/issuelock" bench -n bench --identity bench \
  --iterations "${BENCH_ITERATIONS:-1000}" --concurrency "${BENCH_CONCURRENCY:-8}"
