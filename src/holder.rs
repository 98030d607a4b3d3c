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

/// This process as a lock holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderIdentity {
    /// Written to `spec.holder.identity` and the Lease's `holderIdentity`.
    pub identity: String,
    /// The pod this process runs in, when known.
    pub pod: Option<HolderPod>,
    /// Namespace from the downward API, when known.
    pub pod_namespace: Option<String>,
}

impl HolderIdentity {
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

/// The Kubernetes username of our credentials, from a SelfSubjectReview; `None` if the
/// server does not tell us (the field is informational, not an authorization decision).
pub async fn username(client: &kube::Client, timeout: std::time::Duration) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = SelfSubjectReview::default();
    let answer = tokio::time::timeout(timeout, api.create(&Default::default(), &review))
        .await
        .ok()?
        .ok()?;
    answer.status?.user_info?.username
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
}
