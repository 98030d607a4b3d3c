//! The line protocol between `issuelock run` and its supervisor, one message per line.
//!
//! `run` → supervisor ([`Order`]):
//! * `trust <millis>`: the lock is trusted until this reading of `CLOCK_MONOTONIC` (the
//!   machine's clock, shared by both processes; see [`monotonic_now`]). Without a newer
//!   `trust` before that time passes, the supervisor stops the command's tree on its own.
//!   An absolute time, so that a line read late (supervisor starved, `run` paused just
//!   after sending) never extends the trust.
//! * `signal <number>`: forward this signal to the command's process group.
//! * `stop`: the lock is lost; stop the tree (SIGTERM, grace period, SIGKILL).
//! * end of stream: `run` is gone; SIGKILL the tree at once.
//!
//! supervisor → `run` ([`Report`]):
//! * `started <pid>`: the command runs with this pid (and process group).
//! * `cannot-start not-found|other <message>`: the command could not be executed.
//! * `not-started <order>`: the first order was this one (`signal <number>`, `stop`, or a
//!   `trust` that had passed when it was read), so the command was not started. The
//!   supervisor exits right after.
//! * `stopping lock-lost|trust-expired`: the supervisor is stopping the tree, and why.
//! * `finished exit <code>` or `finished signal <number>`: the command ended so, and no
//!   process of its tree is left. The supervisor exits right after.

use nix::sys::signal::Signal;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What `issuelock run` tells its supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The lock is trusted until this reading of [`monotonic_now`].
    TrustUntil(Duration),
    /// Forward this signal to the command's process group.
    Signal(Signal),
    /// The lock is lost: stop the tree.
    Stop,
}

/// Why the supervisor stops the command's tree before the command ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// `run` learned that the lock was lost.
    LockLost,
    /// No `trust` arrived before the last one ran out (`run` paused, starved or stuck).
    TrustExpired,
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(Signal),
}

/// What the supervisor tells `issuelock run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The command runs with this pid, which is also its process group id.
    Started(u32),
    /// The command could not be executed; `not_found` when the program does not exist.
    CannotStart { not_found: bool, error: String },
    /// The first order was this one instead of a `trust` (only [`Order::Signal`] or
    /// [`Order::Stop`]): the command was not started.
    NotStarted(Order),
    /// The supervisor is stopping the tree, for this reason.
    Stopping(StopCause),
    /// The command ended so, and no process of its tree is left.
    Finished(CommandStatus),
}

/// A line that is not a message of this protocol.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed supervisor message {:?}", self.0)
    }
}

impl std::error::Error for Malformed {}

// === impl Order ===

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Order::TrustUntil(t) => write!(f, "trust {}", t.as_millis()),
            Order::Signal(s) => write!(f, "signal {}", *s as i32),
            Order::Stop => f.write_str("stop"),
        }
    }
}

impl FromStr for Order {
    type Err = Malformed;

    fn from_str(line: &str) -> Result<Self, Malformed> {
        let bad = || Malformed(line.to_owned());
        match line.split_once(' ').unwrap_or((line, "")) {
            ("trust", ms) => ms
                .parse()
                .map(|ms| Order::TrustUntil(Duration::from_millis(ms))),
            ("signal", n) => return parse_signal(n).map(Order::Signal).ok_or_else(bad),
            ("stop", "") => return Ok(Order::Stop),
            _ => return Err(bad()),
        }
        .map_err(|_| bad())
    }
}

// === impl Report ===

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopCause::LockLost => "lock-lost",
            StopCause::TrustExpired => "trust-expired",
        })
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandStatus::Exited(code) => write!(f, "exit {code}"),
            CommandStatus::Killed(s) => write!(f, "signal {}", *s as i32),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Started(pid) => write!(f, "started {pid}"),
            Report::CannotStart { not_found, error } => {
                let kind = if *not_found { "not-found" } else { "other" };
                // One line, whatever the error says.
                write!(f, "cannot-start {kind} {}", error.replace('\n', " "))
            }
            Report::NotStarted(order) => write!(f, "not-started {order}"),
            Report::Stopping(cause) => write!(f, "stopping {cause}"),
            Report::Finished(status) => write!(f, "finished {status}"),
        }
    }
}

impl FromStr for Report {
    type Err = Malformed;

