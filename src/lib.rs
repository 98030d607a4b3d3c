//! issuelock: one distributed lock per work item ("issue") for fleets of Kubernetes
//! worker pods, with the API server as the coordination store.
//!
//! See the README for the protocol, its guarantees and what it does not guarantee.
#![forbid(unsafe_code)]

pub mod crd;
pub mod error;
pub mod heartbeat;
pub mod holder;
pub mod key;
pub mod lock;
pub mod signature;

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
