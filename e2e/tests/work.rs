//! The worker's day: waiting for a lock (`run --wait`), claiming the next free issue
//! (`claim`), the long-running `work` loop, with real processes on the real API server.

use crate::support::*;
use futures::StreamExt;
use issuelock::IssueLock;
use kube::api::Api;
use kube::runtime::watcher;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// When each lock object appeared and disappeared, on this process's clock, by uid.
struct LockTimes {
    created: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
    deleted: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LockTimes {
    async fn watch(client: &kube::Client, ns: &str) -> Self {
        let api: Api<IssueLock> = Api::namespaced(client.clone(), ns);
        let (created, deleted): (
            std::sync::Arc<std::sync::Mutex<Vec<_>>>,
            std::sync::Arc<std::sync::Mutex<Vec<_>>>,
        ) = Default::default();
        let (c, d) = (created.clone(), deleted.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                let uid = |l: &IssueLock| l.metadata.uid.clone().unwrap_or_default();
                match e {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(l)) | Ok(watcher::Event::InitApply(l)) => {
                        let mut c = c.lock().unwrap();
                        if !c.iter().any(|(u, _)| *u == uid(&l)) {
                            c.push((uid(&l), Instant::now()));
                        }
                    }
                    Ok(watcher::Event::Delete(l)) => {
                        d.lock().unwrap().push((uid(&l), Instant::now()))
                    }
                    _ => {}
                }
            }
        });
        ready_rx.await.unwrap();
        Self {
            created,
            deleted,
            task,
        }
    }

    fn created(&self) -> Vec<(String, Instant)> {
        self.created.lock().unwrap().clone()
    }

    fn deleted(&self) -> Vec<(String, Instant)> {
        self.deleted.lock().unwrap().clone()
    }
}

impl Drop for LockTimes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for `w` to exit without blocking this test's runtime (its watches and proxies
/// keep running); returns its exit code and stderr.
async fn finish(w: WorkerProcess) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || w.wait()).await.unwrap()
}

fn run_cmd(ns: &str, identity: &str, issue: &str) -> Command {
    let mut cmd = issuelock_run(ns, issue);
    cmd.args(["--identity", identity]).args(FAST_HEARTBEAT);
    cmd
}

/// Requests on IssueLocks among `requests`.
fn lock_requests(requests: &[String]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.contains("/issuelocks"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_waiter_takes_the_lock_within_a_second_of_its_release_without_polling() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "wait-release").await;
    let dir = Scratch::new("wait-release");
    let times = LockTimes::watch(&client, &ns).await;
    let stop = dir.0.join("stop");
    let holder = WorkerProcess::spawn_command({
        let mut c = run_cmd(&ns, "holder", "org/repo#1");
        c.args([
            "--",
            "sh",
            "-c",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", stop.display()),
        ]);
        c
    });
    let first = wait_taken(&client, &ns, "org/repo#1").await;
    let proxy = CountingProxy::start().await;
    let mut waiter_cmd = run_cmd(&ns, "waiter", "org/repo#1");
    waiter_cmd
        .env("KUBECONFIG", proxy.kubeconfig(&dir.0))
        .args(["--wait", "60s", "--", "true"]);
    let waiter = WorkerProcess::spawn_command(waiter_cmd);
    // The waiter is waiting once its watch on the lock is open.
    eventually(
        Duration::from_secs(30),
        "the waiter's watch on the lock",
        || {
            let watching = lock_requests(&proxy.requests())
                .iter()
                .any(|r| r.contains("watch=true") && r.contains("metadata.name"));
            async move { watching.then_some(()) }
        },
    )
    .await;
    let waiting_since = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let while_waiting = lock_requests(&proxy.requests());
    let waited = waiting_since.elapsed();
    std::fs::write(&stop, "").unwrap();
    let (code, stderr) = finish(holder).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = finish(waiter).await;
    assert_eq!(code, Some(0), "{stderr}");
    let first_uid = first.metadata.uid.unwrap();
    let released = times
        .deleted()
        .into_iter()
        .find(|(u, _)| *u == first_uid)
        .map(|(_, t)| t)
        .expect("the holder's release seen");
    let (_, taken) = times
        .created()
        .into_iter()
        .find(|(u, _)| *u != first_uid)
        .expect("the waiter's lock seen");
    let after = taken.saturating_duration_since(released).as_secs_f64();
    println!(
        "waiter: lock taken {after:.3} s after the holder's release; {} lock requests in its first {:.1} s (of which {:.1} s waiting): {while_waiting:?}",
        while_waiting.len(),
        waited.as_secs_f64() + 1.0,
        waited.as_secs_f64()
    );
    assert!(after <= 1.0, "took {after:.3} s after the release");
    // A create (409), a read of the holder, a list and a watch of that one lock: no
    // request per second of waiting.
    assert!(while_waiting.len() <= 8, "{while_waiting:?}");
    let all = lock_requests(&proxy.requests());
    assert!(all.len() <= 12, "{all:?}");
    assert!(locks_in(&client, &ns).await.is_empty());
}

