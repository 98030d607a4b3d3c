#![forbid(unsafe_code)]
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    issuelock::cli::run(issuelock::cli::Cli::parse()).await
}
