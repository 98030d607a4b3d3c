#!/usr/bin/env python3
"""Seeded chaos soak of issuelock with a mutual-exclusion checker (run by e2e/chaos.sh).

For each seed: W real `issuelock work` processes (each through a TCP proxy of its own to
the API server, one of them under a wall-clock offset) work over issues fed to them while
two controller replicas elect a leader, and a nemesis whose schedule is derived from the
seed alone kills, pauses, partitions and restarts things. Under its lock each worker's
command reads from, sleeps, then writes to the oracle (an HTTP service in this process)
which records every read and write with the fencing token and rejects a write whose token
is lower than the highest it has seen for that issue (unless fencing is off). The checker
then counts, from the oracle's history alone:

  overlaps               pairs of commands on one issue whose read..write intervals overlap
  stale_writes_accepted  writes accepted although a higher token had been seen for the issue
  not_exactly_once       issues fed whose accepted writes are not exactly one
  leaked                 IssueLocks and holder Leases left after quiescence
  recovery               SIGKILL of a holder -> next read of its issue (p50/p99)

Only the standard library is used.
"""

import argparse
import calendar
import http.server
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
LEASE = 6
RENEW_DEADLINE = 4
HEARTBEAT = ["--lease-duration-seconds", str(LEASE), "--renew-deadline-seconds",
             str(RENEW_DEADLINE), "--renew-interval-seconds", "1"]
LEADER = ["--leader-lease-duration-seconds", str(LEASE), "--leader-renew-deadline-seconds",
          str(RENEW_DEADLINE), "--leader-retry-period-seconds", "1"]
FAKETIME_LIBS = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketime.so.1"]

# e2e/node.sh's node address (--node): pods reach the oracle there.
NODE_IP = "10.99.0.1"
# How long the node lane waits, after killing the leader, for another replica to lead.
LEADERLESS_LIMIT = 400
# Where chaos.sh installs the controller with Helm (--node).
CONTROLLER_NS = "issuelock-system"
CONTROLLER_LEASE = "issuelock-controller"
# Faults that can delay a reclaim (see check()).
CONTROL_PLANE_FAULTS = ("restart_apiserver", "restart_etcd", "api_outage", "kill_leader")
# Least time between the end of a fault and the next one.
MIN_GAP = 3
# Leftovers are counted this long after the workers stopped at the latest.
QUIESCENCE = 60

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[chaos {now():8.2f}] {msg}", flush=True)


# ---------------------------------------------------------------- oracle

class Oracle:
    """The shared sink: records intervals, fences writes by token."""

    def __init__(self, fencing):
        self.fencing = fencing
        self.mu = threading.Lock()
        self.history = []  # dicts: op, t, issue, token, worker, pid, accepted, stale
        self.max_token = {}
        self.writes = {}
        self.open = {}  # pid -> read event not yet followed by a write

    def read(self, issue, token, worker, pid):
        with self.mu:
            ev = dict(op="read", t=now(), issue=issue, token=token, worker=worker, pid=pid)
            self.history.append(ev)
            self.max_token[issue] = max(self.max_token.get(issue, 0), token)
            self.open[pid] = ev
            return {"writes": self.writes.get(issue, 0)}

    def write(self, issue, token, worker, pid):
        with self.mu:
            stale = token < self.max_token.get(issue, 0)
            accepted = not (self.fencing and stale)
            ev = dict(op="write", t=now(), issue=issue, token=token, worker=worker, pid=pid,
                      accepted=accepted, stale=stale)
            self.history.append(ev)
            self.open.pop(pid, None)
            if accepted:
                self.max_token[issue] = max(self.max_token.get(issue, 0), token)
                self.writes[issue] = self.writes.get(issue, 0) + 1
            return accepted

    def done(self, issue):
        with self.mu:
            return self.writes.get(issue, 0) > 0

    def holding(self, since=None):
        """(worker, pid, issue) of commands between read and write (that read after
        `since`, when given)."""
        with self.mu:
            return [(e["worker"], e["pid"], e["issue"]) for e in self.open.values()
                    if since is None or e["t"] >= since]

    def forget(self, worker):
        """Drops the worker's open reads: its commands were killed."""
        with self.mu:
            for pid in [p for p, e in self.open.items() if e["worker"] == worker]:
                del self.open[pid]

    def completed(self, issues):
        with self.mu:
            return sum(1 for i in issues if self.writes.get(i, 0) > 0)


