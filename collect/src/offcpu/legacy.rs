//! Switch-ins on kernels without context-switch records (before 4.3: upstream 3.10, RHEL 7
//! before 7.7), from two independent sources; each blocked interval ends at whichever of
//! them comes first:
//!
//! - CPU-wide `sched_switch` samples whose `next_pid` is a target thread (filtered in the
//!   kernel where it takes the filter, and always in psample). They depend on the tracepoint
//!   firing for the switch *into* the thread, which not every kernel does when the CPU was
//!   idle (6.18 never fires it for a switch away from the idle task), so a thread woken on an
//!   idle CPU may never be seen coming back.
//! - per-task `raw_syscalls:sys_exit` samples (2.6.32+), opened like the switch-out events
//!   (inherited, per CPU). They fire in the blocked thread's own context when the system call
//!   it blocked in returns, so neither the idle task nor the CPU matters. An interval ended
//!   there includes the time from the switch-in to the syscall return (normally a few
//!   microseconds): with `--wakers` the switch-in is known to lie between the wakeup and the
//!   exit, and that bound is reported. A thread that blocked outside a system call (a page
//!   fault) is ended by its next syscall exit, later; without `--wakers` that is not bounded.
//!
//! The syscall-exit samples are kept small: no callchain (both halves excluded), no
//! side-band records, and in DWARF mode 8 bytes of stack (the sample layout is shared with
//! the other events of the ring, so the sample type cannot differ).

use perfring::attr::{flag, RawAttr};
use perfring::event::SessionError;
use perfring::sys::Errno;

use super::filter;
use super::intervals::Report;
use crate::session::Attached;
use crate::Error;

/// Stack bytes a syscall-exit sample copies in DWARF mode: the smallest the kernel takes.
const SYS_EXIT_STACK: u32 = 8;

/// The switch-in sources opened on a kernel without context-switch records.
pub struct Sources {
    /// CPU-wide sched_switch.
    pub cpu_switch: usize,
    /// Per-task raw_syscalls:sys_exit, when the kernel has it.
    pub sys_exit: Option<usize>,
    /// What the mechanism line says about them.
    pub mechanism: String,
}

impl Sources {
    /// Opens CPU-wide sched_switch on every CPU and, where the kernel has it (`sys_exit_id`,
    /// the tracepoint's id or why there is none), raw_syscalls:sys_exit on every thread the
    /// switch-out events (`switch`) were opened on. Both start from the switch-out events'
    /// attr as the kernel accepted it (sample layout, clock, call graph).
    pub fn open(
        a: &mut Attached<'_>,
        switch: usize,
        sys_exit_id: Result<u64, String>,
    ) -> Result<Sources, Error> {
        let cpus = a
            .session
            .kernel()
            .online_cpus()
            .map_err(|e| Error::new(format!("cannot list CPUs: {e}")))?;
        let mut cpu_wide = a.session.spec(switch).attr;
        cpu_wide.set(flag::CONTEXT_SWITCH, false);
        for bit in [flag::INHERIT, flag::ENABLE_ON_EXEC] {
            cpu_wide.set(bit, false);
        }
        clear_sideband(&mut cpu_wide);
        let cpu_switch = a
            .session
            .add_spec("sched:sched_switch (cpu-wide)", cpu_wide);
        for &cpu in &cpus {
            a.session
                .open(cpu_switch, -1, cpu)
                .map_err(|e| Error::new(format!("CPU-wide sched_switch on CPU {cpu}: {e}")))?;
        }
        // Not waiting for a launched command's exec: enabled as it starts.
        a.cpu_wide.push(cpu_switch);
        let filtered = filter::to_targets(a, cpu_switch, "next_pid");
        let (sys_exit, exit_note) = match sys_exit_id {
            Ok(id) => (
                Some(open_sys_exit(a, id, switch, &cpus)?),
                SYS_EXIT_SOURCE.into(),
            ),
            Err(why) => (None, format!("raw_syscalls:sys_exit unavailable: {why}")),
        };
        let cpu_wide = format!(
            "CPU-wide sched_switch (filtered {})",
            if filtered {
                "in the kernel and in psample"
            } else {
                "in psample"
            }
        );
        let mechanism = match sys_exit {
            Some(_) => format!("switch-ins: {cpu_wide} or {exit_note}, whichever comes first"),
            None => format!("switch-ins: {cpu_wide} only ({exit_note})"),
        };
        Ok(Sources {
            cpu_switch,
            sys_exit,
            mechanism,
        })
    }
}