#[tokio::test]
async fn a_waiter_takes_a_killed_holders_lock_once_the_controller_reclaims_it() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "wait-killed").await;
    let _ctl = ControllerProcess::start(&ns);
    let times = LockTimes::watch(&client, &ns).await;
    let holder = WorkerProcess::start(&ns, "holder", "org/repo#2", None, 300);
    let first = wait_taken(&client, &ns, "org/repo#2").await;
    let waiter = WorkerProcess::spawn_command({
        let mut c = run_cmd(&ns, "waiter", "org/repo#2");
        c.args(["--wait", "60s", "--", "true"]);
        c
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    holder.signal("KILL");
    let (code, stderr) = finish(waiter).await;
    assert_eq!(code, Some(0), "{stderr}");
    let first_uid = first.metadata.uid.unwrap();
    let (_, taken) = times
        .created()
        .into_iter()
        .find(|(u, _)| *u != first_uid)
        .expect("the waiter's lock seen");
    let after = taken.saturating_duration_since(killed).as_secs_f64();
    println!("waiter: lock taken {after:.3} s after the holder was SIGKILLed (lease 6 s)");
    assert!(after <= 6.0 + 2.0, "took {after:.3} s");
    drop(holder);
}

/// `issuelock work` over `n` issues of `org/repo#<i>` in `ns`, recording into `rec_dir`.
fn work_cmd(ns: &str, identity: &str, list: &Path, done: &Path, rec_dir: &Path) -> Command {
    let mut cmd = issuelock();
    cmd.args(["work", "-n", ns, "--identity", identity, "--issues"])
        .arg(list)
        .arg("--done-dir")
        .arg(done)
        .args(FAST_HEARTBEAT)
        .env("RUST_LOG", "warn")
        .args([
            "--",
            "sh",
            "-c",
            // One line per run: issue, start and end (ns since the epoch), worker.
            &format!(
                "s=$(date +%s%N); e=$(date +%s%N); echo \"$ISSUELOCK_ISSUE $s $e {identity}\" >> {}/{identity}",
                rec_dir.display()
            ),
        ]);
    cmd
}

fn write_list(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("issues.txt");
    let text: String = (0..n).map(|i| format!("org/repo#{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A run of `work` over `n` issues in `dir`: its done directory, its record directory
/// (both created) and its list of `n` issues.
fn work_dirs(dir: &Path, n: usize) -> (PathBuf, PathBuf, PathBuf) {
    let (done, rec) = (dir.join("done"), dir.join("rec"));
    std::fs::create_dir_all(&done).unwrap();
    std::fs::create_dir_all(&rec).unwrap();
    (done, rec, write_list(dir, n))
}

/// Every record of the runs in `rec_dir`: issue → [(start, end, worker)].
fn records(rec_dir: &Path) -> HashMap<String, Vec<(u128, u128, String)>> {
    let mut out: HashMap<String, Vec<_>> = HashMap::new();
    for f in std::fs::read_dir(rec_dir).unwrap() {
        for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let p: Vec<&str> = line.split(' ').collect();
            out.entry(p[0].to_owned()).or_default().push((
                p[1].parse().unwrap(),
                p[2].parse().unwrap(),
                p[3].to_owned(),
            ));
        }
    }
    out
}

/// Every issue ran exactly once; no two runs of one worker overlap.
fn assert_exactly_once(rec_dir: &Path, n: usize) {
    let recs = records(rec_dir);
    for i in 0..n {
        let issue = format!("org/repo#{i}");
        let runs = recs.get(&issue).cloned().unwrap_or_default();
        assert_eq!(runs.len(), 1, "{issue} ran {} times: {runs:?}", runs.len());
        assert!(runs[0].0 <= runs[0].1);
    }
    assert_eq!(recs.len(), n, "unexpected issues: {:?}", recs.keys());
    let mut by_worker: HashMap<String, Vec<(u128, u128)>> = HashMap::new();
    for runs in recs.values() {
        for (s, e, w) in runs {
            by_worker.entry(w.clone()).or_default().push((*s, *e));
        }
    }
    for (w, mut runs) in by_worker {
        runs.sort();
        for pair in runs.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{w} ran two commands at once: {pair:?}"
            );
        }
    }
}

fn conflicts(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.split("; ")
                .nth(1)?
                .strip_suffix(" conflicts (409)")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
}

#[tokio::test]
async fn six_workers_process_every_issue_exactly_once() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "work-six").await;
    let dir = Scratch::new("work-six");
    let n = 100;
    let (done, rec, list) = work_dirs(&dir.0, n);
    let start = Instant::now();
    let workers: Vec<_> = (0..6)
        .map(|w| WorkerProcess::spawn_command(work_cmd(&ns, &format!("w{w}"), &list, &done, &rec)))
        .collect();
    let mut total_conflicts = 0;
    for w in workers {
        let (code, stderr) = finish(w).await;
        assert_eq!(code, Some(0), "{stderr}");
        total_conflicts += conflicts(&stderr);
    }
    let wall = start.elapsed().as_secs_f64();
    assert_exactly_once(&rec, n);
    assert_eq!(std::fs::read_dir(&done).unwrap().count(), n);
    println!(
        "work: 6 workers over {n} issues in {wall:.2} s, {total_conflicts} conflicts (409), {:.3} per issue",
        total_conflicts as f64 / n as f64
    );
    assert!(locks_in(&client, &ns).await.is_empty());
}

