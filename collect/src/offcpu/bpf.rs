//! `offcpu --bpf`: blocked time summed in the kernel (perfring's off-CPU programs on
//! `sched_switch`, `sched_waking` and `sched_process_fork`), where the kernel allows it.
//!
//! The programs are loaded and attached — through the perf_event interface, a counting
//! tracepoint event per program with PERF_EVENT_IOC_SET_BPF, as `record --bpf` does —
//! before the session is set up, so a refusal (probed by errno) falls back to the ring path
//! with nothing launched or opened yet. The session itself opens only per-CPU bpf-output
//! events: they carry what the maps cannot take (spilled stacks and intervals) and, with
//! the side-band bits, the mmap/comm/exit records user stacks are symbolized with. The
//! programs do nothing until [`super::in_kernel::InKernel`] arms them at the start.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use perfring::attr::{sample, AttrBuilder, EventKind, RawAttr};
use perfring::bpf::offcpu::{
    int_field, runtime_offset, state_decisions, Filter, OffcpuBpf, OffcpuOptions, SwitchFields,
};
use perfring::bpf::PidNamespace;
use perfring::sys::{Ioctl, Kernel};
use perfring::tracepoint::{StateTable, TracepointFormat};

use super::in_kernel::{BpfPlan, InKernel};
use super::{labels, OffCpuOptions, PAGES};
use crate::continuous::Intervals;
use crate::session::{Observer, Setup, StopCause};
use crate::target::Target;
use crate::Error;

pub use crate::oncpu::bpf::BpfMode;

/// perf_event_open's PERF_FLAG_FD_CLOEXEC (3.14; the programs stay attached either way).
const PERF_FLAG_FD_CLOEXEC: u64 = 8;

/// Threads that can be blocked at once (the start map), per kind of target.
const THREADS_SYSTEM_WIDE: u32 = 65536;
const THREADS_TARGETED: u32 = 16384;
/// Distinct (thread, stacks, state, waker) keys between two drains (a second apart).
const COUNT_ENTRIES: u32 = 65536;
/// Distinct stacks per epoch (each of the two stack maps); what does not fit is spilled.
const STACK_ENTRIES: u32 = 16384;

/// The programs, loaded and attached, and what the summary says about them.
pub struct Loaded {
    /// The programs and their maps.
    pub bpf: OffcpuBpf,
    /// The tracepoint events the programs are attached to (closing them detaches).
    pub events: Vec<OwnedFd>,
    /// What was attached where, for the `mechanisms` line.
    pub mechanisms: Vec<String>,
    /// Switch-ins missed by `sched_switch` are dated by the thread's CPU time (BTF).
    pub runtime_dating: bool,
}

/// Why the ring path is used instead, or the loaded programs.
pub enum Decision {
    /// Aggregate in the kernel.
    Use(Box<Loaded>),
    /// Use the ring buffer; why.
    NotUsed(String),
}

fn refuse(mode: BpfMode, why: String) -> Result<Decision, Error> {
    match mode {
        BpfMode::Always => Err(Error::new(format!("--bpf always: {why}"))),
        _ => Ok(Decision::NotUsed(why)),
    }
}

/// A tracepoint's id and format, or why not.
fn tracepoint(kernel: &dyn Kernel, name: &str) -> Result<(u64, TracepointFormat), String> {
    let tracing = crate::tracing::locate(kernel).map_err(|e| e.to_string())?;
    let fs = crate::tracing::Fs(kernel);
    let id = tracing
        .event_id(&fs, "sched", name)
        .map_err(|e| format!("sched:{name}: {e}"))?;
    let fmt = tracing
        .format(&fs, "sched", name)
        .map_err(|e| format!("sched:{name} format: {e}"))?;
    Ok((id, fmt))
}

