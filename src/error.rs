//! Errors a user of the library or CLI can meet, and the one place that turns an API
//! server answer into one of them ([`classify`]).

use crate::key::InvalidKey;

/// How long a long-running worker retries, on a call that succeeded before in the same
/// process, what an API server says while it starts (after an outage, say): see
/// [`Error::may_pass_after_restart`]. Longer, or on a call that never succeeded, it is a
/// misconfiguration.
pub const RESTART_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything that can go wrong taking, holding or giving back a lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The issue key was rejected before any API call.
    #[error("invalid issue key")]
    InvalidKey(#[from] InvalidKey),

    /// The cluster does not serve `issuelocks.issuelock.dev`.
    #[error(
        "the IssueLock CRD (issuelocks.issuelock.dev/v1alpha1) is not installed in this cluster; \
         install it with `issuelock crd | kubectl apply -f -` or the Helm chart"
    )]
    CrdNotInstalled,

    /// The namespace the locks live in does not exist.
    #[error("namespace {namespace:?} does not exist")]
    NamespaceNotFound {
        /// The missing namespace.
        namespace: String,
    },

    /// RBAC denied a request.
    #[error(
        "permission denied while trying to {step}: {message} \
         (bind the chart's worker role, issuelock-worker for a release named issuelock, to this identity in the namespace)"
    )]
    Forbidden {
        /// What we were doing (e.g. "create the lock").
        step: &'static str,
        /// The API server's message.
        message: String,
    },

    /// The API server rejected our credentials.
    #[error("the API server rejected our credentials while trying to {step}: {message}")]
    Unauthorized {
        /// What we were doing.
        step: &'static str,
        /// The API server's message.
        message: String,
    },

    /// The API server could not be reached or did not answer in time.
    #[error("cannot reach the API server while trying to {step}")]
    Unreachable {
        /// What we were doing.
        step: &'static str,
        /// The transport error or timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The lock was deleted or replaced while we believed we held it.
    #[error("lock on issue {issue:?} was lost: it was deleted or replaced by someone else")]
    LockLost {
        /// The issue key of the lost lock.
        issue: String,
    },

    /// Two different keys map to the same lock name (a 48-bit hash collision).
    #[error("issue {issue:?} maps to lock {name:?}, which is held for a different issue {other:?}")]
    NameCollision {
        /// The key we tried to lock.
        issue: String,
        /// The lock object's name.
        name: String,
        /// The key recorded in the lock that holds that name.
        other: String,
    },

    /// The API server returned a resourceVersion that is not a decimal integer.
    #[error("resourceVersion {0:?} is not comparable, so it cannot serve as a fencing token")]
    UncomparableResourceVersion(String),

    /// The client's heartbeat is failing or lost, so it takes no new locks.
    #[error("this client's heartbeat Lease is not being renewed, so it takes no new locks")]
    HeartbeatUnhealthy,

    /// The caller's check of whether an issue is done failed.
    #[error("cannot tell whether issue {issue:?} is done: {message}")]
    DoneCheck {
        /// The issue key being checked.
        issue: String,
        /// What the check reported.
        message: String,
    },

    /// The configuration given to the library is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Any other API error.
    #[error("failed to {step}")]
    Api {
        /// What we were doing.
        step: &'static str,
        /// The error from kube.
        #[source]
        source: kube::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A small, fixed set of labels for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidKey(_) => "invalid_key",
            Error::CrdNotInstalled => "crd_not_installed",
            Error::NamespaceNotFound { .. } => "namespace_not_found",
            Error::Forbidden { .. } => "forbidden",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Unreachable { .. } => "unreachable",
            Error::LockLost { .. } => "lock_lost",
            Error::NameCollision { .. } => "name_collision",
            Error::UncomparableResourceVersion(_) => "uncomparable_resource_version",
            Error::HeartbeatUnhealthy => "heartbeat_unhealthy",
            Error::DoneCheck { .. } => "done_check",
            Error::Config(_) => "config",
            Error::Api { .. } => "api",
        }
    }

    /// True for what a kube-apiserver just started says until its caches are filled, about
    /// calls it allowed before: 401 and 403 (ServiceAccount tokens, RBAC, admission
    /// policies), 404 for the namespace or the CRD. See [`RESTART_PATIENCE`].
    pub fn may_pass_after_restart(&self) -> bool {
        matches!(
            self,
            Error::Forbidden { .. }
                | Error::Unauthorized { .. }
                | Error::NamespaceNotFound { .. }
                | Error::CrdNotInstalled
        )
    }

    /// True when retrying the same call later may succeed (transport trouble, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Api { source, .. } => is_transient(source),
            _ => false,
        }
    }

    /// The error and its causes joined by `: `, as the CLI prints it.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

/// The API status of a failed call, if the server answered at all.
pub fn status(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

/// True when `err` is the API server answering `code` with `reason`.
fn is_status(err: &kube::Error, code: u16, reason: &str) -> bool {
    status(err).is_some_and(|s| s.code == code && s.reason == reason)
}

/// True when the object (or, without details, its resource type) does not exist: `404 NotFound`.
pub fn is_not_found(err: &kube::Error) -> bool {
    is_status(err, 404, "NotFound")
}

/// True when a precondition or resourceVersion no longer matches: `409 Conflict`.
pub fn is_conflict(err: &kube::Error) -> bool {
    is_status(err, 409, "Conflict")
}

/// True when a create found an object of that name already there: `409 AlreadyExists`.
pub fn is_already_exists(err: &kube::Error) -> bool {
    is_status(err, 409, "AlreadyExists")
}

/// True when the call never got a definite answer or the server was overloaded or
/// failing (transport trouble, 429, 5xx): retrying may succeed, and a write may have been
/// committed although it failed.
pub fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => false,
    }
}