#[tokio::test]
async fn work_uses_one_lease_and_one_identity_lookup_for_200_issues() {
    let _quiet = QUIET.lock().await;
    let client = client().await;
    let ns = namespace(&client, "work-one-lease").await;
    let dir = Scratch::new("work-one-lease");
    let n = 200;
    let (done, rec, list) = work_dirs(&dir.0, n);
    let proxy = CountingProxy::start().await;
    let mut cmd = work_cmd(&ns, "solo", &list, &done, &rec);
    cmd.env("KUBECONFIG", proxy.kubeconfig(&dir.0));
    let start = Instant::now();
    let (code, stderr) = finish(WorkerProcess::spawn_command(cmd)).await;
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(code, Some(0), "{stderr}");
    assert_exactly_once(&rec, n);
    let requests = proxy.requests();
    let count = |f: &dyn Fn(&str) -> bool| requests.iter().filter(|r| f(r)).count();
    let lease_creates = count(&|r| r.starts_with("POST ") && r.contains("/leases"));
    let reviews = count(&|r| r.contains("selfsubjectreviews"));
    let lock_creates = count(&|r| r.starts_with("POST ") && r.contains("/issuelocks"));
    let lock_deletes = count(&|r| r.starts_with("DELETE ") && r.contains("/issuelocks"));
    let watches = count(&|r| r.contains("watch=true"));
    let other = requests.len() - lease_creates - reviews - lock_creates - lock_deletes;
    println!(
        "work over {n} issues: {:.2} s ({:.1} ms per issue); requests: {} in all, lease creates {lease_creates}, \
         identity lookups {reviews}, lock creates {lock_creates}, lock deletes {lock_deletes}, watches {watches}, \
         other {other} (lease renewals, lists)",
        wall,
        wall * 1000.0 / n as f64,
        requests.len()
    );
    assert_eq!(lease_creates, 1, "{requests:#?}");
    assert_eq!(reviews, 1, "{requests:#?}");
    assert_eq!(lock_creates, n);
    assert_eq!(lock_deletes, n);
    assert!(locks_in(&client, &ns).await.is_empty());
}

