//! Human-readable tables of locks.

use crate::crd::IssueLock;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;

/// When each heartbeat Lease (namespace, name) was last renewed, by its `renewTime`;
/// `None` when the Leases could not be listed.
pub type Heartbeats = Option<HashMap<(String, String), Timestamp>>;

/// The columns of a table of locks: NAMESPACE (with `namespace`), ISSUE, HOLDER, POD,
/// ALIVE, HEARTBEAT (time since the holder Lease's `renewTime` on this machine's clock;
/// `<none>` when the Lease is missing, `<unknown>` when the Leases could not be read),
/// AGE, and with `wide` also NAME (the lock object's), LEASE, USER and MAX-HOLD.
#[derive(Clone, Copy, Debug, Default)]
pub struct Columns {
    /// Start with the lock's namespace (locks of every namespace).
    pub namespace: bool,
    /// Add the lock object's name, holder Lease, user and max hold time.
    pub wide: bool,
}

impl Columns {
    /// The header row.
    pub fn header(self) -> Vec<String> {
        let mut header = vec!["ISSUE", "HOLDER", "POD", "ALIVE", "HEARTBEAT", "AGE"];
        if self.namespace {
            header.insert(0, "NAMESPACE");
        }
        if self.wide {
            header.extend(["NAME", "LEASE", "USER", "MAX-HOLD"]);
        }
        header.into_iter().map(String::from).collect()
    }

    /// The row of one lock, ages counted to `now`.
    pub fn row(self, lock: &IssueLock, heartbeats: &Heartbeats, now: Timestamp) -> Vec<String> {
        let none = || "<none>".to_owned();
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
            .unwrap_or_else(|| "<unknown>".into());
        let namespace = lock.metadata.namespace.clone().unwrap_or_default();
        let holder = &lock.spec.holder;
        let heartbeat = match heartbeats {
            None => "<unknown>".into(),
            Some(h) => h
                .get(&(namespace.clone(), holder.lease.clone()))
                .map(|t| format!("{} ago", human_age(now.duration_since(*t).as_secs())))
                .unwrap_or_else(none),
        };
        let mut row = vec![
            lock.spec.issue.clone(),
            holder.identity.clone(),
            holder
                .pod
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_else(none),
            alive,
            heartbeat,
            age,
        ];
        if self.namespace {
            row.insert(0, namespace);
        }
        if self.wide {
            row.extend([
                lock.metadata.name.clone().unwrap_or_default(),
                holder.lease.clone(),
                holder.user.clone().unwrap_or_else(none),
                lock.spec
                    .max_hold_seconds
                    .map(human_age)
                    .unwrap_or_else(none),
            ]);
        }
        row
    }
}

/// Aligned lines of `rows`, each column at least as wide as in `widths` (which grow to
/// fit, so that later rows, e.g. of a watch, line up with earlier ones).
pub fn align(rows: &[Vec<String>], widths: &mut Vec<usize>) -> String {
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths.iter())
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

/// A duration as kubectl prints ages (apimachinery's `duration.HumanDuration`): about two
/// significant figures, the unit growing with the duration: `90s`, `5m3s`, `42m`, `3h12m`,
/// `20h`, `2d4h`, `12d`, `2y30d`, `9y`. Up to a second in the future (clock skew) reads
/// `0s`; further, `<invalid>`.
pub fn human_age(secs: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    const YEAR: i64 = 365 * DAY;
    // The largest whole unit, and the next smaller one when it is not zero.
    let two = |big: i64, big_unit: &str, small: i64, small_unit: &str| match small {
        0 => format!("{big}{big_unit}"),
        _ => format!("{big}{big_unit}{small}{small_unit}"),
    };
    match secs {
        s if s <= -2 => "<invalid>".into(),
        s if s < 0 => "0s".into(),
        s if s < 2 * MINUTE => format!("{s}s"),
        s if s < 10 * MINUTE => two(s / MINUTE, "m", s % MINUTE, "s"),
        s if s < 3 * HOUR => format!("{}m", s / MINUTE),
        s if s < 8 * HOUR => two(s / HOUR, "h", s % HOUR / MINUTE, "m"),
        s if s < 2 * DAY => format!("{}h", s / HOUR),
        s if s < 8 * DAY => two(s / DAY, "d", s % DAY / HOUR, "h"),
        s if s < 2 * YEAR => format!("{}d", s / DAY),
        s if s < 8 * YEAR => two(s / YEAR, "y", s % YEAR / DAY, "d"),
        s => format!("{}y", s / YEAR),
    }
}

#[cfg(test)]
mod tests {
    use super::human_age;

    /// Golden values of kubectl's ages (apimachinery `duration.HumanDuration`).
    #[test]
    fn ages_as_kubectl_prints_them() {
        let (m, h, d, y) = (60, 3600, 86400, 365 * 86400);
        for (secs, want) in [
            (-3, "<invalid>"),
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (90, "90s"),
            (119, "119s"),
            (2 * m, "2m"),
            (5 * m + 3, "5m3s"),
            (9 * m + 59, "9m59s"),
            (10 * m, "10m"),
            (10 * m + 59, "10m"),
            (90 * m, "90m"),
            (3 * h - 1, "179m"),
            (3 * h, "3h"),
            (3 * h + 12 * m + 30, "3h12m"),
            (8 * h - 1, "7h59m"),
            (8 * h, "8h"),
            (20 * h + 30 * m, "20h"),
            (2 * d - 1, "47h"),
            (2 * d, "2d"),
            (2 * d + 4 * h + 59 * m, "2d4h"),
            (3 * d + 5 * h, "3d5h"),
            (8 * d - 1, "7d23h"),
            (8 * d, "8d"),
            (729 * d + 23 * h, "729d"),
            (2 * y, "2y"),
            (2 * y + 30 * d, "2y30d"),
            (8 * y - 1, "7y364d"),
            (8 * y, "8y"),
            (20 * y + 100 * d, "20y"),
        ] {
            assert_eq!(human_age(secs), want, "{secs} s");
        }
    }
}
