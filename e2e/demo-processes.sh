#!/usr/bin/env bash
# `make demo-processes` (no root needed): a throwaway control plane, the IssueLock CRD, the reclaiming controller,
# and several worker processes racing over a set of issues with `issuelock run`. One
# worker is SIGKILLed while it holds a lock; the controller reclaims that lock after the
# lease duration and another worker finishes the issue. Each issue must be processed
# exactly once. Prints a `kubectl get issuelocks` snapshot taken while locks are held, the
# reclaim events, a summary, and tears everything down.
set -euo pipefail
set -m  # each background job gets its own process group, so a worker can be killed whole
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/issuelock/target}"

WORKERS="${DEMO_WORKERS:-4}"
ISSUES="${DEMO_ISSUES:-12}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-demo.XXXXXX")"
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  bash e2e/controlplane.sh down "$dir/cp" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

say "building issuelock"
cargo build --quiet
bin="$CARGO_TARGET_DIR/debug/issuelock"

say "starting a local control plane (etcd + kube-apiserver on 127.0.0.1)"
bash e2e/controlplane.sh up "$dir/cp"
# shellcheck disable=SC1091
source "$dir/cp/env"

say "installing the IssueLock CRD"
"$bin" crd | kubectl apply -f -
kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
kubectl create namespace demo >/dev/null

mkdir -p "$dir/done" "$dir/logs"
# The work: skip an issue someone already finished, otherwise "process" it for a moment
# and record who did. Runs only while `issuelock run` holds the issue's lock.
cat > "$dir/work.sh" <<'WORK'
#!/usr/bin/env bash
done_file="$DONE_DIR/$ISSUELOCK_LOCK_NAME"
[[ -e "$done_file" ]] && exit 0
sleep 1.$((RANDOM % 9))
echo "$WORKER token=$ISSUELOCK_FENCING_TOKEN" >> "$done_file"
WORK
chmod +x "$dir/work.sh"

issue_list=()
for i in $(seq 1 "$ISSUES"); do issue_list+=("acme/webshop#$i"); done

# Fast heartbeats so the demo's reclaim takes seconds: lease 6 s, deadline 4 s, renew 1 s.
HEARTBEAT=(--lease-duration-seconds 6 --renew-deadline-seconds 4 --renew-interval-seconds 1)

worker() {
  local w="$1" key name deadline=$((SECONDS + 90))
  while (( SECONDS < deadline )); do
    local pending=0
    for key in $(printf '%s\n' "${issue_list[@]}" | shuf); do
      name="$("$bin" lock-name "$key")"
      [[ -e "$dir/done/$name" ]] && continue
      set +e
      WORKER="worker-$w" DONE_DIR="$dir/done" "$bin" run -n demo --identity "worker-$w" "${HEARTBEAT[@]}" --issue "$key" -- "$dir/work.sh" \
        2>>"$dir/logs/worker-$w.log"
      rc=$?
      set -e
      case $rc in
        0) ;;
        75) pending=1; echo "worker-$w: $key is held by someone else, skipping for now" >>"$dir/logs/worker-$w.log" ;;
        *) pending=1; echo "worker-$w: $key failed with $rc" >>"$dir/logs/worker-$w.log" ;;
      esac
    done
    (( pending )) || return 0
    sleep 0.5
  done
}

say "starting the controller"
"$bin" controller -n demo --http-addr 127.0.0.1:0 2>"$dir/logs/controller.log" &
controller_pid=$!

say "starting $WORKERS worker processes racing over $ISSUES issues"
pids=()
for w in $(seq 1 "$WORKERS"); do worker "$w" & pids+=($!); done

# Snapshot while locks are held, once the controller has marked holders alive.
snapshot=""
for _ in $(seq 100); do
  out="$(kubectl get issuelocks -n demo 2>/dev/null || true)"
  if [[ "$(printf '%s\n' "$out" | wc -l)" -ge 3 ]]; then
    snapshot="$out"
    grep -q True <<<"$out" && break
  fi
  sleep 0.1
done

# Kill worker 1 while it holds a lock: no release, no Lease deletion.
victim_issue=""
for _ in $(seq 200); do
  victim_issue="$(kubectl get issuelocks -n demo -o jsonpath='{range .items[?(@.spec.holder.identity=="worker-1")]}{.spec.issue}{end}' 2>/dev/null || true)"
  [[ -n "$victim_issue" ]] && break
  sleep 0.05
done
disown "${pids[0]}" 2>/dev/null || true  # no "Killed" job notice
kill -KILL -- "-${pids[0]}" 2>/dev/null || true
say "SIGKILLed worker-1 while it held $victim_issue; the controller reclaims it after the 6 s lease"
for p in "${pids[@]:1}"; do wait "$p"; done

say "kubectl get issuelocks -n demo (taken while workers held locks)"
printf '%s\n' "${snapshot:-<no snapshot: the run finished too quickly>}"

say "reclaims (kubectl get events -n demo)"
kubectl get events -n demo --field-selector type=Warning -o custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message
kill "$controller_pid" 2>/dev/null || true

say "summary"
bad=0
for key in "${issue_list[@]}"; do
  name="$("$bin" lock-name "$key")"
  if [[ ! -e "$dir/done/$name" ]]; then
    printf '  %-18s NOT PROCESSED\n' "$key"; bad=1; continue
  fi
  n="$(wc -l < "$dir/done/$name")"
  printf '  %-18s processed %s time(s) by %s\n' "$key" "$n" "$(tr '\n' ' ' < "$dir/done/$name")"
  (( n == 1 )) || bad=1
done
skips="$(cat "$dir"/logs/*.log | grep -c 'held by someone else' || true)"
echo "  $skips acquire attempts found the issue held by another worker and skipped it"
left="$(kubectl get issuelocks -n demo -o name | wc -l)"
echo "  locks left after the run: $left"
if (( bad )) || (( left != 0 )); then
  echo "FAILED: every issue must be processed exactly once and every lock released" >&2
  exit 1
fi
echo "OK: all $ISSUES issues processed exactly once by $WORKERS racing workers, one of them killed mid-run"
