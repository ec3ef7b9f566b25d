//! High availability's fence of last resort.
//!
//! oxvirtd feeds the watchdog a few times a second over a Unix socket, one JSON [`Feed`] per
//! line: how long the feed holds (until this host's fencing deadline, counted from its last
//! lease renewal) and which QEMUs to kill when it runs out. The watchdog is a process of its own
//! (started by oxvirtd, outliving it): when oxvirtd hangs, crashes or can no longer renew its
//! lease, the feeds stop or say so, and the watchdog kills those QEMUs at the deadline — before
//! the cluster's leader may start the VMs on another host. A QEMU is killed only while it is the
//! very process fed (its pid and its start time in `/proc`), never a process that took its pid.

use std::time::{Duration, Instant};

pub mod kernel;

/// One process to kill when fencing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Guarded {
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat`, field 22): the process, not just the number.
    pub start_time: u64,
}

/// What oxvirtd says each time it feeds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Feed {
    /// How long from now the host may keep running these QEMUs (0: fence now).
    pub valid_for_ms: u64,
    pub guard: Vec<Guarded>,
}

/// The watchdog's state: the processes guarded and until when.
#[derive(Debug, Default)]
pub struct Watch {
    deadline: Option<Instant>,
    guard: Vec<Guarded>,
}

impl Watch {
    /// A feed: the list and the deadline are replaced by its own.
    pub fn feed(&mut self, f: Feed, now: Instant) {
        self.guard = f.guard;
        self.deadline = Some(now + Duration::from_millis(f.valid_for_ms));
    }

    /// Whether the deadline passed with processes guarded.
    pub fn due(&self, now: Instant) -> bool {
        !self.guard.is_empty() && self.deadline.is_some_and(|d| now >= d)
    }

    /// The processes to kill now; the watch is empty afterwards (until the next feed).
    pub fn fence(&mut self) -> Vec<Guarded> {
        self.deadline = None;
        std::mem::take(&mut self.guard)
    }

    pub fn guarded(&self) -> &[Guarded] {
        &self.guard
    }
}

/// A process's start time (clock ticks after boot), `None` when there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    state_and_start(pid).map(|(_, start)| start)
}

/// A process's state letter (`R`, `S`, `Z`...) and start time, from one read of its
/// `/proc/<pid>/stat`; `None` when there is no such process.
pub(crate) fn state_and_start(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// Kills `g` (SIGKILL) when it is still the process fed; says whether it did.
pub fn kill(g: Guarded) -> bool {
    if g.pid <= 1 || start_time(g.pid) != Some(g.start_time) {
        return false;
    }
    // SAFETY: kill(2) with a pid checked above; no memory is involved.
    unsafe { libc::kill(g.pid as i32, libc::SIGKILL) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_holds_until_its_deadline_and_a_fence_empties_the_watch() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        assert!(!w.due(t0 + Duration::from_secs(100)), "nothing guarded, nothing due");
        let g = Guarded { pid: 42, start_time: 7 };
        w.feed(Feed { valid_for_ms: 1000, guard: vec![g] }, t0);
        assert!(!w.due(t0 + Duration::from_millis(999)));
        assert!(w.due(t0 + Duration::from_millis(1000)));
        // A later feed moves the deadline.
        w.feed(Feed { valid_for_ms: 1000, guard: vec![g] }, t0 + Duration::from_millis(900));
        assert!(!w.due(t0 + Duration::from_millis(1800)));
        assert!(w.due(t0 + Duration::from_millis(1900)));
        assert_eq!(w.fence(), vec![g]);
        assert!(!w.due(t0 + Duration::from_secs(100)) && w.guarded().is_empty());
        // A feed saying "now" is due at once.
        w.feed(Feed { valid_for_ms: 0, guard: vec![g] }, t0);
        assert!(w.due(t0));
    }

    #[test]
    fn only_the_process_fed_is_killed() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).expect("a start time");
        // Another start time: another process that took the pid, left alone.
        assert!(!kill(Guarded { pid, start_time: start + 1 }));
        assert!(child.try_wait().unwrap().is_none());
        assert!(kill(Guarded { pid, start_time: start }));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!kill(Guarded { pid: 1, start_time: start_time(1).unwrap_or(0) }), "never init");
    }
}
