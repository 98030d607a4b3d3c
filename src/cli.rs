//! The `issuelock` command line: `crd`, `run -- CMD`, `list`.
//!
//! `run` holds one lock while a command runs, and contains the command's whole process
//! tree through a supervisor process ([`crate::supervise`]).

use crate::crd::{self, IssueLock};
use crate::error::{Error, classify};
use crate::heartbeat::HeartbeatConfig;
use crate::holder::HolderIdentity;
use crate::lock::{LockClient, LockConfig};
use crate::signature::KeyBinding;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::api::{Api, ListParams};
use std::process::ExitCode;
use std::time::Duration;

mod duration;
mod issues;
mod run;
mod work;

pub use work::{EXIT_NOT_ALL_SUCCEEDED, EXIT_NOTHING_LEFT};

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
    /// Print the lock object name derived from an issue key.
    LockName {
        /// The issue key.
        issue: String,
    },
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

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The issue key to lock.
    #[arg(long, short = 'i', env = "ISSUELOCK_ISSUE")]
    pub issue: String,
    /// Wait this long for a held lock (e.g. 30s, 5m; watching the lock, no polling)
    /// before giving up with exit 75. Default: do not wait.
    #[arg(long, env = "ISSUELOCK_WAIT")]
    pub wait: Option<String>,
    /// Hard cap on how long the lock may be held, in seconds. The command gets SIGTERM a
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
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WorkArgs {
    /// The candidate issue keys, one per line: a file, or `-` for stdin.
    #[arg(long)]
    pub issues: String,
    /// An issue is done when a file named after its lock name exists in this directory;
    /// `work` creates that file when the command exits 0 while the lock is still held.
    #[arg(long, conflicts_with = "done_cmd")]
    pub done_dir: Option<std::path::PathBuf>,
    /// An issue is done when this shell command exits 0 (1: not done; anything else is
    /// an error). It sees ISSUELOCK_ISSUE and ISSUELOCK_LOCK_NAME.
    #[arg(long)]
    pub done_cmd: Option<String>,
    /// Keep reading the list (a file as it grows, stdin until it closes) instead of
    /// exiting once no candidate is left (`work` only).
    #[arg(long)]
    pub follow: bool,
    /// The order to try candidates in: this worker's own (rendezvous), or the list's (a
    /// priority order; workers sharing it conflict more).
    #[arg(long, value_enum, default_value_t = OrderArg::Rendezvous)]
    pub order: OrderArg,
    /// Hard cap on how long each lock may be held, in seconds (as for `run`).
    #[arg(long, env = "ISSUELOCK_MAX_HOLD_SECONDS")]
    pub max_hold_seconds: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a command's tree is stopped (as for `run`).
    #[arg(long, env = "ISSUELOCK_GRACE_SECONDS")]
    pub grace_seconds: Option<f64>,
    #[command(flatten)]
    pub holder: HolderArgs,
    /// The command and its arguments, run once per claimed issue.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Candidate orders of `work` and `claim`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderArg {
    Rendezvous,
    Listed,
}

