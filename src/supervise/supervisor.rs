//! The supervisor process (`issuelock supervise`, started by `issuelock run`): it runs the
//! command, and stops the command's whole tree when told to, when its trust runs out, or
//! when `run` is gone.

use super::protocol::{CommandStatus, Order, Report, StopCause, monotonic_now};
use super::tree;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::time::Instant;

/// Arguments of the hidden `issuelock supervise` subcommand; only `issuelock run` passes
/// them.
#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    /// Abstract Unix socket name on which the parent `issuelock run` listens.
    #[arg(long)]
    pub socket: String,
    /// Time between SIGTERM and SIGKILL of the tree, in milliseconds.
    #[arg(long)]
    pub grace_ms: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the supervisor; every path out of it leaves no living descendant behind.
pub async fn supervise(args: SuperviseArgs) -> ExitCode {
    let me = nix::unistd::getpid();
    let result = Supervision::start(args).await;
    let outcome = match result {
        Ok(Some(mut s)) => s.run().await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    // Whatever happened, nothing of the tree outlives the supervisor.
    tree::kill_all(me, &mut |_, _| {});
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("issuelock supervise: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The state of one supervised command.
struct Supervision {
    me: Pid,
    command: Pid,
    status: Option<CommandStatus>,
    grace: Duration,
    orders: Lines<BufReader<OwnedReadHalf>>,
    reports: OwnedWriteHalf,
    children: SignalStream,
    /// Until when the lock is trusted, as last told by `run`.
    trusted_until: Instant,
    /// Termination signals sent to the supervisor itself are not its to act on (`run`
    /// forwards them); holding the streams keeps them from killing it.
    _ignored: Vec<SignalStream>,
}

/// How stopping the tree ended.
enum WindDown {
    /// Every process of the tree ended; `run` is waiting for the report.
    Completed,
    /// `run` went away meanwhile; the tree was killed at once.
    RunGone,
}

impl Supervision {
    /// Connects to `run`, waits for the first `trust`, and starts the command. `None`
    /// when `run` went away, or sent another order first (reported as `not-started`),
    /// or the command could not be executed (reported as `cannot-start`).
    async fn start(args: SuperviseArgs) -> io::Result<Option<Self>> {
        let SuperviseArgs {
            socket,
            grace_ms,
            command,
        } = args;
        tree::check_proc()?;
        tree::become_subreaper()?;
        let stream = super::link::connect_to_parent(&socket)?;
        // Registered before the command starts, so that no exit goes unnoticed.
        let children = signal(SignalKind::child())?;
        let ignored = [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
            SignalKind::quit(),
        ]
        .into_iter()
        .map(signal)
        .collect::<io::Result<Vec<_>>>()?;
        let (read, mut reports) = stream.into_split();
        let mut orders = BufReader::new(read).lines();
        let trusted_until = match next_order(&mut orders).await {
            Some(Order::TrustUntil(until)) if until > monotonic_now() => local_instant(until),
            // `run` got a signal or lost the lock before the command started, or the trust
            // had passed when it was read (`run` or this process paused): say so, rather
            // than leave `run` guessing why the supervisor is gone.
            Some(order) => {
                send(&mut reports, &Report::NotStarted(order)).await?;
                return Ok(None);
            }
            // `run` is gone.
            None => return Ok(None),
        };
        let spawned = std::process::Command::new(&command[0])
            .args(&command[1..])
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let report = Report::CannotStart {
                    not_found: e.kind() == io::ErrorKind::NotFound,
                    error: e.to_string(),
                };
                send(&mut reports, &report).await?;
                return Ok(None);
            }
        };
        // The child is reaped by `tree::reap` (waitpid(-1)), not through this handle.
        let command = Pid::from_raw(child.id() as i32);
        send(&mut reports, &Report::Started(child.id())).await?;
        Ok(Some(Self {
            me: nix::unistd::getpid(),
            command,
            status: None,
            grace: Duration::from_millis(grace_ms),
            orders,
            reports,
            children,
            trusted_until,
            _ignored: ignored,
        }))
    }

    /// Follows orders until the command ends or must be stopped, stops what is left of
    /// the tree, and reports how the command ended.
    async fn run(&mut self) -> io::Result<()> {
        let cause = loop {
            tokio::select! {
                order = next_order(&mut self.orders) => match order {
                    Some(Order::TrustUntil(until)) => self.trusted_until = local_instant(until),
                    Some(Order::Signal(sig)) => {
                        let _ = killpg(self.command, sig);
                    }
                    Some(Order::Stop) => break Some(StopCause::LockLost),
                    // `run` died (SIGKILL, OOM): nobody holds the lock for this tree.
                    None => return Ok(()),
                },
                _ = self.children.recv() => {
                    self.reap();
                    if self.status.is_some() {
                        break None;
                    }
                }
                _ = tokio::time::sleep_until(self.trusted_until) => break Some(StopCause::TrustExpired),
            }
        };
        if let Some(cause) = cause {
            tracing::warn!(%cause, "stopping the command's process tree");
            send(&mut self.reports, &Report::Stopping(cause)).await?;
        }
        if let WindDown::RunGone = self.wind_down().await {
            return Ok(());
        }
        let status = self
            .status
            .unwrap_or(CommandStatus::Killed(Signal::SIGKILL));
        send(&mut self.reports, &Report::Finished(status)).await
    }

    /// SIGTERM to the tree, up to the grace period for it to end, then SIGKILL until
    /// nothing is left. Returns early, killing at once, when `run` goes away.
    async fn wind_down(&mut self) -> WindDown {
        let mut outcome = WindDown::Completed;
        if tree::terminate(self.me) > 0 {
            let end = later(Instant::now(), self.grace);
            loop {
                self.reap();
                if tree::living_descendants(self.me).is_empty() || Instant::now() >= end {
                    break;
                }
                tokio::select! {
                    order = next_order(&mut self.orders) => if order.is_none() {
                        outcome = WindDown::RunGone;
                        break;
                    },
                    _ = self.children.recv() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now()))) => {}
                }
            }
        }
        let (command, status) = (self.command, &mut self.status);
        tree::kill_all(self.me, &mut |pid, s| record(command, status, pid, s));
        if self.status.is_none() {
            // Dead by now (killed above): collect its status.
            if let Ok(s) = nix::sys::wait::waitpid(self.command, None) {
                record(self.command, &mut self.status, self.command, s);
            }
        }
        outcome
    }

    fn reap(&mut self) {
        let (command, status) = (self.command, &mut self.status);
        tree::reap(&mut |pid, s| record(command, status, pid, s));
    }
}

