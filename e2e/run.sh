#!/usr/bin/env bash
# Runs the end-to-end suite. With ISSUELOCK_E2E_KUBECONFIG set, against that cluster;
# otherwise against a local control plane started here and stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
here=e2e

if [[ -z "${ISSUELOCK_E2E_KUBECONFIG:-}" ]]; then
  dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-e2e.XXXXXX")"
  trap 'bash "$here/controlplane.sh" down "$dir"' EXIT
  bash "$here/controlplane.sh" up "$dir"
  # shellcheck disable=SC1091
  source "$dir/env"
  export ISSUELOCK_E2E_KUBECONFIG="$KUBECONFIG"
fi
# The Python reference worker (examples/python) races the Rust workers in e2e/tests/interop.rs.
ISSUELOCK_E2E_PYTHON="$(bash "$here/python-env.sh")"
export ISSUELOCK_E2E_PYTHON
echo "[e2e] cluster: $ISSUELOCK_E2E_KUBECONFIG; kubectl: $(command -v kubectl)" >&2
start=$SECONDS
# First the target that needs a cluster without the CRD, then everything else.
cargo test --test e2e_no_crd
cargo test --test e2e -- --test-threads="${ISSUELOCK_E2E_THREADS:-4}"
echo "[e2e] finished in $((SECONDS - start)) s" >&2
