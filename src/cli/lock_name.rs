//! `issuelock lock-name`: the lock object name derived from an issue key.

use crate::error::Error;
use crate::key::IssueKey;
use clap::Args;
use std::process::ExitCode;

/// The arguments of `lock-name`.
#[derive(Args, Debug)]
pub struct LockNameArgs {
    /// The issue key.
    pub issue: String,
}

pub(super) fn lock_name(args: LockNameArgs) -> Result<ExitCode, Error> {
    let LockNameArgs { issue } = args;
    let key = IssueKey::parse(&issue)?;
    println!("{}", key.lock_name());
    Ok(ExitCode::SUCCESS)
}
