//! The printed report: Markdown tables, each figure with its ratio to the floor measured
//! in the same run (the first row of the latency and contention tables).

use crate::phases::{Contention, Overhead};
use crate::stats::{Latencies, ms, ratio};
use crate::writes::Writes;
use std::fmt::Write as _;
use std::time::Duration;

/// One row of the overhead table: variant, acquire and release latencies.
pub type OverheadRow = (&'static str, Latencies, Latencies);

pub struct Report {
    iterations: usize,
    concurrency: usize,
    clients: usize,
    issues: usize,
    latency: Vec<(String, Latencies, Latencies)>,
    /// Per number of calls in flight: the overhead phase's figures.
    overhead: Vec<(usize, Overhead)>,
    contention: Vec<(String, Contention)>,
    /// name, writes per held lock per minute: holders' Lease writes, everything else.
    writes: Vec<(String, f64, f64, String)>,
    death: Vec<(String, Duration, String)>,
}

impl Report {
    pub fn new(iterations: usize, concurrency: usize, clients: usize, issues: usize) -> Self {
        Self {
            iterations,
            concurrency,
            clients,
            issues,
            latency: Vec::new(),
            overhead: Vec::new(),
            contention: Vec::new(),
            writes: Vec::new(),
            death: Vec::new(),
        }
    }

    pub fn latency(&mut self, name: &str, (acquire, release): (Latencies, Latencies)) {
        self.latency.push((name.into(), acquire, release));
    }

    pub fn overhead(&mut self, in_flight: usize, figures: Overhead) {
        self.overhead.push((in_flight, figures));
    }

    pub fn contention(&mut self, name: &str, c: Contention) {
        self.contention.push((name.into(), c));
    }

    /// API writes while holding: Lease writes beyond the API server's own `background`
    /// are the holders'; all other writes (lock objects, their status) are listed apart.
    pub fn writes(&mut self, name: &str, w: &Writes, background: f64, locks: usize, secs: f64) {
        let per = |n: f64| n.max(0.0) / locks as f64 / (secs / 60.0);
        let leases = w.get("leases") - background;
        let other = w.total() - w.get("leases");
        let detail =
            w.0.iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
        self.writes.push((
            name.into(),
            per(leases),
            per(other),
            format!("API writes in {secs:.0} s: {detail}; API server's own Lease writes subtracted: {background:.1}"),
        ));
    }

    pub fn redis_writes(&mut self, name: &str, commands: u64, locks: usize, secs: f64) {
        let per = commands as f64 / locks as f64 / (secs / 60.0);
        self.writes.push((
            name.into(),
            per,
            0.0,
            format!("Redis SET/EVAL/EVALSHA calls in {secs:.0} s: {commands} (no API writes)"),
        ));
    }

    pub fn death(&mut self, name: &str, took: Duration, how: &str) {
        self.death.push((name.into(), took, how.into()));
    }

    pub fn render_overhead(&self) -> String {
        let mut out = String::new();
        for (in_flight, figures) in &self.overhead {
            let rows = &figures.rows;
            let Some((_, a, _)) = rows.first() else {
                continue;
            };
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "## issuelock's overhead, step by step ({} issues each, interleaved rounds, {in_flight} in flight, ms)\n",
                a.len(),
            );
            latency_table(&mut out, "variant", rows.iter().map(|(n, a, r)| (*n, a, r)));
            cpu_table(&mut out, *in_flight, figures);
        }
        out
    }

    pub fn render(&self) -> String {
        let mut out = self.render_overhead();
        let _ = writeln!(
            out,
            "\n## Acquire and release latency ({} free issues, {} in flight, ms)\n",
            self.iterations, self.concurrency
        );
        latency_table(
            &mut out,
            "system",
            self.latency.iter().map(|(n, a, r)| (n.as_str(), a, r)),
        );
        let _ = writeln!(
            out,
            "\n## Throughput: {} clients, each taking a random one of {} issues and releasing it at once\n",
            self.clients, self.issues
        );
        out.push_str("| system | acquires/s | tries that found the issue held | run (s) |\n|---|---|---|---|\n");
        if let Some((_, floor)) = self.contention.first() {
            for (name, c) in &self.contention {
                let _ = writeln!(
                    out,
                    "| {name} | {:.0} ({}) | {} | {:.1} |",
                    c.per_second(),
                    ratio(c.per_second(), floor.per_second()),
                    c.held,
                    c.wall.as_secs_f64()
                );
            }
        }
        out.push_str("\n## Writes per held lock per minute, one client holding the locks\n\n");
        out.push_str("| system | holders' Lease writes | other writes (lock objects, status) | how counted |\n|---|---|---|---|\n");
        for (name, leases, other, how) in &self.writes {
            let _ = writeln!(out, "| {name} | {leases:.3} | {other:.3} | {how} |");
        }
        out.push_str("\n## Holder SIGKILLed: time until the next holder has the lock\n\n");
        out.push_str("| system | seconds | why |\n|---|---|---|\n");
        for (name, took, how) in &self.death {
            let _ = writeln!(out, "| {name} | {:.2} | {how} |", took.as_secs_f64());
        }
        out
    }
}

/// Rows of latency percentiles, each with its ratio to the first row's.
fn latency_table<'a>(
    out: &mut String,
    what: &str,
    rows: impl Iterator<Item = (&'a str, &'a Latencies, &'a Latencies)>,
) {
    let _ = writeln!(
        out,
        "| {what} | acquire p50 | acquire p99 | release p50 | release p99 |\n|---|---|---|---|---|"
    );
    let mut floor: Option<(&Latencies, &Latencies)> = None;
    for (name, a, r) in rows {
        let (fa, fr) = *floor.get_or_insert((a, r));
        let cell = |d: &Latencies, f: &Latencies, p: f64| {
            let (x, y) = (d.percentile(p), f.percentile(p));
            format!("{} ({})", ms(x), ratio(x.as_secs_f64(), y.as_secs_f64()))
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            cell(a, fa, 50.0),
            cell(a, fa, 99.0),
            cell(r, fr, 50.0),
            cell(r, fr, 99.0)
        );
    }
}

/// CPU time per acquire-release pair, by process, with the total's ratio to the floor's.
fn cpu_table(out: &mut String, in_flight: usize, figures: &Overhead) {
    if figures.meters.is_empty() || figures.pairs == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "\n## CPU time per acquire + release, by process ({} pairs each, {in_flight} in flight, ms; idle use subtracted)\n",
        figures.pairs
    );
    let _ = writeln!(
        out,
        "| variant | {} | total |\n|---|{}---|",
        figures.meters.join(" | "),
        "---|".repeat(figures.meters.len())
    );
    let per_pair = |d: &Duration| d.as_secs_f64() * 1e3 / figures.pairs as f64;
    let total = |u: &crate::cpu::Usage| u.0.iter().map(per_pair).sum::<f64>();
    let floor = figures.cpu.first().map(total).unwrap_or_default();
    for ((name, _, _), usage) in figures.rows.iter().zip(&figures.cpu) {
        let cells: Vec<String> = usage
            .0
            .iter()
            .map(|d| format!("{:.3}", per_pair(d)))
            .collect();
        let t = total(usage);
        let _ = writeln!(
            out,
            "| {name} | {} | {t:.3} ({}) |",
            cells.join(" | "),
            ratio(t, floor)
        );
    }
}
