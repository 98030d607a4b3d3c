//! `issuelock run`: takes the lock, runs the command under a supervisor that contains its
//! whole process tree, forwards signals to it, and maps how it ended to `run`'s exit code.

use super::{
    EXIT_CANNOT_EXECUTE, EXIT_FAILURE, EXIT_HELD, EXIT_LOST, EXIT_NOT_FOUND, HoldArgs, HolderArgs,
    lease_timing, lock_client,
};
use crate::error::Error;
use crate::heartbeat::HeartbeatConfig;
use crate::lock::{Acquisition, LockClient, LockGuard};
use crate::supervise::{CommandStatus, Order, Report, StopCause, Supervisor};
use clap::Args;
use nix::sys::signal::Signal;
use std::process::ExitCode;
use std::time::Duration;

/// Grace period of `run` when none is given, unless the lease timing needs a shorter one.
const DEFAULT_GRACE: Duration = Duration::from_secs(3);
/// How often `run` tells its supervisor how long the lock is still trusted, at most.
const TRUST_PERIOD: Duration = Duration::from_millis(250);
/// The longest `run` waits, past the grace period, for the supervisor to report that the
/// tree it was stopping is gone, before `run` kills the supervisor and the tree itself.
const REPORT_MARGIN: Duration = Duration::from_secs(1);
/// How long `run` reads reports still on their way before it concludes that the
/// supervisor is unresponsive.
const SETTLE_LIMIT: Duration = Duration::from_millis(200);
/// The shortest `run` waits past the grace period for the supervisor's report.
const MIN_MARGIN: Duration = Duration::from_millis(50);
/// What the slack between lease duration and renew deadline must leave beyond the grace
/// period: `run`'s shortest wait for the supervisor's report past it, twice (the margin
/// is half of what is left), and its last read of reports before it kills the tree itself.
const STOP_RESERVE: Duration = SETTLE_LIMIT
    .saturating_add(MIN_MARGIN)
    .saturating_add(MIN_MARGIN);

/// The arguments of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The issue key to lock.
    #[arg(long, short = 'i', env = "ISSUELOCK_ISSUE")]
    pub issue: String,
    /// Wait this long for a held lock (e.g. 30s, 5m; watching the lock, no polling)
    /// before giving up with exit 75. Default: do not wait.
    #[arg(long, env = "ISSUELOCK_WAIT")]
    pub wait: Option<String>,
    #[command(flatten)]
    pub hold: HoldArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub(super) async fn run_locked(args: RunArgs) -> Result<ExitCode, Error> {
    let RunArgs {
        issue,
        wait,
        hold,
        command,
    } = args;
    crate::key::IssueKey::parse(&issue)?;
    let wait = wait
        .map(|w| super::duration::parse(&w).map_err(|e| Error::Config(format!("--wait: {e}"))))
        .transpose()?;
    let (held, max_hold) = hold.held()?;
    // Before the first API call: from here on, none of these signals ends `run` without
    // releasing what it took.
    let mut signals = ForwardedSignals::install()?;
    let locks = lock_client(hold.holder, max_hold).await?;
    let result = match signals.pending() {
        Some(sig) => {
            eprintln!(
                "issuelock: received {sig} before the lock was taken; the command did not run"
            );
            Ok(signal_exit(sig))
        }
        None => run_with(&locks, &issue, wait, &command, held, &mut signals).await,
    };
    // Releases whatever is still held and deletes the heartbeat Lease.
    if let Err(e) = locks.shutdown().await {
        tracing::warn!(error = %e.chain(), "clean shutdown failed; the controller will reclaim what is left");
    }
    result
}

impl HoldArgs {
    /// How each lock is held under these flags (the timing checked), and its max hold
    /// time.
    pub(super) fn held(&self) -> Result<(Held, Option<Duration>), Error> {
        let HolderArgs {
            lease_duration_seconds,
            renew_deadline_seconds,
            renew_interval_seconds,
            ..
        } = &self.holder;
        let timing = lease_timing(
            "",
            *lease_duration_seconds,
            *renew_deadline_seconds,
            *renew_interval_seconds,
        )?;
        let max_hold = self.max_hold_seconds.map(Duration::from_secs);
        let grace = grace_period(self.grace_seconds, &timing)?;
        Ok((Held::new(&timing, grace, max_hold)?, max_hold))
    }
}

