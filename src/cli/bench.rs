//! `issuelock bench`: acquire and release latency against the raw API calls.

use super::{HolderArgs, kube_client, lock_client};
use crate::error::Error;
use clap::Args;
use std::process::ExitCode;

/// The arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Operations per measured phase.
    #[arg(long, default_value_t = 500)]
    pub iterations: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[command(flatten)]
    pub holder: HolderArgs,
}

pub(super) async fn bench(args: BenchArgs) -> Result<ExitCode, Error> {
    let BenchArgs {
        iterations,
        concurrency,
        holder,
    } = args;
    if iterations < 16 {
        return Err(Error::Config("bench needs at least 16 iterations".into()));
    }
    let client = kube_client().await?;
    let locks = lock_client(holder, None).await?;
    let report = crate::bench::run(
        client,
        locks.clone(),
        crate::bench::BenchConfig {
            iterations,
            concurrency,
        },
    )
    .await;
    let _ = locks.shutdown().await;
    print!("{}", report?);
    Ok(ExitCode::SUCCESS)
}