impl From<OrderArg> for crate::lock::ClaimOrder {
    fn from(order: OrderArg) -> Self {
        match order {
            OrderArg::Rendezvous => crate::lock::ClaimOrder::Rendezvous,
            OrderArg::Listed => crate::lock::ClaimOrder::Listed,
        }
    }
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, short = 'n', env = "ISSUELOCK_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "ISSUELOCK_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Name of this replica on Events and in the election Lease (default: $POD_NAME,
    /// then <hostname>-<pid>).
    #[arg(long, env = "ISSUELOCK_INSTANCE")]
    pub instance: Option<String>,
    /// Elect one leader among replicas; only the leader reclaims. Disable only when
    /// exactly one replica runs.
    #[arg(long, env = "ISSUELOCK_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the election Lease (default: $POD_NAMESPACE, then the kubeconfig's).
    #[arg(long, env = "ISSUELOCK_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the election Lease.
    #[arg(
        long,
        env = "ISSUELOCK_LEADER_ELECTION_LEASE",
        default_value = "issuelock-controller"
    )]
    pub leader_election_lease: String,
    /// Election Lease duration (whole seconds): a standby takes over after seeing the
    /// Lease unchanged this long.
    #[arg(
        long,
        env = "ISSUELOCK_LEADER_LEASE_DURATION_SECONDS",
        default_value_t = 15
    )]
    pub leader_lease_duration_seconds: u64,
    /// The leader stops reclaiming when it has not renewed for this long (seconds).
    #[arg(
        long,
        env = "ISSUELOCK_LEADER_RENEW_DEADLINE_SECONDS",
        default_value_t = 10.0
    )]
    pub leader_renew_deadline_seconds: f64,
    /// Renewal and candidate retry period (seconds).
    #[arg(
        long,
        env = "ISSUELOCK_LEADER_RETRY_PERIOD_SECONDS",
        default_value_t = 1.0
    )]
    pub leader_retry_period_seconds: f64,
    /// Verify lock signatures with the keys in this directory (see `run --signing-keys`)
    /// and report them in the `SignatureValid` condition.
    #[arg(long, env = "ISSUELOCK_VERIFY_KEYS")]
    pub verify_keys: Option<std::path::PathBuf>,
    /// Reclaim locks whose signature does not verify: at once when it is missing, does
    /// not match the lock, or was made with a key not bound to the holder (see
    /// --key-binding); after --unknown-key-grace-seconds when its key id is not among the
    /// verify keys.
    #[arg(long, env = "ISSUELOCK_REQUIRE_SIGNATURES", requires = "verify_keys")]
    pub require_signatures: bool,
    /// With --require-signatures: how long a lock signed with an unknown key id is kept,
    /// counted from when this controller first saw it, so a key rotation can reach every
    /// verifier first.
    #[arg(
        long,
        env = "ISSUELOCK_UNKNOWN_KEY_GRACE_SECONDS",
        default_value_t = 120
    )]
    pub unknown_key_grace_seconds: u64,
    /// Which worker a verify key may sign for; a lock signed with a key not bound to its
    /// holder fails verification (`SignatureValid=False`, reason `KeyNotBound`).
    #[arg(long, env = "ISSUELOCK_KEY_BINDING", value_enum, default_value_t = KeyBinding::None)]
    pub key_binding: KeyBinding,
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
        Command::Crd => {
            print!("{}", crd::definition_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run::run_locked(args).await,
        Command::Work(args) => work::work(args).await,
        Command::Claim(args) => work::claim(args).await,
        Command::List(args) => list(args).await,
        Command::Show(args) => show(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Release(args) => force_release(args).await,
        Command::Controller(args) => controller(args).await,
        Command::LockName { issue } => crate::key::IssueKey::parse(&issue)
            .map(|key| {
                println!("{}", key.lock_name());
                ExitCode::SUCCESS
            })
            .map_err(Error::from),
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
    let keys = signing_keys
        .map(|dir| crate::signature::Keyring::from_dir(&dir, signing_key_id.as_deref()))
        .transpose()?
        .map(std::sync::Arc::new);
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

async fn controller(args: ControllerArgs) -> Result<ExitCode, Error> {
    let ControllerArgs {
        namespace,
        http_addr,
        instance,
        leader_election,
        leader_election_namespace,
        leader_election_lease,
        leader_lease_duration_seconds,
        leader_renew_deadline_seconds,
        leader_retry_period_seconds,
        verify_keys,
        require_signatures,
        unknown_key_grace_seconds,
        key_binding,
    } = args;
    let keys = verify_keys
        .map(|dir| crate::signature::Keyring::from_dir(&dir, None))
        .transpose()?
        .map(std::sync::Arc::new);
    let timing = lease_timing(
        "leader ",
        leader_lease_duration_seconds,
        leader_renew_deadline_seconds,
        leader_retry_period_seconds,
    )?;
    let client = kube_client().await?;
    let me = HolderIdentity::from_env(instance);
    let metrics = std::sync::Arc::new(crate::controller::metrics::Metrics::default());
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bound = crate::controller::http::serve(http_addr, metrics.clone(), ready.clone())
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {http_addr}: {e}")))?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    let stop = tokio_util::sync::CancellationToken::new();
    let (leadership, campaign) = if leader_election {
        let namespace = leader_election_namespace
            .or_else(|| me.pod_namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let config = crate::leader::LeaderConfig {
            namespace,
            lease_name: leader_election_lease,
            identity: me.new_lease_name(),
            timing,
            call_timeout: Duration::from_secs(10),
        };
        let (leadership, task) = crate::leader::campaign(client.clone(), config, stop.clone())?;
        (leadership, Some(task))
    } else {
        (crate::leader::Leadership::always(), None)
    };
    let config = crate::controller::ControllerConfig {
        namespace,
        instance: me.identity,
        keys,
        require_signatures,
        unknown_key_grace: Duration::from_secs(unknown_key_grace_seconds),
        key_binding,
    };
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    };
    let result = crate::controller::run(client, config, metrics, ready, leadership, shutdown).await;
    stop.cancel();
    if let Some(task) = campaign {
        let _ = task.await;
    }
    result?;
    tracing::info!("controller stopped");
    Ok(ExitCode::SUCCESS)
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

async fn bench(args: BenchArgs) -> Result<ExitCode, Error> {
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

fn api_namespace(lock: &IssueLock) -> String {
    lock.metadata.namespace.clone().unwrap_or_default()
}

async fn show(args: ShowArgs) -> Result<ExitCode, Error> {
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

async fn force_release(args: ReleaseArgs) -> Result<ExitCode, Error> {
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
    let params = kube::api::DeleteParams::default().preconditions(kube::api::Preconditions {
        uid: lock.metadata.uid.clone(),
        resource_version: lock.metadata.resource_version.clone(),
    });
    match api.delete(&name, &params).await {
        Ok(_) => {
            println!(
                "released lock on {issue:?} held by {}",
                lock.spec.holder.identity
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e)
            if crate::error::is_status(&e, 409, "Conflict")
                || crate::error::is_status(&e, 404, "NotFound") =>
        {
            eprintln!("issuelock: the lock on {issue:?} changed meanwhile; nothing released");
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Err(e) => Err(classify("release lock", &ns, e)),
    }
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
