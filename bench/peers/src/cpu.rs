//! CPU time of the processes a call goes through (the API server, etcd, the controller
//! manager, this client), read from `/proc/PID/stat` around each batch of calls: how much
//! work each step of a call costs, which unlike latency does not depend on what else the
//! machine is doing at that moment.

use anyhow::{Context, bail};
use std::time::Duration;

/// A process whose CPU time is counted, named for the report.
#[derive(Clone, Debug)]
pub struct Meter {
    pub name: String,
    pid: u32,
}

impl std::str::FromStr for Meter {
    type Err = anyhow::Error;

    /// `NAME=PID`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let Some((name, pid)) = s.split_once('=') else {
            bail!("expected NAME=PID, got {s:?}");
        };
        let pid = pid
            .trim()
            .parse()
            .with_context(|| format!("bad pid in {s:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            pid,
        })
    }
}

impl Meter {
    /// This process.
    pub fn client() -> Self {
        Self {
            name: "client".into(),
            pid: std::process::id(),
        }
    }

    /// User plus system time of every thread of the process so far.
    pub fn used(&self) -> anyhow::Result<Duration> {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).with_context(|| {
                format!(
                    "cannot read the CPU time of {} (pid {})",
                    self.name, self.pid
                )
            })?;
        // The command name (field 2) may hold spaces: count fields after its ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the ')'.
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .context("short /proc/PID/stat")?
                .parse::<u64>()
                .context("bad /proc/PID/stat")
        };
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_secs_f64(total as f64 / ticks_per_second()))
    }
}

/// The kernel's clock ticks per second for `/proc` times (`USER_HZ`).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// CPU time used by each meter between two readings.
#[derive(Clone, Debug, Default)]
pub struct Usage(pub Vec<Duration>);

impl Usage {
    pub fn read(meters: &[Meter]) -> anyhow::Result<Self> {
        meters
            .iter()
            .map(Meter::used)
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// What was used since `earlier`, added to `self`.
    pub fn add_since(&mut self, earlier: &Usage, now: &Usage) {
        if self.0.len() < now.0.len() {
            self.0.resize(now.0.len(), Duration::ZERO);
        }
        for (i, (a, b)) in earlier.0.iter().zip(&now.0).enumerate() {
            self.0[i] += b.saturating_sub(*a);
        }
    }

    /// The same usage per second of `over`.
    pub fn per(&self, over: Duration) -> Self {
        Self(
            self.0
                .iter()
                .map(|d| d.div_f64(over.as_secs_f64()))
                .collect(),
        )
    }

    /// Takes off what `idle` (per second) amounts to over `over`.
    pub fn subtract_idle(&mut self, idle: &Usage, over: Duration) {
        for (d, rate) in self.0.iter_mut().zip(&idle.0) {
            *d = d.saturating_sub(rate.mul_f64(over.as_secs_f64()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_parse_and_read_this_process() {
        let m: Meter = "etcd=42".parse().unwrap();
        assert_eq!((m.name.as_str(), m.pid), ("etcd", 42));
        assert!("etcd".parse::<Meter>().is_err());
        assert!("etcd=x".parse::<Meter>().is_err());
        // Burn a little CPU (several clock ticks) so this process has some to show.
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            std::hint::black_box(0u64);
        }
        assert!(Meter::client().used().unwrap() > Duration::ZERO);
    }

    #[test]
    fn idle_use_is_taken_off() {
        let mut u = Usage(vec![Duration::from_millis(500), Duration::from_millis(10)]);
        let idle = Usage(vec![Duration::from_millis(100), Duration::from_millis(100)]);
        u.subtract_idle(&idle, Duration::from_secs(2));
        assert_eq!(u.0, [Duration::from_millis(300), Duration::ZERO]);
    }
}
