//! A Rust worker: takes the issues in a list one after another with the `issuelock`
//! library, each exactly once across every worker running this program.
//!
//! ```sh
//! cargo run --example rust_worker -- work NAMESPACE ISSUES_FILE DONE_DIR
//! cargo run --example rust_worker -- one NAMESPACE ISSUE DONE_DIR
//! ```
//!
//! `work`: a [`Worker`] claims the next issue (this worker's own order, skipping issues
//! held by others and issues with a file in DONE_DIR), runs the work under the lock, and
//! goes on until no issue is left. `one`: [`LockClient::process_safely`] on one issue.
//! The work writes DONE_DIR/<lock name> while it holds the lock: that file is what makes
//! the issue done for every worker. The identity is `$WORKER_ID`, then `$POD_NAME`.

use issuelock::{Fence, HolderIdentity, IssueKey, LockClient, LockConfig, Outcome, Worker};
use std::path::{Path, PathBuf};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, namespace, what, done_dir] = args.as_slice() else {
        eprintln!("usage: rust_worker work|one NAMESPACE ISSUES_FILE|ISSUE DONE_DIR");
        std::process::exit(2);
    };
    let done_dir = PathBuf::from(done_dir);
    let client = kube::Client::try_default().await?;
    let me = HolderIdentity::from_env(std::env::var("WORKER_ID").ok());
    let locks = LockClient::start(client, LockConfig::new(namespace, me)).await?;
    let result = match mode.as_str() {
        "work" => work(&locks, what, &done_dir).await,
        "one" => one(&locks, what, &done_dir).await,
        _ => Err(format!("unknown mode {mode:?}").into()),
    };
    // Releases whatever is still held and deletes the heartbeat Lease.
    locks.shutdown().await?;
    result
}

async fn work(
    locks: &LockClient,
    list: &str,
    done_dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let keys = std::fs::read_to_string(list)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| IssueKey::parse(l.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let is_done = async |key: &IssueKey| Ok(done_dir.join(key.lock_name()).exists());
    let report = Worker::new(locks.clone(), futures::stream::iter(keys))
        .run(is_done, |fence| process(fence, done_dir))
        .await?;
    println!(
        "completed {} issues, {} lost",
        report.completed, report.lost
    );
    Ok(())
}

async fn one(
    locks: &LockClient,
    issue: &str,
    done_dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    match locks
        .process_safely(issue, |fence| process(fence, done_dir))
        .await?
    {
        Outcome::Completed(()) => println!("completed {issue}"),
        Outcome::Held(by) => println!("{issue} is held by {}", by.holder.identity),
        Outcome::Lost { .. } => println!("lost the lock on {issue}"),
        other => println!("{issue}: {other:?}"),
    }
    Ok(())
}

/// The work on one issue, while its lock is held. It is cancelled (this future dropped)
/// as soon as the lock may be lost.
async fn process(fence: Fence, done_dir: &Path) {
    // ... the real work goes here; pass fence.fencing_token to storage that checks it ...
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let marker = done_dir.join(fence.issue.lock_name());
    let record = format!("{} {}\n", fence.issue.as_str(), fence.fencing_token);
    if let Err(e) = std::fs::write(&marker, record) {
        eprintln!("cannot write {}: {e}", marker.display());
    }
}
