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
use kube::api::Api;
use std::process::ExitCode;
use std::time::Duration;

mod bench;
mod completion;
mod controller;
mod crd;
mod duration;
mod issues;
mod list;
mod lock_name;
mod release;
mod run;
mod show;
mod work;

use list::print_as;
pub use list::{ListArgs, ListOutput};

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
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the API server, as kubectl's flags of the same names say it; every
/// subcommand's client follows them.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster configuration).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The name of the kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// How long to wait for each request to the API server before giving up (e.g. 30s,
    /// 2m, 500ms; a bare number is seconds; 0: no limit). One-shot commands (list
    /// without --watch, show, release, bench) apply it to every read and write; the
    /// long-running ones (run, work, claim, controller, list --watch) only to connecting,
    /// since their watches are idle by design: their calls keep --call-timeout-seconds.
    #[arg(long, global = true, value_name = "DURATION", value_parser = duration::parse)]
    pub request_timeout: Option<Duration>,
    /// Set by `run` from the subcommand: whether the request timeout covers reads and
    /// writes too (see `request_timeout`).
    #[arg(skip)]
    pub one_shot: bool,
}

/// The [`KubeArgs`] of this process, read by [`kube_client`].
static KUBE_ARGS: std::sync::OnceLock<KubeArgs> = std::sync::OnceLock::new();

impl Cli {
    /// Parses the process's arguments. Invoked as the kubectl plugin (`kubectl-issuelock`,
    /// as `kubectl issuelock` runs it), help and usage say `kubectl issuelock`.
    pub fn parse_args() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let mut command = Self::command();
        if is_kubectl_plugin(std::env::args_os().next()) {
            command = command.bin_name(PLUGIN_NAME);
        }
        let matches = command.get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// What the plugin is called on kubectl's command line.
pub const PLUGIN_NAME: &str = "kubectl issuelock";

/// True when `argv0` names the kubectl plugin's executable (`kubectl-issuelock`).
fn is_kubectl_plugin(argv0: Option<std::ffi::OsString>) -> bool {
    argv0
        .is_some_and(|a| std::path::Path::new(&a).file_name() == Some("kubectl-issuelock".as_ref()))
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
    /// (`run`'s rules) and `work` goes on with the next; after a lost heartbeat it resumes
    /// with a new one once the API server answers.
    ///
    /// Exit status: 0 when no candidate is left and every command run exited 0; 3 when
    /// some command failed or lost its lock; 128 + n on
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
    /// Print a shell completion script (e.g. `source <(issuelock completion bash)`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the lock object name derived from an issue key.
    LockName(LockNameArgs),
    /// The supervisor of a `run` command's process tree (started by `run` only).
    #[command(hide = true)]
    Supervise(crate::supervise::SuperviseArgs),
}

/// Where and as whom to take locks.
#[derive(Args, Clone, Debug)]
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

/// Output formats of `show`.
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
        kube,
        command,
    } = cli;
    init_logging(log_format);
    let one_shot = match &command {
        Command::List(args) => !args.watch,
        Command::Show(_) | Command::Release(_) | Command::Bench(_) => true,
        _ => false,
    };
    let _ = KUBE_ARGS.set(KubeArgs { one_shot, ..kube });
    let result = match command {
        Command::Crd => crd::crd(),
        Command::Run(args) => run::run_locked(args).await,
        Command::Work(args) => work::work(args).await,
        Command::Claim(args) => work::claim(args).await,
        Command::List(args) => list::list(args).await,
        Command::Completion { shell } => Ok(completion::print(shell)),
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
    let KubeArgs {
        kubeconfig,
        context,
        request_timeout,
        one_shot,
    } = KUBE_ARGS.get().cloned().unwrap_or_default();
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let bad = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "no usable kubeconfig or in-cluster configuration: {e}"
        ))
    };
    let mut config = match (&kubeconfig, &options.context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| bad(&e))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| bad(&e))?,
        (None, None) => kube::Config::infer().await.map_err(|e| bad(&e))?,
    };
    if let Some(timeout) = request_timeout.filter(|t| !t.is_zero()) {
        config.connect_timeout = Some(timeout);
        if one_shot {
            config.read_timeout = Some(timeout);
            config.write_timeout = Some(timeout);
            config.reset_reader_on_write = true;
        }
    }
    kube::Client::try_from(config)
        .map_err(|e| Error::Config(format!("cannot build a Kubernetes client: {e}")))
}

/// Builds a lock client from the command-line holder settings.
pub async fn lock_client(
    args: HolderArgs,
    max_hold: Option<Duration>,
) -> Result<LockClient, Error> {
    lock_client_as(args, max_hold, None).await
}

/// Builds a lock client like [`lock_client`]; with `previous` (the holder a former client
/// of this process recorded), records the same user and pod instead of asking the API
/// server again: a server just back from an outage may not authenticate or authorize the
/// question yet, and the answer cannot have changed.
pub async fn lock_client_as(
    args: HolderArgs,
    max_hold: Option<Duration>,
    previous: Option<&crate::crd::Holder>,
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
    let mut me = HolderIdentity::from_env(identity);
    let user = previous.and_then(|p| p.user.clone());
    if let Some(pod) = previous.and_then(|p| p.pod.clone()) {
        me.pod = Some(pod);
    }
    let namespace = namespace
        .or_else(|| me.pod_namespace.clone())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let call_timeout = Duration::from_secs(call_timeout_seconds);
    LockClient::start(
        client,
        LockConfig {
            namespace,
            identity: me,
            user,
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

    #[test]
    fn global_kube_flags_parse_after_any_subcommand() {
        let cli = Cli::try_parse_from([
            "issuelock",
            "list",
            "--kubeconfig",
            "/k",
            "--context",
            "b",
            "--request-timeout",
            "2s",
            "-o",
            "name",
        ])
        .unwrap();
        assert_eq!(cli.kube.kubeconfig.as_deref(), Some("/k".as_ref()));
        assert_eq!(cli.kube.context.as_deref(), Some("b"));
        assert_eq!(cli.kube.request_timeout, Some(Duration::from_secs(2)));
        assert!(Cli::try_parse_from(["issuelock", "show", "x", "--context", "a"]).is_ok());
    }

    #[test]
    fn the_plugin_is_recognized_by_its_executable_name() {
        assert!(is_kubectl_plugin(Some("/usr/bin/kubectl-issuelock".into())));
        assert!(is_kubectl_plugin(Some("kubectl-issuelock".into())));
        assert!(!is_kubectl_plugin(Some("/usr/bin/issuelock".into())));
        assert!(!is_kubectl_plugin(None));
    }
}
