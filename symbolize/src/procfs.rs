//! What we need to know about a target process from /proc (files it names are opened by
//! [`crate::target_file`]).

use std::fs::File;
use std::io::Read;

/// /proc/PID/status is a few KiB; a bound keeps a misbehaving procfs from costing memory.
const STATUS_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// Innermost PID-namespace pid (last NSpid field), the pid the process knows itself by.
    pub ns_pid: Option<u32>,
    /// Real and effective uid.
    pub uids: Vec<u32>,
}

pub fn read_status(pid: u32) -> Option<ProcStatus> {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/status"))
        .ok()?
        .take(STATUS_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    Some(parse_status(&text))
}

pub fn parse_status(text: &str) -> ProcStatus {
    let mut st = ProcStatus::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("NSpid:") {
            st.ns_pid = rest.split_whitespace().last().and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Uid:") {
            st.uids = rest
                .split_whitespace()
                .take(2)
                .filter_map(|s| s.parse().ok())
                .collect();
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let st = parse_status("Name:\tx\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t4242\t7\n");
        assert_eq!(st.ns_pid, Some(7));
        assert_eq!(st.uids, vec![1000, 1001]);
        assert_eq!(parse_status("garbage").ns_pid, None);
    }

    #[test]
    fn own_status_is_readable() {
        let st = read_status(std::process::id()).expect("own status");
        assert_eq!(st.ns_pid, Some(std::process::id()));
        // SAFETY: getuid has no preconditions.
        assert!(st.uids.contains(&unsafe { libc::getuid() }));
    }
}