/// A worker over a long list of mostly finished issues (as a `--follow` worker restarted
/// late in a run) runs the done check of a finished issue once, and of an open one three
/// times (on input, before and after taking its lock): before, each claim re-ran the
/// checks of the finished issues ranked before its pick, one after the other.
#[tokio::test]
async fn work_checks_each_finished_issue_once() {
    let client = client().await;
    let ns = namespace(&client, "work-done-once").await;
    let dir = Scratch::new("work-done-once");
    let (n, finished) = (40, 30);
    let list = write_list(&dir.0, n);
    let fin = dir.0.join("fin");
    std::fs::create_dir_all(&fin).unwrap();
    for i in 0..finished {
        std::fs::write(fin.join(i.to_string()), "").unwrap();
    }
    let checks = dir.0.join("checks");
    let number = "n=${ISSUELOCK_ISSUE#org/repo#}";
    let mut cmd = issuelock();
    cmd.args(["work", "-n", &ns, "--identity", "w", "--issues"])
        .arg(&list)
        .arg("--done-cmd")
        .arg(format!(
            "{number}; echo $n >> {}; test -e {}/$n",
            checks.display(),
            fin.display()
        ))
        .args(FAST_HEARTBEAT)
        .args(["--", "sh", "-c"])
        .arg(format!("{number}; touch {}/$n", fin.display()));
    let (code, stderr) = finish(WorkerProcess::spawn_command(cmd)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let mut count: HashMap<usize, usize> = HashMap::new();
    for line in std::fs::read_to_string(&checks).unwrap().lines() {
        *count.entry(line.parse().unwrap()).or_default() += 1;
    }
    for i in 0..n {
        let want = if i < finished { 1 } else { 3 };
        assert_eq!(count.get(&i), Some(&want), "done checks of #{i}: {count:?}");
    }
    assert!(locks_in(&client, &ns).await.is_empty());
}

#[tokio::test]
async fn work_goes_on_after_a_lost_lock_and_stops_cleanly_on_sigterm() {
    let client = client().await;
    let ns = namespace(&client, "work-lost").await;
    let dir = Scratch::new("work-lost");
    let done = dir.0.join("done");
    std::fs::create_dir_all(&done).unwrap();
    let list = dir.0.join("issues.txt");
    std::fs::write(&list, "org/repo#a\norg/repo#b\n").unwrap();
    let pids = dir.0.join("pids");
    let mut cmd = work_in_listed_order(&ns, &list);
    cmd.arg("--done-dir").arg(&done).args(FAST_HEARTBEAT).args([
        "--",
        "sh",
        "-c",
        // A tree: a background sleep, and the command's own.
        &format!(
            "sleep 300 & echo $! >> {p}; echo $$ >> {p}; wait",
            p = pids.display()
        ),
    ]);
    let worker = WorkerProcess::spawn_command(cmd);
    wait_taken(&client, &ns, "org/repo#a").await;
    let out = issuelock()
        .args(["release", "org/repo#a", "-n", &ns, "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    // work goes on with the next issue, after stopping the first one's tree.
    wait_taken(&client, &ns, "org/repo#b").await;
    let first_tree: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .take(2)
        .map(|l| l.parse().unwrap())
        .collect();
    for pid in &first_tree {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} of the lost issue's tree still runs"
        );
    }
    eventually(Duration::from_secs(10), "the second command's tree", || {
        let lines = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .count();
        async move { (lines >= 4).then_some(()) }
    })
    .await;
    worker.signal("TERM");
    let (code, stderr) = finish(worker).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("was lost"), "{stderr}");
    let all: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    for pid in all {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} still runs"
        );
    }
    assert_eq!(
        std::fs::read_dir(&done).unwrap().count(),
        0,
        "no issue is done"
    );
    eventually(Duration::from_secs(10), "nothing left locked", || {
        let client = client.clone();
        let ns = ns.to_string();
        async move { locks_in(&client, &ns).await.is_empty().then_some(()) }
    })
    .await;
}

