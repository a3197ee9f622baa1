//! Errors from the BPF path, each with the errno and a one-line what-to-do, because the
//! person reading them is deciding between fixing permissions and passing `--bpf never`.

use nix::errno::Errno;

use super::insn::AsmError;

/// Why the BPF stack counter could not be loaded, attached or read.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A bpf(2) command or the SET_BPF ioctl was refused.
    #[error("{what} failed: {errno}; {hint}")]
    Syscall {
        /// Which command.
        what: &'static str,
        /// Why.
        errno: Errno,
        /// What to do about it.
        hint: String,
    },
    /// The verifier refused the program. `log` is its full output (possibly truncated by the
    /// kernel to the buffer size); the display shows only its last line, the reason.
    #[error("the kernel's BPF verifier rejected psample's program: {errno}: {}; {hint}", last_line(.log))]
    Verifier {
        /// The load's errno.
        errno: Errno,
        /// The verifier's log.
        log: String,
        /// What to do about it.
        hint: String,
    },
    /// An option outside what the program supports.
    #[error("invalid BPF option: {0}")]
    InvalidOption(String),
    /// A bug in psample's program builder, not something the user can fix.
    #[error("internal error assembling the BPF program: {0}")]
    Assemble(#[from] AsmError),
}

impl BpfError {
    /// The errno the kernel returned, for callers that branch on it (`--bpf auto`).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            BpfError::Syscall { errno, .. } | BpfError::Verifier { errno, .. } => Some(*errno),
            BpfError::InvalidOption(_) | BpfError::Assemble(_) => None,
        }
    }

    /// The verifier output, when the failure came from the verifier.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            BpfError::Verifier { log, .. } => Some(log),
            _ => None,
        }
    }
}

fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("processed "))
        .unwrap_or("(no verifier log)")
}

/// What to do about `errno` from `what`.
pub(crate) fn hint(what: &str, errno: Errno) -> String {
    let fallback = "or use --bpf never to sample through the ring buffer";
    let text = match errno {
        Errno::ENOSYS => "this kernel has no bpf(2) (needs 3.18+ built with CONFIG_BPF_SYSCALL)",
        Errno::EPERM | Errno::EACCES => {
            "needs root (or CAP_BPF + CAP_PERFMON on 5.8+); check kernel.unprivileged_bpf_disabled, \
             and RLIMIT_MEMLOCK (ulimit -l) on kernels before 5.11"
        }
        Errno::ENOMEM => "the kernel could not allocate the maps: lower the map sizes or raise RLIMIT_MEMLOCK",
        Errno::E2BIG => "a map size is larger than this kernel allows: lower it",
        Errno::ENOTTY => "this kernel has no PERF_EVENT_IOC_SET_BPF (needs 4.1+)",
        Errno::EEXIST => "the perf event already has a BPF program attached",
        Errno::EPROTO => "precise (PEBS) events need PERF_SAMPLE_CALLCHAIN to use bpf_get_stackid",
        Errno::EINVAL if what.contains("STACK_TRACE") => {
            "this kernel lacks BPF_MAP_TYPE_STACK_TRACE (needs 4.6+) or refused the map size"
        }
        Errno::EINVAL if what.contains("PROG_LOAD tracepoint") => {
            "this kernel lacks what psample's tracepoint programs need (4.18+: bpf_get_stack)"
        }
        Errno::EINVAL if what.contains("PROG_LOAD") => {
            "this kernel lacks BPF_PROG_TYPE_PERF_EVENT programs (needs 4.9+; RHEL 7.6+ as a tech preview)"
        }
        Errno::EINVAL if what.contains("SET_BPF") => {
            "this kernel cannot attach a perf_event BPF program to this event (needs 4.9+ and a sampling event)"
        }
        _ => "unexpected refusal",
    };
    format!("{text}; {fallback}")
}

pub(crate) fn syscall(what: &'static str, errno: Errno) -> BpfError {
    BpfError::Syscall {
        what,
        errno,
        hint: hint(what, errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_errno_and_advice() {
        let e = syscall("bpf(BPF_PROG_LOAD)", Errno::EINVAL);
        let text = e.to_string();
        assert!(text.contains("EINVAL"), "{text}");
        assert!(text.contains("4.9"), "{text}");
        assert!(text.contains("--bpf never"), "{text}");
        assert_eq!(e.errno(), Some(Errno::EINVAL));
    }

    #[test]
    fn verifier_error_shows_the_reason_line() {
        let e = BpfError::Verifier {
            errno: Errno::EACCES,
            log: "0: (bf) r6 = r1\nR1 invalid mem access 'scalar'\nprocessed 3 insns\n".into(),
            hint: "report a bug".into(),
        };
        let text = e.to_string();
        assert!(text.contains("R1 invalid mem access"), "{text}");
        assert!(!text.contains("processed"), "{text}");
        assert!(e.verifier_log().is_some_and(|l| l.contains("(bf)")));
    }
}
