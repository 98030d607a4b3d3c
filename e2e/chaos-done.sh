#!/usr/bin/env bash
# `work --done-cmd` of the chaos soak: an issue is done once the oracle accepted a write
# for it. Exits 0 done, 1 not done, 2 when the oracle cannot be asked.
#   chaos-done.sh ORACLE_URL      (ISSUELOCK_ISSUE set)
set -u
[[ -n "${CHAOS_UNSET_PRELOAD:-}" ]] && unset LD_PRELOAD
code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' \
  "$1/done?issue=${ISSUELOCK_ISSUE//#/%23}")"
case "$code" in 200) exit 0 ;; 404) exit 1 ;; *) exit 2 ;; esac
