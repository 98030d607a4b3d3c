//! issuelock: one distributed lock per work item ("issue") for fleets of Kubernetes
//! worker pods, with the API server as the coordination store.
//!
//! See the README for the protocol, its guarantees and what it does not guarantee.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod error;
pub mod heartbeat;
pub mod holder;
pub mod key;
pub mod leader;
pub mod lock;
pub mod signature;
pub mod supervise;
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