/// The grace period of `run`: the one given, or half the slack between lease duration
/// and renew deadline (at most [`DEFAULT_GRACE`]). With [`STOP_RESERVE`] it must fit in
/// that slack, so that a holder whose heartbeat fails has killed its tree before others
/// may take the lock, even when its supervisor is paused.
pub(super) fn grace_period(
    given: Option<f64>,
    timing: &HeartbeatConfig,
) -> Result<Duration, Error> {
    let slack = timing.lease_duration.saturating_sub(timing.renew_deadline);
    let grace = match given {
        None => (slack / 2)
            .min(DEFAULT_GRACE)
            .min(slack.saturating_sub(STOP_RESERVE)),
        Some(s) => Duration::try_from_secs_f64(s).map_err(|_| {
            Error::Config("grace period must be a non-negative number of seconds".into())
        })?,
    };
    if grace.saturating_add(STOP_RESERVE) > slack {
        return Err(Error::Config(format!(
            "grace period ({grace:?}) must be shorter than the lease duration minus the renew \
             deadline ({slack:?}) by at least {STOP_RESERVE:?}: a holder whose heartbeat fails \
             must have killed its command, even past a paused supervisor, before others may \
             take the lock"
        )));
    }
    Ok(grace)
}

/// How `run` holds a lock while its command runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    /// Time between SIGTERM and SIGKILL of the tree.
    grace: Duration,
    /// How long after the grace period `run` still waits for the supervisor's report.
    margin: Duration,
    /// How often the supervisor is told how long the lock is still trusted.
    trust_period: Duration,
}

impl Held {
    /// With `timing`, the grace period `grace` (from [`grace_period`]) and the max hold
    /// time, which must leave time to run the command before the tree's stop begins.
    pub(super) fn new(
        timing: &HeartbeatConfig,
        grace: Duration,
        max_hold: Option<Duration>,
    ) -> Result<Self, Error> {
        let slack = timing.lease_duration.saturating_sub(timing.renew_deadline);
        let held = Held {
            grace,
            // Within the slack with the grace period and the settle time, so that even a
            // tree `run` kills itself is gone before others may take the lock.
            margin: (slack.saturating_sub(grace).saturating_sub(SETTLE_LIMIT) / 2)
                .clamp(MIN_MARGIN, REPORT_MARGIN),
            trust_period: TRUST_PERIOD
                .min(timing.renew_interval / 4)
                .max(Duration::from_millis(10)),
        };
        if let Some(max_hold) = max_hold
            && held.max_hold_stop() >= max_hold
        {
            return Err(Error::Config(format!(
                "grace period ({grace:?}) plus {SETTLE_LIMIT:?} must be shorter than the max \
                 hold time ({max_hold:?})"
            )));
        }
        Ok(held)
    }

    /// The longest the command's tree may outlive the trust `run` last granted: the
    /// supervisor's grace period, then `run`'s wait for its report and its last read of
    /// reports before it kills the tree itself. Fits in the lease's slack.
    #[cfg(test)]
    fn overrun(&self) -> Duration {
        self.grace + self.margin + SETTLE_LIMIT
    }

    /// How long before the max hold time ends the tree's stop begins: the grace period,
    /// and the time `run` reads reports before it kills a paused supervisor's tree itself,
    /// which it does when the max hold time ends at the latest.
    fn max_hold_stop(&self) -> Duration {
        self.grace + SETTLE_LIMIT
    }
}

async fn run_with(
    locks: &LockClient,
    issue: &str,
    wait: Option<Duration>,
    command: &[String],
    held: Held,
    signals: &mut ForwardedSignals,
) -> Result<ExitCode, Error> {
    let taking = async {
        match wait {
            None => locks.try_acquire(issue).await,
            Some(timeout) => locks.acquire(issue, timeout).await,
        }
    };
    // While waiting, a signal ends `run` at once (a create in flight is cleaned up).
    let acquisition = tokio::select! {
        acquisition = taking => acquisition?,
        sig = signals.recv(), if wait.is_some() => {
            eprintln!("issuelock: received {sig} while waiting for the lock; the command did not run");
            return Ok(signal_exit(sig));
        }
    };
    let guard = match acquisition {
        Acquisition::Acquired(guard) => guard,
        Acquisition::Held(by) => {
            eprintln!(
                "issuelock: issue {:?} is held by {} since {}",
                by.issue,
                by.holder.identity,
                by.since
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            );
            return Ok(ExitCode::from(EXIT_HELD));
        }
    };
    Ok(ExitCode::from(
        run_held(guard, command, held, signals, None).await,
    ))
}

