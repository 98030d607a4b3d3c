//! `issuelock show`: one lock, who holds it, since when.

use super::{EXIT_FAILURE, Output, print_as, read_issue_lock};
use crate::error::Error;
use clap::Args;
use std::process::ExitCode;

/// The arguments of `show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The issue key.
    pub issue: String,
    /// Namespace (default: the kubeconfig's namespace).
    #[arg(long, short = 'n', env = "ISSUELOCK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub(super) async fn show(args: ShowArgs) -> Result<ExitCode, Error> {
    let ShowArgs {
        issue,
        namespace,
        output,
    } = args;
    let Some((_, lock)) = read_issue_lock(&issue, namespace).await? else {
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    print_as(output, &lock, || crate::table::describe(&lock));
    Ok(ExitCode::SUCCESS)
}
