//! `issuelock run` contains the command's whole process tree: a child in the command's
//! process group, a process that escaped with `setsid`, and an orphan of a double fork
//! all stop when the lock is lost, when `run` is SIGKILLed or SIGSTOPped, when the
//! supervisor is SIGKILLed, and when the command exits leaving them behind; signals reach
//! the command first, and a signal before the lock is taken runs nothing.
//! Heartbeats use FAST_HEARTBEAT (lease 6 s, renew deadline 4 s, interval 1 s).

use crate::support::*;
use issuelock::supervise::tree;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Grace period of these tests (the slack of FAST_HEARTBEAT is 2 s).
const GRACE: f64 = 1.0;

/// The command: starts `sleep 300` in its own group, `sleep 301` escaped with `setsid`,
/// `sleep 302` orphaned by a double fork, writes the pids, then waits. `$2` says what it
/// does on SIGTERM: `ignore` it (children inherit that), `clean` (touch `cleaned`, then
/// die of SIGTERM), or `exit` 0 at once without waiting.
const TREE: &str = r#"
dir=$1
case $2 in
  ignore) trap '' TERM ;;
  clean) trap 'touch "$dir/cleaned"; trap - TERM; kill -TERM $$' TERM ;;
esac
put() { echo "$2" > "$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1"; }
sleep 300 & put child $!
setsid sh -c 'echo $$ > "$0/escaped.tmp"; mv "$0/escaped.tmp" "$0/escaped"; exec sleep 301' "$dir" &
sh -c 'sleep 302 & echo $! > "$0/orphan.tmp"; mv "$0/orphan.tmp" "$0/orphan"' "$dir"
while [ ! -s "$dir/escaped" ]; do sleep 0.05; done
put command $$
[ "$2" = exit ] && exit 0
wait
"#;

const PIDS: [&str; 4] = ["command", "child", "escaped", "orphan"];

fn write_script(dir: &Path) -> PathBuf {
    let path = dir.join("tree.sh");
    std::fs::write(&path, TREE).unwrap();
    path
}

/// Starts `issuelock run` (in its own process group, so that signals sent to it reach
/// nobody else) with the tree script; stderr goes to `dir/stderr`.
fn start_run(ns: &str, issue: &str, dir: &Path, on_term: &str, flags: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let script = write_script(dir);
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    issuelock_run(ns, issue)
        .args(["--identity", "tree"])
        .args(flags)
        .args(["--", "sh"])
        .arg(&script)
        .arg(dir)
        .arg(on_term)
        .env("NS", ns)
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Waits (without blocking the runtime) for `run` to exit.
async fn exit_of(mut run: Child) -> ExitStatus {
    tokio::task::spawn_blocking(move || run.wait())
        .await
        .unwrap()
        .unwrap()
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}

/// The pids the script wrote, once all are there.
async fn tree_pids(dir: &Path) -> Vec<Pid> {
    eventually(Duration::from_secs(20), "the tree's pid files", || async {
        PIDS.iter()
            .map(|name| {
                std::fs::read_to_string(dir.join(name))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
                    .map(Pid::from_raw)
            })
            .collect::<Option<Vec<_>>>()
    })
    .await
}

/// True while `pid` runs (a zombie has ended).
fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| tree::parse_stat(&s))
        .is_some_and(|p| !p.zombie)
}

fn living(pids: &[Pid]) -> Vec<Pid> {
    pids.iter().copied().filter(|&p| alive(p)).collect()
}

/// Waits until none of `pids` runs; returns when that was first seen.
async fn all_gone(pids: &[Pid], limit: Duration) -> Instant {
    eventually(limit, "the whole process tree gone", || async {
        living(pids).is_empty().then(Instant::now)
    })
    .await
}

fn locks_in(ns: &str) -> String {
    kubectl_ok(&["get", "issuelocks", "-n", ns, "-o", "name"])
}

