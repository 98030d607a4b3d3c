//! The `IssueLock` custom resource: one object is one held lock.
//!
//! The field names here are the wire contract (see the README's "Wire format"):
//! fields may be added, never renamed.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// API group of every issuelock resource and label.
pub const GROUP: &str = "issuelock.dev";
/// Label on each IssueLock naming its holder's heartbeat Lease (a client watches its own locks by it).
pub const HOLDER_LEASE_LABEL: &str = "issuelock.dev/holder-lease";
/// The ownerReference every IssueLock carries to its holder's heartbeat Lease (`lease`,
/// whose uid is `lease_uid`): the cluster's garbage collector deletes the lock with the
/// Lease.
pub fn lease_owner(lease: &str, lease_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        name: lease.to_owned(),
        uid: lease_uid.to_owned(),
        ..OwnerReference::default()
    }
}
/// Label `"true"` on every heartbeat Lease.
pub const HEARTBEAT_LABEL: &str = "issuelock.dev/heartbeat";
/// Annotation on a heartbeat Lease: the Kubernetes username that created it (the chart's
/// admission policy requires it to be the creating user, and lets only that user, the
/// controller and admins change or delete the Lease).
pub const LEASE_USER_ANNOTATION: &str = "issuelock.dev/holder-user";
/// Annotation on a heartbeat Lease: the uid of the holder's pod. Where the creator's
/// ServiceAccount token is bound to a pod, the admission policy requires it to be that
/// pod's uid, and lets only requests from that pod change or delete the Lease.
pub const LEASE_POD_UID_ANNOTATION: &str = "issuelock.dev/holder-pod-uid";

/// What is locked and by whom. Immutable after creation.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "issuelock.dev",
    version = "v1alpha1",
    kind = "IssueLock",
    plural = "issuelocks",
    singular = "issuelock",
    shortname = "il",
    category = "issuelock",
    namespaced,
    status = "IssueLockStatus",
    doc = "A held lock on one issue. It exists exactly as long as the lock is held: creating it acquires the lock (the API server's create-if-absent is the mutual exclusion), deleting it releases the lock.",
    printcolumn = r#"{"name":"Issue","type":"string","jsonPath":".spec.issue","description":"The issue key this lock covers"}"#,
    printcolumn = r#"{"name":"Holder","type":"string","jsonPath":".spec.holder.identity","description":"Identity of the holding process"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.holder.pod.name","description":"Pod the holder runs in"}"#,
    printcolumn = r#"{"name":"Alive","type":"string","jsonPath":".status.conditions[?(@.type==\"HolderAlive\")].status","description":"Whether the controller judged the holder alive (written on transitions; a dead holder's lock is deleted)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IssueLockSpec {
    /// The exact issue key this lock covers (1 to 1024 characters, no control characters).
    /// The object's name is derived from it: a readable slug plus a short hash of the key.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^\P{Cc}+$"))]
    pub issue: String,
    /// Who holds the lock.
    pub holder: Holder,
    /// Optional hard cap, in seconds since creation, after which the controller reclaims the
    /// lock even if its holder is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_hold_seconds: Option<i64>,
    /// Optional HMAC-SHA256 signature over the lock's identity fields, detecting records
    /// forged or edited by anyone without the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// The holder of a lock: one worker process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// Identity of the holding process (the pod name when it runs in a pod).
    #[schemars(length(min = 1, max = 253))]
    pub identity: String,
    /// The pod the holder runs in, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<HolderPod>,
    /// Name of the holder's heartbeat Lease (coordination.k8s.io/v1) in the same namespace.
    /// One Lease per holder process, however many locks it holds.
    #[schemars(length(min = 1, max = 63))]
    pub lease: String,
    /// Kubernetes username that created the lock, when the client could learn it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub user: Option<String>,
}

/// The pod a holder runs in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct HolderPod {
    /// Pod name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Pod UID; a pod recreated under the same name has a different one.
    #[schemars(length(min = 1, max = 128))]
    pub uid: String,
    /// Namespace of the pod, when the holder knows it (`POD_NAMESPACE`). Absent means the
    /// lock's own namespace (locks written before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

impl HolderPod {
    /// The namespace the pod lives in, for a lock in `lock_namespace`: the recorded one,
    /// else the lock's own. The one place that reads `spec.holder.pod.namespace`.
    pub fn namespace_or<'a>(&'a self, lock_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(lock_namespace)
    }
}

/// An HMAC-SHA256 signature with the id of the key that made it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// Id of the signing key (keys rotate; verifiers hold several).
    #[schemars(length(min = 1, max = 63))]
    pub key_id: String,
    /// Base64 of the HMAC-SHA256 tag.
    #[schemars(length(min = 1, max = 128))]
    pub value: String,
}

/// What the controller last observed about this lock. Written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueLockStatus {
    /// `HolderAlive`, `NameMatchesIssue` and `SignatureValid` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the controller saw the holder's Lease change last before it wrote this status
    /// (its own observation time). Status is written on transitions only (a condition
    /// changing), so this is not a live heartbeat: `kubectl issuelock list` shows the
    /// Lease's own `renewTime` for that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_observed: Option<Time>,
}

/// The CustomResourceDefinition for `IssueLock`, exactly as `crds/` holds it.
///
/// Adds to the derived schema what the derive cannot express: the spec is immutable
/// (CEL `self == oldSelf`).
pub fn definition() -> CustomResourceDefinition {
    let mut crd = IssueLock::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let Some(spec) = schema.properties.as_mut().and_then(|p| p.get_mut("spec")) else {
            continue;
        };
        spec.x_kubernetes_validations = Some(
            serde_json::from_value(json!([{
                "rule": "self == oldSelf",
                "message": "spec is immutable: release the lock and acquire it again",
            }]))
            .expect("static validation rule"),
        );
    }
    crd
}

/// The CRD as YAML, as `issuelock crd` prints it and `crds/issuelock.dev_issuelocks.yaml` holds it.
#[cfg(feature = "cli")]
pub fn definition_yaml() -> String {
    let body = serde_saphyr::to_string(&definition()).expect("CRD serializes to YAML");
    format!("# Generated by `issuelock crd`; do not edit.\n{body}")
}

/// A minimal lock named `l` in namespace `ns` (holder `h`, Lease `l`) with `uid`, for
/// unit tests.
#[cfg(test)]
pub(crate) fn test_lock(uid: &str) -> IssueLock {
    let mut lock: IssueLock = serde_json::from_value(serde_json::json!({
        "apiVersion": "issuelock.dev/v1alpha1", "kind": "IssueLock",
        "metadata": {"name": "l", "namespace": "ns"},
        "spec": {"issue": "i", "holder": {"identity": "h", "lease": "l"}}
    }))
    .unwrap();
    lock.metadata.uid = Some(uid.into());
    lock
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/issuelock.dev_issuelocks.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == definition_yaml(),
            "{path} is stale: regenerate it with `make crds` (cargo run -- crd > {path})"
        );
    }

    #[test]
    fn spec_is_immutable_and_issue_is_bounded() {
        let yaml = definition_yaml();
        assert!(yaml.contains("self == oldSelf"));
        assert!(yaml.contains("maxLength: 1024"));
        assert!(yaml.contains("- il"));
    }
}
