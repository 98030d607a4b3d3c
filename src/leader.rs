//! Leader election for controller replicas, on a `coordination.k8s.io/v1` Lease, renewed
//! by the same code as holder heartbeats ([`crate::heartbeat`]).
//!
//! A candidate takes the Lease when it does not exist, or when it has seen it unchanged
//! for its `leaseDurationSeconds` on its own monotonic clock (never by comparing
//! `renewTime` with the local clock). The leader renews every `renew_interval`, and
//! [`Leadership::is_leading`] turns false as soon as no renewal has succeeded for
//! `renew_deadline` (< lease duration): a leader that cannot renew stops acting before
//! any standby may take over. On shutdown the leader deletes the Lease so a standby takes
//! over at once.

use crate::error::{Result, classify, is_already_exists, is_conflict, is_not_found, within};
use crate::heartbeat::{Heartbeat, HeartbeatConfig, Pulse, acquire, lease_duration};
use futures::Stream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the election Lease.
    pub namespace: String,
    /// Name of the election Lease.
    pub lease_name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// Lease timing; `renew_interval` is also the retry period of candidates.
    pub timing: HeartbeatConfig,
    /// Deadline of each API call.
    pub call_timeout: Duration,
}

/// Whether this process currently leads. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    always: bool,
    current: Arc<Mutex<Option<Arc<Pulse>>>>,
    terms: watch::Receiver<u64>,
}

impl Leadership {
    /// A process that always leads (leader election disabled: run one replica only).
    pub fn always() -> Self {
        let (_tx, terms) = watch::channel(1);
        Self {
            always: true,
            current: Arc::default(),
            terms,
        }
    }

    /// True while this process leads and its last renewal is within the renew deadline.
    ///
    /// A term is one unbroken stretch of trust: the first time this finds the current
    /// term's renewal past its deadline, the term ends for good (as its renew task would
    /// end it), even if a late renewal answer would restore trust. So this process only
    /// ever leads again through a new term, and each new term is announced by
    /// [`elected`](Self::elected): work skipped while not leading is never lost.
    pub fn is_leading(&self) -> bool {
        if self.always {
            return true;
        }
        let current = self.current.lock().expect("leadership mutex");
        match current.as_ref() {
            Some(pulse) if pulse.is_trusted() => true,
            Some(pulse) => {
                pulse.lost.cancel();
                false
            }
            None => false,
        }
    }

    /// Yields once each time this process becomes leader (a new term).
    pub fn elected(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.terms.clone(), |mut terms| async move {
            terms.changed().await.ok()?;
            Some(((), terms))
        })
    }
}

