//! The `issuelock` command line: `crd`, `run -- CMD`, `list`.
//!
//! `run` holds one lock while a command runs, and contains the command's whole process
//! tree through a supervisor process ([`crate::supervise`]).

use crate::crd::IssueLock;
use crate::error::{Error, classify};
use crate::heartbeat::HeartbeatConfig;
use crate::holder::HolderIdentity;
use crate::lock::{LockClient, LockConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::api::{Api, ListParams};
use std::process::ExitCode;
use std::time::Duration;

mod bench;
mod controller;
mod crd;
mod duration;
mod issues;
mod lock_name;
mod release;
mod run;
mod show;
mod work;

pub use bench::BenchArgs;
pub use controller::ControllerArgs;
pub use lock_name::LockNameArgs;
pub use release::ReleaseArgs;
pub use run::RunArgs;
pub use show::ShowArgs;
pub use work::{EXIT_NOT_ALL_SUCCEEDED, EXIT_NOTHING_LEFT, OrderArg, WorkArgs};

/// Exit code of `run` when another holder has the lock.
pub const EXIT_HELD: u8 = 75;
/// Exit code of `run` when the lock was lost while the command ran.
pub const EXIT_LOST: u8 = 76;
/// Exit code for invalid input (bad key, bad flags, bad configuration).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for every other failure (API server unreachable, CRD missing, RBAC, ...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of `run` when the command cannot be executed (not found: like shells).
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit code of `run` when the command exists but cannot be executed (like shells).
pub const EXIT_CANNOT_EXECUTE: u8 = 126;

/// One distributed lock per work item, on the Kubernetes API.
#[derive(Parser, Debug)]
#[command(name = "issuelock", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "ISSUELOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the IssueLock CustomResourceDefinition as YAML.
    Crd,
    /// Run a command while holding the lock on one issue.
    ///
    /// The command and every process it starts (even in another process group or
    /// session) are stopped when the lock is lost or no longer trusted (SIGTERM, the grace
    /// period, SIGKILL) and killed at once when `issuelock` itself dies. SIGTERM, SIGINT,
    /// SIGHUP and SIGQUIT are forwarded to the command's process group.
    ///
    /// Exit status: the command's own (128 + n when signal n killed it); 75 when another
    /// holder has the lock (the command did not run); 76 when the lock was lost or no
    /// longer trusted while it ran (the command was stopped); 127 (126) when the command
    /// was not found (cannot be executed); 128 + n when signal n arrived before the
    /// command started; 2 for invalid input; 1 for any other failure.
    Run(RunArgs),
    /// Claim issues from a list one after another and run a command on each.
    ///
    /// Candidates are tried in an order of this worker's own (rendezvous hashing of its
    /// identity over the keys), skipping those held (one watch of the namespace's locks)
    /// and those done (--done-dir / --done-cmd, checked again once the lock is taken). The
    /// command runs exactly as under `run` (environment, process tree, signals). One Lease
    /// and one identity lookup serve the whole run. A lost lock stops that issue's command
    /// (`run`'s rules) and `work` goes on with the next; a lost heartbeat ends `work` (76).
    ///
    /// Exit status: 0 when no candidate is left and every command run exited 0; 3 when
    /// some command failed or lost its lock; 76 when the heartbeat was lost; 128 + n on
    /// signal n (the running command gets it first, as under `run`); 2 for invalid input
    /// (empty list, duplicate or invalid key, missing --done-dir, bad flags); 1 for any
    /// other failure.
    Work(WorkArgs),
    /// Claim one issue from a list (as `work` would choose it) and run a command on it.
    ///
    /// Exit status: the command's (as under `run`); 75 when every candidate not done is
    /// held by others; 3 when every candidate is done; 2 for invalid input; 1 for any
    /// other failure.
    Claim(WorkArgs),
    /// List the locks in a namespace.
    List(ListArgs),
    /// Show one lock: who holds it, since when, whether the holder is alive.
    Show(ShowArgs),
    /// Delete a lock held by someone else (an administrator's action; needs --force).
    Release(ReleaseArgs),
    /// Run the controller that reclaims locks whose holder died.
    Controller(ControllerArgs),
    /// Measure acquire and release latency against the raw API calls (the floor).
    Bench(BenchArgs),
    /// Print the lock object name derived from an issue key.
    LockName(LockNameArgs),
    /// The supervisor of a `run` command's process tree (started by `run` only).
    #[command(hide = true)]
    Supervise(crate::supervise::SuperviseArgs),
}

