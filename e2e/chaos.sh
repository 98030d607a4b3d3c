#!/usr/bin/env bash
# The seeded chaos soak (`make chaos`, `make chaos-sensitivity`, `make test-chaos`): builds
# issuelock, starts a local control plane (e2e/controlplane.sh), installs the CRD, and runs
# e2e/chaos.py with the arguments given (see `e2e/chaos.py --help`). Clock jumps need
# libfaketime: installed from Debian's `faketime` package when missing and running as root
# (skipped, and said so, otherwise). The last line is the checker's summary.
#   bash e2e/chaos.sh --seeds 3 --minutes 5
#   bash e2e/chaos.sh --print-schedule --first-seed 7 --minutes 5
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}"
log() { printf '[chaos.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ " $* " == *" --print-schedule "* ]]; then
  exec python3 e2e/chaos.py --controlplane - --bin - --kubectl - --workdir - "$@"
fi

if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing libfaketime (Debian package faketime) for the clock-jump fault"
    apt-get install -y -q faketime >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q faketime >/dev/null 2>&1; } ||
      log "could not install faketime: clock jumps will be skipped"
  else
    log "libfaketime missing: clock jumps will be skipped"
  fi
fi
for tool in curl python3; do command -v "$tool" >/dev/null || { log "error: $tool not found"; exit 1; }; done

log "building issuelock"
cargo build --quiet
bin="$CARGO_TARGET_DIR/debug/issuelock"

dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-chaos.XXXXXX")"
keep="${CHAOS_KEEP:-}"
trap 'bash e2e/controlplane.sh down "$dir/cp" >/dev/null 2>&1 || true; [[ -n "$keep" ]] || rm -rf "$dir"' EXIT
# A copy: a rebuild during the soak must not change the binary restarted workers run.
cp "$bin" "$dir/issuelock"
bin="$dir/issuelock"
bash e2e/controlplane.sh up "$dir/cp"
# shellcheck disable=SC1091
source "$dir/cp/env"
"$bin" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
log "work directory $dir (kept after a failure or with CHAOS_KEEP=1: logs, oracle history)"
rc=0
python3 -u e2e/chaos.py --controlplane "$dir/cp" --bin "$bin" --kubectl "$(command -v kubectl)" \
  --workdir "$dir/runs" "$@" || rc=$?
(( rc == 0 )) || keep=1  # chaos.py named the directory kept for the post-mortem
exit "$rc"
