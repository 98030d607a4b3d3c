//! HMAC-SHA256 signatures over a lock's identity, with key ids for rotation.
//!
//! # The signed message
//! The canonical encoding of, in order: the namespace, the lock name, `spec.issue`,
//! `spec.holder.identity`, `.lease`, `.pod.name`, `.pod.uid`, `.user` and
//! `spec.maxHoldSeconds` (absent fields as empty strings), and then, **only when
//! `spec.holder.pod.namespace` is set**, that namespace as a tenth field. Each field is
//! written as `<byte length in decimal>:<bytes>\n`, after the line
//! `issuelock.dev/v1alpha1\n`. Locks without a pod namespace (every lock written before
//! the field existed) therefore keep exactly the nine-field message their signature was
//! made over; and since every field is length-prefixed, a nine-field message never equals
//! a ten-field one. The tag is `spec.signature.value` (standard base64, padded) with the
//! key's id in `spec.signature.keyId`. Tags are compared in constant time. There is no
//! default key.
//!
//! # Key ids
//! A key id is a DNS-1123 label (the *bound name*), optionally followed by `.` and a
//! second DNS-1123 label (a *version*, for rotation), 63 characters at most: `k1`,
//! `worker-a`, `worker-a.2026-11`.
//!
//! # Key binding
//! With [`KeyBinding::ServiceAccount`] a signature is accepted only when the key id's
//! bound name equals the name of the ServiceAccount in `spec.holder.user`
//! (`system:serviceaccount:<namespace>:<name>`), so a worker holding only its own key
//! cannot sign a lock in another worker's name. Consequences: such ServiceAccount names
//! must be DNS-1123 labels (no dots: a ServiceAccount whose name has a dot can never
//! match, and its locks fail verification); ServiceAccounts of the same name in different
//! namespaces share one key id; and a lock whose `spec.holder.user` is absent or not a
//! ServiceAccount fails verification.

use crate::crd::{IssueLockSpec, Signature};
use crate::error::{Error, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted secret, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// The keys a process signs and verifies with.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<String, Vec<u8>>,
    signing: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("signing", &self.signing)
            .finish()
    }
}

/// The result of checking a lock's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// Signed by a known key, and the tag matches.
    Valid {
        /// The signing key's id.
        key_id: String,
    },
    /// The lock carries no signature.
    Missing,
    /// Signed with a key id we do not have.
    UnknownKey {
        /// The key id the lock names.
        key_id: String,
    },
    /// The tag does not match the lock's contents (forged or edited).
    Mismatch {
        /// The key id the lock names.
        key_id: String,
    },
    /// The key is bound to another worker than the lock's holder (see [`KeyBinding`]).
    KeyNotBound {
        /// The key id the lock names.
        key_id: String,
        /// `spec.holder.user`, if any.
        user: Option<String>,
    },
}

impl Verification {
    /// True for [`Verification::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Verification::Valid { .. })
    }

    /// A CamelCase reason for the `SignatureValid` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Verification::Valid { .. } => "Valid",
            Verification::Missing => "Missing",
            Verification::UnknownKey { .. } => "UnknownKey",
            Verification::Mismatch { .. } => "Mismatch",
            Verification::KeyNotBound { .. } => "KeyNotBound",
        }
    }

    /// A sentence for the `SignatureValid` condition's message.
    pub fn message(&self) -> String {
        match self {
            Verification::Valid { key_id } => format!("signed with key {key_id}"),
            Verification::Missing => "the lock carries no signature".to_owned(),
            Verification::UnknownKey { key_id } => format!("signed with unknown key {key_id}"),
            Verification::Mismatch { key_id } => {
                format!("the signature (key {key_id}) does not match the lock: forged or edited")
            }
            Verification::KeyNotBound { key_id, user } => format!(
                "key {key_id} is not bound to the holder's ServiceAccount ({})",
                user.as_deref().unwrap_or("no user recorded")
            ),
        }
    }
}

/// Which worker a key may sign for, as the verifier enforces it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[non_exhaustive]
pub enum KeyBinding {
    /// Any key signs for any worker (one shared key, or keys only for rotation).
    #[default]
    None,
    /// A key id `<name>` or `<name>.<version>` signs only for the ServiceAccount `<name>`
    /// recorded in spec.holder.user.
    ServiceAccount,
}

impl KeyBinding {
    /// True when a key with `key_id` may sign a lock created by `user`.
    pub fn permits(self, key_id: &str, user: Option<&str>) -> bool {
        match self {
            KeyBinding::None => true,
            KeyBinding::ServiceAccount => {
                let bound = key_id.split_once('.').map_or(key_id, |(name, _)| name);
                user.and_then(service_account_name) == Some(bound)
            }
        }
    }
}

