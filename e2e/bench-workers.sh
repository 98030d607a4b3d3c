#!/usr/bin/env bash
# `make bench-workers`: 16 `issuelock work` processes over 1,000 issues, the list's shared
# order against rendezvous order (exactly-once checked from the workers' own records),
# and the per-issue overhead of one `work` against the floor (raw create + delete), on a
# throwaway local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}"
dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-bench-workers.XXXXXX")"
trap 'bash e2e/controlplane.sh down "$dir/cp" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
cargo build --release --quiet
bash e2e/controlplane.sh up "$dir/cp"
# shellcheck disable=SC1091
source "$dir/cp/env"
bin="$CARGO_TARGET_DIR/release/issuelock"
"$bin" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
python3 e2e/bench_workers.py --bin "$bin" --scratch "$dir" \
  --workers "${BENCH_WORKERS:-16}" --issues "${BENCH_ISSUES:-1000}" \
  --parts "${BENCH_PARTS:-wait,workers,overhead}"