/// Turns a failed call into the error a user should see. `step` says what we were doing
/// ("create lock", ...), `namespace` where.
pub fn classify(step: &'static str, namespace: &str, err: kube::Error) -> Error {
    match &err {
        kube::Error::Api(s) => match s.code {
            401 => Error::Unauthorized {
                step,
                message: s.message.clone(),
            },
            403 => Error::Forbidden {
                step,
                message: s.message.clone(),
            },
            404 => {
                let kind = s.details.as_ref().map(|d| d.kind.as_str()).unwrap_or("");
                if kind == "namespaces" {
                    Error::NamespaceNotFound {
                        namespace: namespace.to_owned(),
                    }
                } else if kind.is_empty() {
                    // No object kind in the answer: the resource type itself is unknown.
                    Error::CrdNotInstalled
                } else {
                    Error::Api { step, source: err }
                }
            }
            _ => Error::Api { step, source: err },
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unreachable {
            step,
            source: Box::new(err),
        },
        _ => Error::Api { step, source: err },
    }
}

/// The error for a call that did not answer within its deadline.
pub fn timed_out(step: &'static str, after: std::time::Duration) -> Error {
    Error::Unreachable {
        step,
        source: format!("no answer within {after:?}").into(),
    }
}

/// Runs one API call under `deadline`: the API's own answer, or [`timed_out`]. The answer
/// is left unclassified so the caller can treat expected statuses (404, 409) itself.
pub async fn within<T>(
    step: &'static str,
    deadline: std::time::Duration,
    call: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<kube::Result<T>> {
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| timed_out(step, deadline))
}

/// What a [`delete_exact`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The object named was exactly the one given, and it is deleted (or being deleted).
    Deleted,
    /// The object was already gone or has changed (`404` or `409` on the preconditions):
    /// nothing was deleted.
    GoneOrChanged,
}

/// Deletes `name` only if it is still the object with `uid` (and, when given, still at
/// `resource_version`): never a newer object of the same name, never a version nobody
/// looked at. Other failures are left unclassified for the caller's own step name; wrap
/// the call in [`within`] for a deadline.
pub async fn delete_exact<K>(
    api: &kube::Api<K>,
    name: &str,
    uid: &str,
    resource_version: Option<&str>,
) -> kube::Result<Deleted>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = kube::api::DeleteParams::default().preconditions(kube::api::Preconditions {
        uid: Some(uid.to_owned()),
        resource_version: resource_version.map(str::to_owned),
    });
    match api.delete(name, &params).await {
        Ok(_) => Ok(Deleted::Deleted),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(Deleted::GoneOrChanged),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::{Status, response::StatusDetails};

    fn api(code: u16, reason: &str, kind: Option<&str>) -> kube::Error {
        let mut s = Status::failure("msg", reason);
        s.code = code;
        s.details = kind.map(|k| {
            serde_json::from_value::<StatusDetails>(serde_json::json!({ "kind": k })).unwrap()
        });
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn classifies_not_found() {
        assert!(matches!(
            classify("create lock", "ns", api(404, "NotFound", Some("namespaces"))),
            Error::NamespaceNotFound { namespace } if namespace == "ns"
        ));
        assert!(matches!(
            classify("create lock", "ns", api(404, "NotFound", None)),
            Error::CrdNotInstalled
        ));
        assert!(matches!(
            classify("read lock", "ns", api(404, "NotFound", Some("issuelocks"))),
            Error::Api { .. }
        ));
    }

    #[test]
    fn classifies_auth_and_transience() {
        assert_eq!(
            classify("x", "ns", api(403, "Forbidden", None)).category(),
            "forbidden"
        );
        assert_eq!(
            classify("x", "ns", api(401, "Unauthorized", None)).category(),
            "unauthorized"
        );
        assert!(classify("x", "ns", api(503, "ServiceUnavailable", None)).is_transient());
        assert!(!classify("x", "ns", api(422, "Invalid", None)).is_transient());
    }

    #[test]
    fn predicates_match_code_and_reason() {
        assert!(is_not_found(&api(404, "NotFound", None)));
        assert!(is_conflict(&api(409, "Conflict", None)));
        assert!(!is_conflict(&api(409, "AlreadyExists", None)));
        assert!(is_already_exists(&api(409, "AlreadyExists", None)));
        assert!(!is_already_exists(&api(409, "Conflict", None)));
        assert!(is_transient(&api(429, "TooManyRequests", None)));
        assert!(is_transient(&api(504, "Timeout", None)));
        assert!(!is_transient(&api(409, "Conflict", None)));
    }

    #[test]
    fn chain_prints_each_cause_once() {
        let e = timed_out("create lock", std::time::Duration::from_secs(5));
        assert_eq!(
            e.chain(),
            "cannot reach the API server while trying to create lock: no answer within 5s"
        );
    }
}