/// The name of the ServiceAccount a Kubernetes username denotes
/// (`system:serviceaccount:<namespace>:<name>`), if it denotes one.
pub fn service_account_name(user: &str) -> Option<&str> {
    crate::holder::service_account(user).map(|(_, name)| name)
}

/// True for a valid key id: a DNS-1123 label, optionally followed by `.` and a second
/// one, 63 characters at most (see the module docs).
pub fn is_key_id(id: &str) -> bool {
    use crate::key::is_dns1123_label;
    id.len() <= 63
        && match id.split_once('.') {
            Some((name, version)) => is_dns1123_label(name) && is_dns1123_label(version),
            None => is_dns1123_label(id),
        }
}

impl Keyring {
    /// Keys from a directory (a mounted Secret): each regular file is one key, its name the
    /// key id and its contents the secret (a trailing newline is ignored). `signing` picks
    /// the key new locks are signed with; by default the greatest key id.
    pub fn from_dir(dir: &Path, signing: Option<&str>) -> Result<Self> {
        let bad = |msg: String| Error::Config(format!("signing keys in {}: {msg}", dir.display()));
        let entries =
            std::fs::read_dir(dir).map_err(|e| bad(format!("cannot read the directory: {e}")))?;
        let mut keys = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| bad(e.to_string()))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            // Skip the `..data`-style links and dot files of a mounted Secret.
            if id.starts_with('.') || !entry.path().is_file() {
                continue;
            }
            let mut secret = std::fs::read(entry.path())
                .map_err(|e| bad(format!("cannot read key {id:?}: {e}")))?;
            if secret.ends_with(b"\n") {
                secret.pop();
            }
            keys.insert(id, secret);
        }
        Self::new(keys, signing).map_err(|e| match e {
            Error::Config(msg) => bad(msg),
            other => other,
        })
    }

    /// Keys from memory; see [`Keyring::from_dir`].
    pub fn new(keys: BTreeMap<String, Vec<u8>>, signing: Option<&str>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::Config("no keys found".into()));
        }
        for (id, secret) in &keys {
            if !is_key_id(id) {
                return Err(Error::Config(format!(
                    "key id {id:?} is not a DNS-1123 label, optionally followed by '.' and a \
                     second one (63 characters at most)"
                )));
            }
            if secret.len() < MIN_KEY_BYTES {
                return Err(Error::Config(format!(
                    "key {id:?} is {} bytes; at least {MIN_KEY_BYTES} are required",
                    secret.len()
                )));
            }
        }
        let signing = match signing {
            Some(id) if keys.contains_key(id) => id.to_owned(),
            Some(id) => {
                return Err(Error::Config(format!(
                    "signing key id {id:?} is not among the keys"
                )));
            }
            None => keys.keys().next_back().expect("non-empty").clone(),
        };
        Ok(Self { keys, signing })
    }

    /// The signature of a lock named `name` in `namespace` with `spec`.
    pub fn sign(&self, namespace: &str, name: &str, spec: &IssueLockSpec) -> Signature {
        let mac = self
            .mac(&self.signing, namespace, name, spec)
            .expect("signing key exists");
        Signature {
            key_id: self.signing.clone(),
            value: base64_encode(&mac.finalize().into_bytes()),
        }
    }

    /// Checks the signature of a lock named `name` in `namespace`: present, by a key
    /// `binding` permits for the lock's holder, by a key we have, and matching.
    pub fn verify(
        &self,
        namespace: &str,
        name: &str,
        spec: &IssueLockSpec,
        binding: KeyBinding,
    ) -> Verification {
        let Some(sig) = &spec.signature else {
            return Verification::Missing;
        };
        let key_id = sig.key_id.clone();
        let user = spec.holder.user.as_deref();
        // Before the key lookup: a key bound to another worker never becomes valid,
        // whichever keys a rotation brings.
        if !binding.permits(&key_id, user) {
            return Verification::KeyNotBound {
                key_id,
                user: user.map(str::to_owned),
            };
        }
        let Some(mac) = self.mac(&key_id, namespace, name, spec) else {
            return Verification::UnknownKey { key_id };
        };
        match base64_decode(&sig.value) {
            // verify_slice compares in constant time.
            Some(tag) if mac.verify_slice(&tag).is_ok() => Verification::Valid { key_id },
            _ => Verification::Mismatch { key_id },
        }
    }

    fn mac(
        &self,
        key_id: &str,
        namespace: &str,
        name: &str,
        spec: &IssueLockSpec,
    ) -> Option<HmacSha256> {
        let secret = self.keys.get(key_id)?;
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(&message(namespace, name, spec));
        Some(mac)
    }
}

