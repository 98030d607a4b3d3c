//! `issuelock run`: takes the lock, runs the command under a supervisor that contains its
//! whole process tree, forwards signals to it, and maps how it ended to `run`'s exit code.

use super::{
    EXIT_CANNOT_EXECUTE, EXIT_FAILURE, EXIT_HELD, EXIT_LOST, EXIT_NOT_FOUND, RunArgs, lease_timing,
    lock_client,
};
use crate::error::Error;
use crate::heartbeat::HeartbeatConfig;
use crate::lock::{Acquisition, LockClient, LockGuard};
use crate::supervise::{CommandStatus, Order, Report, StopCause, Supervisor};
use nix::sys::signal::Signal;
use std::process::ExitCode;
use std::time::Duration;

/// Grace period of `run` when none is given, unless the lease timing needs a shorter one.
const DEFAULT_GRACE: Duration = Duration::from_secs(3);
/// How often `run` tells its supervisor how long the lock is still trusted, at most.
const TRUST_PERIOD: Duration = Duration::from_millis(250);

pub(super) async fn run_locked(args: RunArgs) -> Result<ExitCode, Error> {
    let RunArgs {
        issue,
        max_hold_seconds,
        grace_seconds,
        holder,
        command,
    } = args;
    crate::key::IssueKey::parse(&issue)?;
    let timing = lease_timing(
        "",
        holder.lease_duration_seconds,
        holder.renew_deadline_seconds,
        holder.renew_interval_seconds,
    )?;
    let max_hold = max_hold_seconds.map(Duration::from_secs);
    let grace = grace_period(grace_seconds, &timing, max_hold)?;
    // Before the first API call: from here on, none of these signals ends `run` without
    // releasing what it took.
    let mut signals = ForwardedSignals::install()?;
    let locks = lock_client(holder, max_hold).await?;
    let result = match signals.pending() {
        Some(sig) => {
            eprintln!(
                "issuelock: received {sig} before the lock was taken; the command did not run"
            );
            Ok(signal_exit(sig))
        }
        None => {
            let held = Held {
                grace,
                trust_period: TRUST_PERIOD
                    .min(timing.renew_interval / 4)
                    .max(Duration::from_millis(10)),
            };
            run_with(&locks, &issue, &command, held, &mut signals).await
        }
    };
    // Releases whatever is still held and deletes the heartbeat Lease.
    if let Err(e) = locks.shutdown().await {
        tracing::warn!(error = %e.chain(), "clean shutdown failed; the controller will reclaim what is left");
    }
    result
}

/// The grace period of `run`: the one given, or half the slack between lease duration
/// and renew deadline (at most [`DEFAULT_GRACE`]). It must end within that slack, so that
/// a holder whose heartbeat fails has killed its tree before others may take the lock,
/// and within the max hold time.
fn grace_period(
    given: Option<f64>,
    timing: &HeartbeatConfig,
    max_hold: Option<Duration>,
) -> Result<Duration, Error> {
    let slack = timing.lease_duration.saturating_sub(timing.renew_deadline);
    let grace = match given {
        None => (slack / 2).min(DEFAULT_GRACE),
        Some(s) => Duration::try_from_secs_f64(s).map_err(|_| {
            Error::Config("grace period must be a non-negative number of seconds".into())
        })?,
    };
    if grace >= slack {
        return Err(Error::Config(format!(
            "grace period ({grace:?}) must be shorter than the lease duration minus the renew \
             deadline ({slack:?}): a holder whose heartbeat fails must have killed its command \
             before others may take the lock"
        )));
    }
    if let Some(max_hold) = max_hold
        && grace >= max_hold
    {
        return Err(Error::Config(format!(
            "grace period ({grace:?}) must be shorter than the max hold time ({max_hold:?})"
        )));
    }
    Ok(grace)
}

/// How `run` holds a lock while its command runs.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Time between SIGTERM and SIGKILL of the tree.
    grace: Duration,
    /// How often the supervisor is told how long the lock is still trusted.
    trust_period: Duration,
}

