#!/usr/bin/env python3
"""A reference issuelock worker in Python, written from PROTOCOL.md alone.

It speaks the protocol with the official `kubernetes` client (no issuelock binary):

    python issuelock_worker.py --namespace NS --issue 'org/repo#123' -- ./process-issue.sh

takes the issue's lock, runs the command while the lock is trusted, and gives the lock
back. The command sees ISSUELOCK_ISSUE, ISSUELOCK_LOCK_NAME and ISSUELOCK_FENCING_TOKEN.
Exit status as `issuelock run`: the command's own; 75 held by another holder (the command
did not run); 76 the lock was lost or could no longer be trusted while the command ran
(its process group got SIGTERM, then SIGKILL after --grace-seconds); 2 invalid input;
1 any other failure. Use it as a template for other languages: each section names the
PROTOCOL.md section it follows.

Not done here (see the Rust client): HMAC signatures, max hold times, a background
clean-up of locks whose release failed (the controller reclaims them once this process's
Lease is gone), containing processes that leave the command's process group.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

from kubernetes import client, config
from kubernetes.client.rest import ApiException

EXIT_HELD, EXIT_LOST, EXIT_USAGE, EXIT_FAILURE = 75, 76, 2, 1
GROUP, VERSION, PLURAL = "issuelock.dev", "v1alpha1", "issuelocks"
HEARTBEAT_LABEL = "issuelock.dev/heartbeat"
HOLDER_LEASE_LABEL = "issuelock.dev/holder-lease"
USER_ANNOTATION = "issuelock.dev/holder-user"
POD_UID_ANNOTATION = "issuelock.dev/holder-pod-uid"
NONCE_ANNOTATION = "issuelock.dev/acquire-nonce"


class Lost(Exception):
    """The lock (or the heartbeat that keeps every lock of this process) was lost."""


class Interrupted(Exception):
    """SIGTERM, SIGINT or SIGHUP reached the worker while no command ran."""

    def __init__(self, sig: int):
        super().__init__(f"received signal {sig}")
        self.sig = sig


def _interrupt(sig, _frame):
    raise Interrupted(sig)


TERMINATING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# === 1. Issue keys and 2. Lock name ===

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_ASCII_UPPER_TO_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def check_key(key: str) -> None:
    """Raises ValueError unless `key` is a valid issue key (1..=1024 code points, no Cc)."""
    if not key:
        raise ValueError("issue key is empty")
    if len(key) > 1024:  # len() of a Python str counts code points
        raise ValueError(f"issue key is {len(key)} characters long; the limit is 1024")
    bad = _CONTROL.search(key)
    if bad:
        raise ValueError(f"issue key contains control character U+{ord(bad.group()):04X}")


def lock_name(key: str) -> str:
    """The IssueLock's metadata.name for `key` (PROTOCOL.md section 2)."""
    check_key(key)
    lowered = key.translate(_ASCII_UPPER_TO_LOWER)  # A-Z only: never str.lower()
    runs = re.findall(r"[a-z0-9]+", lowered)  # ASCII-only class: everything else separates
    slug = "-".join(runs)[:50].removesuffix("-") or "issue"
    return f"{slug}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def micro_now() -> str:
    """Now, as the API server writes a MicroTime (so a sent time reads back identical)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def call(fn, *args, **kwargs):
    """One API call with JSON in and out (dicts, not models) and the call timeout."""
    resp = fn(*args, _preload_content=False, _request_timeout=CALL_TIMEOUT, **kwargs)
    return json.loads(resp.data or b"null")


CALL_TIMEOUT = 5.0


# === 3. Who you are ===

def who_am_i(api: client.ApiClient) -> tuple[str, dict | None]:
    """The Kubernetes username, and the pod {name, uid, namespace} when known."""
    review = call(
        client.AuthenticationV1Api(api).create_self_subject_review,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    info = review.get("status", {}).get("userInfo", {})
    extra = info.get("extra") or {}
    token_pod = (extra.get("authentication.kubernetes.io/pod-name", [None])[0],
                 extra.get("authentication.kubernetes.io/pod-uid", [None])[0])
    pod = None
    username = info.get("username", "")
    if all(token_pod):
        # A pod-bound token's pod lives in its ServiceAccount's namespace.
        pod = {"name": token_pod[0], "uid": token_pod[1]}
        if username.startswith("system:serviceaccount:"):
            pod["namespace"] = username.split(":")[2]
    elif os.environ.get("POD_NAME") and os.environ.get("POD_UID"):
        pod = {"name": os.environ["POD_NAME"], "uid": os.environ["POD_UID"]}
        if os.environ.get("POD_NAMESPACE"):
            pod["namespace"] = os.environ["POD_NAMESPACE"]
    return username, pod


# === 4. The heartbeat Lease ===

class Heartbeat:
    """One Lease for this process, renewed by conditional PUT on a thread of its own.

    `trusted()` turns False for good once `renew_deadline` has passed on the monotonic
    clock since the *send* of the last successful renewal, or the Lease was lost.
    """

    def __init__(self, api, namespace, name, identity, user, pod, duration, deadline, interval):
        if not duration > deadline > interval > 0:
            raise ValueError("need lease duration > renew deadline > renew interval > 0")
        self.coord = client.CoordinationV1Api(api)
        self.ns, self.name, self.deadline, self.interval = namespace, name, deadline, interval
        now = micro_now()
        annotations = {USER_ANNOTATION: user} if user else {}
        if pod:
            annotations[POD_UID_ANNOTATION] = pod["uid"]
        metadata = {"name": name, "namespace": namespace, "labels": {HEARTBEAT_LABEL: "true"}}
        if annotations:
            metadata["annotations"] = annotations
        if pod and pod.get("namespace", namespace) == namespace:  # never across namespaces
            metadata["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Pod", "name": pod["name"], "uid": pod["uid"]}]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": identity, "leaseDurationSeconds": int(duration),
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
        sent = time.monotonic()
        self.lease = call(self.coord.create_namespaced_lease, namespace, body)
        self.last_ok_send = sent  # the create counts as the first renewal
        self.lost_why: str | None = None
        self.unanswered: set[str] = set()  # renewTimes sent whose answer we did not get
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    def uid(self) -> str:
        return self.lease["metadata"]["uid"]

    def trusted(self) -> bool:
        """False for good once the renew deadline passed or the heartbeat or a lock was lost."""
        if self.lost_why is None and time.monotonic() - self.last_ok_send >= self.deadline:
            self.lost_why = f"heartbeat not renewed for {self.deadline} s (renew deadline)"
        return self.lost_why is None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.interval) and self.trusted():
            body = json.loads(json.dumps(self.lease))
            body["spec"]["renewTime"] = renew_time = micro_now()
            sent = time.monotonic()
            try:
                self.lease = call(self.coord.replace_namespaced_lease, self.name, self.ns, body)
                self.last_ok_send, self.unanswered = sent, set()
            except ApiException as e:
                if e.status == 409:
                    self._after_conflict()
                elif e.status == 404:
                    self.lost_why = "heartbeat Lease deleted"
                # anything else: try again at the next interval; the deadline decides
            except Exception:  # timeout, connection error: the renewal may have landed
                self.unanswered.add(renew_time)

    def _after_conflict(self) -> None:
        """A 409: continue only if what is stored is our own write whose answer we lost."""
        try:
            stored = call(self.coord.read_namespaced_lease, self.name, self.ns)
        except ApiException as e:
            if e.status == 404:
                self.lost_why = "heartbeat Lease deleted"
            return
        except Exception:
            return
        ours, theirs = self.lease, stored
        same_meta = all(ours["metadata"].get(k) == theirs["metadata"].get(k)
                        for k in ("labels", "annotations", "ownerReferences", "finalizers"))
        spec_but_time = lambda s: {k: v for k, v in s.items() if k != "renewTime"}  # noqa: E731
        if (same_meta and spec_but_time(ours["spec"]) == spec_but_time(theirs["spec"])
                and theirs["spec"].get("renewTime") in self.unanswered):
            self.lease, self.unanswered = stored, set()  # our write; the next PUT renews
        else:
            self.lost_why = "heartbeat Lease changed by someone else"

    def stop(self) -> None:
        """Stops renewing and deletes the Lease (uid precondition)."""
        self._stop.set()
        self._thread.join()
        try:
            call(self.coord.delete_namespaced_lease, self.name, self.ns,
                 body={"preconditions": {"uid": self.uid()}})
        except Exception as e:  # the controller deletes an expired unreferenced Lease
            print(f"issuelock-py: could not delete heartbeat Lease {self.name}: {e}",
                  file=sys.stderr)


# === 5. Acquire and 6. Release ===

class Locks:
    def __init__(self, api, namespace, identity, user, pod, heartbeat: Heartbeat):
        self.custom = client.CustomObjectsApi(api)
        self.ns, self.identity, self.user, self.pod, self.hb = (
            namespace, identity, user, pod, heartbeat)

    def _body(self, key: str, name: str, nonce: str) -> dict:
        holder = {"identity": self.identity, "lease": self.hb.name}
        if self.user:
            holder["user"] = self.user
        if self.pod:
            holder["pod"] = self.pod
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "IssueLock",
            "metadata": {
                "name": name, "namespace": self.ns,
                "labels": {HOLDER_LEASE_LABEL: self.hb.name},
                "annotations": {NONCE_ANNOTATION: nonce},
                "ownerReferences": [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                     "name": self.hb.name, "uid": self.hb.uid()}],
            },
            "spec": {"issue": key, "holder": holder},
        }

    def _get(self, name: str) -> dict | None:
        try:
            return call(self.custom.get_namespaced_custom_object,
                        GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def try_acquire(self, key: str) -> tuple[dict | None, dict | None]:
        """(lock, None) when we hold it now; (None, holder) when someone else does."""
        if not self.hb.trusted():
            raise Lost(self.hb.lost_why)
        name, nonce = lock_name(key), secrets.token_hex(8)
        body = self._body(key, name, nonce)
        for _ in range(5):
            try:
                return call(self.custom.create_namespaced_custom_object,
                            GROUP, VERSION, self.ns, PLURAL, body), None
            except ApiException as e:
                if e.status != 409:
                    raise
            except Exception:
                pass  # unknown outcome: the create may have landed; read it back
            existing = self._get(name)
            if existing is None:
                continue  # released meanwhile, or our create never landed: create again
            holder = existing["spec"]["holder"]
            # Ours only if it records all of us: anyone can copy our Lease name.
            if holder != body["spec"]["holder"] or existing["spec"]["issue"] != key:
                return None, holder
            if existing["metadata"].get("annotations", {}).get(NONCE_ANNOTATION) == nonce:
                return existing, None  # our own create whose answer we lost: adopt it
            # Our orphan (an earlier call of this process): delete it and create again.
            try:
                self.release(existing, orphan=True)
            except ApiException as e:
                if e.status == 403:  # the admission policy says it is not ours
                    return None, holder
                raise
        raise RuntimeError(f"could not settle the lock {name} after 5 attempts")

    def release(self, lock: dict, orphan: bool = False) -> None:
        """Deletes `lock` with a uid precondition; raises Lost on 404/409."""
        md = lock["metadata"]
        try:
            call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.ns,
                 PLURAL, md["name"], body={"preconditions": {"uid": md["uid"]}})
        except ApiException as e:
            if e.status in (404, 409) and not orphan:
                raise Lost(f"lock {md['name']} was deleted or replaced while held") from e
            if e.status not in (404, 409):
                raise

    def still_ours(self, lock: dict) -> bool:
        """A direct read: the lock exists with our uid (one GET per renew interval)."""
        try:
            current = self._get(lock["metadata"]["name"])
        except Exception:
            return True  # no news is not evidence; the heartbeat deadline still applies
        return current is not None and current["metadata"]["uid"] == lock["metadata"]["uid"]


# === The command ===

def run_command(cmd, env, locks: Locks, lock: dict, grace: float, interval: float) -> int:
    """Runs `cmd` in its own process group while the lock is trusted."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    watchdog = kill_group_when_we_die(proc.pid)

    def forward(sig, _frame):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass  # the group is gone already

    for sig in TERMINATING:
        signal.signal(sig, forward)
    done = threading.Event()

    def watch_lock() -> None:  # API calls block: never on the thread that enforces deadlines
        while not done.wait(interval):
            if not locks.still_ours(lock):
                locks.hb.lost_why = locks.hb.lost_why or "lock deleted or replaced"
                return

    threading.Thread(target=watch_lock, daemon=True).start()
    try:
        while proc.poll() is None:
            if not locks.hb.trusted():
                stop_group(proc, grace)
                raise Lost(locks.hb.lost_why)
            time.sleep(0.05)
    finally:
        done.set()
        os.close(watchdog)  # the command is done: the watchdog's kill finds nothing
        for sig in TERMINATING:
            signal.signal(sig, _interrupt)
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def kill_group_when_we_die(pgid: int) -> int:
    """Forks a watchdog that SIGKILLs process group `pgid` as soon as this process dies
    (SIGKILL, OOM kill) or closes the returned pipe end: the command must not outlive the
    worker whose heartbeat protects it. Returns the write end to keep open meanwhile."""
    r, w = os.pipe()  # not inherited by the command (Python pipes are non-inheritable)
    if os.fork() == 0:  # the watchdog: only async-signal-safe work from here on
        os.close(w)
        try:
            os.read(r, 1)  # EOF: the worker is gone (or done with the command)
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.close(r)
    return w


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--namespace", required=True)
    p.add_argument("--identity", default=os.environ.get("POD_NAME")
                   or f"{os.uname().nodename}-{os.getpid()}")
    p.add_argument("--issue", required=True)
    p.add_argument("--lease-duration-seconds", type=int, default=15)
    p.add_argument("--renew-deadline-seconds", type=float, default=10)
    p.add_argument("--renew-interval-seconds", type=float, default=2)
    p.add_argument("--grace-seconds", type=float, default=None)
    p.add_argument("command", nargs="+")
    a = p.parse_args(argv)
    grace = a.grace_seconds
    if grace is None:
        grace = min(3.0, (a.lease_duration_seconds - a.renew_deadline_seconds) / 2)
    try:
        name = lock_name(a.issue)
        if not a.lease_duration_seconds > a.renew_deadline_seconds > a.renew_interval_seconds > 0:
            raise ValueError("need lease duration > renew deadline > renew interval > 0")
        if not 0 < grace < a.lease_duration_seconds - a.renew_deadline_seconds:
            raise ValueError("--grace-seconds must be less than lease duration - renew deadline")
    except ValueError as e:
        print(f"issuelock-py: {e}", file=sys.stderr)
        return EXIT_USAGE

    # From here on a termination signal ends the worker cleanly: whatever it holds is
    # released and its Lease deleted (while the command runs, signals go to the command).
    for sig in TERMINATING:
        signal.signal(sig, _interrupt)
    config.load_kube_config()
    api = client.ApiClient()
    try:
        user, pod = who_am_i(api)
        lease = re.sub(r"[^a-z0-9]+", "-", a.identity.translate(_ASCII_UPPER_TO_LOWER))
        lease = f"{lease.strip('-')[:40].strip('-') or 'holder'}-{secrets.token_hex(5)}"
        hb = Heartbeat(api, a.namespace, lease, a.identity, user, pod,
                       a.lease_duration_seconds, a.renew_deadline_seconds,
                       a.renew_interval_seconds)
    except Interrupted as e:
        print(f"issuelock-py: {e} while starting; nothing was taken", file=sys.stderr)
        return 128 + e.sig
    except Exception as e:
        print(f"issuelock-py: cannot start the heartbeat: {e}", file=sys.stderr)
        return EXIT_FAILURE
    locks = Locks(api, a.namespace, a.identity, user, pod, hb)
    lock = None
    try:
        lock, holder = locks.try_acquire(a.issue)
        if lock is None:
            print(f"issuelock-py: {a.issue!r} is held by {holder.get('identity')}",
                  file=sys.stderr)
            return EXIT_HELD
        env = dict(os.environ, ISSUELOCK_ISSUE=a.issue, ISSUELOCK_LOCK_NAME=name,
                   ISSUELOCK_FENCING_TOKEN=lock["metadata"]["resourceVersion"])
        try:
            code = run_command(a.command, env, locks, lock, grace, a.renew_interval_seconds)
        except FileNotFoundError:
            code = 127
        except PermissionError:
            code = 126
        locks.release(lock)
        return code
    except Lost as e:
        print(f"issuelock-py: the lock on {a.issue!r} was lost: {e}", file=sys.stderr)
        if lock is not None:  # no longer trusted, perhaps still ours: free it early
            try:
                locks.release(lock, orphan=True)
            except Exception:
                pass
        return EXIT_LOST
    except Interrupted as e:
        print(f"issuelock-py: {e}; the command did not run or had ended; releasing",
              file=sys.stderr)
        try:
            if lock is None:  # an acquire cut short may still have created the lock
                existing = locks._get(name)
                mine = locks._body(a.issue, name, "")["spec"]["holder"]
                if existing is not None and existing["spec"]["holder"] == mine:
                    lock = existing
            if lock is not None:
                locks.release(lock, orphan=True)
        except Exception:
            pass  # the controller reclaims it once the Lease below is gone
        return 128 + e.sig
    except ApiException as e:
        print(f"issuelock-py: {e}", file=sys.stderr)
        return EXIT_USAGE if e.status in (400, 422) else EXIT_FAILURE
    except Exception as e:
        print(f"issuelock-py: {e}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        hb.stop()


if __name__ == "__main__":
    sys.exit(main())