/// Runs `command` under the lock `guard` holds, with `run`'s environment and process-tree
/// rules, and releases the lock; returns `run`'s exit code. With `done_file`, creates that
/// file before the release when the command exited 0 and the lock was still held.
pub(super) async fn run_held(
    guard: LockGuard,
    command: &[String],
    held: Held,
    signals: &mut ForwardedSignals,
    done_file: Option<&std::path::Path>,
) -> u8 {
    tracing::info!(issue = %guard.issue(), lock = guard.name(), fencing_token = %guard.fencing_token(), "lock acquired");
    if let Some(sig) = signals.pending() {
        eprintln!("issuelock: received {sig} while taking the lock; the command did not run");
        let _ = guard.release().await;
        return signal_status(sig);
    }
    if guard.is_lost() || trust_left(&guard, held).is_zero() {
        eprintln!(
            "issuelock: the lock on {} was lost before the command started; the command did not run",
            guard.issue()
        );
        let _ = guard.release().await;
        return EXIT_LOST;
    }
    let env = [
        ("ISSUELOCK_ISSUE", guard.issue().to_string()),
        ("ISSUELOCK_LOCK_NAME", guard.name().to_owned()),
        ("ISSUELOCK_FENCING_TOKEN", guard.fencing_token().to_string()),
    ];
    let mut supervisor = match Supervisor::start(command, &env, held.grace).await {
        Ok(supervisor) => supervisor,
        Err(e) => {
            let _ = guard.release().await;
            eprintln!("issuelock: cannot start the supervisor of the command: {e}");
            return EXIT_FAILURE;
        }
    };
    // The command starts with the first `trust`. A signal that reached `run` before then
    // keeps it from starting: the supervisor reads the end of its orders and exits.
    let ending = match signals.pending() {
        Some(sig) => Ending::NotStarted(Order::Signal(sig)),
        None => hold(&guard, &mut supervisor, signals, held).await,
    };
    let left = match ending {
        Ending::Unresponsive { .. } => supervisor.kill().await,
        _ => supervisor.finish().await,
    };
    if left > 0 {
        eprintln!("issuelock: killed {left} process(es) left behind by the command's supervisor");
    }
    conclude(guard, &command[0], ending, done_file).await
}

/// How the command ended while `run` held the lock.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// It ended so, and its tree is gone; `stopped` when the supervisor stopped it.
    Finished {
        status: CommandStatus,
        stopped: Option<StopCause>,
    },
    /// It could not be executed.
    CannotStart { not_found: bool, error: String },
    /// It was not started: this order (a signal to forward) came before it could be.
    NotStarted(Order),
    /// The supervisor died without a report; what it left was killed.
    SupervisorLost,
    /// The supervisor took no order or sent no report in time (paused or stuck); `run`
    /// killed it and the whole tree. `stopped` when the tree was being stopped.
    Unresponsive { stopped: Option<StopCause> },
}

