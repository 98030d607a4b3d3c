#!/usr/bin/env bash
# The seeded chaos soak (`make chaos`, `make chaos-sensitivity`, `make test-chaos`): builds
# issuelock, starts a local control plane (e2e/controlplane.sh), installs the CRD, and runs
# e2e/chaos.py with the arguments given (see `e2e/chaos.py --help`). Clock jumps need
# libfaketime: installed from Debian's `faketime` package when missing and running as root
# (skipped, and said so, otherwise). The last line is the checker's summary.
# With --node (root): the workers are pods of the example worker image on a single-node
# cluster of its own (e2e/node.sh), the controller is installed with Helm, and the holder
# faults hit pods and containers (e2e/chaos.py's NodeSoak); one lane (one kubelet per machine).
#   bash e2e/chaos.sh --seeds 3 --minutes 5
#   bash e2e/chaos.sh --node --seeds 3 --minutes 5
#   bash e2e/chaos.sh --print-schedule --first-seed 7 --minutes 5 [--profile node]
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

# --jobs J runs the seeds in J lanes at once, each on a control plane of its own (the
# seeds are split into J runs of consecutive seeds); the verdict is over all of them.
jobs=1 seeds=1 first=1 node=0 args=()
while (( $# )); do
  case "$1" in
    --node) node=1; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --first-seed) first="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
(( jobs >= 1 && seeds >= 1 )) || { log "error: --jobs and --seeds must be at least 1"; exit 2; }
(( jobs <= seeds )) || jobs="$seeds"
if (( node )); then
  (( jobs == 1 )) || { log "error: --node runs one lane (one kubelet per machine)"; exit 2; }
  bash e2e/node.sh prereqs
  # The images before the node: their build may need the network, the node has none.
  controller_image="$(bash e2e/image.sh controller | tail -n1)"
  worker_image="$(bash e2e/image.sh worker | tail -n1)"
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-chaos.XXXXXX")"
keep="${CHAOS_KEEP:-}"
lanes=()
census_before=""
cleanup() {
  local rc=$?
  for pid in "${lanes[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for cp in "$dir"/cp*; do [[ -d "$cp" ]] && { bash e2e/controlplane.sh down "$cp" >/dev/null 2>&1 || true; }; done
  if [[ -d "$dir/node" ]]; then
    bash e2e/node.sh down "$dir/node" >/dev/null 2>&1 || rc=1
  fi
  # The node lane must leave the machine as it found it (mounts, netns, links, iptables
  # rules, cgroups, node processes), as the node tier's teardown does.
  if [[ -n "$census_before" ]]; then
    local after
    after="$(bash e2e/node.sh census)"
    if [[ "$census_before" != "$after" ]]; then
      log "error: the node's teardown left something behind (before → after):"
      diff <(echo "$census_before") <(echo "$after") >&2 || true
      rc=1
    fi
  fi
  [[ -n "$keep" ]] || rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# A copy: a rebuild during the soak must not change the binary restarted workers run.
cp "$bin" "$dir/issuelock"
bin="$dir/issuelock"
log "work directory $dir (kept after a failure or with CHAOS_KEEP=1: logs, oracle histories)"

# lane J FIRST N: a control plane of its own, the CRD, then seeds FIRST..FIRST+N-1.
lane() {
  local j="$1" cp="$dir/cp$1"
  bash e2e/controlplane.sh up "$cp"
  # shellcheck disable=SC1091
  source "$cp/env"
  "$bin" crd | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
  exec python3 -u e2e/chaos.py --controlplane "$cp" --bin "$bin" --kubectl "$(command -v kubectl)" \
    --workdir "$dir/runs" --first-seed "$2" --seeds "$3" --results "$dir/results$j.json" "${args[@]}"
}

# The node lane: a single-node cluster, the controller from the chart (leader election
# timed like the process lane's), then the seeds with worker pods.
node_lane() {
  bash e2e/node.sh up "$dir/node"
  # shellcheck disable=SC1091
  source "$dir/node/env"
  bash e2e/node.sh import "$dir/node" "$controller_image" "$worker_image"
  local in_node=(nsenter --net="$ISSUELOCK_NODE_NETNS")
  log "helm install issuelock charts/issuelock -n issuelock-system"
  "${in_node[@]}" helm install issuelock charts/issuelock -n issuelock-system --create-namespace \
    --set image.pullPolicy=Never --set controller.leaderElection.leaseDurationSeconds=6 \
    --set controller.leaderElection.renewDeadlineSeconds=4 --wait --timeout 240s >/dev/null
  exec "${in_node[@]}" python3 -u e2e/chaos.py --node "$dir/node" --controlplane "$dir/node/cp" \
    --worker-image "$(bash e2e/image.sh name worker)" --bin "$bin" --kubectl "$(command -v kubectl)" \
    --workdir "$dir/runs" --first-seed "$1" --seeds "$2" --results "$dir/results0.json" "${args[@]}"
}

if (( node )); then
  census_before="$(bash e2e/node.sh census)"
  rc=0
  ( node_lane "$first" "$seeds" ) || rc=$?
  (( rc == 0 )) || keep=1
  exit "$rc"
fi

if (( jobs == 1 )); then
  rc=0
  ( lane 0 "$first" "$seeds" ) || rc=$?
  (( rc == 0 )) || keep=1  # chaos.py named the directory kept for the post-mortem
  exit "$rc"
fi

per=$(( (seeds + jobs - 1) / jobs ))
for (( j = 0; j < jobs; j++ )); do
  n=$(( seeds - j * per < per ? seeds - j * per : per ))
  (( n > 0 )) || break
  log "lane $j: seeds $(( first + j * per ))..$(( first + j * per + n - 1 )), log $dir/lane$j.log"
  ( lane "$j" $(( first + j * per )) "$n" ) >"$dir/lane$j.log" 2>&1 &
  lanes+=("$!")
done
# Progress: each seed's line (and what its checker reported) as its lane finishes it.
touch "$dir/progress.shown"
progress() {
  grep -h -E '^(chaos seed|  (SLOW|OVERLAP|STALE|NOT|LEAKED|WORKER))' "$dir"/lane*.log 2>/dev/null | sort >"$dir/progress.new" || true
  comm -13 "$dir/progress.shown" "$dir/progress.new" || true
  mv "$dir/progress.new" "$dir/progress.shown"
}
while :; do
  alive=0
  for pid in "${lanes[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  progress
  (( alive )) || break
  sleep 5
done
failed=0 started=${#lanes[@]}
for pid in "${lanes[@]}"; do wait "$pid" || failed=1; done
lanes=()
shopt -s nullglob
results=("$dir"/results*.json)
rc=0
python3 e2e/chaos.py --controlplane - --bin - --kubectl - --workdir "$dir/runs" \
  --summarize "${results[@]}" "${args[@]}" || rc=$?
if (( ${#results[@]} != started )); then
  log "error: only ${#results[@]} of $started lanes finished (see $dir/lane*.log)"
  rc=1
fi
(( rc == 0 && failed == 0 )) || keep=1
exit "$rc"
