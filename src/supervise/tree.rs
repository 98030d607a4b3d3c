//! A process tree: every descendant of one process, found through the parent links in
//! `/proc/<pid>/stat`.
//!
//! The tree includes processes that left the command's process group or session
//! (`setsid`), as long as they stay descendants. That is what the child subreaper
//! attribute ([`become_subreaper`]) ensures: an orphan is reparented to its nearest
//! subreaper ancestor instead of to init, so it stays in the tree.
//!
//! Signals are sent by pid right after a walk of `/proc`. In the microseconds between
//! the walk and the signal, a process of the tree may exit and be reaped by its parent,
//! and in theory its pid may be reused by an unrelated process; Linux hands out pids
//! cyclically, so that takes a pid wrap-around within that window.

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The fields of `/proc/<pid>/stat` the tree walk needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: i32,
    pub ppid: i32,
    /// Exited, waiting to be reaped (state `Z`, or `X` while being removed).
    pub zombie: bool,
}

/// Makes orphaned descendants of this process its children (Linux's child subreaper
/// attribute), so that they stay in its tree.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// Fails unless `/proc` shows this process, i.e. the tree walk can see anything.
pub fn check_proc() -> std::io::Result<()> {
    let own = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read /proc/self/stat: {e}")))?;
    parse_stat(&own)
        .map(|_| ())
        .ok_or_else(|| std::io::Error::other("unexpected format of /proc/self/stat"))
}

/// Parses the contents of `/proc/<pid>/stat`. The command name (field 2) may contain
/// spaces and parentheses, so the fixed fields are read after its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcessEntry> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = tail.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcessEntry {
        pid,
        ppid,
        zombie: matches!(state, "Z" | "X" | "x"),
    })
}

/// Every process visible now; processes that exit while being read are skipped.
pub fn snapshot() -> Vec<ProcessEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(&stat)
        })
        .collect()
}

/// The descendants of `root` among `processes`: its children, their children, and so
/// on, parents before children; `root` itself is not included.
pub fn descendants_in(processes: &[ProcessEntry], root: i32) -> Vec<ProcessEntry> {
    let mut children: HashMap<i32, Vec<&ProcessEntry>> = HashMap::new();
    for p in processes.iter().filter(|p| p.pid != p.ppid) {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut tree = Vec::new();
    // A pid is visited once only: a cycle could come from a torn read of /proc.
    let mut seen = HashSet::from([root]);
    let mut next = std::collections::VecDeque::from([root]);
    while let Some(parent) = next.pop_front() {
        for child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child.pid) {
                tree.push(**child);
                next.push_back(child.pid);
            }
        }
    }
    tree
}

/// The descendants of `root` that have not exited.
pub fn living_descendants(root: Pid) -> Vec<Pid> {
    descendants_in(&snapshot(), root.as_raw())
        .into_iter()
        .filter(|p| !p.zombie)
        .map(|p| Pid::from_raw(p.pid))
        .collect()
}

/// Asks every living descendant of `root` to terminate: SIGTERM, then SIGCONT so that a
/// stopped process receives it too. Returns how many processes were signalled.
pub fn terminate(root: Pid) -> usize {
    let tree = living_descendants(root);
    for &pid in &tree {
        let _ = kill(pid, Signal::SIGTERM);
        let _ = kill(pid, Signal::SIGCONT);
    }
    tree.len()
}

/// SIGKILLs the descendants of `root` until none is left alive, calling `reaped` for
/// every child of this process it reaps on the way. Processes forked meanwhile are
/// found by the next walk; it returns after two walks in a row found nothing alive.
pub fn kill_all(root: Pid, reaped: &mut impl FnMut(Pid, WaitStatus)) {
    let mut quiet_walks = 0;
    while quiet_walks < 2 {
        let tree = living_descendants(root);
        for &pid in &tree {
            let _ = kill(pid, Signal::SIGKILL);
        }
        quiet_walks = if tree.is_empty() { quiet_walks + 1 } else { 0 };
        // Killed processes need a moment to become zombies.
        std::thread::sleep(Duration::from_millis(2));
        reap(reaped);
    }
}

/// Reaps every child of this process that has exited, without blocking, calling
/// `reaped` for each.
pub fn reap(reaped: &mut impl FnMut(Pid, WaitStatus)) {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    reaped(pid, status);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32) -> ProcessEntry {
        ProcessEntry {
            pid,
            ppid,
            zombie: false,
        }
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (sh) S 4241 4242 4242 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(p(4242, 4241)));
        let odd = "17 (a) b (c) Z 1 17 17 0 -1";
        assert_eq!(
            parse_stat(odd),
            Some(ProcessEntry {
                pid: 17,
                ppid: 1,
                zombie: true
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (x)"), None);
    }

    #[test]
    fn descendants_follow_parent_links_across_generations() {
        // 1 ─ 10 ─ 11 ─ 12          the supervisor is 10
        //        └ 13 (a setsid daemon reparented to 10)
        // 1 ─ 20 ─ 21               unrelated
        let all = [
            p(1, 0),
            p(10, 1),
            p(11, 10),
            p(12, 11),
            p(13, 10),
            p(20, 1),
            p(21, 20),
        ];
        let mut tree: Vec<i32> = descendants_in(&all, 10).iter().map(|e| e.pid).collect();
        tree.sort();
        assert_eq!(tree, [11, 12, 13]);
        assert!(descendants_in(&all, 12).is_empty());
        assert!(descendants_in(&all, 99).is_empty());
    }

    #[test]
    fn parents_come_before_children_and_cycles_end() {
        let all = [p(2, 1), p(3, 2), p(4, 3)];
        let order: Vec<i32> = descendants_in(&all, 1).iter().map(|e| e.pid).collect();
        assert_eq!(order, [2, 3, 4]);
        // A torn read could show a cycle; the walk still ends.
        let torn = [p(2, 1), p(3, 2), p(2, 3)];
        assert_eq!(descendants_in(&torn, 1).len(), 2);
    }

    #[test]
    fn this_process_sees_its_real_children() {
        check_proc().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = nix::unistd::getpid();
        let found = living_descendants(me);
        assert!(
            found.contains(&Pid::from_raw(child.id() as i32)),
            "{found:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!living_descendants(me).contains(&Pid::from_raw(child.id() as i32)));
    }
}