def serve_oracle(oracle, host):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            u = urllib.parse.urlparse(self.path)
            q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
            issue = q.get("issue", "")
            code, body = 200, b"ok\n"
            try:
                if u.path == "/read":
                    r = oracle.read(issue, int(q["token"]), q.get("worker", "?"), q.get("pid", "?"))
                    body = json.dumps(r).encode()
                elif u.path == "/write":
                    if not oracle.write(issue, int(q["token"]), q.get("worker", "?"), q.get("pid", "?")):
                        code, body = 409, b"stale token\n"
                elif u.path == "/done":
                    code = 200 if oracle.done(issue) else 404
                else:
                    code = 404
            except (KeyError, ValueError) as e:
                code, body = 400, f"{e}\n".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server((host, 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ---------------------------------------------------------------- proxy (partitions)

class Proxy:
    """A TCP proxy from 127.0.0.1:port to the API server; cut() partitions it."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.cut_until = 0.0
        self.mu = threading.Lock()
        self.conns = set()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def is_cut(self):
        return time.monotonic() < self.cut_until

    def cut(self, seconds):
        self.cut_until = time.monotonic() + seconds
        with self.mu:
            for c in list(self.conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self):
        while True:
            c, _ = self.sock.accept()
            if self.is_cut():
                c.close()
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            u = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            u.settimeout(None)
        except OSError:
            c.close()
            return
        with self.mu:
            self.conns.update((c, u))
        threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
        self._pump(u, c)

    def _pump(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data or self.is_cut():
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self.mu:
            self.conns.discard(a)
            self.conns.discard(b)


# ---------------------------------------------------------------- nemesis schedule

KINDS = ["kill_holder", "pause_holder", "restart_apiserver", "restart_etcd", "kill_leader",
         "api_outage", "partition", "clock_jump"]
WEIGHTS = {"kill_holder": 4, "pause_holder": 4, "restart_apiserver": 1, "restart_etcd": 1,
           "kill_leader": 1.5, "api_outage": 0.5, "partition": 1.5, "clock_jump": 1.5}
# Worker pods (--node): kill_holder SIGKILLs the holder's container, pod_delete deletes its
# pod (gracefully), pause_holder stops the container's `work`; partitions and clock jumps
# stay with the process soak (libfaketime cannot reach a static binary).
# Control-plane faults are rarer than in the process soak (which has them all), so that
# most kills are isolated ones and the recovery bound is measured on pods too.
NODE_WEIGHTS = {"kill_holder": 4, "pod_delete": 3, "pause_holder": 3, "restart_apiserver": 0.5,
                "restart_etcd": 0.5, "kill_leader": 1, "api_outage": 0.3}


def schedule(seed, minutes, workers, profile):
    """The nemesis schedule: a pure function of (seed, minutes, workers, profile)."""
    rng = random.Random(f"issuelock-chaos/{seed}/{profile}")
    if profile == "sensitivity":
        weights = {"kill_holder": 1, "pause_holder": 4}
    elif profile == "node":
        weights = NODE_WEIGHTS
    elif profile == "kills":
        weights = {"kill_holder": 4, "restart_apiserver": 1, "restart_etcd": 1, "kill_leader": 1}
    else:
        weights = WEIGHTS
    kinds = list(weights)
    clock_worker = rng.randrange(workers)
    events = []
    budget = minutes * 60.0
    t = rng.uniform(5, 10)
    # Every kind once early on (in a seeded order) when the run is long enough for it, then
    # random draws by weight.
    first = kinds[:]
    rng.shuffle(first)
    while True:
        kind = first.pop() if first else rng.choices(kinds, [weights[k] for k in kinds])[0]
        ev = {"at": round(t, 2), "kind": kind}
        if kind == "pause_holder":
            lo, hi = (1.5, 3.0) if profile == "sensitivity" else (0.5, 3.0)
            ev["seconds"] = round(rng.uniform(lo, hi) * LEASE, 2)
            ev["pick"] = round(rng.random(), 4)
        elif kind in ("kill_holder", "pod_delete"):
            ev["pick"] = round(rng.random(), 4)
        elif kind == "api_outage":
            ev["seconds"] = 60
        elif kind == "partition":
            ev["worker"] = rng.randrange(workers)
            ev["seconds"] = round(rng.uniform(2, 20), 2)
        elif kind == "clock_jump":
            ev["worker"] = clock_worker
            ev["offset"] = rng.choice([-1, 1]) * rng.randint(30, 3600)
        dur = ev.get("seconds", 2 if kind.startswith("restart") else 0)
        if t + dur > budget:
            if first:
                continue
            break
        events.append(ev)
        t += dur + rng.uniform(3, 12)
    return events, clock_worker


# ---------------------------------------------------------------- the soak

class Soak:
    """A seed's soak with worker and controller processes on this machine."""

    ORACLE_HOST = "127.0.0.1"

    def __init__(self, args, seed, cp, binary, kubectl):
        self.args = args
        self.seed = seed
        self.cp = cp
        self.bin = binary
        self.kubectl = kubectl
        self.ns = f"chaos-{seed}-{args.profile}"
        self.dir = os.path.join(args.workdir, self.ns)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "logs"))
        self.oracle = Oracle(fencing=not args.no_fencing)
        self.srv = serve_oracle(self.oracle, self.ORACLE_HOST)
        self.stopping = False
        self.procs = {}  # name -> Popen
        self.restarts = []  # (t, name, rc, seconds the process had run)
        self.deaths = []  # (t, issue) holders SIGKILLed
        self.windows = []  # (began, ended, kind) of each fault injected
        self.fed = []
        self.mu = threading.Lock()
        with open(os.path.join(cp, "kubeconfig")) as f:
            self.kubeconfig = f.read()
        self.api_port = int(self.kubeconfig.split("server: https://127.0.0.1:")[1].split()[0])
        self.events, self.clock_worker = schedule(seed, args.minutes, args.workers, args.profile)
        self.faketime = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)

    def kc(self, *a, check=True, timeout=30):
        r = subprocess.run([self.kubectl, *a], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "KUBECONFIG": os.path.join(self.cp, "kubeconfig")})
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(a)}: {r.stderr.strip()}")
        return r.stdout

    # ----- processes

    def spawn(self, name, argv, env=None):
        logf = open(os.path.join(self.dir, "logs", f"{name}.log"), "a")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        logf.close()
        p.started = time.monotonic()
        with self.mu:
            self.procs[name] = p
        return p

    def controller_argv(self, i):
        return [self.bin, "controller", "-n", self.ns, "--instance", f"controller-{i}",
                "--http-addr", "127.0.0.1:0", "--leader-election-namespace", self.ns, *LEADER]

    def worker_argv(self, i):
        oracle = f"http://127.0.0.1:{self.srv.server_address[1]}"
        # Oldest free issue first: a freed issue's recovery then measures the lock, not
        # the fairness of rendezvous order (which may let newer issues pass it).
        return [self.bin, "work", "-n", self.ns, "--identity", f"worker-{i}",
                "--issues", self.feed_path, "--follow", "--order", "listed",
                "--done-cmd", f"bash {HERE}/chaos-done.sh {oracle}", *HEARTBEAT,
                "--", "bash", f"{HERE}/chaos-cmd.sh", oracle]

    def worker_env(self, i):
        env = {"KUBECONFIG": os.path.join(self.dir, f"kubeconfig-{i}"), "WORKER": f"worker-{i}",
               "CHAOS_SLEEP_MS": str(self.args.hold_ms)}
        if i == self.clock_worker and self.faketime:
            env.update(LD_PRELOAD=self.faketime, FAKETIME_TIMESTAMP_FILE=self.clock_file,
                       FAKETIME_CACHE_DURATION="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
                       CHAOS_UNSET_PRELOAD="1")
        return env

    def start(self, name):
        if name.startswith("controller-"):
            i = int(name.split("-")[1])
            return self.spawn(name, self.controller_argv(i))
        i = int(name.split("-")[1])
        return self.spawn(name, self.worker_argv(i), self.worker_env(i))

    def supervise(self):
        """Restarts exited processes as a kubelet would: after 1 s, doubling up to 8 s
        while they keep exiting within 10 s of their start."""
        pending, backoff = {}, {}
        while not self.stopping:
            with self.mu:
                items = list(self.procs.items())
            for name, p in items:
                rc = p.poll()
                if rc is None or name in pending:
                    continue
                ran = time.monotonic() - p.started
                self.restarts.append((now(), name, rc, ran))
                quick = ran < 10
                backoff[name] = min(8, backoff.get(name, 0.5) * 2) if quick else 1
                log(f"{name} exited with {rc}; restarting it in {backoff[name]:g} s")
                pending[name] = time.monotonic() + backoff[name]
            for name, at in list(pending.items()):
                if time.monotonic() >= at and not self.stopping:
                    del pending[name]
                    self.start(name)
            time.sleep(0.1)

    def feed(self):
        """Keeps about W-1 issues not yet done, so a freed issue is picked up at once."""
        n = 0
        with open(self.feed_path, "a") as f:
            while not self.stopping and not self.feeding_done:
                todo = len(self.fed) - self.oracle.completed(self.fed)
                while todo < max(1, self.args.workers - 1):
                    n += 1
                    key = f"chaos/s{self.seed}#{n}"
                    self.fed.append(key)
                    f.write(key + "\n")
                    f.flush()
                    todo += 1
                time.sleep(0.2)

    # ----- nemesis

    def holder_pick(self, pick):
        held = [(w, pid, issue) for (w, pid, issue) in self.oracle.holding() if alive(int(pid))]
        if not held:
            return None
        held.sort()
        return held[int(pick * len(held)) % len(held)]

    def wait_for_holder(self, pick):
        """holder_pick(pick), waiting up to 5 s for a command between read and write."""
        for _ in range(50):
            h = self.holder_pick(pick)
            if h:
                return h
            time.sleep(0.1)
        return None

    def tree(self, pid):
        """pid and all its descendants."""
        kids = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
        out, todo = [], [pid]
        while todo:  # breadth first: pid, then its children, ...
            p = todo.pop(0)
            out.append(p)
            todo.extend(kids.get(p, []))
        return out

    def leader(self):
        """The election Lease's holder (the controllers elect in the seed's namespace here)."""
        out = self.kc("get", "lease", CONTROLLER_LEASE, "-n", self.leader_namespace(), "-o",
                      "jsonpath={.spec.holderIdentity}", check=False, timeout=10)
        return out.strip()

    def leader_namespace(self):
        return self.ns

    def controlplane(self, verb, what):
        subprocess.run(["bash", os.path.join(HERE, "controlplane.sh"), verb, self.cp, what],
                       check=True, capture_output=True, timeout=120)

    def inject(self, ev):
        kind = ev["kind"]
        if kind in ("kill_holder", "pause_holder"):
            h = self.wait_for_holder(ev["pick"])
            if not h:
                return "no holder found"
            worker, _pid, issue = h
            p = self.procs.get(worker)
            if p is None or p.poll() is not None:
                return f"{worker} not running"
            if kind == "kill_holder":
                self.deaths.append((now(), issue))
                os.kill(p.pid, signal.SIGKILL)
                return f"SIGKILL {worker} (pid {p.pid}) holding {issue}"
            if self.args.profile == "sensitivity":
                # The whole tree: holder, supervisor and command; the command resumes first.
                pids = self.tree(p.pid)
                for q in pids:
                    try_kill(q, signal.SIGSTOP)
                time.sleep(ev["seconds"])
                # The command (below `work` and its supervisor) is scheduled first: it
                # finishes its sleep and writes before its supervisor can stop it.
                for q in pids[2:]:
                    try_kill(q, signal.SIGCONT)
                time.sleep(1.5)
                for q in pids[:2]:
                    try_kill(q, signal.SIGCONT)
                return f"SIGSTOP {worker} and its {len(pids) - 1} descendants holding {issue} for {ev['seconds']}s"
            try_kill(p.pid, signal.SIGSTOP)
            time.sleep(ev["seconds"])
            try_kill(p.pid, signal.SIGCONT)
            return f"SIGSTOP {worker} (pid {p.pid}) holding {issue} for {ev['seconds']}s"
        if kind in ("restart_apiserver", "restart_etcd"):
            what = kind.split("_")[1]
            self.controlplane("stop", what)
            time.sleep(1)
            self.controlplane("start", what)
            return f"restarted {what}"
        if kind == "api_outage":
            self.controlplane("stop", "apiserver")
            time.sleep(ev["seconds"])
            self.controlplane("start", "apiserver")
            return f"kube-apiserver down for {ev['seconds']}s"
        if kind == "kill_leader":
            leader = self.leader()  # the instance name and a suffix of the replica
            name = next((n for n in self.procs if n.startswith("controller-")
                         and leader.startswith(n + "-")), leader)
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                return f"leader {name!r} not found"
            os.kill(p.pid, signal.SIGKILL)
            return f"SIGKILL controller leader {name}"
        if kind == "partition":
            w = f"worker-{ev['worker']}"
            self.proxies[ev["worker"]].cut(ev["seconds"])
            time.sleep(ev["seconds"])
            return f"{w} partitioned from the API server for {ev['seconds']}s"
        if kind == "clock_jump":
            if not self.faketime:
                return "skipped: libfaketime not installed"
            with open(self.clock_file, "w") as f:
                f.write(f"{ev['offset']:+d}\n")
            return f"worker-{ev['worker']}'s wall clock jumped to {ev['offset']:+d}s"
        return "unknown"

    def nemesis(self, start):
        for i, ev in enumerate(self.events):
            while now() - start < ev["at"]:
                if self.stopping:
                    return
                time.sleep(0.05)
            began = now()
            try:
                what = self.inject(ev)
            except Exception as e:  # a failed injection is reported, the soak goes on
                what = f"injection failed: {e}"
            self.windows.append((began, now(), ev["kind"]))
            log(f"nemesis #{i + 1} {ev['kind']}: {what}")
            # An overdue event (the previous one took longer than planned) still comes
            # at least MIN_GAP seconds after it.
            start = max(start, now() + MIN_GAP - (self.events[i + 1]["at"] if i + 1 < len(self.events) else 0))

    # ----- the fleet

    def start_fleet(self):
        """Starts the controllers, the feeder (returned) and the workers."""
        a = self.args
        self.feed_path = os.path.join(self.dir, "issues.txt")
        open(self.feed_path, "w").close()
        self.clock_file = os.path.join(self.dir, "clock")
        with open(self.clock_file, "w") as f:
            f.write("+0\n")
        self.proxies = []
        for i in range(a.workers):
            px = Proxy(self.api_port)
            self.proxies.append(px)
            with open(os.path.join(self.dir, f"kubeconfig-{i}"), "w") as f:
                f.write(self.kubeconfig.replace(f"127.0.0.1:{self.api_port}", f"127.0.0.1:{px.port}"))
        for i in range(2):
            self.start(f"controller-{i}")
        feeder = threading.Thread(target=self.feed, daemon=True)
        feeder.start()
        for i in range(a.workers):
            self.start(f"worker-{i}")
        return feeder

    def stop_workers(self):
        """SIGTERM to every worker (each releases what it holds), SIGKILL after 20 s."""
        for name, p in list(self.procs.items()):
            if name.startswith("worker-"):
                try_kill(p.pid, signal.SIGTERM)
        for name, p in list(self.procs.items()):
            if name.startswith("worker-"):
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    # ----- run + check

    def run(self):
        a = self.args
        log(f"seed {self.seed}: namespace {self.ns}, {a.workers} workers, {a.minutes} min, "
            f"fencing {'off' if a.no_fencing else 'on'}, profile {a.profile}")
        log(f"seed {self.seed}: nemesis schedule (from the seed alone; clock worker {self.clock_worker}):")
        for i, ev in enumerate(self.events):
            print(f"  #{i + 1:<3} {json.dumps(ev)}", flush=True)
        self.kc("create", "namespace", self.ns)
        self.feeding_done = False
        feeder = self.start_fleet()
        sup = threading.Thread(target=self.supervise, daemon=True)
        sup.start()
        start = now()
        nem = threading.Thread(target=self.nemesis, args=(start,), daemon=True)
        nem.start()
        while now() - start < a.minutes * 60:
            time.sleep(1)
        nem.join()  # the event in progress ends (SIGCONT, API server back)
        self.feeding_done = True
        feeder.join()
        log(f"nemesis over; waiting for the {len(self.fed)} issues fed to complete")
        deadline = now() + a.drain_seconds
        while now() < deadline and self.oracle.completed(self.fed) < len(self.fed):
            time.sleep(0.5)
        self.stopping = True
        sup.join()
        self.stop_workers()
        # Quiescence: whatever killed holders left is reclaimed once their Leases expire, and
        # orphaned Leases are swept a little later (after an outage the controller starts
        # counting a Lease's age from when it sees it again). Leftovers are counted when
        # none is left or after QUIESCENCE seconds.
        stopped = now()
        log(f"workers stopped; waiting up to {QUIESCENCE}s for their locks and Leases to go")
        while True:
            locks = self.kc("get", "issuelocks", "-n", self.ns, "-o", "name", check=False).split()
            leases = [n for n in self.kc("get", "leases", "-n", self.ns, "-o", "name", check=False).split()
                      if n != f"lease.coordination.k8s.io/{CONTROLLER_LEASE}"]
            if not (locks or leases) or now() - stopped > QUIESCENCE:
                break
            time.sleep(1)
        log(f"quiescent after {now() - stopped:.1f}s: {len(locks)} locks and {len(leases)} Leases left")
        for name, p in list(self.procs.items()):
            try_kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try_kill(p.pid, signal.SIGKILL)
        self.srv.shutdown()
        with open(os.path.join(self.dir, "history.json"), "w") as f:
            json.dump({"seed": self.seed, "events": self.events, "fed": self.fed,
                       "history": self.oracle.history, "restarts": self.restarts,
                       "deaths": self.deaths, "windows": self.windows, "locks_left": locks,
                       "leases_left": leases}, f)
        return check(self.oracle.history, self.fed, locks + leases, self.deaths, self.restarts,
                     self.seed, self.windows)


