//! The sampling event of `record`: `-e` parsed, `-F` clamped to what the kernel allows,
//! and the attr that asks for stacks in the chosen mode.

use perfring::attr::{sample, AttrBuilder, EventKind, RawAttr};

use crate::stack::StackMode;
use crate::Error;

/// Parse `-e`: returns the event and a printable name.
pub fn parse_event(
    spec: &str,
    kernel: &dyn perfring::sys::Kernel,
) -> Result<(EventKind, String), Error> {
    match spec {
        "cpu-clock" => Ok((EventKind::CpuClock, spec.into())),
        "task-clock" => Ok((EventKind::TaskClock, spec.into())),
        "cycles" | "cpu-cycles" => Ok((EventKind::Cycles, "cycles".into())),
        _ => {
            let rest = spec
                .strip_prefix("tracepoint:")
                .or_else(|| spec.strip_prefix("t:"));
            let Some((subsys, name)) = rest.and_then(|r| r.split_once(':')) else {
                return Err(Error::new(format!(
                    "unknown event {spec:?}: use cpu-clock, task-clock, cycles or \
                     tracepoint:SUBSYS:NAME (see /sys/kernel/tracing/available_events)"
                )));
            };
            let tracing = crate::tracing::locate(kernel)?;
            let id = tracing
                .event_id(&crate::tracing::Fs(kernel), subsys, name)
                .map_err(|e| Error::new(format!("tracepoint {subsys}:{name}: {e}")))?;
            Ok((EventKind::Tracepoint(id), format!("{subsys}:{name}")))
        }
    }
}

/// Clamp to kernel.perf_event_max_sample_rate (the kernel lowers it at run time when
/// sampling interrupts take too long), warning when we do.
pub fn clamp_frequency(
    hz: u64,
    kernel: &dyn perfring::sys::Kernel,
    warnings: &mut Vec<String>,
) -> u64 {
    let hz = hz.max(1);
    match kernel.sysctl_i64("kernel/perf_event_max_sample_rate") {
        Some(max) if max > 0 && hz > max as u64 => {
            warnings.push(format!(
                "-F {hz} is above kernel.perf_event_max_sample_rate ({max}); sampling at {max} Hz"
            ));
            max as u64
        }
        _ => hz,
    }
}

/// The sampling attr for record.
pub fn sampling_attr(
    kind: EventKind,
    hz: u64,
    mode: StackMode,
    inherit: bool,
    on_exec: bool,
) -> RawAttr {
    let mut st =
        sample::IP | sample::TID | sample::TIME | sample::CPU | sample::PERIOD | sample::CALLCHAIN;
    let mut b = AttrBuilder::new(kind);
    if let Some(size) = mode.stack_copy() {
        st |= sample::REGS_USER | sample::STACK_USER;
        b = b
            .sample_regs_user(unwind::arch::x86_64::SAMPLE_REGS_USER)
            .sample_stack_user(size)
            .exclude_callchain_user(!mode.kernel_user_chain());
    }
    let b = if matches!(kind, EventKind::Tracepoint(_)) {
        b.period(1)
    } else {
        b.frequency(hz)
    };
    b.sample_type(st)
        .disabled(true)
        .enable_on_exec(on_exec)
        .inherit(inherit)
        .mmap(true)
        .mmap2(true)
        .comm(true)
        .comm_exec(true)
        .task(true)
        .sample_id_all(true)
        .exclude_hv(true)
        .wakeup_watermark(0)
        .build()
}
