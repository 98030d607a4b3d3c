//! `issuelock work` and `issuelock claim`: claim issues from a list, in this worker's own
//! order, and run a command on each under its lock, with `run`'s environment and
//! process-tree rules ([`super::run::run_held`]).
//!
//! One lock client serves a whole `work` (a new one after a lost heartbeat): one identity
//! lookup, one heartbeat Lease, one watch of the namespace's locks (and the client's watch
//! of its own locks), however many issues it processes.

use super::run::{ForwardedSignals, Held, run_held, signal_exit};
use super::{EXIT_HELD, EXIT_LOST, HoldArgs, lock_client, lock_client_as};
use crate::error::{Error, RESTART_PATIENCE};
use crate::key::IssueKey;
use crate::lock::{Claimed, LockClient, Worker};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The arguments of `work` and `claim`.
#[derive(Args, Debug)]
pub struct WorkArgs {
    /// The candidate issue keys, one per line: a file, or `-` for stdin.
    #[arg(long)]
    pub issues: String,
    /// An issue is done when a file named after its lock name exists in this directory;
    /// `work` creates that file when the command exits 0 while the lock is still held.
    #[arg(long, conflicts_with = "done_cmd")]
    pub done_dir: Option<std::path::PathBuf>,
    /// An issue is done when this shell command exits 0 (1: not done; anything else is
    /// an error). It sees ISSUELOCK_ISSUE and ISSUELOCK_LOCK_NAME.
    #[arg(long)]
    pub done_cmd: Option<String>,
    /// Keep reading the list (a file as it grows, stdin until it closes) instead of
    /// exiting once no candidate is left (`work` only).
    #[arg(long)]
    pub follow: bool,
    /// The order to try candidates in: this worker's own (rendezvous), or the list's (a
    /// priority order; workers sharing it conflict more).
    #[arg(long, value_enum, default_value_t = OrderArg::Rendezvous)]
    pub order: OrderArg,
    #[command(flatten)]
    pub hold: HoldArgs,
    /// The command and its arguments, run once per claimed issue.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Candidate orders of `work` and `claim`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderArg {
    Rendezvous,
    Listed,
}

impl From<OrderArg> for crate::lock::ClaimOrder {
    fn from(order: OrderArg) -> Self {
        match order {
            OrderArg::Rendezvous => crate::lock::ClaimOrder::Rendezvous,
            OrderArg::Listed => crate::lock::ClaimOrder::Listed,
        }
    }
}

/// Exit code of `work` when a command it ran failed or lost its lock (every issue was
/// still tried), and of `claim` when every candidate is done.
pub const EXIT_NOT_ALL_SUCCEEDED: u8 = 3;
/// Exit code of `claim` when every candidate is done (nothing left to claim).
pub const EXIT_NOTHING_LEFT: u8 = 3;

/// How an issue counts as done.
enum DoneCheck {
    /// Never by itself: only once this worker ran it.
    None,
    /// The file named by the issue's lock name exists in this directory.
    Dir(PathBuf),
    /// This shell command exits 0 (1: not done; anything else is an error).
    Cmd(String),
}

impl DoneCheck {
    fn from_args(dir: Option<PathBuf>, cmd: Option<String>) -> Result<Self, Error> {
        match (dir, cmd) {
            (Some(dir), None) => {
                if !dir.is_dir() {
                    return Err(Error::Config(format!(
                        "--done-dir {}: no such directory",
                        dir.display()
                    )));
                }
                Ok(DoneCheck::Dir(dir))
            }
            (None, Some(cmd)) if cmd.trim().is_empty() => {
                Err(Error::Config("--done-cmd is empty".into()))
            }
            (None, Some(cmd)) => Ok(DoneCheck::Cmd(cmd)),
            (None, None) => Ok(DoneCheck::None),
            (Some(_), Some(_)) => Err(Error::Config(
                "give --done-dir or --done-cmd, not both".into(),
            )),
        }
    }

    /// The file `work` creates once the command succeeded on `key`, with --done-dir.
    fn file(&self, key: &IssueKey) -> Option<PathBuf> {
        match self {
            DoneCheck::Dir(dir) => Some(dir.join(key.lock_name())),
            _ => None,
        }
    }