/// The programs' options for `args` and `target`; `waking`/`fork` are the formats found.
fn options(
    args: &OffCpuOptions,
    target: &Target,
    kernel: &dyn Kernel,
    switch: &TracepointFormat,
    waking: Option<&TracepointFormat>,
    fork: Option<&TracepointFormat>,
) -> Result<OffcpuOptions, String> {
    let table = StateTable::from_print_fmt(&switch.print_fmt);
    let (states, unknown_state) = state_decisions(&table, |s| args.state.accepts(s));
    let filter = match target {
        Target::AllCpus => Filter::All,
        Target::Tids(_) => Filter::Threads,
        // --cgroup reaches offcpu as the group's processes (offcpu::cgroup_as_processes).
        Target::Pids(_) | Target::Command(_) | Target::Cgroup(_) => Filter::Processes,
    };
    // The spill array is indexed by CPU number: room for the highest online one.
    let cpus = kernel
        .online_cpus()
        .ok()
        .and_then(|c| c.iter().max().copied())
        .map_or(256, |m| m + 1);
    Ok(OffcpuOptions {
        filter,
        own_tgid: std::process::id(),
        min_ns: args.min_us.saturating_mul(1000),
        max_ns: args.max_us.map(|m| m.saturating_mul(1000)),
        states,
        unknown_state,
        switch: SwitchFields::from_format(switch).map_err(|e| format!("sched_switch: {e}"))?,
        waking_pid: match waking {
            Some(f) => Some(int_field(f, "pid").map_err(|e| format!("sched_waking: {e}"))?),
            None => None,
        },
        wakers: args.wakers,
        runtime_off: runtime_offset(),
        fork_child_pid: match fork {
            Some(f) => Some(int_field(f, "child_pid").map_err(|e| format!("fork: {e}"))?),
            None => None,
        },
        threads: if filter == Filter::All {
            THREADS_SYSTEM_WIDE
        } else {
            THREADS_TARGETED
        },
        count_entries: COUNT_ENTRIES,
        stack_entries: STACK_ENTRIES,
        cpus,
        user_stacks: true,
        kernel_stacks: true,
        log_verifier: args.session.verbose,
    })
}

