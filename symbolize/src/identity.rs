//! Which process a PID means. PIDs are reused (quickly under churn, or on purpose with
//! `clone3`'s `set_tid`), so anything cached by PID is cached by (pid, start time) instead:
//! the start time (clock ticks after boot, field 22 of `/proc/PID/stat`) never repeats for
//! the same PID while the system runs.

use std::fs::File;
use std::io::Read;

/// /proc/PID/stat is a few hundred bytes; a bound keeps a strange procfs from costing memory.
const STAT_LIMIT: u64 = 4096;

/// One process: its PID and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its start time (clock ticks after boot, /proc/PID/stat field 22).
    pub start_time: u64,
    /// Exited and not reaped yet (`Z`), or dead (`X`).
    pub exited: bool,
}

impl ProcessIdentity {
    /// The process that has `pid` now (zombies included), if any.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid,
            start_time: stat(pid)?.start_time,
        })
    }

    /// Whether `pid` still means this process and it has not exited.
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_time == self.start_time && !s.exited)
    }

    /// Whether `pid` still means this process (exited or not).
    pub fn is_current(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_time == self.start_time)
    }
}

/// Start time and state of `pid` from `/proc/PID/stat`.
pub fn stat(pid: u32) -> Option<ProcStat> {
    if pid == 0 {
        return None;
    }
    let mut text = String::new();
    File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .take(STAT_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    parse_stat(&text)
}

/// Parses the text of `/proc/PID/stat`; the command name may contain spaces and `)`, so
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // Fields 4..=21 lie between the state (3) and the start time (22).
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat {
        start_time,
        exited: matches!(state, "Z" | "X" | "x"),
    })
}

/// The effective owner of a process (the owner of its /proc directory).
pub fn owner_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_comm() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.start_time, 987654);
        assert!(!s.exited);
        assert!(parse_stat("42 (x) Z 1 2").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_identity_is_stable_and_distinct_from_others() {
        let me = ProcessIdentity::of(std::process::id()).expect("own stat");
        assert!(me.is_running());
        let stale = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!stale.is_current());
        assert!(ProcessIdentity::of(0).is_none());
    }
}