class NodeSoak(Soak):
    """A seed's soak with worker pods on e2e/node.sh's node (--node): a Deployment of W
    `issuelock work` pods of the example worker image, the controller installed with Helm
    by chaos.sh, the oracle on the node's address (this process runs in the node's network
    namespace). Holder faults hit pods: SIGKILL of the holder's container (the kubelet
    restarts it), graceful deletion of its pod (the ReplicaSet replaces it), SIGSTOP of the
    container's `work`; the leader kill SIGKILLs the leading controller's container."""

    ORACLE_HOST = NODE_IP

    def __init__(self, args, seed, cp, binary, kubectl):
        super().__init__(args, seed, cp, binary, kubectl)
        self.ctr = ["ctr", "--address", os.path.join(args.node, "containerd", "containerd.sock"),
                    "--namespace", "k8s.io"]
        self.pods = {}  # every worker pod seen -> its highest container restartCount
        self.terminations = {}  # pod -> {finishedAt: (exit code, seconds run, finishedAt, log end)}
        self.deleted = set()

    def start_fleet(self):
        a = self.args
        # The pods' hostPath volume: the scripts and the growing list of issues.
        pod_dir = os.path.join(self.dir, "pod")
        os.makedirs(pod_dir)
        os.chmod(pod_dir, 0o755)
        for src, dst in (("chaos-pod-cmd.sh", "cmd.sh"), ("chaos-pod-done.sh", "done.sh")):
            shutil.copy(os.path.join(HERE, src), os.path.join(pod_dir, dst))
        self.feed_path = os.path.join(pod_dir, "issues.txt")
        open(self.feed_path, "w").close()
        for f in os.listdir(pod_dir):
            os.chmod(os.path.join(pod_dir, f), 0o644)
        port = str(self.srv.server_address[1])
        env = [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": f}}}
               for n, f in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                            ("POD_UID", "metadata.uid"))]
        env += [{"name": n, "value": v} for n, v in (
            ("ISSUELOCK_LEASE_DURATION_SECONDS", str(LEASE)),
            ("ISSUELOCK_RENEW_DEADLINE_SECONDS", str(RENEW_DEADLINE)),
            ("ISSUELOCK_RENEW_INTERVAL_SECONDS", "1"), ("CHAOS_SLEEP_MS", str(a.hold_ms)))]
        labels = {"app.kubernetes.io/name": "chaos-worker"}
        pod = {
            "serviceAccountName": "chaos-worker", "terminationGracePeriodSeconds": 10,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "worker", "image": a.worker_image, "imagePullPolicy": "Never",
                # The end of its log in the pod's status: why a container ended, also when
                # its log is gone (the kubelet keeps the previous container's only).
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "command": ["issuelock", "work", "--issues", "/chaos/issues.txt", "--follow",
                            "--order", "listed", "--done-cmd", f"sh /chaos/done.sh {NODE_IP} {port}",
                            "--", "sh", "/chaos/cmd.sh", NODE_IP, port],
                "env": env,
                "volumeMounts": [{"name": "chaos", "mountPath": "/chaos", "readOnly": True}],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "chaos", "hostPath": {"path": pod_dir, "type": "Directory"}}]}
        objects = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "chaos-worker"}},
            # The chart's worker role, as its `workers` value would grant it.
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "chaos-worker"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "issuelock-worker"},
             "subjects": [{"kind": "ServiceAccount", "name": "chaos-worker", "namespace": self.ns}]},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chaos-worker"},
             "spec": {"replicas": a.workers, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels}, "spec": pod}}}]
        manifest = os.path.join(self.dir, "workers.json")
        with open(manifest, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, f, indent=1)
        self.kc("apply", "-n", self.ns, "-f", manifest)
        self.kc("rollout", "status", "deployment/chaos-worker", "-n", self.ns, "--timeout=180s",
                timeout=200)
        feeder = threading.Thread(target=self.feed, daemon=True)
        feeder.start()
        return feeder

    def worker_pods(self):
        """{pod: (container restartCount, its last termination or None)} of the worker pods,
        None when the API server did not answer. A termination is (exit code, seconds the
        container had run, finishedAt, the end of its log when it failed)."""
        r = subprocess.run([self.kubectl, "get", "pods", "-n", self.ns, "-o", "json",
                            "--request-timeout=10s"], capture_output=True, text=True, timeout=20,
                           env={**os.environ, "KUBECONFIG": os.path.join(self.cp, "kubeconfig")})
        if r.returncode != 0:
            return None
        out = {}
        for p in json.loads(r.stdout)["items"]:
            restarts, last = 0, None
            for c in p.get("status", {}).get("containerStatuses", []):
                restarts += c.get("restartCount", 0)
                t = c.get("lastState", {}).get("terminated")
                if t and t.get("startedAt") and t.get("finishedAt"):
                    ran = (rfc3339(t["finishedAt"]) - rfc3339(t["startedAt"]))
                    last = (t.get("exitCode"), ran, t["finishedAt"], t.get("message", ""))
            out[p["metadata"]["name"]] = (restarts, last)
        return out

    def observe(self, pods):
        for name, (restarts, last) in pods.items():
            self.pods[name] = max(self.pods.get(name, 0), restarts)
            if last:
                self.terminations.setdefault(name, {})[last[2]] = last

    def supervise(self):
        """The kubelet and the ReplicaSet restart workers here: this records every worker
        pod, its container restarts and the terminations seen (a pod's last one, polled
        every second), for the unplanned-restart count."""
        while not self.stopping:
            self.observe(self.worker_pods() or {})
            time.sleep(1)

    def stop_workers(self):
        """Counts the restarts nobody planned, then scales the workers to 0: each pod gets
        SIGTERM and its `work` releases what it holds. A container that ended after running
        10 s or more, other than by SIGKILL (exit 137), is unplanned; restarts between two
        polls (a crash loop while the API server is down) are not seen one by one and count
        as starts that failed at once, like the process soak's."""
        final = None
        for _ in range(30):
            final = self.worker_pods()
            if final is not None:
                break
            time.sleep(1)
        final = final or {}
        self.observe(final)
        for name in sorted(self.pods):
            for code, ran, finished, message in sorted(self.terminations.get(name, {}).values(),
                                                       key=lambda x: x[2]):
                if code != 137 and ran >= 10:
                    self.restarts.append((now(), name, f"exit {code} at {finished}", ran))
                    with open(os.path.join(self.dir, "logs", f"{name}.exit-{finished}.log"), "w") as f:
                        f.write(message)
                    tail = [x for x in message.splitlines() if x.strip()][-1:] or ["(no log)"]
                    log(f"{name} ended unplanned (exit {code} after {ran:.0f}s): {tail[0][:300]}")
            if name not in final and name not in self.deleted:
                self.restarts.append((now(), name, "the pod's disappearance", 999))
        self.save_logs(final)
        self.kc("scale", "deployment/chaos-worker", "-n", self.ns, "--replicas=0")
        deadline = now() + 60
        while now() < deadline and self.worker_pods() != {}:
            time.sleep(1)

    def save_logs(self, pods):
        """The surviving worker pods' logs (also of their killed containers) and the
        controllers', into the seed's logs/ (a deleted pod's logs go with it)."""
        logs = os.path.join(self.dir, "logs")
        for pod, (restarts, _) in pods.items():
            for previous in ([False, True] if restarts else [False]):
                out = self.kc("logs", pod, "-n", self.ns, *(["--previous"] if previous else []),
                              check=False, timeout=30)
                with open(os.path.join(logs, f"{pod}{'.previous' if previous else ''}.log"), "w") as f:
                    f.write(out)
        out = self.kc("logs", "-n", CONTROLLER_NS, "-l", "app.kubernetes.io/name=issuelock",
                      "--prefix", "--tail=-1", check=False, timeout=30)
        with open(os.path.join(logs, "controllers.log"), "w") as f:
            f.write(out)

    def holder_pick(self, pick):
        # A read more than 10 s old is of a command that ended without writing (the pod
        # got a fresh pid namespace since, say): the commands sleep 2.25 s at most.
        held = sorted(self.oracle.holding(since=now() - 10))
        if not held:
            return None
        return held[int(pick * len(held)) % len(held)]

    def container(self, ns, pod):
        """(containerd id, host pid) of the pod's running container."""
        cid = self.kc("get", "pod", pod, "-n", ns, "-o",
                      "jsonpath={.status.containerStatuses[0].containerID}", timeout=15).strip()
        cid = cid.split("://", 1)[-1]
        tasks = subprocess.run([*self.ctr, "tasks", "ls"], capture_output=True, text=True,
                               timeout=15, check=True).stdout.split("\n")[1:]
        for line in tasks:
            f = line.split()
            if len(f) == 3 and f[0] == cid and f[2] == "RUNNING":
                return cid, int(f[1])
        raise RuntimeError(f"no running container for pod {ns}/{pod}")

    def ctr_kill(self, cid):
        subprocess.run([*self.ctr, "tasks", "kill", "-s", "SIGKILL", cid], capture_output=True,
                       timeout=15, check=True)

    def leader_namespace(self):
        return CONTROLLER_NS  # the chart's release namespace

    def inject(self, ev):
        kind = ev["kind"]
        if kind in ("kill_holder", "pause_holder", "pod_delete"):
            h = self.wait_for_holder(ev["pick"])
            if not h:
                return "no holder found"
            pod, _pid, issue = h
            if kind == "pod_delete":
                self.deaths.append((now(), issue))
                self.deleted.add(pod)
                self.kc("delete", "pod", pod, "-n", self.ns, "--wait=false")
                self.oracle.forget(pod)
                return f"deleted pod {pod} holding {issue}"
            cid, pid = self.container(self.ns, pod)
            if kind == "kill_holder":
                self.deaths.append((now(), issue))
                self.ctr_kill(cid)
                self.oracle.forget(pod)
                self.restarts.append((now(), pod, -9, 999))
                return f"SIGKILL container of {pod} (pid {pid}) holding {issue}"
            try_kill(pid, signal.SIGSTOP)
            time.sleep(ev["seconds"])
            try_kill(pid, signal.SIGCONT)
            return f"SIGSTOP `work` of {pod} (pid {pid}) holding {issue} for {ev['seconds']}s"
        if kind == "kill_leader":
            leader = self.leader()  # the pod's name and a suffix of the replica
            pods = self.kc("get", "pods", "-n", CONTROLLER_NS, "-o", "name", timeout=15).split()
            pod = next((p.split("/", 1)[1] for p in pods if leader.startswith(p.split("/", 1)[1])), None)
            if pod is None:
                return f"leader {leader!r} not found"
            cid, _ = self.container(CONTROLLER_NS, pod)
            self.ctr_kill(cid)
            # The fault lasts until a replica leads again: the kubelet delays the restart of
            # a container killed again and again (10 s doubling to 5 min), so both replicas
            # may be down for minutes, and kills meanwhile are not isolated ones.
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < LEADERLESS_LIMIT and not self.stopping:
                now_leader = self.leader()
                if now_leader and now_leader != leader:  # a replica took the Lease
                    return (f"SIGKILL container of controller leader {pod}; {now_leader} leads "
                            f"{time.monotonic() - killed_at:.1f}s later")
                time.sleep(0.5)
            return f"SIGKILL container of controller leader {pod}; no new leader within {LEADERLESS_LIMIT}s"
        return super().inject(ev)