/// The canonical signed message (see the module docs).
pub fn message(namespace: &str, name: &str, spec: &IssueLockSpec) -> Vec<u8> {
    let h = &spec.holder;
    let max_hold = spec
        .max_hold_seconds
        .map(|s| s.to_string())
        .unwrap_or_default();
    let pod = h.pod.as_ref();
    let nine: [&str; 9] = [
        namespace,
        name,
        &spec.issue,
        &h.identity,
        &h.lease,
        pod.map_or("", |p| p.name.as_str()),
        pod.map_or("", |p| p.uid.as_str()),
        h.user.as_deref().unwrap_or(""),
        &max_hold,
    ];
    let tenth = pod.and_then(|p| p.namespace.as_deref());
    let mut out = b"issuelock.dev/v1alpha1\n".to_vec();
    for f in nine.into_iter().chain(tenth) {
        out.extend_from_slice(format!("{}:", f.len()).as_bytes());
        out.extend_from_slice(f.as_bytes());
        out.push(b'\n');
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Holder, HolderPod};

    fn spec() -> IssueLockSpec {
        IssueLockSpec {
            issue: "org/repo#1".into(),
            holder: Holder {
                identity: "w".into(),
                pod: Some(HolderPod {
                    name: "w".into(),
                    uid: "u".into(),
                    namespace: None,
                }),
                lease: "w-l".into(),
                user: Some("system:serviceaccount:ns:w".into()),
            },
            max_hold_seconds: Some(60),
            signature: None,
        }
    }

    fn ring(ids: &[&str], signing: Option<&str>) -> Keyring {
        let keys = ids
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    format!("secret-of-{id}-0123456789").into_bytes(),
                )
            })
            .collect();
        Keyring::new(keys, signing).unwrap()
    }

    impl Keyring {
        fn verify_any(&self, ns: &str, name: &str, spec: &IssueLockSpec) -> Verification {
            self.verify(ns, name, spec, KeyBinding::None)
        }
    }

    /// The bytes and tag of a lock without a pod namespace are exactly those of the
    /// nine-field format (tag computed independently), so existing signatures stay valid.
    #[test]
    fn the_nine_field_message_is_unchanged() {
        let expected = "issuelock.dev/v1alpha1\n2:ns\n4:lock\n10:org/repo#1\n1:w\n3:w-l\n1:w\n1:u\n\
                        26:system:serviceaccount:ns:w\n2:60\n";
        assert_eq!(
            String::from_utf8(message("ns", "lock", &spec())).unwrap(),
            expected
        );
        let keys = ring(&["k1"], None);
        let sig = keys.sign("ns", "lock", &spec());
        assert_eq!(sig.value, "prKAkhda4Y6iOQlTVWDHt41KHFfK/Y118Q0LQfcu3vI=");
        let mut s = spec();
        s.signature = Some(sig);
        assert!(keys.verify_any("ns", "lock", &s).is_valid());
    }

    #[test]
    fn the_pod_namespace_is_a_tenth_field_only_when_set() {
        let mut s = spec();
        s.holder.pod.as_mut().unwrap().namespace = Some("ci".into());
        let nine = message("ns", "lock", &spec());
        let ten = message("ns", "lock", &s);
        assert_eq!(&ten[..nine.len()], &nine[..]);
        assert_eq!(&ten[nine.len()..], b"2:ci\n");
        let keys = ring(&["k1"], None);
        let sig = keys.sign("ns", "lock", &s);
        assert_eq!(sig.value, "AaBhOPbOW3R4U/jK41tsCkeYTb0/orvCGyhRqaCevJQ=");
        s.signature = Some(sig);
        assert!(keys.verify_any("ns", "lock", &s).is_valid());
        // Moving the pod to another namespace, or dropping the field, breaks the tag.
        for edit in [Some("workers"), None] {
            let mut edited = s.clone();
            edited.holder.pod.as_mut().unwrap().namespace = edit.map(str::to_owned);
            assert!(matches!(
                keys.verify_any("ns", "lock", &edited),
                Verification::Mismatch { .. }
            ));
        }
    }

    #[test]
    fn a_bound_key_signs_only_for_its_service_account() {
        let keys = ring(&["worker-a", "worker-b.v2"], Some("worker-a"));
        let signed = |user: Option<&str>, key: &str| {
            let mut s = spec();
            s.holder.user = user.map(str::to_owned);
            let keys = ring(&["worker-a", "worker-b.v2"], Some(key));
            s.signature = Some(keys.sign("ns", "lock", &s));
            s
        };
        let bound = KeyBinding::ServiceAccount;
        let a = signed(Some("system:serviceaccount:ci:worker-a"), "worker-a");
        assert!(keys.verify("ns", "lock", &a, bound).is_valid());
        // A version suffix binds to the same ServiceAccount (rotation).
        let b = signed(Some("system:serviceaccount:ci:worker-b"), "worker-b.v2");
        assert!(keys.verify("ns", "lock", &b, bound).is_valid());
        // worker-a's key in worker-b's name: a valid tag, refused.
        let forged = signed(Some("system:serviceaccount:ci:worker-b"), "worker-a");
        assert!(keys.verify_any("ns", "lock", &forged).is_valid());
        assert_eq!(
            keys.verify("ns", "lock", &forged, bound),
            Verification::KeyNotBound {
                key_id: "worker-a".into(),
                user: Some("system:serviceaccount:ci:worker-b".into())
            }
        );
        // No user, or a user that is not a ServiceAccount: refused.
        for user in [
            None,
            Some("worker-a"),
            Some("system:serviceaccount:worker-a"),
        ] {
            let s = signed(user, "worker-a");
            assert!(matches!(
                keys.verify("ns", "lock", &s, bound),
                Verification::KeyNotBound { .. }
            ));
        }
        // Refused before the key lookup: an unknown key id for another worker.
        let mut unknown = a.clone();
        unknown.signature.as_mut().unwrap().key_id = "worker-c".into();
        assert!(matches!(
            keys.verify("ns", "lock", &unknown, bound),
            Verification::KeyNotBound { .. }
        ));
        assert_eq!(
            keys.verify("ns", "lock", &spec(), bound),
            Verification::Missing
        );
    }

    #[test]
    fn key_ids_are_a_label_with_an_optional_version() {
        for ok in ["k1", "worker-a", "worker-a.2026-11", &"a".repeat(63)] {
            assert!(is_key_id(ok), "{ok}");
        }
        for bad in ["", "K1", "a.b.c", "a.", ".a", "a..b", "-a", &"a".repeat(64)] {
            assert!(!is_key_id(bad), "{bad}");
        }
        assert_eq!(
            service_account_name("system:serviceaccount:ns:w"),
            Some("w")
        );
        assert_eq!(service_account_name("system:serviceaccount::w"), None);
        assert_eq!(service_account_name("alice"), None);
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..40 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(
            base64_encode(b"any carnal pleas"),
            "YW55IGNhcm5hbCBwbGVhcw=="
        );
    }

    #[test]
    fn signed_locks_verify_and_edits_are_detected() {
        let keys = ring(&["k1"], None);
        let mut s = spec();
        s.signature = Some(keys.sign("ns", "lock", &s));
        assert_eq!(
            keys.verify_any("ns", "lock", &s),
            Verification::Valid {
                key_id: "k1".into()
            }
        );
        assert!(matches!(
            keys.verify_any("other-ns", "lock", &s),
            Verification::Mismatch { .. }
        ));
        let mut edited = s.clone();
        edited.holder.identity = "thief".into();
        assert!(matches!(
            keys.verify_any("ns", "lock", &edited),
            Verification::Mismatch { .. }
        ));
        let mut garbage = s.clone();
        garbage.signature.as_mut().unwrap().value = "!!not base64!!".into();
        assert!(matches!(
            keys.verify_any("ns", "lock", &garbage),
            Verification::Mismatch { .. }
        ));
        assert_eq!(
            keys.verify_any("ns", "lock", &spec()),
            Verification::Missing
        );
    }

    #[test]
    fn rotation_keeps_old_signatures_valid() {
        let old = ring(&["k1"], None);
        let mut s = spec();
        s.signature = Some(old.sign("ns", "lock", &s));
        let rotated = ring(&["k1", "k2"], None);
        assert_eq!(
            rotated.sign("ns", "lock", &spec()).key_id,
            "k2",
            "the newest key signs"
        );
        assert!(rotated.verify_any("ns", "lock", &s).is_valid());
        let retired = ring(&["k2"], None);
        assert_eq!(
            retired.verify_any("ns", "lock", &s),
            Verification::UnknownKey {
                key_id: "k1".into()
            }
        );
    }

    #[test]
    fn bad_keyrings_are_rejected() {
        assert!(Keyring::new(BTreeMap::new(), None).is_err());
        let short = BTreeMap::from([("k1".to_string(), b"short".to_vec())]);
        assert!(
            Keyring::new(short, None)
                .unwrap_err()
                .to_string()
                .contains("at least 16")
        );
        let bad_id = BTreeMap::from([("K 1".to_string(), vec![0u8; 32])]);
        assert!(Keyring::new(bad_id, None).is_err());
        let one = BTreeMap::from([("k1".to_string(), vec![0u8; 32])]);
        assert!(Keyring::new(one, Some("k9")).is_err());
        assert!(
            Keyring::from_dir(Path::new("/nonexistent/keys"), None)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
        assert!(
            !format!("{:?}", ring(&["k1"], None)).contains("secret"),
            "Debug never prints secrets"
        );
    }
}
