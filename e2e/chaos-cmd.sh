#!/usr/bin/env bash
# The chaos soak's work, run by `issuelock work` under the issue's lock: read from the
# oracle, sleep (the work), write to the oracle with the fencing token. Exits 0 when the
# write was accepted, 1 when the oracle refused it (a stale token) or could not be reached.
#   chaos-cmd.sh ORACLE_URL      (ISSUELOCK_ISSUE, ISSUELOCK_FENCING_TOKEN, WORKER set)
set -u
[[ -n "${CHAOS_UNSET_PRELOAD:-}" ]] && unset LD_PRELOAD  # the wall-clock offset is for `work` only
oracle="$1"
q="issue=${ISSUELOCK_ISSUE//#/%23}&token=$ISSUELOCK_FENCING_TOKEN&worker=$WORKER&pid=$$"
curl -fsS --max-time 5 -o /dev/null "$oracle/read?$q" || exit 1
ms=$(( ${CHAOS_SLEEP_MS:-1500} / 2 + RANDOM % (${CHAOS_SLEEP_MS:-1500} + 1) ))
sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
curl -fsS --max-time 5 -o /dev/null "$oracle/write?$q"