/// A counting (never sampling) tracepoint event for every task on one CPU: a program
/// attached to it runs on every CPU, and nothing is written to a ring.
fn attach_program(
    kernel: &dyn Kernel,
    id: u64,
    cpu: u32,
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<OwnedFd, String> {
    let mut attr: RawAttr = AttrBuilder::new(EventKind::Tracepoint(id))
        .disabled(true)
        .build();
    let fd = kernel
        .perf_event_open(&mut attr, -1, cpu as i32, None, PERF_FLAG_FD_CLOEXEC)
        .map_err(|e| format!("perf_event_open of the tracepoint: {}", e.desc()))?;
    kernel
        .ioctl(fd.as_fd(), Ioctl::SetBpf(prog))
        .map_err(|e| format!("the kernel refused PERF_EVENT_IOC_SET_BPF: {}", e.desc()))?;
    Ok(fd)
}

/// Load the programs and attach them, or say why not (`--bpf always`: an error).
pub fn setup(
    args: &OffCpuOptions,
    target: &Target,
    kernel: &dyn Kernel,
) -> Result<Decision, Error> {
    let mode = args.bpf;
    if mode == BpfMode::Never {
        return Ok(Decision::NotUsed("--bpf never".into()));
    }
    // The in-kernel aggregation keys frame-pointer chains only: never worse than the ring.
    if let Some(why) = crate::oncpu::bpf::ring_only(args.session.stack) {
        return refuse(mode, why.into());
    }
    // The programs know threads by the kernel's global ids (sched_switch's and
    // sched_waking's pid fields, bpf_get_current_pid_tgid); a tracepoint's fields have no
    // namespace-relative form. In a nested pid namespace (a container, `unshare --pid`)
    // psample, its targets and /proc use that namespace's ids: threads would be mis-named
    // and the target filter would miss. The ring's records carry the namespace's ids.
    if PidNamespace::own_if_nested().is_some() {
        return refuse(
            mode,
            "psample runs in a nested pid namespace and the off-CPU programs see only \
             the kernel's global pids"
                .into(),
        );
    }
    match load_and_attach(args, target, kernel) {
        Ok(l) => Ok(Decision::Use(Box::new(l))),
        Err(why) => refuse(mode, why),
    }
}

fn load_and_attach(
    args: &OffCpuOptions,
    target: &Target,
    kernel: &dyn Kernel,
) -> Result<Loaded, String> {
    let (switch_id, switch) = tracepoint(kernel, "sched_switch")?;
    // sched_waking (4.3+) runs before the wakee can be queued; sched_wakeup after.
    let waking = tracepoint(kernel, "sched_waking")
        .or_else(|_| tracepoint(kernel, "sched_wakeup"))
        .ok();
    if args.wakers && waking.is_none() {
        return Err("--wakers needs sched:sched_waking or sched:sched_wakeup".into());
    }
    let fork = tracepoint(kernel, "sched_process_fork").ok();
    let opts = options(
        args,
        target,
        kernel,
        &switch,
        waking.as_ref().map(|w| &w.1),
        fork.as_ref().map(|f| &f.1),
    )?;
    let runtime_dating = opts.runtime_off.is_some();
    let bpf = OffcpuBpf::load(&opts).map_err(|e| format!("cannot load the BPF programs: {e}"))?;
    if args.session.verbose && !bpf.verifier_log().is_empty() {
        crate::errln!("psample: BPF verifier log:\n{}", bpf.verifier_log());
    }
    let cpu = kernel
        .online_cpus()
        .ok()
        .and_then(|c| c.first().copied())
        .unwrap_or(0);
    let mut events = vec![attach_program(kernel, switch_id, cpu, bpf.switch_prog())?];
    let mut mechanisms =
        vec!["blocked time summed in the kernel (BPF on sched:sched_switch)".into()];
    if let (Some(prog), Some((id, f))) = (bpf.waking_prog(), &waking) {
        events.push(attach_program(kernel, *id, cpu, prog)?);
        let what = if args.wakers {
            "wakeups and waker stacks"
        } else {
            "wakeup times"
        };
        mechanisms.push(format!("{what} from BPF on sched:{}", f.name));
    }
    if let (Some(prog), Some((id, _))) = (bpf.fork_prog(), &fork) {
        events.push(attach_program(kernel, *id, cpu, prog)?);
        mechanisms.push("children followed by BPF on sched:sched_process_fork".into());
    }
    Ok(Loaded {
        bpf,
        events,
        mechanisms,
        runtime_dating,
    })
}

/// The per-CPU bpf-output events: spilled records, and the side-band records.
fn spill_attr() -> RawAttr {
    AttrBuilder::new(EventKind::BpfOutput)
        .period(1)
        .sample_type(sample::RAW | sample::TID | sample::TIME | sample::CPU)
        .disabled(true)
        .mmap(true)
        .mmap2(true)
        .comm(true)
        .comm_exec(true)
        .task(true)
        .sample_id_all(true)
        .wakeup_watermark(0)
        .build()
}

/// One session with the programs in `loaded`: the spill events open on every CPU, the
/// targets in the programs' map, then the read loop.
pub fn run_session(
    args: &OffCpuOptions,
    target: Target,
    kernel: Arc<dyn Kernel>,
    loaded: Box<Loaded>,
    intervals: Option<&mut Intervals>,
    observer: &mut dyn Observer,
) -> Result<StopCause, Error> {
    let mut s = Setup::new("offcpu", &args.session, target, kernel.clone(), PAGES)?;
    let spill = s.session.add_spec("bpf-output", spill_attr());
    let a = s.attach(&[], &[spill])?;
    let set = |e: perfring::bpf::BpfError| Error::new(format!("offcpu --bpf: {e}"));
    // Opened in the order of the online CPUs; the programs index the array by CPU number.
    let cpus = kernel
        .online_cpus()
        .map_err(|e| Error::new(format!("cannot list online CPUs: {e}")))?;
    for (cpu, fd) in cpus.iter().zip(a.session.fds_of(spill)) {
        loaded
            .bpf
            .set_spill_event(*cpu, fd.as_raw_fd())
            .map_err(set)?;
    }
    let ids: Vec<u32> = match &a.target {
        Target::Tids(tids) => tids.clone(),
        Target::AllCpus => Vec::new(),
        _ => a.pids.clone(),
    };
    for id in ids {
        loaded.bpf.add_target(id).map_err(set)?;
    }
    let plan = BpfPlan {
        target: a.target.clone(),
        pids: a.pids.clone(),
        labels: labels(args.wakers, &args.session.labels),
        wakers: args.wakers,
    };
    let mut collector = InKernel::new(plan, *loaded);
    a.run(&mut collector, intervals, observer)
}
