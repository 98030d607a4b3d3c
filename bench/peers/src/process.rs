//! Child processes of the bench: holders to SIGKILL, the client-go program, the
//! controller. Each is killed when its handle is dropped.

use anyhow::{Context, bail};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A running child whose stdout is read line by line.
pub struct Proc {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    what: String,
}

impl Proc {
    pub fn spawn(mut command: Command, what: &str) -> anyhow::Result<Self> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("failed to start {what}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
            what: what.to_owned(),
        })
    }

    /// The next line of output, within `timeout`; `None` at its end.
    pub async fn line(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(line) => Ok(line?),
            Err(_) => bail!("{} printed nothing for {timeout:?}", self.what),
        }
    }

    /// Waits for the line `expected`.
    pub async fn expect(&mut self, expected: &str, timeout: Duration) -> anyhow::Result<()> {
        match self.line(timeout).await? {
            Some(l) if l.trim() == expected => Ok(()),
            other => bail!("{} printed {other:?} instead of {expected:?}", self.what),
        }
    }

    /// Every remaining line, once the child exits; fails on a non-zero exit.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        drop(self.child.stdin.take());
        let mut out = Vec::new();
        while let Some(l) = self.line(timeout).await? {
            out.push(l);
        }
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        if !status.success() {
            bail!("{} exited with {status}", self.what);
        }
        Ok(out)
    }

    pub fn sigkill(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("already exited")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        Ok(())
    }

    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
