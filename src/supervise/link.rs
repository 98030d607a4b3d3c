//! The connection between `issuelock run` and its supervisor: a Unix stream socket with a
//! random abstract name (no file, so it works on a read-only root filesystem), on which
//! each side accepts exactly one peer, identified by its pid (`SO_PEERCRED`): `run`
//! accepts only its supervisor child, the supervisor talks only to its parent.
//!
//! (An inherited socket pair would need `unsafe` to adopt the inherited descriptor; the
//! crate forbids `unsafe`.) The sockets are close-on-exec, so the command never holds
//! them: when `run` dies, its supervisor reads end-of-stream at once.

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The listening end, in `issuelock run`.
pub struct Listener {
    name: String,
    listener: tokio::net::UnixListener,
}

impl Listener {
    /// Listens on a fresh random abstract name.
    pub fn bind() -> io::Result<Self> {
        let name = format!(
            "issuelock-run-{}-{}",
            std::process::id(),
            crate::holder::random_suffix()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            name,
            listener: tokio::net::UnixListener::from_std(listener)?,
        })
    }

    /// The abstract name to pass to the supervisor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Accepts the connection of the process `pid`, refusing any other, within `limit`.
    pub async fn accept_from(
        self,
        pid: u32,
        limit: Duration,
    ) -> io::Result<tokio::net::UnixStream> {
        let accept = async {
            loop {
                let (stream, _) = self.listener.accept().await?;
                match getsockopt(&stream, PeerCredentials) {
                    Ok(peer) if peer.pid() == pid as i32 => return Ok(stream),
                    _ => {
                        tracing::warn!(name = %self.name, "refused a connection from a process other than the supervisor")
                    }
                }
            }
        };
        tokio::time::timeout(limit, accept).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the supervisor did not connect")
        })?
    }
}

/// Connects the supervisor to the `issuelock run` that started it, and checks that the
/// listener is that parent process.
pub fn connect_to_parent(name: &str) -> io::Result<tokio::net::UnixStream> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let stream = UnixStream::connect_addr(&addr)?;
    let peer = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
    let parent = nix::unistd::getppid().as_raw();
    if peer.pid() != parent {
        return Err(io::Error::other(format!(
            "socket {name:?} belongs to process {}, not to the parent {parent}",
            peer.pid()
        )));
    }
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}
