//! `issuelock completion SHELL`: a completion script for bash, zsh, fish, elvish or
//! PowerShell (clap_complete), for the name the binary was invoked by (`issuelock`, or
//! `kubectl-issuelock`: kubectl itself completes plugin names only).

use super::Cli;
use clap::CommandFactory;
use std::process::ExitCode;

/// Prints the completion script for `shell` on stdout.
pub(super) fn print(shell: clap_complete::Shell) -> ExitCode {
    let name = std::env::args_os()
        .next()
        .as_deref()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .filter(|n| *n == "kubectl-issuelock")
        .unwrap_or("issuelock")
        .to_owned();
    clap_complete::generate(shell, &mut Cli::command(), name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_subcommands_and_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = vec![];
            clap_complete::generate(shell, &mut Cli::command(), "issuelock", &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in ["list", "selector", "no-headers", "context", "wide"] {
                assert!(script.contains(word), "{shell}: {word} missing");
            }
        }
    }
}
