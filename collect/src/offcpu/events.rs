//! The events `offcpu` opens, by what the kernel offers (fallback-first, each choice said in
//! the summary's `mechanisms` line): `sched_switch` per task for switch-outs, context-switch
//! records for switch-ins (before 4.3 CPU-wide `sched_switch` and per-task syscall exits,
//! see [`super::legacy`]), `sched_wakeup` per CPU for wakers.

use perfring::attr::{flag, sample, AttrBuilder, EventKind, RawAttr};
use perfring::features::{Feature, Support};
use perfring::sys::Kernel;
use perfring::tracepoint::{SchedSwitchDecoder, SchedWakeupDecoder, TracepointFormat, Tracing};

use super::{filter, legacy};
use crate::fast_map::FastMap;
use crate::session::{Attached, Setup};
use crate::stack::StackMode;
use crate::target::Target;
use crate::Error;

/// The sched tracepoints offcpu samples, and how their RAW payloads are decoded.
pub struct Tracepoints {
    tracing: Tracing,
    switch_id: u64,
    /// Decodes `sched_switch` payloads.
    pub switch_dec: SchedSwitchDecoder,
    wakeup: Option<(u64, SchedWakeupDecoder)>,
}

impl Tracepoints {
    /// Find `sched_switch` (and `sched_wakeup` for `wakers`) and understand their formats.
    pub fn locate(kernel: &dyn Kernel, wakers: bool) -> Result<Tracepoints, Error> {
        let tracing = crate::tracing::locate(kernel)?;
        let fs = crate::tracing::Fs(kernel);
        let tp = |name: &str| -> Result<(u64, TracepointFormat), Error> {
            let id = tracing
                .event_id(&fs, "sched", name)
                .map_err(|e| Error::new(format!("offcpu needs sched:{name}: {e}")))?;
            let fmt = tracing
                .format(&fs, "sched", name)
                .map_err(|e| Error::new(format!("reading sched:{name} format: {e}")))?;
            Ok((id, fmt))
        };
        let (switch_id, switch_fmt) = tp("sched_switch")?;
        let switch_dec = SchedSwitchDecoder::new(&switch_fmt)
            .map_err(|e| Error::new(format!("sched_switch format not understood: {e}")))?;
        let wakeup = if wakers {
            let (id, fmt) = tp("sched_wakeup")?;
            let dec = SchedWakeupDecoder::new(&fmt)
                .map_err(|e| Error::new(format!("sched_wakeup format not understood: {e}")))?;
            Some((id, dec))
        } else {
            None
        };
        Ok(Tracepoints {
            tracing,
            switch_id,
            switch_dec,
            wakeup,
        })
    }

    /// The id of another tracepoint, or why it cannot be used.
    fn event_id(&self, kernel: &dyn Kernel, group: &str, name: &str) -> Result<u64, String> {
        self.tracing
            .event_id(&crate::tracing::Fs(kernel), group, name)
            .map_err(|e| e.to_string())
    }

    /// The `sched_wakeup` decoder, when wakers are wanted.
    pub fn wakeup_decoder(&self) -> Option<SchedWakeupDecoder> {
        self.wakeup.as_ref().map(|(_, d)| d.clone())
    }
}

/// Which spec a sample came from.
#[derive(Clone, Debug)]
pub struct Specs {
    /// `sched_switch` per task (per CPU system-wide): switch-outs with the blocked stack.
    pub switch: usize,
    /// `sched_wakeup` per CPU, with `--wakers`.
    pub wakeup: Option<usize>,
    /// CPU-wide `sched_switch` for switch-ins when context-switch records are refused.
    pub cpu_switch: Option<usize>,
    /// Per-task `raw_syscalls:sys_exit` ending intervals beside `cpu_switch` (see
    /// [`super::legacy`]).
    pub sys_exit: Option<usize>,
    /// Event id → spec, for telling the samples apart.
    pub ids: FastMap<u64, usize>,
}

/// A tracepoint sampled on every hit, with the stack the mode asks for.
fn tracepoint_attr(
    id: u64,
    mode: StackMode,
    inherit: bool,
    on_exec: bool,
    sideband: bool,
) -> RawAttr {
    sampled_attr(
        EventKind::Tracepoint(id),
        1,
        mode,
        (inherit, on_exec),
        sideband,
    )
}

/// `cpu-clock` sampled every `period_ns` of a task's CPU time, in the record layout of the
/// tracepoints (RAW included, empty for it) so that it can share their rings: `psample
/// wall`'s on-CPU samples. No side-band records: the `sched_switch` events carry them.
pub fn cpu_clock_attr(period_ns: u64, mode: StackMode, inherit: bool, on_exec: bool) -> RawAttr {
    let kind = EventKind::CpuClock;
    sampled_attr(kind, period_ns.max(1), mode, (inherit, on_exec), false)
}

/// An event sampled every `period` (events or ns), with the stack the mode asks for.
fn sampled_attr(
    kind: EventKind,
    period: u64,
    mode: StackMode,
    (inherit, on_exec): (bool, bool),
    sideband: bool,
) -> RawAttr {
    let mut st = sample::IP
        | sample::TID
        | sample::TIME
        | sample::CPU
        | sample::PERIOD
        | sample::CALLCHAIN
        | sample::RAW;
    let mut b = AttrBuilder::new(kind).period(period);
    if let Some(size) = mode.stack_copy() {
        st |= sample::REGS_USER | sample::STACK_USER;
        b = b
            .sample_regs_user(unwind::arch::x86_64::SAMPLE_REGS_USER)
            .sample_stack_user(size)
            .exclude_callchain_user(!mode.kernel_user_chain());
    }
    b.sample_type(st)
        .disabled(true)
        .inherit(inherit)
        .enable_on_exec(on_exec)
        .mmap(sideband)
        .mmap2(sideband)
        .comm(sideband)
        .comm_exec(sideband)
        .task(sideband)
        .sample_id_all(true)
        .use_clockid(Some(libc::CLOCK_MONOTONIC))
        .wakeup_watermark(0)
        .build()
}