/// The names of the heartbeat Leases in `ns`.
fn heartbeat_leases(ns: &str) -> Vec<String> {
    kubectl_ok(&[
        "get",
        "leases",
        "-n",
        ns,
        "-l",
        "issuelock.dev/heartbeat",
        "-o",
        "name",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[tokio::test]
async fn work_resumes_with_a_new_heartbeat_after_losing_its_heartbeat() {
    let client = client().await;
    let ns = namespace(&client, "work-resume").await;
    let dir = Scratch::new("work-resume");
    let list = dir.0.join("issues.txt");
    std::fs::write(&list, "org/repo#a\norg/repo#b\n").unwrap();
    let mut cmd = work_in_listed_order(&ns, &list);
    cmd.args(FAST_HEARTBEAT).args(["--", "sleep", "300"]);
    let worker = WorkerProcess::spawn_command(cmd);
    wait_taken(&client, &ns, "org/repo#a").await;
    let first = heartbeat_leases(&ns);
    assert_eq!(first.len(), 1, "{first:?}");
    // The heartbeat is lost (as after an API server outage longer than the renew
    // deadline): its locks are lost, and `work` goes on with a new Lease. The Lease is
    // deleted without its dependents, as an outage would leave lock a in place: with
    // the garbage collector removing lock a at once, `work` could learn of the lost lock
    // before its heartbeat's next renewal, take b on the dead Lease and lose it too.
    kubectl_ok(&["delete", &first[0], "-n", &ns, "--cascade=orphan"]);
    wait_taken(&client, &ns, "org/repo#b").await;
    let second = heartbeat_leases(&ns);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(first, second, "a new heartbeat Lease");
    worker.signal("TERM");
    let (code, stderr) = finish(worker).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("heartbeat back; resuming"), "{stderr}");
}

#[tokio::test]
async fn work_resuming_after_a_lost_heartbeat_waits_out_a_brief_permission_denial() {
    let client = client().await;
    let ns = namespace(&client, "work-resume-rbac").await;
    let dir = Scratch::new("work-resume-rbac");
    let kc = kubeconfig_of_w(&ns, &dir);
    worker_role(
        &ns,
        "worker",
        "leases.coordination.k8s.io,issuelocks.issuelock.dev",
    );
    bind_to_w(&ns, "worker");
    let list = dir.0.join("issues.txt");
    std::fs::write(&list, "org/repo#a\norg/repo#b\n").unwrap();
    let mut cmd = work_in_listed_order(&ns, &list);
    cmd.env("KUBECONFIG", &kc)
        .args(FAST_HEARTBEAT)
        .args(["--", "sleep", "300"]);
    let mut worker = WorkerProcess::spawn_command(cmd);
    wait_taken(&client, &ns, "org/repo#a").await;
    let user = format!("system:serviceaccount:{ns}:w");
    let recorded_user = |lease: &str| {
        kubectl_ok(&[
            "get",
            lease,
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.annotations.issuelock\\.dev/holder-user}",
        ])
    };
    let first = heartbeat_leases(&ns);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(recorded_user(&first[0]), user);
    // The API server refuses the worker for a while, as one just back from an outage does
    // until its caches are filled: renewals fail (the heartbeat is lost), and so does the
    // new Lease. `work` waits it out instead of exiting.
    kubectl_ok(&["delete", "rolebinding", "worker", "-n", &ns]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        worker.is_running(),
        "work exited on a brief permission denial"
    );
    bind_to_w(&ns, "worker");
    wait_taken(&client, &ns, "org/repo#b").await;
    let second: Vec<String> = heartbeat_leases(&ns)
        .into_iter()
        .filter(|l| !first.contains(l))
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(recorded_user(&second[0]), user, "the same user recorded");
    worker.signal("TERM");
    let (code, stderr) = finish(worker).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("permission denied while trying to create heartbeat lease"),
        "{stderr}"
    );
    assert!(stderr.contains("heartbeat back; resuming"), "{stderr}");
}

