//! Whether a lock is named after its issue (PROTOCOL.md, "Lock name"). A client that
//! derives names by another rule (a Unicode `lower()`, say) creates a second lock for
//! the same issue that the correctly named one never excludes; the controller reports
//! such a lock. Pure, so the decision is unit-tested.

use crate::key::IssueKey;

/// The `NameMatchesIssue` condition type.
pub const CONDITION: &str = "NameMatchesIssue";
/// Event reason when a lock is first seen misnamed.
pub const EVENT_REASON: &str = "LockNameMismatch";

/// How a lock's name relates to its `spec.issue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameCheck {
    /// The name is the one derived from the issue key.
    Matches,
    /// The name is not the one derived from the issue key.
    Mismatch {
        /// The name the issue key derives.
        expected: String,
    },
    /// `spec.issue` is not a valid key (the CRD schema normally refuses it).
    InvalidIssue {
        /// Why it is not.
        why: String,
    },
}

impl NameCheck {
    /// Checks `name` against the name derived from `issue`.
    pub fn of(name: &str, issue: &str) -> Self {
        match IssueKey::parse(issue) {
            Ok(key) if key.lock_name() == name => NameCheck::Matches,
            Ok(key) => NameCheck::Mismatch {
                expected: key.lock_name(),
            },
            Err(e) => NameCheck::InvalidIssue { why: e.to_string() },
        }
    }

    /// True unless the name is the issue's.
    pub fn is_misnamed(&self) -> bool {
        *self != NameCheck::Matches
    }

    /// The condition's status, reason and message.
    pub fn condition(&self, name: &str) -> (&'static str, &'static str, String) {
        match self {
            NameCheck::Matches => (
                "True",
                "NameDerivedFromIssue",
                "the lock's name is the one derived from spec.issue".into(),
            ),
            NameCheck::Mismatch { expected } => (
                "False",
                "NameMismatch",
                format!(
                    "spec.issue derives the lock name {expected}, not {name}: its holder derives \
                     lock names by another rule (see PROTOCOL.md) and does not exclude holders \
                     of {expected}"
                ),
            ),
            NameCheck::InvalidIssue { why } => ("False", "NameMismatch", why.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unicode_lowercased_name_is_misnamed() {
        let issue = "\u{212A}elvin/x#1";
        assert_eq!(
            NameCheck::of("elvin-x-1-ce3c9e6a5af0", issue),
            NameCheck::Matches
        );
        let check = NameCheck::of("kelvin-x-1-ce3c9e6a5af0", issue);
        assert_eq!(
            check,
            NameCheck::Mismatch {
                expected: "elvin-x-1-ce3c9e6a5af0".into()
            }
        );
        let (status, reason, message) = check.condition("kelvin-x-1-ce3c9e6a5af0");
        assert_eq!((status, reason), ("False", "NameMismatch"));
        assert!(message.contains("elvin-x-1-ce3c9e6a5af0"), "{message}");
        assert!(check.is_misnamed());
    }

    #[test]
    fn another_issues_name_is_misnamed() {
        // A lock named after issue A but claiming issue B blocks A and protects nothing.
        assert!(NameCheck::of("org-repo-123-ee86bab53236", "org/repo#124").is_misnamed());
        assert_eq!(
            NameCheck::of("org-repo-123-ee86bab53236", "org/repo#123")
                .condition("x")
                .0,
            "True"
        );
    }

    #[test]
    fn an_invalid_issue_is_misnamed() {
        let check = NameCheck::of("issue-x", "a\nb");
        assert!(matches!(check, NameCheck::InvalidIssue { .. }));
        assert_eq!(check.condition("issue-x").0, "False");
    }
}