    fn from_str(line: &str) -> Result<Self, Malformed> {
        let bad = || Malformed(line.to_owned());
        let (word, rest) = line.split_once(' ').ok_or_else(bad)?;
        match word {
            "started" => rest.parse().map(Report::Started).map_err(|_| bad()),
            "cannot-start" => {
                let (kind, error) = rest.split_once(' ').unwrap_or((rest, ""));
                let not_found = match kind {
                    "not-found" => true,
                    "other" => false,
                    _ => return Err(bad()),
                };
                Ok(Report::CannotStart {
                    not_found,
                    error: error.to_owned(),
                })
            }
            "not-started" => rest.parse().map(Report::NotStarted).map_err(|_| bad()),
            "stopping" => match rest {
                "lock-lost" => Ok(Report::Stopping(StopCause::LockLost)),
                "trust-expired" => Ok(Report::Stopping(StopCause::TrustExpired)),
                _ => Err(bad()),
            },
            "finished" => match rest.split_once(' ').ok_or_else(bad)? {
                ("exit", code) => code
                    .parse()
                    .map(|c| Report::Finished(CommandStatus::Exited(c)))
                    .map_err(|_| bad()),
                ("signal", n) => parse_signal(n)
                    .map(|s| Report::Finished(CommandStatus::Killed(s)))
                    .ok_or_else(bad),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// The machine's monotonic clock (`CLOCK_MONOTONIC`, the clock of [`std::time::Instant`]),
/// which `run` and its supervisor read alike.
pub fn monotonic_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux")
        .into()
}

fn parse_signal(number: &str) -> Option<Signal> {
    number
        .parse::<i32>()
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip() {
        for order in [
            Order::TrustUntil(Duration::from_millis(3_750)),
            Order::TrustUntil(Duration::ZERO),
            Order::Signal(Signal::SIGTERM),
            Order::Signal(Signal::SIGQUIT),
            Order::Stop,
        ] {
            assert_eq!(order.to_string().parse(), Ok(order), "{order}");
        }
        assert_eq!(
            order("trust 250"),
            Ok(Order::TrustUntil(Duration::from_millis(250)))
        );
        assert_eq!(order("signal 15"), Ok(Order::Signal(Signal::SIGTERM)));
    }

    #[test]
    fn malformed_orders_are_rejected() {
        for line in [
            "",
            "trust",
            "trust -1",
            "trust 1.5",
            "signal",
            "signal 0",
            "signal 999",
            "signal TERM",
            "stop now",
            "STOP",
            "kill 9",
        ] {
            assert!(order(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn reports_round_trip() {
        for report in [
            Report::Started(4242),
            Report::CannotStart {
                not_found: true,
                error: "No such file or directory (os error 2)".into(),
            },
            Report::CannotStart {
                not_found: false,
                error: "Permission denied (os error 13)".into(),
            },
            Report::NotStarted(Order::Signal(Signal::SIGTERM)),
            Report::NotStarted(Order::Stop),
            Report::NotStarted(Order::TrustUntil(Duration::from_millis(12_345))),
            Report::Stopping(StopCause::LockLost),
            Report::Stopping(StopCause::TrustExpired),
            Report::Finished(CommandStatus::Exited(0)),
            Report::Finished(CommandStatus::Exited(3)),
            Report::Finished(CommandStatus::Killed(Signal::SIGKILL)),
        ] {
            assert_eq!(report.to_string().parse(), Ok(report.clone()), "{report}");
        }
        assert_eq!(
            "stopping trust-expired".parse(),
            Ok(Report::Stopping(StopCause::TrustExpired))
        );
        assert_eq!(
            "not-started signal 2".parse(),
            Ok(Report::NotStarted(Order::Signal(Signal::SIGINT)))
        );
        assert_eq!(
            "finished signal 15".parse(),
            Ok(Report::Finished(CommandStatus::Killed(Signal::SIGTERM)))
        );
    }

    #[test]
    fn malformed_reports_are_rejected() {
        for line in [
            "",
            "started",
            "started x",
            "stopping",
            "stopping bored",
            "finished",
            "finished exit",
            "finished exit x",
            "finished signal 0",
            "finished core 1",
            "cannot-start maybe oops",
            "not-started",
            "not-started trust x",
            "not-started signal 0",
            "hello world",
        ] {
            assert!(line.parse::<Report>().is_err(), "{line:?}");
        }
    }

    #[test]
    fn a_multi_line_error_stays_one_line() {
        let r = Report::CannotStart {
            not_found: false,
            error: "a\nb".into(),
        };
        assert_eq!(r.to_string(), "cannot-start other a b");
    }

    fn order(line: &str) -> Result<Order, Malformed> {
        line.parse()
    }
}
