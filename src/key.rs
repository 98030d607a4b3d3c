//! Issue keys and the lock names derived from them.
//!
//! This module is the one place that decides what a valid issue key is and which
//! `metadata.name` its lock object gets. The mapping is part of the wire protocol:
//! every client, in any language, must derive the same name from the same key, so
//! it never changes between versions (golden vectors in the tests pin it).
//!
//! A lock name is `<slug>-<hash>`:
//! * `slug`: the key with ASCII `A`–`Z` lower-cased (nothing else: not the Kelvin sign,
//!   not `İ`, not full-width letters), the runs of `[a-z0-9]` joined by single `-` (every
//!   other character, ASCII or not, separates), cut to [`SLUG_MAX`] characters, a `-`
//!   left at the end of the cut dropped (`issue` if empty);
//! * `hash`: the first [`HASH_HEX`] hex digits of SHA-256 over the key's exact UTF-8
//!   bytes, so keys with the same slug (`a/b#1`, `a-b-1`) get different names.
//!
//! The result is at most 63 characters and always a valid DNS-1123 label (so also a
//! valid DNS-1123 subdomain and label value). `PROTOCOL.md` states the rule for other
//! languages; `protocol/lock-names.json` holds the vectors both sides test against.

use sha2::{Digest, Sha256};
use std::fmt;

/// Longest accepted issue key, in Unicode scalar values (the CRD's `maxLength`).
pub const MAX_KEY_CHARS: usize = 1024;
/// Longest readable part of a lock name.
pub const SLUG_MAX: usize = 50;
/// Hex digits of the key's SHA-256 that end every lock name (48 bits).
pub const HASH_HEX: usize = 12;

/// A validated issue key: 1..=1024 characters, none of them a control character.
///
/// The key is kept exactly as given (no trimming, no normalisation): two keys that
/// differ in any byte are two different issues.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IssueKey(String);

/// Why a string is not a valid issue key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The key is the empty string.
    #[error("issue key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_CHARS`] characters.
    #[error("issue key is {chars} characters long; the limit is {MAX_KEY_CHARS}")]
    TooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// The key contains a control character.
    #[error("issue key contains control character U+{code:04X} at character {position}")]
    ControlCharacter {
        /// The character's code point.
        code: u32,
        /// Its position in the key, in characters from 0.
        position: usize,
    },
}

impl IssueKey {
    /// Validates `key` with the same rules the CRD schema enforces server-side.
    pub fn parse(key: &str) -> Result<Self, InvalidKey> {
        if key.is_empty() {
            return Err(InvalidKey::Empty);
        }
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Err(InvalidKey::TooLong { chars });
        }
        if let Some((position, c)) = key.chars().enumerate().find(|(_, c)| c.is_control()) {
            return Err(InvalidKey::ControlCharacter {
                code: c as u32,
                position,
            });
        }
        Ok(Self(key.to_owned()))
    }

    /// The key exactly as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `metadata.name` of this issue's lock object (see the module docs).
    pub fn lock_name(&self) -> String {
        let hash = hex_prefix(&Sha256::digest(self.0.as_bytes()), HASH_HEX);
        format!("{}-{hash}", slug(&self.0, SLUG_MAX, "issue"))
    }
}

impl fmt::Display for IssueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A readable DNS-1123 label fragment of `text`: lower-case `[a-z0-9]` runs joined by
/// single `-`, at most `max` characters, never starting or ending with `-`;
/// `fallback` when nothing readable is left.
pub fn slug(text: &str, max: usize, fallback: &str) -> String {
    let mut out = String::with_capacity(max);
    let mut pending_dash = false;
    for c in text.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else {
            pending_dash = true;
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        fallback.to_owned()
    } else {
        out
    }
}

/// The first `n` lower-case hex digits of `bytes`.
pub(crate) fn hex_prefix(bytes: &[u8], n: usize) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(n);
    s
}