/// Keeps the supervisor informed (trust, lost lock, signals) until the command ended.
///
/// The first order is always a `trust`, which starts the command. Whenever the supervisor
/// should be stopping the tree (`stop` sent, or the trust last granted has passed), `run`
/// expects its final report within the grace period and a margin; without it, or when an
/// order cannot be written, the supervisor is unresponsive and `run` kills the tree
/// itself.
async fn hold(
    guard: &LockGuard,
    supervisor: &mut Supervisor,
    signals: &mut ForwardedSignals,
    held: Held,
) -> Ending {
    let mut stopped = None;
    // When `stop` was sent.
    let mut stop_sent = None;
    // Until when the supervisor trusts the lock, as last told.
    let mut granted = match grant(guard, supervisor, held).await {
        Ok(until) => until,
        Err(e) => return settle(guard, supervisor, stopped, &e.to_string()).await,
    };
    let start = later(tokio::time::Instant::now(), held.trust_period);
    let mut tick = tokio::time::interval_at(start, held.trust_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Past the max hold time, the tree must be gone even when the supervisor is paused.
    let last_report = guard
        .max_hold_deadline()
        .map(|end| end.checked_sub(SETTLE_LIMIT).unwrap_or(end));
    loop {
        let must_end = stop_sent.map_or(granted, |sent: tokio::time::Instant| sent.min(granted));
        let must_report = later(later(must_end, held.grace), held.margin);
        let must_report = last_report.map_or(must_report, |last| must_report.min(last));
        tokio::select! {
            // Reports first: one already received is never mistaken for silence.
            biased;
            report = supervisor.report() => if let Some(ending) = on_report(guard, &mut stopped, report) {
                return ending;
            },
            _ = tokio::time::sleep_until(must_report) => {
                let cause = *stopped.get_or_insert(if stop_sent.is_some() {
                    StopCause::LockLost
                } else {
                    StopCause::TrustExpired
                });
                let waited = must_report.saturating_duration_since(must_end);
                let why = format!(
                    "no report {:.1}s after the tree had to be stopped ({cause})",
                    waited.as_secs_f64()
                );
                return settle(guard, supervisor, stopped, &why).await;
            }
            _ = guard.lost(), if stopped.is_none() => {
                eprintln!("issuelock: lock on {:?} was lost; stopping the command's process tree", guard.issue().as_str());
                stopped = Some(StopCause::LockLost);
                stop_sent = Some(tokio::time::Instant::now());
                if let Err(e) = supervisor.order(Order::Stop).await {
                    return settle(guard, supervisor, stopped, &e.to_string()).await;
                }
            }
            sig = signals.recv() => {
                tracing::info!(signal = %sig, "forwarding to the command");
                if let Err(e) = supervisor.order(Order::Signal(sig)).await {
                    return settle(guard, supervisor, stopped, &e.to_string()).await;
                }
            }
            // Once the trust granted has passed, the supervisor is stopping the tree and
            // takes no newer trust.
            _ = tick.tick(), if stopped.is_none() && tokio::time::Instant::now() < granted => {
                if tokio::time::Instant::now() >= granted {
                    continue;
                }
                match grant(guard, supervisor, held).await {
                    Ok(until) => granted = until,
                    Err(e) => return settle(guard, supervisor, stopped, &e.to_string()).await,
                }
            }
        }
    }
}

/// Tells the supervisor until when the lock is trusted; returns that time.
async fn grant(
    guard: &LockGuard,
    supervisor: &mut Supervisor,
    held: Held,
) -> std::io::Result<tokio::time::Instant> {
    let left = trust_left(guard, held);
    let until = later(tokio::time::Instant::now(), left);
    supervisor
        .order(Order::TrustUntil(crate::supervise::monotonic_now() + left))
        .await?;
    Ok(until)
}

/// Acts on a report; returns the ending it tells if it is a final one (or the end of
/// reports, `None`: the supervisor is gone).
fn on_report(
    guard: &LockGuard,
    stopped: &mut Option<StopCause>,
    report: Option<Report>,
) -> Option<Ending> {
    let Some(report) = report else {
        return Some(Ending::SupervisorLost);
    };
    match report {
        Report::Started(pid) => tracing::info!(pid, "command started"),
        Report::Stopping(cause) => {
            if stopped.is_none() {
                eprintln!(
                    "issuelock: the lock on {:?} is no longer trusted ({cause}); stopping the command's process tree",
                    guard.issue().as_str()
                );
            }
            stopped.get_or_insert(cause);
        }
        Report::Finished(status) => {
            return Some(Ending::Finished {
                status,
                stopped: *stopped,
            });
        }
        Report::CannotStart { not_found, error } => {
            return Some(Ending::CannotStart { not_found, error });
        }
        Report::NotStarted(order) => return Some(Ending::NotStarted(order)),
    }
    None
}

/// The supervisor failed to take an order or to report in time (`why`): reads the
/// reports still on their way for [`SETTLE_LIMIT`] (`run` itself may have been paused
/// while the supervisor did its work); without a final one, it is unresponsive.
async fn settle(
    guard: &LockGuard,
    supervisor: &mut Supervisor,
    mut stopped: Option<StopCause>,
    why: &str,
) -> Ending {
    let reading = async {
        loop {
            let report = supervisor.report().await;
            if let Some(ending) = on_report(guard, &mut stopped, report) {
                return ending;
            }
        }
    };
    match tokio::time::timeout(SETTLE_LIMIT, reading).await {
        Ok(ending) => ending,
        Err(_) => {
            eprintln!(
                "issuelock: the supervisor of the command is unresponsive ({why}); killing it and the command's whole process tree"
            );
            Ending::Unresponsive { stopped }
        }
    }
}

/// `at + by`, or a time decades away when that is past what an [`Instant`] can hold.
///
/// [`Instant`]: tokio::time::Instant
fn later(at: tokio::time::Instant, by: Duration) -> tokio::time::Instant {
    at.checked_add(by)
        .unwrap_or_else(crate::supervise::far_future)
}

/// How much longer the command may run under `guard`: until the heartbeat's renew
/// deadline, and until [`Held::max_hold_stop`] before the max hold time ends (so that the
/// tree is gone when it ends, even past a paused supervisor).
fn trust_left(guard: &LockGuard, held: Held) -> Duration {
    let now = tokio::time::Instant::now();
    let left = guard.trusted_until().saturating_duration_since(now);
    match guard.max_hold_deadline() {
        Some(end) => left.min(
            end.saturating_duration_since(now)
                .saturating_sub(held.max_hold_stop()),
        ),
        None => left,
    }
}

/// Releases the lock and tells `run`'s exit code: 76 when the lock was lost or no longer
/// trusted while the command ran, the command's own otherwise (also when the release
/// fails for another reason: the controller then reclaims the lock).
async fn conclude(
    guard: LockGuard,
    program: &str,
    ending: Ending,
    done_file: Option<&std::path::Path>,
) -> u8 {
    let issue = guard.issue().to_string();
    let lost_while_running =
        guard.is_lost() || guard.trusted_until() <= tokio::time::Instant::now();
    let succeeded = matches!(
        ending,
        Ending::Finished {
            status: CommandStatus::Exited(0),
            stopped: None
        }
    );
    let mut marking_failed = false;
    if let Some(path) = done_file
        && succeeded
        && !lost_while_running
        && let Err(e) = std::fs::write(path, format!("{issue}\n"))
    {
        eprintln!(
            "issuelock: the command succeeded but the done file {} cannot be written: {e}",
            path.display()
        );
        marking_failed = true;
    }
    let released = guard.release().await;
    match &ending {
        Ending::CannotStart { error, .. } => {
            eprintln!("issuelock: cannot start {program:?}: {error}")
        }
        Ending::NotStarted(Order::Signal(sig)) => {
            eprintln!(
                "issuelock: received {sig} before the command started; the command did not run"
            )
        }
        Ending::NotStarted(Order::TrustUntil(_)) => {
            eprintln!(
                "issuelock: the lock on {issue:?} was no longer trusted when the command was to start; the command did not run"
            )
        }
        Ending::NotStarted(order) => {
            eprintln!(
                "issuelock: the supervisor got {order:?} before the command started; the command did not run"
            )
        }
        Ending::SupervisorLost => eprintln!(
            "issuelock: the supervisor of the command died; every process it left was killed"
        ),
        // Told by `settle` as it happened.
        Ending::Unresponsive { .. } => {}
        Ending::Finished { stopped: None, .. } if lost_while_running => {
            eprintln!("issuelock: lock on {issue:?} was lost while the command ran")
        }
        Ending::Finished { .. } => {}
    }
    match &released {
        Ok(()) => {}
        Err(Error::LockLost { .. }) if !lost_while_running => eprintln!(
            "issuelock: lock on {issue:?} was lost before it was released; the command's work \
             may have overlapped with another holder's"
        ),
        Err(Error::LockLost { .. }) => {}
        Err(e) => eprintln!(
            "issuelock: the command ended but releasing the lock on {issue:?} failed ({}); \
             the controller will reclaim it",
            e.chain()
        ),
    }
    let lost = lost_while_running || matches!(released, Err(Error::LockLost { .. }));
    match exit_code_of(&ending, lost) {
        0 if marking_failed => EXIT_FAILURE,
        code => code,
    }
}

/// `run`'s exit code once the command ended; `lost` when the lock was lost before it
/// was released.
fn exit_code_of(ending: &Ending, lost: bool) -> u8 {
    match ending {
        Ending::Finished {
            stopped: Some(_), ..
        } => EXIT_LOST,
        Ending::Finished { .. } if lost => EXIT_LOST,
        Ending::Finished {
            status: CommandStatus::Exited(code),
            ..
        } => *code as u8,
        Ending::Finished {
            status: CommandStatus::Killed(sig),
            ..
        } => signal_status(*sig),
        Ending::CannotStart {
            not_found: true, ..
        } => EXIT_NOT_FOUND,
        Ending::CannotStart { .. } => EXIT_CANNOT_EXECUTE,
        Ending::NotStarted(Order::Signal(sig)) => signal_status(*sig),
        Ending::NotStarted(_) => EXIT_LOST,
        Ending::SupervisorLost => EXIT_FAILURE,
        Ending::Unresponsive { stopped: Some(_) } => EXIT_LOST,
        Ending::Unresponsive { .. } if lost => EXIT_LOST,
        Ending::Unresponsive { .. } => EXIT_FAILURE,
    }
}

pub(super) fn signal_exit(sig: Signal) -> ExitCode {
    ExitCode::from(signal_status(sig))
}

/// The exit status of a process that signal `sig` ended: 128 + n, the shells' convention.
pub(super) fn signal_status(sig: Signal) -> u8 {
    128u8.wrapping_add(sig as u8)
}

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT, caught by `run` from before it takes the lock
/// until it exits, and forwarded to the command's process group while it runs.
pub(super) struct ForwardedSignals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    /// The first signal received, forwarded or not.
    first: Option<Signal>,
}