#[tokio::test]
async fn work_waits_out_a_brief_refusal_of_its_claims() {
    let client = client().await;
    let ns = namespace(&client, "work-refused").await;
    let dir = Scratch::new("work-refused");
    let kc = kubeconfig_of_w(&ns, &dir);
    worker_role(&ns, "heartbeat", "leases.coordination.k8s.io");
    worker_role(&ns, "locks", "issuelocks.issuelock.dev");
    bind_to_w(&ns, "heartbeat");
    bind_to_w(&ns, "locks");
    let (list, done) = (dir.0.join("issues.txt"), dir.0.join("done"));
    std::fs::create_dir_all(&done).unwrap();
    std::fs::write(&list, "org/repo#a\n").unwrap();
    let mut cmd = work_in_listed_order(&ns, &list);
    cmd.env("KUBECONFIG", &kc)
        .arg("--follow")
        .arg("--done-dir")
        .arg(&done)
        .args(FAST_HEARTBEAT)
        .args(["--", "true"]);
    let mut worker = WorkerProcess::spawn_command(cmd);
    let finished = |issue: &str| {
        done.join(issuelock::IssueKey::parse(issue).unwrap().lock_name())
            .exists()
            .then_some(())
    };
    eventually(Duration::from_secs(15), "a done", || async {
        finished("org/repo#a")
    })
    .await;
    // Its claims are refused for a while (as by an API server just started, whose RBAC
    // cache is empty); its heartbeat is not. `work` retries instead of exiting.
    kubectl_ok(&["delete", "rolebinding", "locks", "-n", &ns]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(&list, "org/repo#a\norg/repo#b\n").unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        worker.is_running(),
        "work exited on a brief refusal of a claim"
    );
    assert!(finished("org/repo#b").is_none());
    bind_to_w(&ns, "locks");
    eventually(Duration::from_secs(40), "b done", || async {
        finished("org/repo#b")
    })
    .await;
    worker.signal("TERM");
    let (code, stderr) = finish(worker).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("claiming failed; retrying")
            && stderr.contains("permission denied while trying to create lock"),
        "{stderr}"
    );
}

