# `work --done-cmd` of the chaos soak in a worker pod (node lane; busybox sh): an issue is
# done once the oracle accepted a write for it. Exits 0 done, 1 not done, 2 when the oracle
# cannot be asked.
#   sh chaos-pod-done.sh ORACLE_HOST ORACLE_PORT      (ISSUELOCK_ISSUE set)
code="$(printf 'GET /done?issue=%s HTTP/1.0\r\n\r\n' "${ISSUELOCK_ISSUE//#/%23}" |
  busybox nc -w 5 "$1" "$2" 2>/dev/null | { read -r _ code _; echo "$code"; })"
case "$code" in 200) exit 0 ;; 404) exit 1 ;; *) exit 2 ;; esac