/// The [`Instant`] of a [`monotonic_now`] reading.
fn local_instant(monotonic: Duration) -> Instant {
    later(Instant::now(), monotonic.saturating_sub(monotonic_now()))
}

/// `at + by`, or a time decades away when that is past what an [`Instant`] can hold.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or_else(super::far_future)
}

/// Records the command's status when `pid` is the command.
fn record(command: Pid, status: &mut Option<CommandStatus>, pid: Pid, s: WaitStatus) {
    if pid != command {
        return;
    }
    match s {
        WaitStatus::Exited(_, code) => *status = Some(CommandStatus::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => *status = Some(CommandStatus::Killed(sig)),
        _ => {}
    }
}

/// The next well-formed order; `None` at end of stream or on a read error (`run` gone).
async fn next_order(orders: &mut Lines<BufReader<OwnedReadHalf>>) -> Option<Order> {
    loop {
        match orders.next_line().await {
            Ok(Some(line)) => match line.parse() {
                Ok(order) => return Some(order),
                Err(e) => tracing::warn!(error = %e, "ignoring an order"),
            },
            Ok(None) | Err(_) => return None,
        }
    }
}

async fn send(reports: &mut OwnedWriteHalf, report: &Report) -> io::Result<()> {
    reports.write_all(format!("{report}\n").as_bytes()).await
}