/// True when `s` is a DNS-1123 label: 1..=63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(key: &str) -> String {
        IssueKey::parse(key).unwrap().lock_name()
    }

    /// Golden vectors: changing any of these breaks every deployed client.
    #[test]
    fn lock_names_are_stable() {
        let vectors = [
            ("org/repo#123", "org-repo-123-"),
            ("a/b#1", "a-b-1-"),
            ("a-b-1", "a-b-1-"),
            ("🦀", "issue-"),
            ("--Hello, World!--", "hello-world-"),
        ];
        for (key, prefix) in vectors {
            let n = name(key);
            assert!(n.starts_with(prefix), "{key:?} -> {n}");
            assert_eq!(n.len(), prefix.len() + HASH_HEX, "{key:?} -> {n}");
        }
        // Exact values (SHA-256 of the key's UTF-8 bytes).
        assert_eq!(
            name("org/repo#123"),
            format!("org-repo-123-{}", sha("org/repo#123"))
        );
        assert_ne!(name("a/b#1"), name("a-b-1"));
    }

    /// The shared vectors of `protocol/lock-names.json`, which foreign clients' tests read
    /// too (PROTOCOL.md): every valid key maps to its name, every invalid key is refused.
    #[test]
    fn shared_protocol_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/lock-names.json");
        let text = std::fs::read_to_string(path).expect("protocol/lock-names.json");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
        let valid = doc["valid"].as_array().expect("valid vectors");
        assert!(valid.len() >= 20, "at least 20 vectors");
        for v in valid {
            let (key, want) = (v["key"].as_str().unwrap(), v["name"].as_str().unwrap());
            let got = IssueKey::parse(key).map(|k| k.lock_name());
            assert_eq!(got.as_deref(), Ok(want), "key {key:?}");
            assert!(is_dns1123_label(want), "{want}");
        }
        for v in doc["invalid"].as_array().expect("invalid vectors") {
            let key = v["key"].as_str().unwrap();
            assert!(IssueKey::parse(key).is_err(), "key {key:?} must be refused");
        }
    }

    fn sha(key: &str) -> String {
        hex_prefix(&Sha256::digest(key.as_bytes()), HASH_HEX)
    }

    #[test]
    fn pinned_hash_values() {
        // Independently computed: printf 'org/repo#123' | sha256sum | cut -c1-12
        assert_eq!(sha("org/repo#123"), PINNED_ORG_REPO_123);
    }
    const PINNED_ORG_REPO_123: &str = "ee86bab53236";

    #[test]
    fn key_validation() {
        assert_eq!(IssueKey::parse(""), Err(InvalidKey::Empty));
        assert_eq!(
            IssueKey::parse(&"x".repeat(10_000)),
            Err(InvalidKey::TooLong { chars: 10_000 })
        );
        assert!(IssueKey::parse(&"é".repeat(MAX_KEY_CHARS)).is_ok());
        assert_eq!(
            IssueKey::parse("a\nb"),
            Err(InvalidKey::ControlCharacter {
                code: 10,
                position: 1
            })
        );
        assert_eq!(
            IssueKey::parse("a\0"),
            Err(InvalidKey::ControlCharacter {
                code: 0,
                position: 1
            })
        );
        assert_eq!(
            IssueKey::parse("\u{85}"),
            Err(InvalidKey::ControlCharacter {
                code: 0x85,
                position: 0
            })
        );
        assert!(IssueKey::parse("fix the 🦀 crab").is_ok());
        assert!(IssueKey::parse(" leading and trailing spaces ").is_ok());
    }

    proptest! {
        #[test]
        fn names_are_dns1123_labels(key in "\\PC{1,1024}") {
            let n = IssueKey::parse(&key).unwrap().lock_name();
            prop_assert!(is_dns1123_label(&n), "{n}");
        }

        #[test]
        fn names_are_deterministic(key in "\\PC{1,64}") {
            prop_assert_eq!(name(&key), name(&key));
        }

        #[test]
        fn distinct_keys_get_distinct_names(a in "[a-zA-Z0-9/#._ -]{1,24}", b in "[a-zA-Z0-9/#._ -]{1,24}") {
            prop_assume!(a != b);
            prop_assert_ne!(name(&a), name(&b));
        }

        #[test]
        fn slugs_are_label_fragments(text in ".{0,200}", max in 1usize..63) {
            let s = slug(&text, max, "x");
            prop_assert!(is_dns1123_label(&s) && s.len() <= max.max(1), "{s}");
        }
    }
}
