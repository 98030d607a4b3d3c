//! The issuelock controller, needed to reclaim a dead holder's lock: started from the
//! release binary for the phases that need it, stopped afterwards.

use crate::process::Proc;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub async fn start(issuelock: &Path, namespace: &str) -> anyhow::Result<Proc> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(issuelock);
    cmd.args(["controller", "-n", namespace, "--leader-election=false"])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn");
    let proc = Proc::spawn(cmd, "issuelock controller")?;
    let start = Instant::now();
    while !ready(port).await {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the controller did not become ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(proc)
}

async fn ready(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut answer = Vec::new();
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_ok()
        && s.read_to_end(&mut answer).await.is_ok()
        && answer.starts_with(b"HTTP/1.1 200") | answer.starts_with(b"HTTP/1.0 200")
}
