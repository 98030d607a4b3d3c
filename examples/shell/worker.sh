#!/bin/sh
# A shell worker: processes the issues listed in ISSUES_FILE (one key per line), each
# exactly once across every worker running this script against the same DONE_DIR.
#
#   examples/shell/worker.sh NAMESPACE ISSUES_FILE DONE_DIR
#
# `issuelock work` claims the next issue (this worker's own order, skipping issues held by
# others and issues with a file in DONE_DIR), runs the command below under its lock (the
# command's whole process tree is stopped if the lock is lost), creates DONE_DIR/<lock
# name> when the command exits 0, and exits when no issue is left.
set -eu
namespace=$1 issues=$2 done_dir=$3
exec issuelock work -n "$namespace" --issues "$issues" --done-dir "$done_dir" -- sh -c '
  # The real work goes here. The lock is held while this runs.
  echo "processing $ISSUELOCK_ISSUE (lock $ISSUELOCK_LOCK_NAME, fencing token $ISSUELOCK_FENCING_TOKEN)"
'