def rfc3339(stamp):
    """Seconds since the epoch of a Kubernetes timestamp (2026-11-29T01:22:13Z)."""
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def try_kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def pct(xs, p):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1) + 0.4999)))]


def is_worker(name):
    """A worker process (worker-N) or pod (chaos-worker-...), not a controller."""
    return name.startswith(("worker-", "chaos-worker-"))


def check(history, fed, leftovers, deaths, restarts, seed, windows):
    """The checker: everything it says comes from the oracle's history and the leftovers."""
    intervals = {}  # issue -> [(read_t, write_t, pid, token)]
    reads = {}
    for e in history:
        if e["op"] == "read":
            reads[e["pid"]] = e
        elif e["pid"] in reads:
            r = reads.pop(e["pid"])
            intervals.setdefault(e["issue"], []).append((r["t"], e["t"], e["pid"], e["token"]))
    overlaps = []
    for issue, iv in intervals.items():
        iv.sort()
        for i in range(len(iv)):
            for j in range(i + 1, len(iv)):
                if iv[j][0] < iv[i][1]:
                    overlaps.append((issue, iv[i], iv[j]))
    stale = []
    seen = {}
    accepted = {}
    for e in history:
        hi = seen.get(e["issue"], 0)
        if e["op"] == "write" and e["accepted"]:
            if e["token"] < hi:
                stale.append(e)
            accepted[e["issue"]] = accepted.get(e["issue"], 0) + 1
        if e["op"] == "read" or e.get("accepted"):
            seen[e["issue"]] = max(hi, e["token"])
    not_once = [(i, accepted.get(i, 0)) for i in fed if accepted.get(i, 0) != 1]
    # (time, issue, seconds to the next acquire) of each death that left its issue to
    # recover: a holder whose write had landed before it died left nothing to recover.
    recovered = []
    for t, issue in deaths:
        nxt = [e["t"] for e in history if e["op"] == "read" and e["issue"] == issue and e["t"] > t]
        if nxt:
            recovered.append((t, issue, min(nxt) - t))
        elif not accepted.get(issue):
            recovered.append((t, issue, float("inf")))
    # A kill is isolated when no fault of the control plane (API server, etcd, leading
    # controller) was under way from LEASE + 3 s before it to LEASE + 3 s after it: the
    # recovery bound applies to those. The others (a kill right after an API server
    # restart, say) must recover too, and are reported apart. Faults of other workers
    # (kills, pauses, partitions, clock jumps) leave the controller's judgement alone.
    recovery, isolated = [], []
    for t, issue, r in recovered:
        alone = not any(b - (LEASE + 3) < t < e + (LEASE + 3) for b, e, k in windows
                        if k in CONTROL_PLANE_FAULTS)
        recovery.append(r)
        isolated.append(alone)
        if r > LEASE + 3:
            print(f"  SLOW RECOVERY {issue}: holder killed at {t:.2f}, next acquire {r:.2f}s "
                  f"later ({'isolated kill' if alone else 'other faults around it'})")
    for o in overlaps[:10]:
        print(f"  OVERLAP {o[0]}: read {o[1][0]:.2f}..write {o[1][1]:.2f} (token {o[1][3]}) "
              f"and read {o[2][0]:.2f}..write {o[2][1]:.2f} (token {o[2][3]})")
    for e in stale[:10]:
        print(f"  STALE WRITE ACCEPTED {e['issue']}: token {e['token']} by {e['worker']} at {e['t']:.2f}")
    for i, n in not_once[:10]:
        print(f"  NOT EXACTLY ONCE {i}: {n} accepted writes")
    for x in leftovers[:10]:
        print(f"  LEAKED {x}")
    # A worker must survive every fault but a SIGKILL of itself: an exit of one that had
    # been running (not a restart failing to start, say during an outage) is a violation.
    unplanned = [r for r in restarts if is_worker(r[1]) and r[2] != -9 and r[3] >= 10]
    for t, name, rc, ran in unplanned[:10]:
        print(f"  WORKER RESTART {name}: exited with {rc} at {t:.2f} after running {ran:.1f}s")
    return {"seed": seed, "overlaps": len(overlaps), "stale": len(stale), "not_once": len(not_once),
            "leaked": len(leftovers), "issues": len(fed),
            "recovery": [r for r, a in zip(recovery, isolated) if a],
            "recovery_compound": [r for r, a in zip(recovery, isolated) if not a],
            "writes": sum(accepted.values()),
            "restarts": len([r for r in restarts if is_worker(r[1])]),
            "killed": len([r for r in restarts if is_worker(r[1]) and r[2] == -9]),
            "unplanned": len(unplanned)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="run seeds FIRST..FIRST+N-1")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--hold-ms", type=int, default=1500, help="mean sleep between read and write")
    ap.add_argument("--no-fencing", action="store_true")
    ap.add_argument("--profile", choices=["all", "kills", "sensitivity", "node"], default=None,
                    help="the faults drawn (default: all; node with --node)")
    ap.add_argument("--node", metavar="DIR",
                    help="workers as pods on this running e2e/node.sh node (run in its network "
                    "namespace; the controller installed with Helm in issuelock-system)")
    ap.add_argument("--worker-image", help="the example worker image's name (--node)")
    ap.add_argument("--expect-violations", action="store_true",
                    help="exit 0 only when the checker reports a violation (sensitivity)")
    ap.add_argument("--drain-seconds", type=float, default=180)
    ap.add_argument("--controlplane", required=True, help="DIR of a running e2e/controlplane.sh")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--print-schedule", action="store_true", help="print the schedule of --first-seed and exit")
    ap.add_argument("--results", help="also write the seeds' results to this JSON file")
    ap.add_argument("--summarize", nargs="+", metavar="RESULTS",
                    help="run nothing: print the verdict over these --results files (parallel lanes; "
                    "their seed lines were printed as the seeds ended)")
    a = ap.parse_args()
    a.profile = a.profile or ("node" if a.node else "all")
    if a.node and not a.worker_image:
        ap.error("--node needs --worker-image")
    if a.summarize:
        results = []
        for path in a.summarize:
            with open(path) as f:
                results += json.load(f)
        return summarize(results, a)
    if a.print_schedule:
        ev, cw = schedule(a.first_seed, a.minutes, a.workers, a.profile)
        print(json.dumps({"seed": a.first_seed, "clock_worker": cw, "events": ev}, indent=1))
        return 0
    results = []
    current = []

    def interrupted(sig, _frame):
        # Workers and controllers run in sessions of their own: end them before leaving.
        for soak in current:
            soak.stopping = True
            for p in list(soak.procs.values()):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        print(f"chaos: interrupted by signal {sig}", flush=True)
        os._exit(128 + sig)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        soak = (NodeSoak if a.node else Soak)(a, seed, a.controlplane, a.bin, a.kubectl)
        current[:] = [soak]
        r = soak.run()
        results.append(r)
        print(seed_line(r), flush=True)
    if a.results:
        with open(a.results, "w") as f:
            json.dump(results, f)
    return summarize(results, a)


