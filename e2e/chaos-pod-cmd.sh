# The chaos soak's work in a worker pod (node lane): chaos-cmd.sh for busybox sh, which the
# example worker image has (no bash, no curl: HTTP/1.0 through `busybox nc`). Exits 0 when
# the oracle accepted the write, 1 when it refused it (a stale token) or could not be reached.
#   sh chaos-pod-cmd.sh ORACLE_HOST ORACLE_PORT
#   (ISSUELOCK_ISSUE, ISSUELOCK_FENCING_TOKEN, POD_NAME and CHAOS_SLEEP_MS set)
host="$1" port="$2"
# PATH → the oracle's HTTP status code, empty when it could not be reached.
status() {
  printf 'GET %s HTTP/1.0\r\n\r\n' "$1" | busybox nc -w 5 "$host" "$port" 2>/dev/null |
    { read -r _ code _; echo "$code"; }
}
# pid: the command's pid is unique within its container only.
q="issue=${ISSUELOCK_ISSUE//#/%23}&token=$ISSUELOCK_FENCING_TOKEN&worker=$POD_NAME&pid=$POD_NAME.$$"
[ "$(status "/read?$q")" = 200 ] || exit 1
ms=$(( ${CHAOS_SLEEP_MS:-1500} / 2 + RANDOM % (${CHAOS_SLEEP_MS:-1500} + 1) ))
sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
[ "$(status "/write?$q")" = 200 ]