#[tokio::test]
async fn claim_takes_one_free_issue_and_says_when_all_are_held_or_done() {
    let client = client().await;
    let ns = namespace(&client, "claim").await;
    let dir = Scratch::new("claim");
    let done = dir.0.join("done");
    std::fs::create_dir_all(&done).unwrap();
    let list = dir.0.join("issues.txt");
    std::fs::write(&list, "org/repo#x\norg/repo#y\n").unwrap();
    let claim = |cmd: &[&str]| {
        let mut c = issuelock();
        c.args(["claim", "-n", &ns, "--issues"])
            .arg(&list)
            .arg("--done-dir")
            .arg(&done)
            .arg("--")
            .args(cmd);
        c
    };
    let holder = WorkerProcess::start(&ns, "holder", "org/repo#x", None, 300);
    wait_taken(&client, &ns, "org/repo#x").await;
    let out = claim(&["sh", "-c", "echo $ISSUELOCK_ISSUE"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "org/repo#y");
    // y is done now, x is held.
    let out = claim(&["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{:?}", text(&out));
    // A waiter stopped by SIGTERM while waiting: 143, nothing left behind.
    let waiter = WorkerProcess::spawn_command({
        let mut c = run_cmd(&ns, "waiter", "org/repo#x");
        c.args(["--wait", "60s", "--", "true"]);
        c
    });
    eventually(Duration::from_secs(30), "the waiter's Lease", || {
        let client = client.clone();
        let ns = ns.to_string();
        async move {
            let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                Api::namespaced(client, &ns);
            let n = leases.list(&Default::default()).await.unwrap().items.len();
            (n >= 2).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    waiter.signal("TERM");
    let (code, stderr) = finish(waiter).await;
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("while waiting for the lock"), "{stderr}");
    holder.signal("TERM");
    let (code, stderr) = finish(holder).await;
    assert_eq!(code, Some(143), "{stderr}");
    let out = claim(&["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = claim(&["true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).1.contains("every candidate is done"));
}

#[tokio::test]
async fn bad_input_to_work_claim_and_wait_names_the_line_and_locks_nothing() {
    let client = client().await;
    let ns = namespace(&client, "work-bad-input").await;
    let dir = Scratch::new("work-bad-input");
    let write = |name: &str, text: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = write("good.txt", "a\nb\n");
    let long = "x".repeat(1100);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--issues".into(),
                write("empty.txt", "\n \n").display().to_string(),
            ],
            "empty.txt: no issue keys",
        ),
        (
            vec![
                "--issues".into(),
                write("dup.txt", "a\nb\n\na\n").display().to_string(),
            ],
            "dup.txt:4: duplicate issue key \"a\" (first on line 1)",
        ),
        (
            vec![
                "--issues".into(),
                write("bad.txt", &format!("a\n{long}\n"))
                    .display()
                    .to_string(),
            ],
            "bad.txt:2: invalid issue key",
        ),
        (
            vec![
                "--issues".into(),
                dir.0.join("missing.txt").display().to_string(),
            ],
            "cannot read the issue list",
        ),
        (
            vec![
                "--issues".into(),
                good.display().to_string(),
                "--done-dir".into(),
                dir.0.join("nope").display().to_string(),
            ],
            "no such directory",
        ),
    ];
    for command in ["work", "claim"] {
        for (args, message) in &cases {
            let out = issuelock()
                .args([command, "-n", &ns])
                .args(args)
                .args(["--", "true"])
                .output()
                .unwrap();
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{command} {args:?}: {stderr}");
            assert!(stderr.contains(message), "{command} {args:?}: {stderr}");
        }
    }
    // Empty input on stdin.
    let out = issuelock()
        .args(["work", "-n", &ns, "--issues", "-", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("<stdin>: no issue keys"));
    for wait in ["5x", "-1", "soon", ""] {
        let out = issuelock_run(&ns, "a")
            .args([&format!("--wait={wait}"), "--", "true"])
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{wait}: {stderr}");
        assert!(
            stderr.contains("--wait: invalid duration"),
            "{wait}: {stderr}"
        );
    }
    assert!(locks_in(&client, &ns).await.is_empty());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    assert!(
        leases
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// `issuelock work -n NS --identity w --order listed --issues LIST`: the rest is the test's.
/// The ServiceAccount `w` in `ns` and a kubeconfig (in `dir`) authenticating as it.
fn kubeconfig_of_w(ns: &str, dir: &Scratch) -> PathBuf {
    kubectl_ok(&["create", "serviceaccount", "w", "-n", ns]);
    let token = kubectl_ok(&["create", "token", "w", "-n", ns, "--duration=10m"]);
    token_kubeconfig(&dir.0, token.trim())
}

/// A Role `role` in `ns` with every verb a worker uses on `resources` (comma-separated).
fn worker_role(ns: &str, role: &str, resources: &str) {
    kubectl_ok(&[
        "create",
        "role",
        role,
        "-n",
        ns,
        "--verb=get,list,watch,create,update,patch,delete",
        &format!("--resource={resources}"),
    ]);
}

/// Binds the Role `role` in `ns` to the ServiceAccount `w`.
fn bind_to_w(ns: &str, role: &str) {
    kubectl_ok(&[
        "create",
        "rolebinding",
        role,
        "-n",
        ns,
        &format!("--role={role}"),
        &format!("--serviceaccount={ns}:w"),
    ]);
}

fn work_in_listed_order(ns: &str, list: &std::path::Path) -> std::process::Command {
    let mut cmd = issuelock();
    cmd.args([
        "work",
        "-n",
        ns,
        "--identity",
        "w",
        "--order",
        "listed",
        "--issues",
    ])
    .arg(list);
    cmd
}
