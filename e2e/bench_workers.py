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
import socket
import subprocess
import threading
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


class CountingProxy:
    """`kubectl proxy` with a TCP forwarder in front that records every request line."""

    METHODS = (b"GET /", b"POST /", b"PUT /", b"PATCH /", b"DELETE /")

    def __init__(self, scratch):
        upstream = free_port()
        self.kubectl = subprocess.Popen(
            ["kubectl", "proxy", "--address", "127.0.0.1", "--port", str(upstream)],
            stdout=subprocess.DEVNULL)
        self.upstream = ("127.0.0.1", upstream)
        for _ in range(300):
            try:
                socket.create_connection(self.upstream).close()
                break
            except OSError:
                time.sleep(0.1)
        self.requests = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()
        self.kubeconfig = os.path.join(scratch, "counted-kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{self.port}"}}}}]
users: [{{name: u, user: {{}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")

    def accept(self):
        while True:
            inbound, _ = self.listener.accept()
            outbound = socket.create_connection(self.upstream)
            threading.Thread(target=self.pipe, args=(outbound, inbound, False), daemon=True).start()
            threading.Thread(target=self.pipe, args=(inbound, outbound, True), daemon=True).start()

    def pipe(self, src, dst, count):
        line = b""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if not count:
                    continue
                *lines, line = (line + data).split(b"\n")
                for l in lines:
                    l = l.rstrip(b"\r")
                    if l.endswith(b" HTTP/1.1"):
                        at = max((l.rfind(m) for m in self.METHODS), default=-1)
                        if at >= 0:
                            self.requests.append(l[at:-len(b" HTTP/1.1")].decode(errors="replace"))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.kubectl.kill()
        self.kubectl.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waiter(bin_, scratch, wait_s):
    """A `run --wait` waiter behind a counting proxy while a holder keeps the lock."""
    ns = "bench-wait"
    kubectl("create", "namespace", ns)
    stop = os.path.join(scratch, "stop-holder")
    holder = subprocess.Popen(
        [bin_, "run", "-n", ns, "--identity", "holder", "--issue", "org/repo#w", "--",
         "sh", "-c", f"while [ ! -e {stop} ]; do sleep 0.05; done"],
        stderr=subprocess.DEVNULL)
    while subprocess.run(["kubectl", "get", "issuelocks", "-n", ns, "-o", "name"],
                         capture_output=True, text=True).stdout.strip() == "":
        time.sleep(0.1)
    proxy = CountingProxy(scratch)
    waiter = subprocess.Popen(
        [bin_, "run", "-n", ns, "--identity", "waiter", "--issue", "org/repo#w",
         "--wait", f"{wait_s + 60}s", "--", "true"],
        stderr=subprocess.DEVNULL, env={**os.environ, "KUBECONFIG": proxy.kubeconfig})
    while not any("watch=true" in r and "fieldSelector" in r for r in proxy.requests):
        time.sleep(0.1)
    before = len(proxy.requests)
    time.sleep(wait_s)
    during = proxy.requests[before:]
    open(stop, "w").close()
    holder.wait()
    waiter.wait()
    proxy.close()
    kubectl("delete", "namespace", ns, "--wait=false")
    locks = [r for r in during if "/issuelocks" in r]
    leases = [r for r in during if "/leases" in r]
    print(f"\na `run --wait` waiter over {wait_s} s of waiting (after its watch opened): "
          f"{len(during)} API requests, of which {len(locks)} on locks {locks} and "
          f"{len(leases)} heartbeat renewals of its Lease (every 2 s, as for any holder); "
          f"exit status {waiter.returncode}")


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--bin", required=True)
    a.add_argument("--scratch", required=True)
    a.add_argument("--workers", type=int, default=16)
    a.add_argument("--issues", type=int, default=1000)
    a.add_argument("--parts", default="workers,overhead,wait")
    a.add_argument("--wait-seconds", type=int, default=60)
    args = a.parse_args()
    parts = args.parts.split(",")
    if "wait" in parts:
        waiter(args.bin, args.scratch, args.wait_seconds)
    if "workers" not in parts:
        return
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

    if "overhead" not in parts:
        return
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
