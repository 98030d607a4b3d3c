//! issuelock: one distributed lock per work item ("issue") for fleets of Kubernetes
//! worker pods, with the API server as the coordination store.
//!
//! A lock is an [`IssueLock`] object: creating it takes the lock, deleting it gives it
//! back. A [`LockClient`] holds one heartbeat Lease for its process and takes locks in
//! one namespace; [`LockClient::process_safely`] runs work under a lock and cancels it
//! when the lock may be lost; a [`Worker`] takes issue after issue from a stream of
//! candidates. See the README for the protocol, its guarantees and what it does not
//! guarantee, and `PROTOCOL.md` for the objects on the wire.
//!
//! # Depending on the library
//!
//! As kube-rs libraries do, this crate leaves the Kubernetes API version to the
//! application: its own dependency on `k8s-openapi` enables no version feature. Its
//! default feature `cli` is the `issuelock` binary (CLI, controller, benchmarks; built
//! for Kubernetes 1.37, with clap, tracing-subscriber and a YAML crate), so a library
//! user turns it off and picks the version of its own cluster:
//!
//! ```toml
//! [dependencies]
//! issuelock = { version = "0.1", default-features = false }
//! k8s-openapi = { version = "0.29", features = ["v1_35"] } # one of v1_33 to v1_37
//! kube = { version = "5", default-features = false, features = ["client", "rustls-tls", "ring"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! Features:
//!
//! * `cli` (default): the `issuelock` binary and its parts; enables k8s-openapi's `v1_37`.
//!   Its modules are the binary's, not part of this API.
//!
//! # Example
//!
//! ```no_run
//! use issuelock::{HolderIdentity, LockClient, LockConfig, Outcome};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let me = HolderIdentity::from_env(None); // POD_NAME, POD_UID, POD_NAMESPACE
//! let locks = LockClient::start(client, LockConfig::new("workers", me)).await?;
//! match locks
//!     .process_safely("org/repo#123", |fence| async move {
//!         // Runs while the lock is held; dropped as soon as it may be lost.
//!         fence.fencing_token
//!     })
//!     .await?
//! {
//!     Outcome::Completed(token) => println!("done under token {token}"),
//!     Outcome::Held(by) => println!("held by {}", by.holder.identity),
//!     Outcome::Lost { .. } => println!("lost the lock while working"),
//!     _ => println!("another outcome"),
//! }
//! locks.shutdown().await?; // releases what is left, deletes the heartbeat Lease
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod crd;
pub mod error;
pub mod heartbeat;
pub mod holder;
pub mod key;
pub mod lock;
pub mod signature;
mod watch_backoff;

// The `issuelock` binary's own parts (feature `cli`): not part of the library's API.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod bench;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod controller;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod leader;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod supervise;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod table;

pub use crd::{Holder, HolderPod, IssueLock, IssueLockSpec, IssueLockStatus};
pub use error::{Error, Result};
pub use heartbeat::HeartbeatConfig;
pub use holder::HolderIdentity;
pub use key::{InvalidKey, IssueKey};
pub use lock::{
    Acquisition, ClaimOrder, Claimed, Fence, FencingToken, HeldBy, LockClient, LockConfig,
    LockGuard, Outcome, WorkReport, Worker,
};

/// The README's Rust code blocks, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