    async fn is_done(&self, key: &IssueKey) -> Result<bool, Error> {
        match self {
            DoneCheck::None => Ok(false),
            // An unreadable done-dir is an error, never "not done" (which would run a
            // finished issue again).
            DoneCheck::Dir(_) => match self.file(key) {
                Some(file) => file
                    .try_exists()
                    .map_err(|e| done_error(key, format!("cannot check {}: {e}", file.display()))),
                None => Ok(false),
            },
            DoneCheck::Cmd(cmd) => {
                let status = tokio::process::Command::new("sh")
                    .args(["-c", cmd])
                    .env("ISSUELOCK_ISSUE", key.as_str())
                    .env("ISSUELOCK_LOCK_NAME", key.lock_name())
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| done_error(key, format!("cannot run --done-cmd: {e}")))?;
                match status.code() {
                    Some(0) => Ok(true),
                    Some(1) => Ok(false),
                    _ => Err(done_error(
                        key,
                        format!("--done-cmd ended with {status} (0: done, 1: not done)"),
                    )),
                }
            }
        }
    }
}

fn done_error(key: &IssueKey, message: String) -> Error {
    Error::DoneCheck {
        issue: key.to_string(),
        message,
    }
}

/// What `work` did, for its last line on stderr.
#[derive(Default)]
struct Tally {
    succeeded: u64,
    failed: u64,
    lost: u64,
}

/// Everything `work` and `claim` need before their first API call, checked.
struct Prepared {
    done: DoneCheck,
    held: Held,
    max_hold: Option<Duration>,
}

fn prepare(args: &WorkArgs) -> Result<Prepared, Error> {
    let (held, max_hold) = args.hold.held()?;
    Ok(Prepared {
        done: DoneCheck::from_args(args.done_dir.clone(), args.done_cmd.clone())?,
        held,
        max_hold,
    })
}

/// Done checks run at once on the input, ahead of the claims.
const DONE_CHECKS_AT_ONCE: usize = 8;

/// `input` without the keys the done check already calls finished, checked
/// [`DONE_CHECKS_AT_ONCE`] at a time and in order: a worker started over a long list of
/// mostly finished issues (a restart under `--follow`) finds its first free one without
/// running the checks one after the other. A key whose check fails passes: the claim
/// checks it again (and ends on the error), before and after taking its lock.
fn without_finished<'a>(
    input: futures::stream::BoxStream<'a, IssueKey>,
    done: &'a DoneCheck,
) -> futures::stream::BoxStream<'a, IssueKey> {
    if matches!(done, DoneCheck::None) {
        return input;
    }
    input
        .map(move |key| async move {
            let finished = matches!(done.is_done(&key).await, Ok(true));
            (key, finished)
        })
        .buffered(DONE_CHECKS_AT_ONCE)
        .filter_map(|(key, finished)| async move { (!finished).then_some(key) })
        .boxed()
}

