//! client-go's leaderelection (a Lease per issue), through the `leasepeer` Go program:
//! it runs each phase itself and prints its samples.

use crate::process::Proc;
use crate::stats::Latencies;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;

const QUIET: Duration = Duration::from_secs(300);

pub struct ClientGo {
    pub bin: PathBuf,
    pub namespace: String,
}

impl ClientGo {
    fn command(&self, mode: &str, prefix: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(mode)
            .args(["-namespace", &self.namespace, "-prefix", prefix])
            .env("GOMAXPROCS", "2");
        c
    }

    /// Acquire and release latencies of `n` fresh Leases, `c` in flight.
    pub async fn latency(
        &self,
        prefix: &str,
        n: usize,
        c: usize,
    ) -> anyhow::Result<(Latencies, Latencies)> {
        let mut cmd = self.command("latency", prefix);
        cmd.args(["-n", &n.to_string(), "-c", &c.to_string()]);
        let out = Proc::spawn(cmd, "leasepeer latency")?.finish(QUIET).await?;
        let (mut acquire, mut release) = (Vec::new(), Vec::new());
        for line in out {
            let (what, micros) = line.split_once(' ').context("leasepeer output")?;
            let d = Duration::from_micros(micros.parse()?);
            match what {
                "acquire" => acquire.push(d),
                "release" => release.push(d),
                _ => anyhow::bail!("leasepeer printed {line:?}"),
            }
        }
        Ok((Latencies::new(acquire), Latencies::new(release)))
    }

    /// Acquisitions and tries found held by `clients` clients over `issues` issues.
    pub async fn contend(
        &self,
        prefix: &str,
        clients: usize,
        issues: usize,
        secs: f64,
    ) -> anyhow::Result<(u64, u64, Duration)> {
        let mut cmd = self.command("contend", prefix);
        cmd.args([
            "-clients",
            &clients.to_string(),
            "-issues",
            &issues.to_string(),
            "-seconds",
            &secs.to_string(),
        ]);
        let out = Proc::spawn(cmd, "leasepeer contend")?.finish(QUIET).await?;
        let count = |k: &str| -> anyhow::Result<u64> {
            out.iter()
                .find_map(|l| l.strip_prefix(k))
                .context("leasepeer output")?
                .trim()
                .parse()
                .map_err(Into::into)
        };
        // Its own clock: process start-up is not part of the phase.
        let wall = Duration::from_micros(count("wall_us ")?);
        Ok((count("acquired ")?, count("held ")?, wall))
    }

    /// A process holding `issues` Leases; stdin closed = give them back.
    pub async fn hold(&self, prefix: &str, issues: usize) -> anyhow::Result<Proc> {
        let mut cmd = self.command("hold", prefix);
        cmd.args(["-issues", &issues.to_string()]);
        let mut p = Proc::spawn(cmd, "leasepeer hold")?;
        p.expect("held", QUIET).await?;
        Ok(p)
    }

    /// A process waiting to lead the Lease the holder of `prefix` holds (`hold-0`).
    pub fn waiter(&self, prefix: &str) -> anyhow::Result<Proc> {
        let mut cmd = self.command("wait", prefix);
        cmd.args(["-issue", "hold-0"]);
        Proc::spawn(cmd, "leasepeer wait")
    }
}