def seed_line(r):
    allr = r["recovery"] + r["recovery_compound"]
    rec = [x for x in allr if x != float("inf")]
    comp = r["recovery_compound"]
    return (f"chaos seed {r['seed']}: issues={r['issues']} accepted_writes={r['writes']} "
            f"overlaps={r['overlaps']} stale_writes_accepted={r['stale']} "
            f"not_exactly_once={r['not_once']} leaked={r['leaked']} kills={len(allr)} "
            f"unrecovered={len(allr) - len(rec)} isolated_kills={len(r['recovery'])} "
            f"recovery_p50={pct(r['recovery'], 50):.2f}s recovery_p99={pct(r['recovery'], 99):.2f}s "
            f"compound_recovery_max={max(comp, default=0):.2f}s "
            f"worker_restarts={r['restarts']} (after kills: {r['killed']}, "
            f"unplanned: {r['unplanned']})")


def summarize(results, a):
    """Prints the verdict over all seeds' results (the last line in the issue's format) and
    returns the exit status."""
    results = sorted(results, key=lambda r: r["seed"])
    tot = {k: sum(r[k] for r in results) for k in ("overlaps", "stale", "not_once", "leaked", "unplanned")}
    rec = [x for r in results for x in r["recovery"]]
    bad = [r["seed"] for r in results
           if r["overlaps"] or r["stale"] or r["not_once"] or r["leaked"] or r["unplanned"]]
    if bad:
        print(f"chaos: violations in seeds {bad}; replay one with SEEDS=1 FIRST_SEED=<seed> "
              f"(its schedule: e2e/chaos.sh --print-schedule --first-seed <seed>)")
    if tot["unplanned"]:
        print(f"chaos: {tot['unplanned']} worker restarts not caused by a SIGKILL of the worker")
    late = [x for x in rec if x > LEASE + 3]
    late += [x for r in results for x in r["recovery_compound"] if x == float("inf")]
    if late and not a.expect_violations:
        print(f"chaos: {len(late)} recoveries slower than leaseDuration + 3 s = {LEASE + 3}s")
    violated = bool(bad) or bool(late)
    if a.expect_violations:
        rc = 0 if (tot["overlaps"] or tot["stale"] or tot["not_once"]) else 1
    else:
        rc = 1 if violated else 0
    if rc:
        print(f"chaos: logs and oracle histories kept in {a.workdir}")
    p99 = pct(rec, 99)
    minutes = int(a.minutes) if a.minutes == int(a.minutes) else a.minutes
    print(f"chaos: seeds={len(results)} minutes={minutes} overlaps={tot['overlaps']} "
          f"stale_writes_accepted={tot['stale']} not_exactly_once={tot['not_once']} "
          f"leaked={tot['leaked']} recovery_p99={p99:.2f}s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
