//! Human-readable tables of locks.

use crate::crd::IssueLock;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;

/// When each heartbeat Lease (namespace, name) was last renewed, by its `renewTime`;
/// `None` when the Leases could not be listed.
pub type Heartbeats = Option<HashMap<(String, String), Timestamp>>;

/// Renders locks as an aligned table: NAMESPACE (optional), ISSUE, HOLDER, POD, ALIVE,
/// HEARTBEAT (time since the holder Lease's `renewTime` on this machine's clock; `<none>`
/// when the Lease is missing), AGE.
pub fn render(locks: &[IssueLock], with_namespace: bool, heartbeats: &Heartbeats) -> String {
    let now = Timestamp::now();
    let mut rows: Vec<Vec<String>> = vec![];
    let mut header = vec!["ISSUE", "HOLDER", "POD", "ALIVE", "HEARTBEAT", "AGE"];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.into_iter().map(String::from).collect());
    for lock in locks {
        let alive = lock
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "HolderAlive"))
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "<unknown>".into());
        let age = lock
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| human_age(now.duration_since(t.0).as_secs()))
            .unwrap_or_default();
        let lease = (
            lock.metadata.namespace.clone().unwrap_or_default(),
            lock.spec.holder.lease.clone(),
        );
        let heartbeat = match heartbeats {
            None => "<unknown>".into(),
            Some(h) => h
                .get(&lease)
                .map(|t| format!("{} ago", human_age(now.duration_since(*t).as_secs())))
                .unwrap_or_else(|| "<none>".into()),
        };
        let mut row = vec![
            lock.spec.issue.clone(),
            lock.spec.holder.identity.clone(),
            lock.spec
                .holder
                .pod
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_else(|| "<none>".into()),
            alive,
            heartbeat,
            age,
        ];
        if with_namespace {
            row.insert(0, lock.metadata.namespace.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// A multi-line description of one lock, for `issuelock show`.
pub fn describe(lock: &IssueLock) -> String {
    let now = Timestamp::now();
    let age = |t: Option<Timestamp>| {
        t.map(|t| format!("{t} ({} ago)", human_age(now.duration_since(t).as_secs())))
            .unwrap_or_else(|| "<unknown>".into())
    };
    let h = &lock.spec.holder;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line("Issue:", lock.spec.issue.clone());
    line(
        "Lock:",
        format!(
            "{}/{}",
            lock.metadata.namespace.clone().unwrap_or_default(),
            lock.metadata.name.clone().unwrap_or_default()
        ),
    );
    line("Holder:", h.identity.clone());
    line(
        "Pod:",
        h.pod
            .as_ref()
            .map(|p| format!("{} (uid {})", p.name, p.uid))
            .unwrap_or_else(|| "<none>".into()),
    );
    line("Lease:", h.lease.clone());
    line(
        "User:",
        h.user.clone().unwrap_or_else(|| "<unknown>".into()),
    );
    line(
        "Since:",
        age(lock.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    );
    line(
        "Max hold:",
        lock.spec
            .max_hold_seconds
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "<none>".into()),
    );
    let status = lock.status.clone().unwrap_or_default();
    line(
        "Alive since:",
        age(status.last_heartbeat_observed.map(|t| t.0)),
    );
    for c in &status.conditions {
        line(
            &format!("{}:", c.type_),
            format!("{} ({}: {})", c.status, c.reason, c.message),
        );
    }
    out
}

/// Ages as kubectl prints them: `42s`, `5m3s`, `3h12m`, `2d4h`.
pub fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages() {
        assert_eq!(super::human_age(5), "5s");
        assert_eq!(super::human_age(303), "5m3s");
        assert_eq!(super::human_age(3 * 3600 + 720), "3h12m");
        assert_eq!(super::human_age(2 * 86400 + 4 * 3600), "2d4h");
    }
}
