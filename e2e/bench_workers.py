#!/usr/bin/env python3
"""The workers benchmark (run by e2e/bench-workers.sh against a control plane in $KUBECONFIG).

Prints a table: for each candidate order, the wall time of N `issuelock work` processes
over M issues and the conflicts (409s) per processed issue, after checking from the
workers' own records that every issue ran exactly once and no worker ran two commands
at once. Then the per-issue time of one `work` process against the floor: the raw
create + delete of an IssueLock through the same API server (`issuelock bench`).
"""
import argparse
import os
import re
import subprocess
import time

# One record per run: issue, start and end (ns since the epoch), worker.
RECORD = 's=$(date +%s%N); e=$(date +%s%N); echo "$ISSUELOCK_ISSUE $s $e {w}" >> {rec}/{w}'


def kubectl(*args):
    subprocess.run(["kubectl", *args], check=True, stdout=subprocess.DEVNULL)


def run_workers(bin_, scratch, order, workers, issues, command=None):
    ns = f"bench-{order}-{workers}"
    kubectl("create", "namespace", ns)
    base = os.path.join(scratch, ns)
    done, rec = os.path.join(base, "done"), os.path.join(base, "rec")
    os.makedirs(done)
    os.makedirs(rec)
    listing = os.path.join(base, "issues.txt")
    with open(listing, "w") as f:
        f.writelines(f"org/repo#{i}\n" for i in range(issues))
    procs = []
    start = time.monotonic()
    for w in range(workers):
        cmd = command or ["sh", "-c", RECORD.format(w=f"w{w}", rec=rec)]
        procs.append(subprocess.Popen(
            [bin_, "work", "-n", ns, "--identity", f"w{w}", "--order", order,
             "--issues", listing, "--done-dir", done, "--", *cmd],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RUST_LOG": "warn"}))
    conflicts = 0
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker exited {p.returncode}:\n{err}")
        m = re.search(r"; (\d+) conflicts \(409\)", err)
        conflicts += int(m.group(1))
    wall = time.monotonic() - start
    if command is None:
        check_exactly_once(rec, issues)
    left = subprocess.run(["kubectl", "get", "issuelocks", "-n", ns, "-o", "name"],
                          check=True, capture_output=True, text=True).stdout.split()
    if left:
        raise SystemExit(f"locks left in {ns}: {left}")
    kubectl("delete", "namespace", ns, "--wait=false")
    return wall, conflicts


def check_exactly_once(rec, issues):
    runs = {}
    by_worker = {}
    for name in os.listdir(rec):
        with open(os.path.join(rec, name)) as f:
            for line in f:
                issue, s, e, w = line.split()
                runs.setdefault(issue, []).append((int(s), int(e), w))
                by_worker.setdefault(w, []).append((int(s), int(e)))
    for i in range(issues):
        got = runs.get(f"org/repo#{i}", [])
        if len(got) != 1:
            raise SystemExit(f"org/repo#{i} ran {len(got)} times: {got}")
    if len(runs) != issues:
        raise SystemExit(f"unexpected issues ran: {sorted(set(runs) - {f'org/repo#{i}' for i in range(issues)})}")
    for w, intervals in by_worker.items():
        intervals.sort()
        for a, b in zip(intervals, intervals[1:]):
            if a[1] > b[0]:
                raise SystemExit(f"{w} ran two commands at once: {a} {b}")


def floor(bin_, scratch):
    kubectl("create", "namespace", "bench-floor")
    out = subprocess.run([bin_, "bench", "-n", "bench-floor", "--identity", "floor",
                          "--iterations", "500", "--concurrency", "1"],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "RUST_LOG": "warn"}).stdout
    p50 = {}
    for line in out.splitlines():
        m = re.match(r"raw (create|delete) \(floor\)\s+([\d.]+)", line.strip())
        if m:
            p50[m.group(1)] = float(m.group(2))
    return p50, out


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--bin", required=True)
    a.add_argument("--scratch", required=True)
    a.add_argument("--workers", type=int, default=16)
    a.add_argument("--issues", type=int, default=1000)
    args = a.parse_args()
    print(f"{args.workers} workers over {args.issues} issues, each `issuelock work --done-dir` "
          "running a shell command that records its run; exactly-once checked from the records\n")
    print("| order | wall (s) | issues/s | conflicts (409) | conflicts per issue |")
    print("| --- | --- | --- | --- | --- |")
    results = {}
    for order in ["listed", "rendezvous"]:
        wall, conflicts = run_workers(args.bin, args.scratch, order, args.workers, args.issues)
        results[order] = conflicts
        print(f"| {order} | {wall:.1f} | {args.issues / wall:.1f} | {conflicts} | "
              f"{conflicts / args.issues:.3f} |", flush=True)
    ratio = results["listed"] / max(results["rendezvous"], 1)
    print(f"\nconflicts, listed / rendezvous: {ratio:.1f}x"
          + (" (rendezvous had none; ratio against 1)" if results["rendezvous"] == 0 else ""))

    n = 200
    p50, _ = floor(args.bin, args.scratch)
    wall, _ = run_workers(args.bin, args.scratch, "rendezvous", 1, n, command=["true"])
    per_issue = wall * 1000 / n
    raw = p50.get("create", 0) + p50.get("delete", 0)
    print(f"\none `work` over {n} issues running `true`: {per_issue:.1f} ms per issue; floor (raw "
          f"create p50 {p50.get('create', 0):.2f} ms + raw delete p50 {p50.get('delete', 0):.2f} ms, "
          f"sequential): {raw:.2f} ms; ratio {per_issue / raw:.1f}x; overhead beyond create + "
          f"delete {per_issue - raw:.1f} ms per issue (the command's supervisor and process, the "
          "done file, the claim)")


if __name__ == "__main__":
    main()