/// Campaigns until `stop` is cancelled; returns the handle to query leadership. On stop,
/// a leader deletes the election Lease.
pub fn campaign(
    client: kube::Client,
    config: LeaderConfig,
    stop: CancellationToken,
) -> Result<(Leadership, tokio::task::JoinHandle<()>)> {
    config.timing.validate()?;
    let (tx, terms) = watch::channel(0u64);
    let leadership = Leadership {
        always: false,
        current: Arc::default(),
        terms,
    };
    let current = leadership.current.clone();
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let task = tokio::spawn(async move {
        let mut seen: Option<(String, Instant)> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            match try_take(&api, &config, &mut seen).await {
                Ok(Some(heartbeat)) => {
                    tracing::info!(lease = %config.lease_name, identity = %config.identity, "became leader");
                    *current.lock().expect("leadership mutex") = Some(heartbeat.pulse().clone());
                    tx.send_modify(|t| *t += 1);
                    tokio::select! {
                        _ = heartbeat.lost() => {
                            tracing::error!(lease = %config.lease_name, "lost leadership; back to standby");
                        }
                        _ = stop.cancelled() => {}
                    }
                    *current.lock().expect("leadership mutex") = None;
                    if stop.is_cancelled() {
                        if let Err(e) = heartbeat.stop().await {
                            tracing::warn!(error = %e.chain(), "failed to give up the election Lease");
                        }
                        return;
                    }
                    seen = None;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "leader election attempt failed; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(config.timing.renew_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
    Ok((leadership, task))
}

/// One attempt to become leader. `seen` is the last resourceVersion of the Lease we saw
/// and when we first saw it.
async fn try_take(
    api: &Api<Lease>,
    config: &LeaderConfig,
    seen: &mut Option<(String, Instant)>,
) -> Result<Option<Heartbeat>> {
    let call = |step: &'static str| move |e: kube::Error| classify(step, &config.namespace, e);
    let current = within(
        "read election lease",
        config.call_timeout,
        api.get_opt(&config.lease_name),
    )
    .await?
    .map_err(call("read election lease"))?;
    let sent = Instant::now();
    let Some(mut lease) = current else {
        let mut spec = LeaseSpec {
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        acquire(&mut spec, &config.identity, &config.timing);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.lease_name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let step = "create election lease";
        let params = PostParams::default();
        return match within(step, config.call_timeout, api.create(&params, &lease)).await {
            Ok(Ok(created)) => Ok(Some(renewing(api, created, sent, config))),
            Ok(Err(e)) if is_already_exists(&e) => Ok(None),
            Ok(Err(e)) => Err(call(step)(e)),
            // No answer: not leading this round; the next attempt reads what happened.
            Err(_) => Ok(None),
        };
    };
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    let now = Instant::now();
    let first_seen = match seen {
        Some((v, at)) if *v == rv => *at,
        _ => {
            *seen = Some((rv, now));
            now
        }
    };
    let duration = lease_duration(&lease);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    // Still ours (we stepped down after failing to renew, and nobody took over): take it
    // back at once; the write is conditional, so a concurrent taker wins or we do.
    let expired = holder.is_empty()
        || holder == config.identity
        || now.saturating_duration_since(first_seen) >= duration;
    if !expired {
        return Ok(None);
    }
    tracing::info!(previous = %holder, "election Lease expired; taking over");
    acquire(spec, &config.identity, &config.timing);
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    let sent = Instant::now();
    // The resourceVersion in `lease` makes this conditional: a concurrent taker wins or we do.
    let step = "take over election lease";
    let params = PostParams::default();
    match within(
        step,
        config.call_timeout,
        api.replace(&config.lease_name, &params, &lease),
    )
    .await?
    {
        Ok(taken) => Ok(Some(renewing(api, taken, sent, config))),
        Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(None),
        Err(e) => Err(call(step)(e)),
    }
}

fn renewing(api: &Api<Lease>, lease: Lease, sent: Instant, config: &LeaderConfig) -> Heartbeat {
    Heartbeat::renewing(api.clone(), lease, sent, config.timing, config.call_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leadership whose term's last renewal was sent longer ago than its renew deadline,
    /// before its renew task has had a chance to run.
    fn lapsed() -> (Leadership, Heartbeat) {
        let service = tower::service_fn(|_req: http::Request<kube::client::Body>| {
            std::future::pending::<
                Result<
                    http::Response<kube::client::Body>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            >()
        });
        let api: Api<Lease> = Api::namespaced(kube::Client::new(service, "ns"), "ns");
        let timing = HeartbeatConfig::default();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("election".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        };
        let written_at = Instant::now()
            .checked_sub(timing.renew_deadline + Duration::from_secs(1))
            .expect("monotonic clock past the renew deadline");
        let heartbeat = Heartbeat::renewing(api, lease, written_at, timing, Duration::from_secs(1));
        let (_tx, terms) = watch::channel(1);
        let leadership = Leadership {
            always: false,
            current: Arc::new(Mutex::new(Some(heartbeat.pulse().clone()))),
            terms,
        };
        (leadership, heartbeat)
    }

    #[tokio::test]
    async fn a_lapse_of_trust_ends_the_term() {
        let (leadership, heartbeat) = lapsed();
        assert!(
            !heartbeat.pulse().lost.is_cancelled(),
            "its renew task has not run"
        );
        assert!(!leadership.is_leading());
        // Ended for good: leading again takes a new term, whose election reconciles all.
        assert!(heartbeat.pulse().lost.is_cancelled());
    }
}
