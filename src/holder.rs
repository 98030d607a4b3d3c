//! Who is taking locks: the holder identity of this process.
//!
//! Inside a pod the identity comes from the downward API (`POD_NAME`, `POD_NAMESPACE`,
//! `POD_UID`); outside one, from an explicit identity or `<hostname>-<pid>`.

use crate::crd::HolderPod;
use crate::key::{hex_prefix, slug};
use std::hash::{BuildHasher, Hasher};

/// The downward-API environment variables we read.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// See [`POD_NAME_ENV`].
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// See [`POD_NAME_ENV`].
pub const POD_UID_ENV: &str = "POD_UID";

/// This process as a lock holder: [`HolderIdentity::from_env`] in a pod,
/// [`HolderIdentity::new`] with an identity of your choice elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderIdentity {
    /// Written to `spec.holder.identity` and the Lease's `holderIdentity`.
    pub identity: String,
    /// The pod this process runs in, when known.
    pub pod: Option<HolderPod>,
    /// Namespace from the downward API, when known.
    pub pod_namespace: Option<String>,
}

impl HolderIdentity {
    /// The holder `identity`, in no known pod.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            pod: None,
            pod_namespace: None,
        }
    }

    /// The same identity running in `pod` (its namespace, if set, also recorded as
    /// [`HolderIdentity::pod_namespace`]).
    pub fn with_pod(mut self, pod: HolderPod) -> Self {
        self.pod_namespace = pod.namespace.clone();
        self.pod = Some(pod);
        self
    }

    /// The identity from the environment: `explicit` wins, then `POD_NAME`, then
    /// `<hostname>-<pid>`. The pod is recorded only when both `POD_NAME` and `POD_UID` are
    /// set, with its namespace from `POD_NAMESPACE` when that is set too.
    pub fn from_env(explicit: Option<String>) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pod = match (var(POD_NAME_ENV), var(POD_UID_ENV)) {
            (Some(name), Some(uid)) => Some(HolderPod {
                name,
                uid,
                namespace: var(POD_NAMESPACE_ENV),
            }),
            _ => None,
        };
        let identity = explicit
            .or_else(|| var(POD_NAME_ENV))
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        Self {
            identity,
            pod,
            pod_namespace: var(POD_NAMESPACE_ENV),
        }
    }

    /// A fresh heartbeat Lease name for one run of this holder: a slug of the identity plus
    /// a random suffix, so two processes with the same identity never share a Lease.
    pub fn new_lease_name(&self) -> String {
        format!("{}-{}", slug(&self.identity, 40, "holder"), random_suffix())
    }
}

/// Ten random lower-case hex digits (from the standard library's randomly seeded hasher,
/// the process id and the time).
pub fn random_suffix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hex_prefix(&h.finish().to_be_bytes(), 10)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What the API server says about our credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The Kubernetes username, when the server tells us.
    pub user: Option<String>,
    /// The pod our ServiceAccount token is bound to (a projected token's pod), when it is.
    /// The admission policy binds locks and Leases to this pod.
    pub pod: Option<HolderPod>,
}

/// user-info `extra` keys the API server sets for a pod-bound ServiceAccount token.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Asks the API server who we are (a SelfSubjectReview). Empty when it does not tell us:
/// the answer is recorded for the admission policy, never used for a decision here.
pub async fn whoami(client: &kube::Client, timeout: std::time::Duration) -> Credentials {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = SelfSubjectReview::default();
    let Ok(Ok(answer)) =
        tokio::time::timeout(timeout, api.create(&Default::default(), &review)).await
    else {
        return Credentials::default();
    };
    let Some(info) = answer.status.and_then(|s| s.user_info) else {
        return Credentials::default();
    };
    let extra = |key: &str| {
        info.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    // A pod-bound token is a ServiceAccount's, and the pod lives in its namespace.
    let pod = match (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) {
        (Some(name), Some(uid)) => Some(HolderPod {
            name,
            uid,
            namespace: info
                .username
                .as_deref()
                .and_then(service_account)
                .map(|(namespace, _)| namespace.to_owned()),
        }),
        _ => None,
    };
    Credentials {
        user: info.username,
        pod,
    }
}

/// The namespace and name of the ServiceAccount a Kubernetes username denotes
/// (`system:serviceaccount:<namespace>:<name>`), if it denotes one.
pub fn service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// The pod to record as the holder's: the one our token is bound to wins over the
/// downward API's (the admission policy checks the former), with a warning when they differ.
pub fn holder_pod(bound: Option<HolderPod>, from_env: Option<HolderPod>) -> Option<HolderPod> {
    match (bound, from_env) {
        (Some(bound), Some(env)) if bound.uid != env.uid => {
            tracing::warn!(
                token_pod = %bound.name, env_pod = %env.name,
                "POD_NAME/POD_UID name another pod than the ServiceAccount token; recording the token's"
            );
            Some(bound)
        }
        (bound, env) => bound.or(env),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::is_dns1123_label;

    #[test]
    fn lease_names_are_unique_labels() {
        let h = HolderIdentity {
            identity: "Worker_7 on Host.Example".into(),
            pod: None,
            pod_namespace: None,
        };
        let (a, b) = (h.new_lease_name(), h.new_lease_name());
        assert_ne!(a, b);
        assert!(
            is_dns1123_label(&a) && a.starts_with("worker-7-on-host-example-"),
            "{a}"
        );
    }

    #[test]
    fn explicit_identity_wins() {
        assert_eq!(HolderIdentity::from_env(Some("me".into())).identity, "me");
    }

    #[test]
    fn the_token_pod_wins_over_the_downward_api() {
        let pod = |uid: &str| HolderPod {
            name: format!("p-{uid}"),
            uid: uid.into(),
            namespace: None,
        };
        assert_eq!(holder_pod(Some(pod("a")), Some(pod("b"))), Some(pod("a")));
        assert_eq!(holder_pod(None, Some(pod("b"))), Some(pod("b")));
        assert_eq!(holder_pod(Some(pod("a")), None), Some(pod("a")));
        assert_eq!(holder_pod(None, None), None);
    }

    #[test]
    fn a_service_account_names_its_namespace() {
        assert_eq!(
            service_account("system:serviceaccount:ci:worker"),
            Some(("ci", "worker"))
        );
        assert_eq!(service_account("system:serviceaccount::w"), None);
        assert_eq!(service_account("alice"), None);
    }
}
