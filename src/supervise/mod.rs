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

    /// Sends `order`. A failure means the supervisor is gone, which [`Self::report`]
    /// then tells as the end of reports.
    pub async fn order(&mut self, order: Order) {
        let line = format!("{order}\n");
        if let Err(e) = self.orders.write_all(line.as_bytes()).await {
            tracing::debug!(error = %e, %order, "supervisor gone");
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

    /// Waits for the supervisor to exit, then SIGKILLs every descendant of this process
    /// still alive (left by a supervisor that was killed). Returns how many were left.
    pub async fn finish(self) -> usize {
        let Self {
            mut process,
            reports,
            orders,
        } = self;
        // End of orders: a supervisor still running kills the tree at once and exits.
        drop(orders);
        drop(reports);
        let _ = tokio::task::spawn_blocking(move || process.wait()).await;
        let me = nix::unistd::getpid();
        let left = tree::living_descendants(me).len();
        tree::kill_all(me, &mut |_, _| {});
        left
    }
}