/// Starts the tree script under `issuelock run` on `issue` in a fresh namespace named
/// after `test` (see [`start_run`]) and waits until the whole tree runs. Returns the
/// namespace, the scratch directory, the `run` process and the pids of the tree.
async fn tree_under_run(
    test: &str,
    issue: &str,
    on_term: &str,
    flags: &[&str],
) -> (TestNamespace, Scratch, Child, Vec<Pid>) {
    let client = client().await;
    let ns = namespace(&client, test).await;
    let scratch = Scratch::new(test);
    let run = start_run(&ns, issue, &scratch.0, on_term, flags);
    let pids = tree_pids(&scratch.0).await;
    (ns, scratch, run, pids)
}

fn fast(grace: &str) -> Vec<&str> {
    let mut flags = FAST_HEARTBEAT.to_vec();
    flags.extend(["--grace-seconds", grace]);
    flags
}

#[tokio::test]
async fn a_lost_lock_stops_the_whole_tree_after_the_grace_period() {
    let grace = GRACE.to_string();
    let (ns, scratch, run, pids) =
        tree_under_run("tree-lost", "org/repo#lost", "ignore", &fast(&grace)).await;
    assert_eq!(living(&pids), pids, "the whole tree runs");

    let deleted = Instant::now();
    let out = issuelock()
        .args(["release", "org/repo#lost", "-n", &ns, "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let status = exit_of(run).await;
    let took = deleted.elapsed().as_secs_f64();
    let stderr = stderr_of(&scratch.0);
    assert_eq!(status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("was lost"), "{stderr}");
    // `run` exits only once the tree is gone, SIGKILLed after the grace period (the
    // tree ignores SIGTERM).
    assert_eq!(living(&pids), [], "{stderr}");
    println!(
        "lock deleted → tree (ignoring SIGTERM) killed and run exited after {took:.3}s (grace {GRACE}s)"
    );
    assert!((GRACE..GRACE + 3.0).contains(&took), "{took}");
}

#[tokio::test]
async fn sigkill_of_run_kills_the_whole_tree_at_once() {
    let (_ns, _scratch, mut run, pids) =
        tree_under_run("tree-sigkill", "org/repo#kill", "ignore", &FAST_HEARTBEAT).await;
    // Everything below `run`, the supervisor included.
    let below = tree::living_descendants(Pid::from_raw(run.id() as i32));
    assert!(below.len() > pids.len(), "{below:?} {pids:?}");

    kill(Pid::from_raw(run.id() as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let gone = all_gone(&below, Duration::from_secs(5)).await;
    let took = (gone - killed).as_secs_f64();
    println!(
        "run SIGKILLed → its whole tree ({} processes) gone after {took:.3}s",
        below.len()
    );
    assert!(took < 1.0, "{took}");
    let _ = run.wait();
}

#[tokio::test]
async fn sigterm_reaches_the_command_first_and_run_exits_143() {
    let (ns, scratch, run, pids) = tree_under_run(
        "tree-sigterm",
        "org/repo#term",
        "clean",
        &fast(&GRACE.to_string()),
    )
    .await;

    kill(Pid::from_raw(run.id() as i32), Signal::SIGTERM).unwrap();
    let status = exit_of(run).await;
    let stderr = stderr_of(&scratch.0);
    assert_eq!(
        status.code(),
        Some(143),
        "the command died of SIGTERM: {stderr}"
    );
    assert!(
        scratch.0.join("cleaned").exists(),
        "the command's trap ran: {stderr}"
    );
    assert_eq!(living(&pids), [], "{stderr}");
    assert!(locks_in(&ns).trim().is_empty(), "the lock was released");
}

#[tokio::test]
async fn a_paused_run_has_its_tree_stopped_before_the_lease_expires() {
    let grace = GRACE.to_string();
    let (_ns, scratch, run, pids) =
        tree_under_run("tree-sigstop", "org/repo#stop", "ignore", &fast(&grace)).await;

    let pid = Pid::from_raw(run.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let gone = all_gone(&pids, Duration::from_secs(10)).await;
    let took = (gone - stopped).as_secs_f64();
    println!(
        "run SIGSTOPped → tree killed by its supervisor after {took:.3}s \
         (renew deadline 4 s + grace {GRACE}s; lease 6 s)"
    );
    assert!(took < 4.0 + GRACE + 0.5, "{took}");
    kill(pid, Signal::SIGCONT).unwrap();
    let status = exit_of(run).await;
    let stderr = stderr_of(&scratch.0);
    assert_eq!(status.code(), Some(76), "{stderr}");
    assert!(stderr.contains("trust-expired"), "{stderr}");
}

#[tokio::test]
async fn what_the_command_leaves_running_is_killed_before_the_lock_is_released() {
    let client = client().await;
    let ns = namespace(&client, "tree-leftovers").await;
    let scratch = Scratch::new("tree-leftovers");
    let dir = &scratch.0;
    // A leftover that, when asked to stop, records whether the lock is still held.
    let leftover = dir.join("leftover.sh");
    std::fs::write(
        &leftover,
        r#"trap 'kubectl get issuelocks -n "$NS" -o name > "$1/at-term"; exit 0' TERM
echo $$ > "$1/leftover.tmp"; mv "$1/leftover.tmp" "$1/leftover"
sleep 300 & wait"#,
    )
    .unwrap();
    let started = Instant::now();
    let out = issuelock_run(&ns, "org/repo#left")
        .args(["--identity", "tree"])
        .args(["--grace-seconds", "4", "--"])
        .args(["sh", "-c"])
        .arg(format!(
            "setsid sh {} {} & while [ ! -s {}/leftover ]; do sleep 0.05; done; exit 0",
            leftover.display(),
            dir.display(),
            dir.display()
        ))
        .env("NS", &ns)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let pid: i32 = std::fs::read_to_string(dir.join("leftover"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(Pid::from_raw(pid)), "the leftover was stopped");
    let at_term = std::fs::read_to_string(dir.join("at-term")).unwrap();
    assert!(
        at_term.contains("issuelock"),
        "the lock was still held when the leftover was stopped: {at_term:?}"
    );
    assert!(locks_in(&ns).trim().is_empty(), "then released");
    println!(
        "command with a leftover: run exited 0 after {:.3}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_killed_supervisor_leaves_nothing_behind() {
    let (ns, scratch, run, pids) =
        tree_under_run("tree-supervisor", "org/repo#sup", "ignore", &FAST_HEARTBEAT).await;
    let run_pid = Pid::from_raw(run.id() as i32);
    let supervisor = tree::descendants_in(&tree::snapshot(), run_pid.as_raw())
        .into_iter()
        .find(|p| p.ppid == run_pid.as_raw())
        .map(|p| Pid::from_raw(p.pid))
        .expect("run has one child, the supervisor");

    kill(supervisor, Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let status = exit_of(run).await;
    let stderr = stderr_of(&scratch.0);
    println!(
        "supervisor SIGKILLed → run killed the orphaned tree and exited after {:.3}s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("supervisor of the command died"),
        "{stderr}"
    );
    assert_eq!(living(&pids), [], "{stderr}");
    assert!(locks_in(&ns).trim().is_empty(), "the lock was released");
}

#[test]
fn a_grace_period_longer_than_the_slack_is_rejected_before_any_call() {
    exits_with(
        issuelock().args(["run", "--issue", "x", "--grace-seconds", "5", "--", "true"]),
        2,
        "must be shorter than the lease duration minus the renew deadline (5s)",
    );
}

#[tokio::test]
async fn a_command_that_cannot_be_executed_exits_127_and_releases() {
    let client = client().await;
    let ns = namespace(&client, "tree-127").await;
    exits_with(
        issuelock_run(&ns, "org/repo#127")
            .args(["--"])
            .arg("no-such-command-e2e"),
        127,
        "cannot start \"no-such-command-e2e\"",
    );
    assert!(locks_in(&ns).trim().is_empty());
}

/// A TCP proxy in front of the API server that holds every new connection for `delay`
/// before forwarding it: API calls through it are slow, and signals sent meanwhile arrive
/// while `run` is starting or taking its lock.
struct SlowProxy {
    port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    async fn start(delay: Duration) -> Self {
        let target = api_server_addr();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, accept }
    }

    /// A kubeconfig (admin credentials) that goes through this proxy.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        proxied_kubeconfig(dir, "slow-kubeconfig", self.port)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// True once process `pid` catches SIGTERM (its `SigCgt` mask in /proc).
fn catches_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (Signal::SIGTERM as u64 - 1)) != 0)
}

#[tokio::test]
async fn a_signal_before_the_lock_is_taken_runs_nothing_and_leaves_nothing() {
    let client = client().await;
    let ns = namespace(&client, "tree-early-signal").await;
    let scratch = Scratch::new("tree-early-signal");
    let proxy = SlowProxy::start(Duration::from_millis(1500)).await;
    let ran = scratch.0.join("ran");
    let stderr = std::fs::File::create(scratch.0.join("stderr")).unwrap();
    let run = {
        use std::os::unix::process::CommandExt;
        issuelock_run(&ns, "org/repo#early")
            .env("KUBECONFIG", proxy.kubeconfig(&scratch.0))
            .args(["--", "touch"])
            .arg(&ran)
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap()
    };
    // `run` catches SIGTERM before its first API call, which the proxy holds for 1.5 s.
    let pid = run.id();
    eventually(Duration::from_secs(10), "run catching SIGTERM", || async {
        catches_sigterm(pid).then_some(())
    })
    .await;
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = exit_of(run).await;
    let stderr = stderr_of(&scratch.0);
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("the command did not run"), "{stderr}");
    assert!(!ran.exists(), "the command did not run");
    assert!(locks_in(&ns).trim().is_empty(), "no lock left");
    let leases = kubectl_ok(&[
        "get",
        "leases",
        "-n",
        &ns,
        "-l",
        "issuelock.dev/heartbeat=true",
        "-o",
        "name",
    ]);
    assert!(
        leases.trim().is_empty(),
        "no heartbeat Lease left: {leases}"
    );
}

/// A SIGTERM that reaches `run` right after it took the lock (while the supervisor is
/// being started, or just as the command starts) either keeps the command from running
/// or is forwarded to it: `run` exits 143 either way, and releases everything.
#[tokio::test]
async fn a_sigterm_right_after_the_lock_is_taken_exits_143() {
    use std::io::{BufRead, BufReader, Read};
    let client = client().await;
    let ns = namespace(&client, "tree-sigterm-start").await;
    let mut outcomes = Vec::new();
    for i in 0..5 {
        let mut run = {
            use std::os::unix::process::CommandExt;
            issuelock_run(&ns, &format!("org/repo#sig-{i}"))
                .args(["--", "sleep", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut stderr = BufReader::new(run.stderr.take().unwrap());
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if line.contains("lock acquired") {
                kill(Pid::from_raw(run.id() as i32), Signal::SIGTERM).unwrap();
                break;
            }
            line.clear();
        }
        let mut tail = String::new();
        stderr.read_to_string(&mut tail).unwrap();
        let code = exit_of(run).await.code();
        println!("trial {i}: exit {code:?}: {}", tail.trim());
        outcomes.push((code, tail));
    }
    assert!(locks_in(&ns).trim().is_empty(), "nothing left held");
    for (code, stderr) in &outcomes {
        assert_eq!(*code, Some(143), "{stderr}");
    }
}

/// A command that SIGSTOPs its supervisor cannot keep its tree alive once the lock is
/// lost: `run` waits a grace period (and a margin) for the supervisor's report, then
/// kills the supervisor and the whole tree itself and exits 76.
#[tokio::test]
async fn a_stopped_supervisor_does_not_keep_the_tree_alive_after_a_lost_lock() {
    let client = client().await;
    let ns = namespace(&client, "tree-stopped-supervisor").await;
    let scratch = Scratch::new("tree-stopped-supervisor");
    let (run, below) =
        start_stopping_its_supervisor(&ns, "org/repo#stopsup", &scratch.0, &[]).await;
    let deleted = Instant::now();
    let out = issuelock()
        .args(["release", "org/repo#stopsup", "-n", &ns, "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let (status, left) = end_of(run, &below, Duration::from_secs(8)).await;
    let took = deleted.elapsed().as_secs_f64();
    let stderr = stderr_of(&scratch.0);
    println!("lock deleted, supervisor stopped → run killed the tree and exited after {took:.3}s");
    assert_eq!(status.and_then(|s| s.code()), Some(76), "{stderr}");
    assert_eq!(left, [], "{stderr}");
    assert!(took < GRACE + 3.0, "{took}");
    assert!(stderr.contains("unresponsive"), "{stderr}");
    assert!(locks_in(&ns).trim().is_empty(), "nothing left held");
}

/// The same when the trust `run` last sent runs out (here at the max hold time minus the
/// grace period) with no `stop` sent before.
#[tokio::test]
async fn a_stopped_supervisor_does_not_keep_the_tree_alive_past_its_trust() {
    let client = client().await;
    let ns = namespace(&client, "tree-stopped-supervisor-trust").await;
    let scratch = Scratch::new("tree-stopped-supervisor-trust");
    let started = Instant::now();
    let (run, below) = start_stopping_its_supervisor(
        &ns,
        "org/repo#stopsup-trust",
        &scratch.0,
        &["--max-hold-seconds", "3"],
    )
    .await;
    let (status, left) = end_of(run, &below, Duration::from_secs(10)).await;
    let took = started.elapsed().as_secs_f64();
    let stderr = stderr_of(&scratch.0);
    println!("max hold 3 s, supervisor stopped → run killed the tree and exited after {took:.3}s");
    assert_eq!(status.and_then(|s| s.code()), Some(76), "{stderr}");
    assert_eq!(left, [], "{stderr}");
    assert!(stderr.contains("unresponsive"), "{stderr}");
    assert!(locks_in(&ns).trim().is_empty(), "nothing left held");
}

/// Starts `run` (FAST_HEARTBEAT, grace GRACE, `flags`) with a command that starts
/// `sleep 300` and SIGSTOPs its parent, the supervisor; returns `run` and everything below
/// it once the supervisor is stopped.
async fn start_stopping_its_supervisor(
    ns: &str,
    issue: &str,
    dir: &Path,
    flags: &[&str],
) -> (Child, Vec<Pid>) {
    use std::os::unix::process::CommandExt;
    let pidfile = dir.join("pid");
    let script = format!(
        "sleep 300 & echo $! > {p}.tmp; mv {p}.tmp {p}; kill -STOP $PPID; wait",
        p = pidfile.display()
    );
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let grace = GRACE.to_string();
    let run = issuelock_run(ns, issue)
        .args(fast(&grace))
        .args(flags)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap();
    let child = eventually(Duration::from_secs(15), "the command's child", || async {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Pid::from_raw)
    })
    .await;
    let below = tree::living_descendants(Pid::from_raw(run.id() as i32));
    assert!(below.contains(&child), "{below:?}");
    (run, below)
}

/// Waits up to `limit` for `run` to exit, then kills whatever is left of it and of
/// `below`; returns its exit status (`None`: still running) and who of `below` was alive.
async fn end_of(run: Child, below: &[Pid], limit: Duration) -> (Option<ExitStatus>, Vec<Pid>) {
    let run_pid = Pid::from_raw(run.id() as i32);
    let status = tokio::time::timeout(limit, exit_of(run)).await.ok();
    let left = living(below);
    for &pid in &left {
        let _ = kill(pid, Signal::SIGKILL);
    }
    if status.is_none() {
        let _ = kill(run_pid, Signal::SIGKILL);
    }
    (status, left)
}
