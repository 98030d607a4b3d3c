#!/usr/bin/env bash
# The node tier of the end-to-end suite: a single-node cluster sealed in a network
# namespace (e2e/node.sh), the controller and example worker images (e2e/image.sh), and
# e2e/tests/node.rs: the user's story in real pods. Runs after the process-level suite
# (e2e/run.sh), which stays the fast tier. ISSUELOCK_E2E_NODE=0 skips it.
#
# Teardown runs on success and on failure, and is checked: mounts, network namespaces,
# network interfaces, host iptables rules, cgroups and node processes are counted before
# the node starts and after it is gone; any difference fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
here=e2e

if [[ "${ISSUELOCK_E2E_NODE:-1}" == 0 ]]; then
  echo "[node] skipped (ISSUELOCK_E2E_NODE=0)" >&2
  exit 0
fi
start=$SECONDS
# Root and the OS packages (installed when missing) before anything else: the images need
# umoci and skopeo.
bash "$here/node.sh" prereqs
# The images and the test binary first: cargo may need the network, the node has none.
controller_image="$(bash "$here/image.sh" controller | tail -n1)"
worker_image="$(bash "$here/image.sh" worker | tail -n1)"
cargo test --no-run --test e2e_node

before="$(bash "$here/node.sh" census)"
dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-node.XXXXXX")"
finish() {
  local rc=$? after
  bash "$here/node.sh" down "$dir" || rc=1
  after="$(bash "$here/node.sh" census)"
  if [[ "$before" != "$after" ]]; then
    echo "[node] teardown left something behind (before → after):" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    rc=1
  else
    echo "[node] teardown left nothing behind: $(echo "$after" | paste -sd, -)" >&2
  fi
  echo "[node] finished in $((SECONDS - start)) s (exit $rc)" >&2
  exit "$rc"
}
trap finish EXIT

bash "$here/node.sh" up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
bash "$here/node.sh" import "$dir" "$controller_image" "$worker_image"
ISSUELOCK_E2E_KUBECONFIG="$KUBECONFIG" nsenter --net="$ISSUELOCK_NODE_NETNS" \
  cargo test --offline --test e2e_node -- --nocapture --test-threads=1
