//! The events `offcpu` opens, by what the kernel offers (fallback-first, each choice said in
//! the summary's `mechanisms` line): `sched_switch` per task for switch-outs, context-switch
//! records or CPU-wide `sched_switch` for switch-ins, `sched_wakeup` per CPU for wakers.

use std::collections::HashMap;

use perfring::attr::{flag, sample, AttrBuilder, EventKind, RawAttr};
use perfring::features::{Feature, Support};
use perfring::sys::Kernel;
use perfring::tracepoint::{SchedSwitchDecoder, SchedWakeupDecoder, TracepointFormat};

use crate::session::{Attached, Setup};
use crate::stack::StackMode;
use crate::target::{self, Target};
use crate::Error;

/// The sched tracepoints offcpu samples, and how their RAW payloads are decoded.
pub struct Tracepoints {
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
            switch_id,
            switch_dec,
            wakeup,
        })
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
    /// Event id → spec, for telling the samples apart.
    pub ids: HashMap<u64, usize>,
}

/// A tracepoint sampled on every hit, with the stack the mode asks for.
fn tracepoint_attr(
    id: u64,
    mode: StackMode,
    inherit: bool,
    on_exec: bool,
    sideband: bool,
) -> RawAttr {
    let mut st = sample::IP
        | sample::TID
        | sample::TIME
        | sample::CPU
        | sample::PERIOD
        | sample::CALLCHAIN
        | sample::RAW;
    let mut b = AttrBuilder::new(EventKind::Tracepoint(id)).period(1);
    if let StackMode::Dwarf(size) = mode {
        st |= sample::REGS_USER | sample::STACK_USER;
        b = b
            .sample_regs_user(unwind::arch::x86_64::SAMPLE_REGS_USER)
            .sample_stack_user(size)
            .exclude_callchain_user(true);
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
/// and the wakeup spec (per CPU): returns them as (task specs, CPU specs).
pub fn add_specs(s: &mut Setup<'_>, tp: &Tracepoints) -> (usize, Option<usize>) {
    let mode = s.opts.stack;
    let (inherit, on_exec) = (s.inherit(), s.is_command());
    s.session.ladder.allow_user_only = false;
    let mut switch_attr = tracepoint_attr(tp.switch_id, mode, inherit, on_exec, true);
    // Switch-ins come from context-switch records, also system-wide: the sched_switch
    // tracepoint does not fire for switches away from the idle task on every CPU (seen on
    // 6.18: never on CPU 1), so its next_pid misses the switch-ins of tasks woken on an idle
    // CPU, while the SWITCH_CPU_WIDE records come from the scheduler's perf hooks.
    switch_attr.set(flag::CONTEXT_SWITCH, true);
    let switch = s.session.add_spec("sched:sched_switch", switch_attr);
    // Wakeups are opened per CPU for every task: per-task events only see wakeups their own
    // task performs (the tracepoint runs in the waker's context), not the ones it receives.
    let wakeup = tp.wakeup.as_ref().map(|(id, _)| {
        let attr = tracepoint_attr(*id, mode, false, false, false);
        s.session.add_spec("sched:sched_wakeup", attr)
    });
    (switch, wakeup)
}

/// After attaching: how switch-ins are seen (opening the CPU-wide fallback where
/// context-switch records are refused) and the wakeup filter. Returns the specs and the
/// mechanisms, as the summary lists them.
pub fn complete(
    a: &mut Attached<'_>,
    tp: &Tracepoints,
    (switch, wakeup): (usize, Option<usize>),
) -> Result<(Specs, Vec<String>), Error> {
    let system_wide = matches!(a.target, Target::AllCpus);
    let switch_records = a.session.ladder.support(Feature::ContextSwitch) == Support::Yes;
    let mut mechanisms = vec![format!(
        "switch-outs: sched_switch {}",
        if system_wide { "per CPU" } else { "per task" }
    )];
    let mut cpu_switch = None;
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
        let (spec, filtered) = open_cpu_wide_switch(a, tp)?;
        cpu_switch = Some(spec);
        mechanisms.push(format!(
            "switch-ins: CPU-wide sched_switch, filtered {}",
            if filtered {
                "in the kernel and in psample"
            } else {
                "in psample"
            }
        ));
    }
    if let Some(spec) = wakeup {
        // Only wakeups of target threads matter: filter them in the kernel where it accepts
        // the filter (new threads are still caught by the userspace check in the engine).
        let filtered = !system_wide && filter_to_targets(a, spec, "pid");
        mechanisms.push(format!(
            "wakers: sched_wakeup per CPU{}",
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
        ids: a.session.id_table(),
    };
    Ok((specs, mechanisms))
}

/// The fallback before 4.3: CPU-wide sched_switch, filtered to the target threads (in the
/// kernel where it takes the filter). Returns the spec and whether the kernel filters.
fn open_cpu_wide_switch(a: &mut Attached<'_>, tp: &Tracepoints) -> Result<(usize, bool), Error> {
    let mut attr = tracepoint_attr(tp.switch_id, a.opts.stack, false, false, false);
    attr.set(flag::CONTEXT_SWITCH, false);
    let spec = a.session.add_spec("sched:sched_switch (cpu-wide)", attr);
    let cpus = a
        .session
        .kernel()
        .online_cpus()
        .map_err(|e| Error::new(format!("cannot list CPUs: {e}")))?;
    for cpu in cpus {
        a.session
            .open(spec, -1, cpu)
            .map_err(|e| Error::new(format!("CPU-wide sched_switch on CPU {cpu}: {e}")))?;
    }
    Ok((spec, filter_to_targets(a, spec, "next_pid")))
}

/// Ask the kernel to pass only events whose `field` is one of the targets' threads (up to
/// 64 of them); whether it accepted.
fn filter_to_targets(a: &Attached<'_>, spec: usize, field: &str) -> bool {
    let tids: Vec<u32> = a
        .pids
        .iter()
        .flat_map(|p| target::threads_of(*p).unwrap_or_default())
        .collect();
    !tids.is_empty()
        && tids.len() <= 64
        && a.session
            .set_filter(spec, &field_filter(field, &tids))
            .is_ok()
}

/// An ftrace filter matching any of `tids` in `field`.
fn field_filter(field: &str, tids: &[u32]) -> String {
    tids.iter()
        .map(|t| format!("{field} == {t}"))
        .collect::<Vec<_>>()
        .join(" || ")
}