/// Define the switch spec (per task, with side-band records and context-switch records)
/// and the wakeup spec (per CPU): returns them as (task specs, CPU specs). Wakeups carry
/// the waker's stack with `waker_stacks` (`--wakers`); without, only when they happened.
pub fn add_specs(
    s: &mut Setup<'_>,
    tp: &Tracepoints,
    waker_stacks: bool,
) -> (usize, Option<usize>) {
    let mode = s.opts.stack;
    let (inherit, on_exec) = (s.inherit(), s.is_command());
    s.session.ladder.allow_user_only = false;
    let mut switch_attr = tracepoint_attr(tp.switch_id, mode, inherit, on_exec, true);
    // Switch-ins come from context-switch records, also system-wide: perf does not write
    // every sched_switch sample of a switch away from the idle task (on the 6.18 VM: none
    // on CPU 1, some on CPU 0; the event counts them and a BPF program on the tracepoint
    // sees them), so next_pid misses the switch-ins of tasks woken on an idle CPU, while
    // the SWITCH_CPU_WIDE records come from the scheduler's perf hooks. Taking next_pid on
    // CPUs seen to write such samples was tried (branch experiment/switch-handoff) and lost
    // switch-ins on CPU 0.
    switch_attr.set(flag::CONTEXT_SWITCH, true);
    let switch = s.session.add_spec("sched:sched_switch", switch_attr);
    // Wakeups are opened per CPU for every task: per-task events only see wakeups their own
    // task performs (the tracepoint runs in the waker's context), not the ones it receives.
    let wakeup = tp.wakeup.as_ref().map(|(id, _)| {
        let mut attr = tracepoint_attr(*id, mode, false, false, false);
        if !waker_stacks {
            // The layout is the ring's (the sample type cannot differ): no callchain, the
            // least stack the kernel takes.
            attr.set(flag::EXCLUDE_CALLCHAIN_KERNEL, true);
            attr.set(flag::EXCLUDE_CALLCHAIN_USER, true);
            if mode.stack_copy().is_some() {
                attr.sample_stack_user = 8;
            }
        }
        s.session.add_spec("sched:sched_wakeup", attr)
    });
    (switch, wakeup)
}

/// After attaching: how switch-ins are seen (opening the CPU-wide fallback where
/// context-switch records are refused) and the wakeup filter (`all_threads`: wakeups of
/// every target thread are wanted, also of threads created later, and they carry no stack). Returns the specs and the
/// mechanisms, as the summary lists them.
pub fn complete(
    a: &mut Attached<'_>,
    tp: &Tracepoints,
    (switch, wakeup): (usize, Option<usize>),
    all_threads: bool,
) -> Result<(Specs, Vec<String>), Error> {
    let system_wide = matches!(a.target, Target::AllCpus);
    let switch_records = a.session.ladder.support(Feature::ContextSwitch) == Support::Yes;
    let mut mechanisms = vec![format!(
        "switch-outs: sched_switch {}",
        if system_wide { "per CPU" } else { "per task" }
    )];
    let (mut cpu_switch, mut sys_exit) = (None, None);
    if system_wide && switch_records {
        mechanisms.push("switch-ins: context-switch records (per CPU)".into());
    } else if system_wide {
        mechanisms.push(
            "switch-ins: sched_switch next_pid (per CPU; switches from the idle task may be \
             missing, and intervals they end are then not counted)"
                .into(),
        );
    } else if switch_records {
        mechanisms.push("switch-ins: context-switch records".into());
    } else {
        let kernel = a.session.kernel().clone();
        let sys_exit_id = tp.event_id(kernel.as_ref(), "raw_syscalls", "sys_exit");
        let sources = legacy::Sources::open(a, switch, sys_exit_id)?;
        cpu_switch = Some(sources.cpu_switch);
        sys_exit = sources.sys_exit;
        mechanisms.push(sources.mechanism);
    }
    if let Some(spec) = wakeup {
        // Only wakeups of target threads matter: filter them in the kernel where it accepts
        // the filter. The filter names the threads there are now (for a launched command,
        // only its first thread): wakeups of threads created later are lost to it, which
        // `offcpu` accepts (a waker stack is big, and most wakeups on a busy host are not
        // the targets'). With `all_threads` (wall without --wakers: every wakeup ends a
        // blocked part, and carries no stack) only an exact thread list (-t) is filtered.
        let fixed = match a.target {
            Target::AllCpus => false,
            Target::Tids(_) => true,
            Target::Pids(_) | Target::Command(_) | Target::Cgroup(_) => !all_threads,
        };
        let filtered = fixed && filter::to_targets(a, spec, "pid");
        let what = if all_threads { "wakeups" } else { "wakers" };
        mechanisms.push(format!(
            "{what}: sched_wakeup per CPU{}",
            if filtered {
                ", filtered in the kernel"
            } else {
                ""
            }
        ));
    }
    let specs = Specs {
        switch,
        wakeup,
        cpu_switch,
        sys_exit,
        ids: a.session.id_table().into_iter().collect(),
    };
    Ok((specs, mechanisms))
}
