//! A worker on Kubernetes 1.35 that takes one issue with the `issuelock` library.
//!
//! ```sh
//! cargo run -- NAMESPACE ISSUE
//! ```
//!
//! Runs against the cluster of the current kubeconfig (or the pod's service account).

use issuelock::{HolderIdentity, LockClient, LockConfig, Outcome};
use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namespace, issue] = args.as_slice() else {
        eprintln!("usage: other-k8s-version NAMESPACE ISSUE");
        std::process::exit(2);
    };
    let client = kube::Client::try_default().await?;
    // Types of this application's own k8s-openapi (v1_35) and issuelock's are the same.
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let config = LockConfig::new(namespace.as_str(), HolderIdentity::from_env(None))
        .with_call_timeout(Duration::from_secs(5));
    let locks = LockClient::start(client, config).await?;
    let outcome = locks
        .process_safely(issue, |fence| async move {
            let listed = pods.list(&Default::default()).await.map(|l| l.items.len());
            println!(
                "{} taken with token {}: {listed:?} pods",
                fence.issue, fence.fencing_token
            );
        })
        .await?;
    match outcome {
        Outcome::Completed(()) => println!("done"),
        Outcome::Held(by) => println!("held by {}", by.holder.identity),
        Outcome::Lost { .. } => println!("lost while working"),
        _ => println!("another outcome"),
    }
    locks.shutdown().await?;
    Ok(())
}
