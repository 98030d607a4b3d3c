//! HMAC-SHA256 signatures over a lock's identity, with key ids for rotation.
//!
//! The signed message is the canonical encoding of, in order: the namespace, the lock
//! name, `spec.issue`, `spec.holder.identity`, `.lease`, `.pod.name`, `.pod.uid`, `.user`
//! and `spec.maxHoldSeconds` (absent fields as empty strings), each written as
//! `<byte length>:<bytes>\n`, after the line `issuelock.dev/v1alpha1\n`. The tag is
//! `spec.signature.value` (standard base64) with the key's id in `spec.signature.keyId`.
//! Tags are compared in constant time. There is no default key.

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
pub enum Verification {
    /// Signed by a known key, and the tag matches.
    Valid { key_id: String },
    /// The lock carries no signature.
    Missing,
    /// Signed with a key id we do not have.
    UnknownKey { key_id: String },
    /// The tag does not match the lock's contents (forged or edited).
    Mismatch { key_id: String },
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
        }
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
            if !crate::key::is_dns1123_label(id) {
                return Err(Error::Config(format!(
                    "key id {id:?} is not a DNS-1123 label"
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

    /// Checks the signature of a lock.
    pub fn verify(&self, namespace: &str, name: &str, spec: &IssueLockSpec) -> Verification {
        let Some(sig) = &spec.signature else {
            return Verification::Missing;
        };
        let key_id = sig.key_id.clone();
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
    let fields: [&str; 9] = [
        namespace,
        name,
        &spec.issue,
        &h.identity,
        &h.lease,
        h.pod.as_ref().map_or("", |p| p.name.as_str()),
        h.pod.as_ref().map_or("", |p| p.uid.as_str()),
        h.user.as_deref().unwrap_or(""),
        &max_hold,
    ];
    let mut out = b"issuelock.dev/v1alpha1\n".to_vec();
    for f in fields {
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
            keys.verify("ns", "lock", &s),
            Verification::Valid {
                key_id: "k1".into()
            }
        );
        assert!(matches!(
            keys.verify("other-ns", "lock", &s),
            Verification::Mismatch { .. }
        ));
        let mut edited = s.clone();
        edited.holder.identity = "thief".into();
        assert!(matches!(
            keys.verify("ns", "lock", &edited),
            Verification::Mismatch { .. }
        ));
        let mut garbage = s.clone();
        garbage.signature.as_mut().unwrap().value = "!!not base64!!".into();
        assert!(matches!(
            keys.verify("ns", "lock", &garbage),
            Verification::Mismatch { .. }
        ));
        assert_eq!(keys.verify("ns", "lock", &spec()), Verification::Missing);
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
        assert!(rotated.verify("ns", "lock", &s).is_valid());
        let retired = ring(&["k2"], None);
        assert_eq!(
            retired.verify("ns", "lock", &s),
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
