//! `issuelock release --force`: an administrator deletes a lock held by someone else.

use super::{EXIT_FAILURE, read_issue_lock};
use crate::crd::IssueLock;
use crate::error::{Deleted, Error, classify, delete_exact};
use clap::Args;
use std::process::ExitCode;

/// The arguments of `release`.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The issue key.
    pub issue: String,
    /// Namespace (default: the kubeconfig's namespace).
    #[arg(long, short = 'n', env = "ISSUELOCK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Confirm deleting a lock this process does not hold; its holder will find it lost.
    #[arg(long)]
    pub force: bool,
}

pub(super) async fn force_release(args: ReleaseArgs) -> Result<ExitCode, Error> {
    let ReleaseArgs {
        issue,
        namespace,
        force,
    } = args;
    let key = crate::key::IssueKey::parse(&issue)?;
    if !force {
        return Err(Error::Config(
            "releasing a lock held by another process is an administrator's action; pass --force"
                .into(),
        ));
    }
    let Some((api, lock)) = read_issue_lock(&issue, namespace).await? else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    let (name, ns) = (key.lock_name(), api_namespace(&lock));
    // Delete exactly the lock we looked at, never a newer one.
    let uid = lock.metadata.uid.clone().unwrap_or_default();
    let version = lock.metadata.resource_version.as_deref();
    match delete_exact(&api, &name, &uid, version).await {
        Ok(Deleted::Deleted) => {
            println!(
                "released lock on {issue:?} held by {}",
                lock.spec.holder.identity
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Deleted::GoneOrChanged) => {
            eprintln!("issuelock: the lock on {issue:?} changed meanwhile; nothing released");
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Err(e) => Err(classify("release lock", &ns, e)),
    }
}

fn api_namespace(lock: &IssueLock) -> String {
    lock.metadata.namespace.clone().unwrap_or_default()
}
