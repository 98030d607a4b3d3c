#!/usr/bin/env bash
# `make bench-scale`: the controller at scale (benches/scale.rs) on a throwaway local
# control plane: held locks over many holders, controller RSS/CPU, API writes by the
# controller and the holders, restart time, reclaim latency, live locks reclaimed.
#
#   BENCH_SCALE_SIZES     LOCKS/HOLDERS,...   default 1000/100,10000/200
#   BENCH_SCALE_BASELINE  a git revision whose controller is measured first, for a
#                         before/after comparison (built from `git archive`)
#   BENCH_SCALE_BASELINE_SIZE  LOCKS/HOLDERS of that run, default 2000/100
#   BENCH_SCALE_WINDOW    seconds of the steady-state window, default 30
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}"
dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-bench-scale.XXXXXX")"
trap 'bash e2e/controlplane.sh down "$dir/cp" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
baseline=()
if [[ -n "${BENCH_SCALE_BASELINE:-}" ]]; then
  mkdir -p "$dir/baseline"
  git archive "$BENCH_SCALE_BASELINE" | tar -x -C "$dir/baseline"
  (cd "$dir/baseline" && cargo build --release --quiet)
  cp "$CARGO_TARGET_DIR/release/issuelock" "$dir/issuelock-baseline"
  baseline=(--baseline "$dir/issuelock-baseline" --baseline-size "${BENCH_SCALE_BASELINE_SIZE:-2000/100}")
fi
cargo build --release --quiet
cp "$CARGO_TARGET_DIR/release/issuelock" "$dir/issuelock"
cargo bench --quiet --bench scale --no-run
bash e2e/controlplane.sh up "$dir/cp"
# shellcheck disable=SC1091
source "$dir/cp/env"
"$dir/issuelock" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
cargo bench --quiet --bench scale -- --controller "$dir/issuelock" "${baseline[@]}" \
  --sizes "${BENCH_SCALE_SIZES:-1000/100,10000/200}" --window "${BENCH_SCALE_WINDOW:-30}"