/// Where and as whom to take locks.
#[derive(Args, Debug)]
pub struct HolderArgs {
    /// Namespace of the locks (default: $POD_NAMESPACE, then the kubeconfig's namespace).
    #[arg(long, short = 'n', env = "ISSUELOCK_NAMESPACE")]
    pub namespace: Option<String>,
    /// Holder identity (default: $POD_NAME, then <hostname>-<pid>).
    #[arg(long, env = "ISSUELOCK_IDENTITY")]
    pub identity: Option<String>,
    /// Deadline of each API call, in seconds.
    #[arg(long, env = "ISSUELOCK_CALL_TIMEOUT_SECONDS", default_value_t = 10)]
    pub call_timeout_seconds: u64,
    /// Heartbeat Lease duration: how long after the last renewal others may consider this
    /// holder dead (whole seconds).
    #[arg(long, env = "ISSUELOCK_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Stop trusting held locks when the heartbeat has not been renewed for this long (seconds).
    #[arg(long, env = "ISSUELOCK_RENEW_DEADLINE_SECONDS", default_value_t = 10.0)]
    pub renew_deadline_seconds: f64,
    /// Time between heartbeat renewals (seconds).
    #[arg(long, env = "ISSUELOCK_RENEW_INTERVAL_SECONDS", default_value_t = 2.0)]
    pub renew_interval_seconds: f64,
    /// Sign every lock with HMAC-SHA256 using the keys in this directory (one file per
    /// key: file name = key id, contents = secret; e.g. a mounted Secret).
    #[arg(long, env = "ISSUELOCK_SIGNING_KEYS")]
    pub signing_keys: Option<std::path::PathBuf>,
    /// Key id to sign with (default: the greatest key id in the directory).
    #[arg(long, env = "ISSUELOCK_SIGNING_KEY_ID", requires = "signing_keys")]
    pub signing_key_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Namespace to list (default: the kubeconfig's namespace).
    #[arg(long, short = 'n', env = "ISSUELOCK_NAMESPACE")]
    pub namespace: Option<String>,
    /// List locks in every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How each lock of `run`, `work` and `claim` is held, and where and as whom.
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// Hard cap on how long a lock may be held, in seconds. The command gets SIGTERM a
    /// grace period before it ends, so that its tree is gone by then.
    #[arg(long, env = "ISSUELOCK_MAX_HOLD_SECONDS")]
    pub max_hold_seconds: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the command's process tree is stopped
    /// (default: half of lease duration minus renew deadline, at most 3). Must be shorter
    /// than lease duration minus renew deadline, so that a holder whose heartbeat fails
    /// has killed its tree before others may take the lock.
    #[arg(long, env = "ISSUELOCK_GRACE_SECONDS")]
    pub grace_seconds: Option<f64>,
    #[command(flatten)]
    pub holder: HolderArgs,
}

/// Output formats of `list`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Runs the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let Cli {
        log_format,
        command,
    } = cli;
    init_logging(log_format);
    let result = match command {
        Command::Crd => crd::crd(),
        Command::Run(args) => run::run_locked(args).await,
        Command::Work(args) => work::work(args).await,
        Command::Claim(args) => work::claim(args).await,
        Command::List(args) => list(args).await,
        Command::Show(args) => show::show(args).await,
        Command::Bench(args) => bench::bench(args).await,
        Command::Release(args) => release::force_release(args).await,
        Command::Controller(args) => controller::controller(args).await,
        Command::LockName(args) => lock_name::lock_name(args),
        Command::Supervise(args) => Ok(crate::supervise::supervise(args).await),
    };
    result.unwrap_or_else(|e| {
        eprintln!("issuelock: error: {}", e.chain());
        ExitCode::from(match e {
            Error::InvalidKey(_) | Error::Config(_) => EXIT_USAGE,
            Error::HeartbeatUnhealthy => EXIT_LOST,
            Error::LockLost { .. } => EXIT_LOST,
            _ => EXIT_FAILURE,
        })
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn kube_client() -> Result<kube::Client, Error> {
    let config = kube::Config::infer().await.map_err(|e| {
        Error::Config(format!(
            "no usable kubeconfig or in-cluster configuration: {e}"
        ))
    })?;
    kube::Client::try_from(config)
        .map_err(|e| Error::Config(format!("cannot build a Kubernetes client: {e}")))
}

/// Builds a lock client from the command-line holder settings.
pub async fn lock_client(
    args: HolderArgs,
    max_hold: Option<Duration>,
) -> Result<LockClient, Error> {
    let HolderArgs {
        namespace,
        identity,
        call_timeout_seconds,
        lease_duration_seconds,
        renew_deadline_seconds,
        renew_interval_seconds,
        signing_keys,
        signing_key_id,
    } = args;
    let keys = keyring(signing_keys, signing_key_id.as_deref())?;
    let heartbeat = lease_timing(
        "",
        lease_duration_seconds,
        renew_deadline_seconds,
        renew_interval_seconds,
    )?;
    let client = kube_client().await?;
    let me = HolderIdentity::from_env(identity);
    let namespace = namespace
        .or_else(|| me.pod_namespace.clone())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let call_timeout = Duration::from_secs(call_timeout_seconds);
    LockClient::start(
        client,
        LockConfig {
            namespace,
            identity: me,
            user: None,
            max_hold,
            call_timeout,
            heartbeat,
            keys,
        },
    )
    .await
}

/// The keys in `dir` (one file per key), if given; `key_id` picks the signing key
/// (default: the greatest key id).
fn keyring(
    dir: Option<std::path::PathBuf>,
    key_id: Option<&str>,
) -> Result<Option<std::sync::Arc<crate::signature::Keyring>>, Error> {
    let keys = dir
        .map(|dir| crate::signature::Keyring::from_dir(&dir, key_id))
        .transpose()?;
    Ok(keys.map(std::sync::Arc::new))
}

/// Lease timing from command-line seconds, validated (`what` prefixes error messages).
fn lease_timing(
    what: &str,
    lease: u64,
    deadline: f64,
    interval: f64,
) -> Result<HeartbeatConfig, Error> {
    let seconds = |name: &str, s: f64| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            Error::Config(format!(
                "{what}{name} must be a non-negative number of seconds"
            ))
        })
    };
    let timing = HeartbeatConfig {
        lease_duration: Duration::from_secs(lease),
        renew_deadline: seconds("renew deadline", deadline)?,
        renew_interval: seconds("renew interval", interval)?,
    };
    timing.validate()?;
    Ok(timing)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn list(args: ListArgs) -> Result<ExitCode, Error> {
    let ListArgs {
        namespace,
        all_namespaces,
        output,
    } = args;
    let client = kube_client().await?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let (api, leases): (
        Api<IssueLock>,
        Api<k8s_openapi::api::coordination::v1::Lease>,
    ) = if all_namespaces {
        (Api::all(client.clone()), Api::all(client))
    } else {
        (
            Api::namespaced(client.clone(), &ns),
            Api::namespaced(client, &ns),
        )
    };
    let locks = api
        .list(&ListParams::default())
        .await
        .map_err(|e| classify("list locks", &ns, e))?;
    // The HEARTBEAT column comes from the holders' Leases (the controller does not
    // rewrite lock status as heartbeats arrive); without the right to list them it reads
    // <unknown>.
    let heartbeats = match output {
        Output::Table => leases
            .list(&ListParams::default().labels(&format!("{}=true", crate::crd::HEARTBEAT_LABEL)))
            .await
            .ok()
            .map(|list| {
                list.items
                    .into_iter()
                    .filter_map(|l| {
                        let renewed = l.spec.as_ref()?.renew_time.as_ref()?.0;
                        Some(((l.metadata.namespace?, l.metadata.name?), renewed))
                    })
                    .collect()
            }),
        _ => None,
    };
    print_as(output, &locks.items, || {
        crate::table::render(&locks.items, all_namespaces, &heartbeats)
    });
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as JSON or YAML, or `table()` for humans.
fn print_as<T: serde::Serialize>(output: Output, value: &T, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializes")
        ),
        Output::Yaml => print!("{}", serde_yaml::to_string(value).expect("serializes")),
        Output::Table => print!("{}", table()),
    }
}

/// Reads the lock of `issue` in `namespace` (default: the kubeconfig's); `None` (after
/// telling the user) when the issue is not locked.
async fn read_issue_lock(
    issue: &str,
    namespace: Option<String>,
) -> Result<Option<(Api<IssueLock>, IssueLock)>, Error> {
    let key = crate::key::IssueKey::parse(issue)?;
    let client = kube_client().await?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<IssueLock> = Api::namespaced(client, &ns);
    let lock = api
        .get_opt(&key.lock_name())
        .await
        .map_err(|e| classify("read lock", &ns, e))?;
    if lock.is_none() {
        eprintln!("issuelock: issue {issue:?} is not locked in namespace {ns:?}");
    }
    Ok(lock.map(|l| (api, l)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
