#!/usr/bin/env bash
# `make demo`: the user's story in real pods. A throwaway single-node cluster sealed in a
# network namespace (e2e/node.sh; needs root), the controller image and the example worker
# image built without Docker (e2e/image.sh), the controller installed with Helm, the
# example worker Deployment (examples/worker/worker.yaml) racing over issues with
# `issuelock run`. While one worker pod holds a lock its node goes dark (the kubelet is
# stopped) and the pod is force-deleted; the controller reclaims the lock at once and
# another worker finishes the issue. Each issue must be processed exactly once. Prints the pods, a `kubectl get
# issuelocks` snapshot taken while locks are held, the reclaim Events and a summary, and
# tears everything down. Without root: `make demo-processes`.
set -euo pipefail
cd "$(dirname "$0")/.."
here=e2e
ISSUES="${DEMO_ISSUES:-12}"
REPLICAS="${DEMO_WORKERS:-3}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
(( EUID == 0 )) || { echo "make demo starts a node and needs root; without root run: make demo-processes" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}"
bash "$here/node.sh" prereqs
say "building the controller and example worker images (no Docker)"
controller_image="$(bash "$here/image.sh" controller | tail -n1)"
worker_image="$(bash "$here/image.sh" worker | tail -n1)"
cargo build --quiet
bin="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}/debug/issuelock"

dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-demo.XXXXXX")"
trap 'bash "$here/node.sh" down "$dir/node" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

say "starting a single-node cluster in its own network namespace (no route out)"
bash "$here/node.sh" up "$dir/node"
# shellcheck disable=SC1091
source "$dir/node/env"
bash "$here/node.sh" import "$dir/node" "$controller_image" "$worker_image"
in_node() { nsenter --net="$ISSUELOCK_NODE_NETNS" "$@"; }
k() { in_node kubectl "$@"; }

k create namespace workers >/dev/null
say "helm install issuelock charts/issuelock -n issuelock-system (image $(basename "$controller_image"))"
in_node helm install issuelock charts/issuelock -n issuelock-system --create-namespace \
  --set 'workers[0].namespace=workers,workers[0].serviceAccount=issue-worker' \
  --set image.pullPolicy=Never --wait --timeout 240s >/dev/null
k get pods -n issuelock-system -o wide
echo "leader: $(k get lease issuelock-controller -n issuelock-system -o jsonpath='{.spec.holderIdentity}')"

say "the example worker Deployment: $REPLICAS pods racing over $ISSUES issues"
done_dir="$dir/node/done"
mkdir -p "$done_dir" && chown 65532:65532 "$done_dir"
issues=""
for i in $(seq 1 "$ISSUES"); do issues+="    acme/webshop#$i"$'\n'; done
python3 - examples/worker/worker.yaml "$done_dir" "$REPLICAS" "$issues" >"$dir/worker.yaml" <<'PY'
import re, sys
manifest, done, replicas, issues = sys.argv[1:5]
y = open(manifest).read().replace("/var/tmp/issuelock-example-done", done)
y = re.sub(r"(  issues: \|\n)(    .*\n)+", lambda m: m.group(1) + issues, y)
y = y.replace("  replicas: 3\n", f"  replicas: {replicas}\n")
# Longer holds than the example's, so that the demo catches a worker holding a lock.
y = y.replace('value: "2"  # WORK_SECONDS', 'value: "3"  # WORK_SECONDS')
sys.stdout.write(y)
PY
k apply -n workers -f "$dir/worker.yaml" >/dev/null
k rollout status deployment/issue-worker -n workers --timeout=180s >/dev/null
k get pods -n workers -o wide

# A snapshot while workers hold locks, then the pod holding one loses its node.
snapshot="" victim="" victim_issue=""
for _ in $(seq 600); do
  held="$(k get issuelocks -n workers -o jsonpath='{range .items[*]}{.spec.holder.identity} {.spec.issue}{"\n"}{end}' 2>/dev/null | head -n1 || true)"
  if [[ -n "$held" ]]; then
    snapshot="$(k get issuelocks -n workers 2>/dev/null || true)"
    read -r victim victim_issue <<<"$held"
    break
  fi
  sleep 0.05
done
[[ -n "$victim" ]] || { echo "FAILED: no worker was seen holding a lock" >&2; exit 1; }
if [[ -n "$victim" ]]; then
  # The node goes dark (kubelet stopped) and the pod is force-deleted: the worker process
  # still runs and heartbeats, only its pod is gone, and the controller must notice.
  kubelet_pid="$(cat "$ISSUELOCK_NODE_DIR/kubelet.pid")"
  kill -STOP "$kubelet_pid"
  k delete pod "$victim" -n workers --grace-period=0 --force >/dev/null 2>&1
  say "node dark, worker pod $victim force-deleted while it held $victim_issue; the controller reclaims it"
  for _ in $(seq 100); do
    k get issuelocks -n workers -o jsonpath='{.items[*].spec.holder.identity}' | grep -qw "$victim" || break
    sleep 0.1
  done
  kill -CONT "$kubelet_pid"
fi

# Until every issue is done (the Deployment replaces the deleted pod meanwhile).
bad=0
deadline=$((SECONDS + 240))
while (( SECONDS < deadline )); do
  n=0
  for i in $(seq 1 "$ISSUES"); do [[ -e "$done_dir/$("$bin" lock-name "acme/webshop#$i")" ]] && n=$((n + 1)); done
  (( n == ISSUES )) && break
  sleep 1
done

say "kubectl get issuelocks -n workers (taken while workers held locks)"
printf '%s\n' "${snapshot:-<no snapshot: the run finished too quickly>}"

say "reclaims (kubectl get events -n workers)"
k get events -n workers --field-selector type=Warning,involvedObject.kind=IssueLock -o custom-columns=REASON:.reason,OBJECT:.involvedObject.name,REPORTED-BY:.reportingInstance,MESSAGE:.message

say "summary"
for i in $(seq 1 "$ISSUES"); do
  key="acme/webshop#$i"
  f="$done_dir/$("$bin" lock-name "$key")"
  if [[ ! -e "$f" ]]; then printf '  %-18s NOT PROCESSED\n' "$key"; bad=1; continue; fi
  n="$(wc -l <"$f")"
  printf '  %-18s processed %s time(s): %s\n' "$key" "$n" "$(tr '\n' ' ' <"$f" | sed 's/processed [^ ]* //')"
  (( n == 1 )) || bad=1
done
skips="$(k logs -n workers -l app.kubernetes.io/name=issue-worker --tail=-1 2>/dev/null | grep -c 'another worker holds it' || true)"
echo "  $skips acquire attempts (in the surviving pods' logs) found the issue held by another worker"
left="$(k get issuelocks -n workers -o name | wc -l)"
echo "  locks left after the run: $left"
reclaims="$(k get events -n workers --field-selector reason=HolderPodDeleted -o name | wc -l)"
echo "  locks reclaimed because their holder's pod was deleted: $reclaims"
if (( bad )) || (( left != 0 )); then
  echo "FAILED: every issue must be processed exactly once and every lock released" >&2
  exit 1
fi
echo "OK: all $ISSUES issues processed exactly once by $REPLICAS worker pods; $victim was deleted while it held $victim_issue"