/// How the mechanism line names the second source.
const SYS_EXIT_SOURCE: &str = "the thread's next syscall exit (raw_syscalls:sys_exit per task)";

/// Opens raw_syscalls:sys_exit (tracepoint `id`) on every thread `switch` is open on,
/// per CPU, inherited and waiting for a launched command's exec as `switch` is.
fn open_sys_exit(
    a: &mut Attached<'_>,
    id: u64,
    switch: usize,
    cpus: &[u32],
) -> Result<usize, Error> {
    let mut attr = a.session.spec(switch).attr;
    attr.config = id;
    attr.set(flag::CONTEXT_SWITCH, false);
    attr.set(flag::INHERIT, a.target.inherits());
    attr.set(flag::ENABLE_ON_EXEC, a.target.is_command());
    clear_sideband(&mut attr);
    // Only the time and thread matter: no callchain, the least stack the layout allows.
    attr.set(flag::EXCLUDE_CALLCHAIN_KERNEL, true);
    attr.set(flag::EXCLUDE_CALLCHAIN_USER, true);
    if a.opts.stack.stack_copy().is_some() {
        attr.sample_stack_user = SYS_EXIT_STACK;
    }
    let spec = a.session.add_spec("raw_syscalls:sys_exit", attr);
    let mut tids: Vec<u32> = a.session.threads_of(switch).collect();
    tids.sort_unstable();
    tids.dedup();
    for tid in tids {
        for &cpu in cpus {
            match a.session.open(spec, tid as i32, cpu) {
                Ok(()) => {}
                // The thread exited meanwhile: nothing of it to end.
                Err(SessionError::Open(e)) if e.errno == Errno::ESRCH => break,
                Err(e) => {
                    return Err(Error::new(format!(
                        "raw_syscalls:sys_exit for thread {tid}: {e}"
                    )))
                }
            }
        }
    }
    Ok(spec)
}

fn clear_sideband(attr: &mut RawAttr) {
    for bit in [
        flag::MMAP,
        flag::MMAP2,
        flag::COMM,
        flag::COMM_EXEC,
        flag::TASK,
    ] {
        attr.set(bit, false);
    }
}

/// The summary line saying which source ended the intervals, and the error that bounds.
pub fn describe_ends(
    report: &Report,
    switch_ins_seen: u64,
    sys_exit: bool,
    wakers: bool,
) -> String {
    let mut s = format!("{switch_ins_seen} seen from CPU-wide sched_switch");
    if !sys_exit {
        s.push_str("; no second source: intervals whose switch-in was missed are not counted");
        return s;
    }
    s.push_str(&format!(
        "; {} intervals ended at the thread's next syscall exit instead",
        report.ended_by_ran
    ));
    if report.ended_by_ran == 0 {
        return s;
    }
    s.push_str(", whose blocked time may include up to the time from wake-up to syscall return");
    let bounded = report.ended_by_ran - report.ran_unbounded;
    if bounded > 0 {
        s.push_str(&format!(
            ": at most {:.3} ms in total for {bounded} (measured from their wakeups)",
            report.ran_slack_ns as f64 / 1e6
        ));
    }
    if report.ran_unbounded > 0 {
        s.push_str(&format!(
            "; {} without a wakeup seen{}",
            report.ran_unbounded,
            if wakers {
                ", not bounded"
            } else {
                " (--wakers measures the bound)"
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_source_and_its_bound() {
        let mut r = Report::default();
        assert!(describe_ends(&r, 5, false, false).contains("not counted"));
        r.ended_by_ran = 3;
        r.ran_unbounded = 3;
        let s = describe_ends(&r, 5, true, false);
        assert!(
            s.contains("3 intervals ended at the thread's next syscall exit"),
            "{s}"
        );
        assert!(s.contains("wake-up to syscall return"), "{s}");
        assert!(s.contains("--wakers measures"), "{s}");
        r.ran_unbounded = 1;
        r.ran_slack_ns = 2_500_000;
        let s = describe_ends(&r, 5, true, true);
        assert!(s.contains("at most 2.500 ms in total for 2"), "{s}");
        assert!(s.contains("1 without a wakeup seen, not bounded"), "{s}");
    }
}
