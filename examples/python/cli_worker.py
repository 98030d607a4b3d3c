"""A Python worker that uses the issuelock CLI (no Kubernetes client needed).

    python examples/python/cli_worker.py NAMESPACE ISSUES_FILE DONE_DIR

`issuelock work` claims the issues of ISSUES_FILE one after another (each exactly once
across every worker sharing DONE_DIR) and runs this same script with `process` for each,
under the issue's lock; `process` is where the work goes. Set ISSUELOCK_BIN to the
binary's path if `issuelock` is not on PATH.
"""

import os
import subprocess
import sys


def process(issue: str, fencing_token: str) -> int:
    """The work on one issue, while its lock is held; exit status 0 marks it done."""
    # ... the real work goes here; pass fencing_token to storage that checks it ...
    print(f"processed {issue} (fencing token {fencing_token})", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["process"]:
        return process(os.environ["ISSUELOCK_ISSUE"], os.environ["ISSUELOCK_FENCING_TOKEN"])
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    namespace, issues, done_dir = argv[1:]
    issuelock = os.environ.get("ISSUELOCK_BIN", "issuelock")
    finished = subprocess.run(
        [issuelock, "work", "-n", namespace, "--issues", issues, "--done-dir", done_dir,
         "--", sys.executable, os.path.abspath(__file__), "process"])
    # 0: every issue done; 3: some command failed; 76: heartbeat lost; 128+n: signal n.
    return finished.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
