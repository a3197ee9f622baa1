//! Resource limits psample needs raised before it opens events.
//!
//! Every profiled thread costs one perf fd per CPU (and offcpu/`-a` several per CPU), so the
//! common soft limit of 1024 open files runs out on a 64-CPU host or a 200-thread JVM long
//! before the hard limit does. Raising soft to hard is what perf does too; it needs no
//! privilege and cannot affect other processes.

use std::sync::OnceLock;

/// RLIMIT_NOFILE as psample found it: a launched command gets it back (see
/// [`original_nofile`]).
static ORIGINAL_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// The open-files limit before [`raise_nofile`] changed it (`None` if it never ran).
pub fn original_nofile() -> Option<libc::rlimit> {
    ORIGINAL_NOFILE.get().copied()
}

/// Raise RLIMIT_NOFILE's soft limit to its hard limit. Returns (old soft, new soft) when it
/// changed, `None` when it already was at the hard limit or the call failed (the open of an
/// event will then report EMFILE with the fix).
pub fn raise_nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let _ = ORIGINAL_NOFILE.set(lim);
    // RLIM_INFINITY is refused for NOFILE (fs.nr_open caps it); stay within what the kernel
    // accepts.
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        nr_open().unwrap_or(lim.rlim_cur)
    } else {
        lim.rlim_max
    };
    if target <= lim.rlim_cur {
        return None;
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = target;
    // SAFETY: setrlimit reads a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return None;
    }
    Some((old, target))
}

/// The current soft limit on open files.
pub fn nofile_soft() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_hard_limit() {
        raise_nofile();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a local struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        if lim.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(lim.rlim_cur, lim.rlim_max);
        }
        assert_eq!(nofile_soft(), Some(lim.rlim_cur));
        // Already raised: nothing more to do.
        assert_eq!(raise_nofile(), None);
    }
}