impl ForwardedSignals {
    pub(super) fn install() -> Result<Self, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = [
            (Signal::SIGTERM, SignalKind::terminate()),
            (Signal::SIGINT, SignalKind::interrupt()),
            (Signal::SIGHUP, SignalKind::hangup()),
            (Signal::SIGQUIT, SignalKind::quit()),
        ]
        .into_iter()
        .map(|(sig, kind)| signal(kind).map(|stream| (sig, stream)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::Config(format!("cannot install signal handlers: {e}")))?;
        Ok(Self {
            streams,
            first: None,
        })
    }

    /// The first signal received so far, if any.
    pub(super) fn received(&self) -> Option<Signal> {
        self.first
    }

    /// The next signal received.
    pub(super) async fn recv(&mut self) -> Signal {
        let waits = self.streams.iter_mut().map(|(sig, stream)| {
            Box::pin(async move {
                stream.recv().await;
                *sig
            })
        });
        let sig = futures::future::select_all(waits).await.0;
        self.first.get_or_insert(sig);
        sig
    }

    /// A signal received already, if any.
    pub(super) fn pending(&mut self) -> Option<Signal> {
        use futures::FutureExt;
        self.recv().now_or_never()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(lease: u64, deadline: u64) -> HeartbeatConfig {
        HeartbeatConfig {
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(deadline),
            renew_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_grace_period_ends_before_others_may_take_the_lock() {
        // Default: half the slack, at most 3 s, leaving the stop reserve.
        assert_eq!(
            grace_period(None, &timing(15, 10)).unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            grace_period(None, &timing(60, 10)).unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(
            grace_period(None, &timing(6, 4)).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            grace_period(Some(4.5), &timing(15, 10)).unwrap(),
            Duration::from_millis(4500)
        );
        assert_eq!(
            grace_period(Some(4.7), &timing(15, 10)).unwrap(),
            Duration::from_millis(4700)
        );
        assert_eq!(
            grace_period(Some(0.0), &timing(15, 10)).unwrap(),
            Duration::ZERO
        );
        for (given, message) in [
            (
                5.0,
                "must be shorter than the lease duration minus the renew deadline (5s) by at least 300ms",
            ),
            (4.71, "by at least 300ms"),
            (-1.0, "non-negative"),
            (f64::NAN, "non-negative"),
        ] {
            let err = grace_period(Some(given), &timing(15, 10))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{given}: {err}");
        }
    }

    /// A paused supervisor: `run` kills the tree itself at most `overrun` after the trust
    /// it last granted, which must fit in the slack (heartbeat), and when the max hold time
    /// ends at the latest (the trust ends `max_hold_stop` before it).
    #[test]
    fn a_tree_run_kills_itself_is_gone_before_others_may_take_the_lock() {
        for (lease, deadline) in [(15, 10), (6, 4), (60, 10), (2, 1), (11, 10)] {
            let timing = timing(lease, deadline);
            let slack = timing.lease_duration - timing.renew_deadline;
            let mut graces = vec![grace_period(None, &timing).unwrap(), Duration::ZERO];
            graces.push(slack - STOP_RESERVE);
            for grace in graces {
                let held = Held::new(&timing, grace, None).unwrap();
                assert!(held.margin >= MIN_MARGIN && held.margin <= REPORT_MARGIN);
                assert!(
                    held.overrun() <= slack,
                    "lease {lease}, deadline {deadline}, grace {grace:?}: {held:?}"
                );
            }
        }
        let timing = timing(6, 4);
        let held = Held::new(
            &timing,
            Duration::from_secs(1),
            Some(Duration::from_secs(2)),
        );
        let held = held.unwrap();
        assert_eq!(held.overrun(), Duration::from_millis(1600));
        assert_eq!(held.max_hold_stop(), Duration::from_millis(1200));
        let err = Held::new(
            &timing,
            Duration::from_secs(1),
            Some(Duration::from_millis(1200)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("must be shorter than the max hold time"),
            "{err}"
        );
        assert!(
            Held::new(
                &timing,
                Duration::from_secs(2),
                Some(Duration::from_secs(2))
            )
            .is_err()
        );
    }

    #[test]
    fn exit_codes_tell_lost_locks_signals_and_the_commands_own_code() {
        let finished = |status, stopped| Ending::Finished { status, stopped };
        let exited = CommandStatus::Exited;
        let killed = CommandStatus::Killed;
        assert_eq!(exit_code_of(&finished(exited(3), None), false), 3);
        assert_eq!(exit_code_of(&finished(exited(0), None), false), 0);
        assert_eq!(
            exit_code_of(&finished(killed(Signal::SIGTERM), None), false),
            143
        );
        assert_eq!(
            exit_code_of(&finished(killed(Signal::SIGKILL), None), false),
            137
        );
        // Lost: 76 whatever the command did.
        assert_eq!(exit_code_of(&finished(exited(0), None), true), EXIT_LOST);
        for cause in [StopCause::LockLost, StopCause::TrustExpired] {
            assert_eq!(
                exit_code_of(&finished(killed(Signal::SIGTERM), Some(cause)), false),
                EXIT_LOST
            );
        }
        let cannot = |not_found| Ending::CannotStart {
            not_found,
            error: String::new(),
        };
        assert_eq!(exit_code_of(&cannot(true), false), 127);
        assert_eq!(exit_code_of(&cannot(false), false), 126);
        assert_eq!(exit_code_of(&Ending::SupervisorLost, false), EXIT_FAILURE);
        // A signal before the command started: 128 + n, lost lock or not.
        for lost in [false, true] {
            let not_started = Ending::NotStarted(Order::Signal(Signal::SIGTERM));
            assert_eq!(exit_code_of(&not_started, lost), 143);
        }
        // An unresponsive supervisor, killed with its tree by `run`.
        for cause in [StopCause::LockLost, StopCause::TrustExpired] {
            let stopping = Ending::Unresponsive {
                stopped: Some(cause),
            };
            assert_eq!(exit_code_of(&stopping, false), EXIT_LOST);
        }
        let unresponsive = Ending::Unresponsive { stopped: None };
        assert_eq!(exit_code_of(&unresponsive, false), EXIT_FAILURE);
        assert_eq!(exit_code_of(&unresponsive, true), EXIT_LOST);
    }
}
