#!/usr/bin/env bash
# Creates (once) the Python virtualenv of examples/python under the cache directory and
# installs its pinned requirements and the e2e suite's (e2e/requirements.txt: a
# Prometheus/OpenMetrics parser); prints the interpreter's path on stdout.
#   python="$(bash e2e/python-env.sh)"
# The venv is rebuilt when either requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[python-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

reqs=(examples/python/requirements.txt e2e/requirements.txt)
venv="${ISSUELOCK_CACHE:-$HOME/.cache/issuelock}/python-venv"
stamp="$venv/.requirements.sha256"
want="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  command -v python3 >/dev/null || { log "error: python3 not found (needed for examples/python)"; exit 1; }
  log "creating $venv from ${reqs[*]}"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "${reqs[0]}" -r "${reqs[1]}" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
