//! Turning refusals into actionable messages.

use perfring::sys::{Errno, Kernel};

/// What perf_event_paranoid allows an unprivileged user, per level.
pub fn paranoid_meaning(level: i64) -> &'static str {
    match level {
        i64::MIN..=-1 => "everything allowed for all users",
        0 => "CPU-wide and kernel profiling allowed; raw tracepoint data needs root",
        1 => "per-process user and kernel profiling; no CPU-wide events for unprivileged users",
        2 => "per-process user-space profiling only for unprivileged users",
        _ => "perf_event_open forbidden for unprivileged users (distribution patch)",
    }
}

/// Whether psample runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Explain a failed open: what failed, why, what to do.
pub fn explain_open(kernel: &dyn Kernel, errno: Errno, what: &str) -> String {
    match errno {
        Errno::EACCES | Errno::EPERM => {
            let paranoid = kernel.sysctl_i64("kernel/perf_event_paranoid");
            let level = paranoid.map_or("unknown".to_string(), |v| v.to_string());
            let meaning = paranoid.map_or("", paranoid_meaning);
            format!(
                "permission denied opening {what}: kernel.perf_event_paranoid is {level} \
                 ({meaning}).\n  Fix: run psample as root, or give it CAP_PERFMON (Linux 5.8+) or \
                 CAP_SYS_ADMIN (`sudo setcap cap_perfmon,cap_sys_ptrace+ep $(command -v psample)`), \
                 or allow it for all users with `sudo sysctl kernel.perf_event_paranoid=1` \
                 (-1 for CPU-wide and tracepoint events)."
            )
        }
        Errno::ESRCH => format!("{what}: no such process or thread (it may have exited)"),
        Errno::ENOENT | Errno::ENODEV | Errno::EOPNOTSUPP => format!(
            "{what}: this kernel or machine does not provide that event ({}). \
             Try -e cpu-clock, which works everywhere including VMs.",
            errno.desc()
        ),
        Errno::EMFILE => format!(
            "{what}: too many open files (psample needs one per thread and CPU; the limit is \
             {} after raising it to the hard limit). Raise the hard limit (`ulimit -Hn 65536` \
             as root, or LimitNOFILE= in the service unit), or profile fewer threads (-t).",
            crate::limits::nofile_soft().map_or("unknown".to_string(), |n| n.to_string())
        ),
        Errno::ENFILE => format!(
            "{what}: the system-wide open file table is full (fs.file-max); raise it with \
             `sysctl fs.file-max=...` or profile fewer threads (-t)."
        ),
        Errno::EINVAL => format!(
            "{what}: the kernel rejected the event settings even after dropping every optional \
             feature ({}). Run `psample check` to see what this kernel supports.",
            errno.desc()
        ),
        e => format!("{what}: {} ({e})", e.desc()),
    }
}
