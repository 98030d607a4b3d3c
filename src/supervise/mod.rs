//! Containing what `issuelock run` starts: the command's whole process tree stops when the
//! lock is lost, when `run` stops trusting it, and when `run` itself dies.
//!
//! `run` starts a **supervisor** (its own binary, hidden subcommand `supervise`) in a new
//! process group; the supervisor starts the command in a process group of its own. Both
//! `run` and the supervisor are Linux *child subreapers*, so a process that leaves the
//! command's group or session (a double fork, `setsid`) stays a descendant of the
//! supervisor. "The tree" is every descendant of the supervisor ([`tree`]). They talk over
//! a socket ([`protocol`]):
//!
//! * **Lock lost** (`stop`): SIGTERM to the tree, then up to the grace period for it to
//!   end, then SIGKILL until no process of the tree is alive.
//! * **Trust ran out**: `run` tells the supervisor several times a second until when the
//!   lock is trusted (the heartbeat's renew deadline, or the end of the max hold time
//!   minus the grace period), as a reading of the machine's monotonic clock. If `run` is paused (SIGSTOP), starved or stuck and
//!   that time passes, the supervisor stops the tree exactly as for a lost lock.
//! * **`run` died** (SIGKILL, OOM kill): the supervisor reads end-of-stream and SIGKILLs
//!   the tree at once.
//! * **The command exited by itself**: whatever it left running gets SIGTERM, the grace
//!   period, SIGKILL, before `run` releases the lock.
//! * **The supervisor died**: its orphans are reparented to `run`, which SIGKILLs every
//!   descendant left once the supervisor is gone.
//! * **The supervisor is paused or stuck** (the command SIGSTOPped it): once the tree
//!   must stop (`stop` sent, or the trust last sent has passed), `run` waits the grace
//!   period and a margin for the final report; without it, or when an order cannot be
//!   written in time, `run` SIGKILLs the supervisor and every descendant itself.
//!
//! The first order is always `trust`; the command starts when the supervisor reads it.
//! A supervisor that gets another order first does not start the command, and reports
//! `not-started`.
//!
//! Not covered: a process that is not a descendant (handed work over IPC to another
//! process, or a daemon started through systemd or a container runtime); a process in
//! uninterruptible sleep stays until its I/O completes; a paused (SIGSTOPped) supervisor
//! and `run` together. That is what the fencing token is for.

mod link;
pub mod protocol;
mod supervisor;
pub mod tree;

pub use protocol::{CommandStatus, Order, Report, StopCause, monotonic_now};
pub use supervisor::{SuperviseArgs, supervise};

use std::io;
use std::os::unix::process::CommandExt;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a starting supervisor may take to connect.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long writing one order may take. A supervisor reads its orders at once, so a
/// write that takes longer means it is paused or stuck with a full socket buffer.
const WRITE_LIMIT: Duration = Duration::from_millis(500);
/// How long [`Supervisor::finish`] waits for the supervisor to exit before SIGKILLing it.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

/// A time decades from now: what adding a duration to an [`Instant`] gives instead of
/// overflowing.
///
/// [`Instant`]: tokio::time::Instant
pub(crate) fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// `issuelock run`'s handle on its supervisor process.
pub struct Supervisor {
    process: std::process::Child,
    reports: Lines<BufReader<OwnedReadHalf>>,
    orders: OwnedWriteHalf,
}

impl Supervisor {
    /// Makes this process a child subreaper, starts the supervisor of `command` (with
    /// `env` added to the environment, and this process's stdin, stdout and stderr) and
    /// waits until it is connected. The command starts when the supervisor receives the
    /// first [`Order::TrustUntil`].
    pub async fn start(
        command: &[String],
        env: &[(&str, String)],
        grace: Duration,
    ) -> io::Result<Self> {
        tree::check_proc()?;
        tree::become_subreaper()?;
        let listener = link::Listener::bind()?;
        // /proc/self/exe: this very binary, even if the file was replaced since.
        let process = std::process::Command::new("/proc/self/exe")
            .arg0("issuelock")
            .args(["supervise", "--socket", listener.name(), "--grace-ms"])
            .arg(grace.as_millis().to_string())
            .arg("--")
            .args(command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .spawn()?;
        let pid = process.id();
        match listener.accept_from(pid, CONNECT_LIMIT).await {
            Ok(stream) => {
                let (read, orders) = stream.into_split();
                Ok(Self {
                    process,
                    reports: BufReader::new(read).lines(),
                    orders,
                })
            }
            Err(e) => {
                let mut process = process;
                let _ = process.kill();
                let _ = process.wait();
                Err(e)
            }
        }
    }

    /// Sends `order`, waiting at most [`WRITE_LIMIT`]. A failure means the supervisor
    /// is gone, paused or stuck; once it failed, the connection is not to be used for
    /// orders again (a line may have been cut).
    pub async fn order(&mut self, order: Order) -> io::Result<()> {
        let line = format!("{order}\n");
        match tokio::time::timeout(WRITE_LIMIT, self.orders.write_all(line.as_bytes())).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the supervisor took no order for {WRITE_LIMIT:?}"),
            )),
        }
    }

    /// The next report; `None` once the supervisor is gone.
    pub async fn report(&mut self) -> Option<Report> {
        loop {
            match self.reports.next_line().await {
                Ok(Some(line)) => match line.parse() {
                    Ok(report) => return Some(report),
                    Err(e) => tracing::warn!(error = %e, "ignoring a supervisor report"),
                },
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits (at most [`EXIT_LIMIT`], then SIGKILLs it) for the supervisor to exit,
    /// then SIGKILLs every descendant of this process still alive (left by a supervisor
    /// that was killed). Returns how many were left.
    pub async fn finish(self) -> usize {
        self.end(EXIT_LIMIT).await
    }

    /// SIGKILLs the supervisor (paused, stuck or unresponsive) and then every descendant
    /// of this process: the whole tree. Returns how many processes were left besides the
    /// supervisor.
    pub async fn kill(self) -> usize {
        self.end(Duration::ZERO).await
    }

    async fn end(self, limit: Duration) -> usize {
        let Self {
            mut process,
            reports,
            orders,
        } = self;
        // End of orders: a supervisor still running kills the tree at once and exits.
        drop(orders);
        drop(reports);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match process.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if tokio::time::Instant::now() >= deadline => {
                    // SIGKILL ends a stopped process too; the wait is then short.
                    let _ = process.kill();
                    let _ = tokio::task::spawn_blocking(move || process.wait()).await;
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let me = nix::unistd::getpid();
        let left = tree::living_descendants(me).len();
        tree::kill_all(me, &mut |_, _| {});
        left
    }
}