async fn run_with(
    locks: &LockClient,
    issue: &str,
    command: &[String],
    held: Held,
    signals: &mut ForwardedSignals,
) -> Result<ExitCode, Error> {
    let guard = match locks.try_acquire(issue).await? {
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
    tracing::info!(issue = %guard.issue(), lock = guard.name(), fencing_token = %guard.fencing_token(), "lock acquired");
    if let Some(sig) = signals.pending() {
        eprintln!("issuelock: received {sig} while taking the lock; the command did not run");
        let _ = guard.release().await;
        return Ok(signal_exit(sig));
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
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
    };
    let ending = hold(&guard, &mut supervisor, signals, held).await;
    let left = supervisor.finish().await;
    if left > 0 {
        eprintln!("issuelock: killed {left} process(es) left behind by the command's supervisor");
    }
    Ok(ExitCode::from(conclude(guard, &command[0], ending).await))
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
    /// The supervisor died without a report; what it left was killed.
    SupervisorLost,
}

/// Keeps the supervisor informed (trust, lost lock, signals) until the command ended.
async fn hold(
    guard: &LockGuard,
    supervisor: &mut Supervisor,
    signals: &mut ForwardedSignals,
    held: Held,
) -> Ending {
    let mut stopped = None;
    let mut tick = tokio::time::interval(held.trust_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            report = supervisor.report() => match report {
                Some(Report::Started(pid)) => tracing::info!(pid, "command started"),
                Some(Report::Stopping(cause)) => {
                    if stopped.is_none() {
                        eprintln!("issuelock: the lock on {:?} is no longer trusted ({cause}); stopping the command's process tree", guard.issue().as_str());
                    }
                    stopped.get_or_insert(cause);
                }
                Some(Report::Finished(status)) => return Ending::Finished { status, stopped },
                Some(Report::CannotStart { not_found, error }) => {
                    return Ending::CannotStart { not_found, error };
                }
                None => return Ending::SupervisorLost,
            },
            _ = guard.lost(), if stopped.is_none() => {
                eprintln!("issuelock: lock on {:?} was lost; stopping the command's process tree", guard.issue().as_str());
                stopped = Some(StopCause::LockLost);
                supervisor.order(Order::Stop).await;
            }
            sig = signals.recv() => {
                tracing::info!(signal = %sig, "forwarding to the command");
                supervisor.order(Order::Signal(sig)).await;
            }
            _ = tick.tick() => {
                let until = crate::supervise::monotonic_now() + trust_left(guard, held.grace);
                supervisor.order(Order::TrustUntil(until)).await;
            }
        }
    }
}

/// How much longer the command may run under `guard`: until the heartbeat's renew
/// deadline, and until a grace period before the max hold time ends (so that the tree is
/// gone when it ends).
fn trust_left(guard: &LockGuard, grace: Duration) -> Duration {
    let until = guard.trusted_until();
    let until = match guard.max_hold_deadline() {
        Some(end) => until.min(end.checked_sub(grace).unwrap_or(end)),
        None => until,
    };
    until.saturating_duration_since(tokio::time::Instant::now())
}

/// Releases the lock and tells `run`'s exit code: 76 when the lock was lost or no longer
/// trusted while the command ran, the command's own otherwise (also when the release
/// fails for another reason: the controller then reclaims the lock).
async fn conclude(guard: LockGuard, program: &str, ending: Ending) -> u8 {
    let issue = guard.issue().to_string();
    let lost_while_running = guard.is_lost();
    let released = guard.release().await;
    match &ending {
        Ending::CannotStart { error, .. } => {
            eprintln!("issuelock: cannot start {program:?}: {error}")
        }
        Ending::SupervisorLost => eprintln!(
            "issuelock: the supervisor of the command died; every process it left was killed"
        ),
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
    exit_code_of(&ending, lost)
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
        } => 128u8.wrapping_add(*sig as u8),
        Ending::CannotStart {
            not_found: true, ..
        } => EXIT_NOT_FOUND,
        Ending::CannotStart { .. } => EXIT_CANNOT_EXECUTE,
        Ending::SupervisorLost => EXIT_FAILURE,
    }
}

fn signal_exit(sig: Signal) -> ExitCode {
    ExitCode::from(128u8.wrapping_add(sig as u8))
}

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT, caught by `run` from before it takes the lock
/// until it exits, and forwarded to the command's process group while it runs.
struct ForwardedSignals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl ForwardedSignals {
    fn install() -> Result<Self, Error> {
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
        Ok(Self { streams })
    }

    /// The next signal received.
    async fn recv(&mut self) -> Signal {
        let waits = self.streams.iter_mut().map(|(sig, stream)| {
            Box::pin(async move {
                stream.recv().await;
                *sig
            })
        });
        futures::future::select_all(waits).await.0
    }

    /// A signal received already, if any.
    fn pending(&mut self) -> Option<Signal> {
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
        // Default: half the slack, at most 3 s.
        assert_eq!(
            grace_period(None, &timing(15, 10), None).unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            grace_period(None, &timing(60, 10), None).unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(
            grace_period(None, &timing(6, 4), None).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            grace_period(Some(4.5), &timing(15, 10), None).unwrap(),
            Duration::from_millis(4500)
        );
        assert_eq!(
            grace_period(Some(0.0), &timing(15, 10), None).unwrap(),
            Duration::ZERO
        );
        for (given, max_hold, message) in [
            (
                5.0,
                None,
                "must be shorter than the lease duration minus the renew deadline (5s)",
            ),
            (-1.0, None, "non-negative"),
            (f64::NAN, None, "non-negative"),
            (2.0, Some(2), "must be shorter than the max hold time (2s)"),
        ] {
            let err = grace_period(
                Some(given),
                &timing(15, 10),
                max_hold.map(Duration::from_secs),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(message), "{given}: {err}");
        }
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
    }
}
