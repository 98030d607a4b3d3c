#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    issuelock::cli::run(issuelock::cli::Cli::parse_args()).await
}