/// `issuelock work`.
pub(super) async fn work(args: WorkArgs) -> Result<ExitCode, Error> {
    let prepared = prepare(&args)?;
    let input = if args.follow {
        super::issues::follow_list(&args.issues).await?
    } else {
        let keys = super::issues::read_list(&args.issues).await?;
        futures::stream::iter(keys).boxed()
    };
    let done = &prepared.done;
    let input = without_finished(input, done);
    let mut signals = ForwardedSignals::install()?;
    let mut locks = lock_client(args.hold.holder.clone(), prepared.max_hold).await?;
    let mut worker = Worker::new(locks.clone(), input).order(args.order.into());
    let mut tally = Tally::default();
    let mut is_done = async |key: &IssueKey| done.is_done(key).await;
    let ended: Result<Option<u8>, Error> = loop {
        if let Some(sig) = signals.pending() {
            break Ok(Some(signal_code(sig)));
        }
        let next = tokio::select! {
            biased;
            sig = signals.recv() => break Ok(Some(signal_code(sig))),
            _ = locks.heartbeat_lost() => Err(Error::HeartbeatUnhealthy),
            next = worker.next(&mut is_done) => next,
        };
        let guard = match next {
            Ok(Some(guard)) => guard,
            Ok(None) => break Ok(None),
            // A lost heartbeat (an API server outage, a partition): every lock of this
            // client is lost and its command stopped. Resume on a new client (a new
            // Lease) once the API server answers again.
            Err(Error::HeartbeatUnhealthy) if locks.is_heartbeat_lost() => {
                let previous = locks.holder().clone();
                match resume(&args, prepared.max_hold, &previous, &mut signals).await {
                    Ok(fresh) => {
                        let old = std::mem::replace(&mut locks, fresh);
                        worker.set_client(locks.clone());
                        tokio::spawn(async move { old.shutdown().await });
                        continue;
                    }
                    Err(ended) => break ended,
                }
            }
            Err(e) => break Err(e),
        };
        let key = guard.issue().clone();
        let done_file = done.file(&key);
        eprintln!("issuelock: working on {:?}", key.as_str());
        let code = run_held(
            guard,
            &args.command,
            prepared.held,
            &mut signals,
            done_file.as_deref(),
        )
        .await;
        match code {
            0 => tally.succeeded += 1,
            EXIT_LOST => tally.lost += 1,
            _ => tally.failed += 1,
        }
        eprintln!(
            "issuelock: {:?} ended with exit status {code}",
            key.as_str()
        );
        if let Some(sig) = signals.received() {
            break Ok(Some(signal_code(sig)));
        }
    };
    let conflicts = locks.stats().held;
    if let Err(e) = locks.shutdown().await {
        tracing::warn!(error = %e.chain(), "clean shutdown failed; the controller will reclaim what is left");
    }
    eprintln!(
        "issuelock: work finished: {} succeeded, {} failed, {} lost; {} conflicts (409)",
        tally.succeeded, tally.failed, tally.lost, conflicts
    );
    match ended? {
        Some(code) => Ok(ExitCode::from(code)),
        None if tally.failed + tally.lost > 0 => Ok(ExitCode::from(EXIT_NOT_ALL_SUCCEEDED)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// A new lock client for `work` after its heartbeat was lost, recording the same user and
/// pod as `previous`, retried (0.5 s doubling to 10 s) while the API server is unreachable
/// or overloaded, and for [`RESTART_PATIENCE`] while it answers as one just started (the
/// Lease it replaces was allowed). `Err` ends `work`: a signal (with its exit code) or an
/// error that waiting does not cure.
async fn resume(
    args: &WorkArgs,
    max_hold: Option<Duration>,
    previous: &crate::crd::Holder,
    signals: &mut ForwardedSignals,
) -> Result<LockClient, Result<Option<u8>, Error>> {
    let began = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(500);
    eprintln!(
        "issuelock: heartbeat lost; resuming with a new heartbeat once the API server answers"
    );
    loop {
        let attempt = tokio::select! {
            biased;
            sig = signals.recv() => return Err(Ok(Some(signal_code(sig)))),
            attempt = lock_client_as(args.hold.holder.clone(), max_hold, Some(previous)) => attempt,
        };
        match attempt {
            Ok(locks) => {
                eprintln!("issuelock: heartbeat back; resuming");
                return Ok(locks);
            }
            Err(e)
                if e.is_transient()
                    || (e.may_pass_after_restart() && began.elapsed() < RESTART_PATIENCE) =>
            {
                tracing::warn!(error = %e.chain(), retry_in = ?backoff, "starting a new heartbeat failed; retrying");
                tokio::select! {
                    biased;
                    sig = signals.recv() => return Err(Ok(Some(signal_code(sig)))),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(Err(e)),
        }
    }
}

fn signal_code(sig: nix::sys::signal::Signal) -> u8 {
    eprintln!("issuelock: received {sig}; stopping");
    super::run::signal_status(sig)
}

/// `issuelock claim`: one issue, like `run` on the first free candidate.
pub(super) async fn claim(args: WorkArgs) -> Result<ExitCode, Error> {
    if args.follow {
        return Err(Error::Config(
            "claim takes one issue; --follow is for work".into(),
        ));
    }
    let prepared = prepare(&args)?;
    let keys = super::issues::read_list(&args.issues).await?;
    let mut signals = ForwardedSignals::install()?;
    let locks = lock_client(args.hold.holder, prepared.max_hold).await?;
    let result = claim_one(
        &locks,
        &keys,
        &args.command,
        &prepared,
        args.order.into(),
        &mut signals,
    )
    .await;
    if let Err(e) = locks.shutdown().await {
        tracing::warn!(error = %e.chain(), "clean shutdown failed; the controller will reclaim what is left");
    }
    result
}

async fn claim_one(
    locks: &LockClient,
    keys: &[IssueKey],
    command: &[String],
    prepared: &Prepared,
    order: crate::lock::ClaimOrder,
    signals: &mut ForwardedSignals,
) -> Result<ExitCode, Error> {
    let done = &prepared.done;
    let claimed = tokio::select! {
        biased;
        sig = signals.recv() => return Ok(signal_exit(sig)),
        claimed = locks.claim_next_in(order, keys, async |key: &IssueKey| done.is_done(key).await) => claimed?,
    };
    match claimed {
        Claimed::Lock(guard) => {
            eprintln!("issuelock: claimed {:?}", guard.issue().as_str());
            let done_file = done.file(guard.issue());
            Ok(ExitCode::from(
                run_held(guard, command, prepared.held, signals, done_file.as_deref()).await,
            ))
        }
        Claimed::Nothing { held, .. } if !held.is_empty() => {
            eprintln!(
                "issuelock: every candidate not done ({}) is held by others",
                held.len()
            );
            Ok(ExitCode::from(EXIT_HELD))
        }
        Claimed::Nothing { .. } => {
            eprintln!("issuelock: every candidate is done");
            Ok(ExitCode::from(EXIT_NOTHING_LEFT))
        }
    }
}
