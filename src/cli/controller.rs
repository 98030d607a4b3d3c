//! `issuelock controller`: the reclaiming controller, its leader election and its HTTP
//! endpoint.

use super::{keyring, kube_client, lease_timing, shutdown_signal};
use crate::error::Error;
use crate::holder::HolderIdentity;
use crate::signature::KeyBinding;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// The arguments of `controller`.
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

pub(super) async fn controller(args: ControllerArgs) -> Result<ExitCode, Error> {
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
    let keys = keyring(verify_keys, None)?;
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
    let server = crate::controller::http::Server::bind(http_addr, metrics.clone(), ready.clone())
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {http_addr}: {e}")))?;
    tracing::info!(bound = %server.local_addr(), "serving /metrics, /healthz, /readyz");
    let stop = tokio_util::sync::CancellationToken::new();
    let http = tokio::spawn(server.run(stop.clone().cancelled_owned()));
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
    let replica = crate::controller::Replica {
        metrics,
        ready,
        leadership,
    };
    let result = crate::controller::run(client, config, replica, shutdown).await;
    stop.cancel();
    if let Some(task) = campaign {
        let _ = task.await;
    }
    let _ = http.await;
    result?;
    tracing::info!("controller stopped");
    Ok(ExitCode::SUCCESS)
}
