//! Recording real perf samples for hybrid unwinding: the kernel's user callchain (frame
//! pointers), user registers and a copy of the user stack, as one perf event delivers them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use perfring::attr::{flag, sample, AttrBuilder, EventKind};
use perfring::event::Session;
use perfring::record::{parse_record, CallchainContext, Record};
use perfring::sys::{Kernel, LinuxKernel};
use unwind::arch::x86_64::{PERF_REG_BP, PERF_REG_IP, PERF_REG_SP, SAMPLE_REGS_USER};
use unwind::fixture::FixtureSample;
use unwind::UserRegs;

/// Stack bytes copied per sample: DWARF mode's default, enough for any hybrid splice.
pub const STACK_COPY: u32 = 16384;

/// What to sample.
#[derive(Clone, Copy)]
pub enum Scope {
    /// One thread.
    Thread(u32),
    /// Every task on every CPU.
    System,
}

/// Until `count` samples or `limit` passed, samples of `kind` (every `period` events, or at
/// 499 Hz), each with its process id.
pub fn record(
    kind: EventKind,
    period: Option<u64>,
    scope: Scope,
    count: usize,
    limit: Duration,
) -> Vec<(u32, FixtureSample)> {
    let kernel: Arc<dyn Kernel> = Arc::new(LinuxKernel);
    let cpus = kernel.online_cpus().expect("online cpus");
    let mut session = Session::new(kernel, 512);
    let attr = AttrBuilder::new(kind)
        .sample_type(
            sample::TID | sample::TIME | sample::CALLCHAIN | sample::REGS_USER | sample::STACK_USER,
        )
        .sample_regs_user(SAMPLE_REGS_USER)
        .sample_stack_user(STACK_COPY)
        .flag(flag::EXCLUDE_CALLCHAIN_KERNEL, true)
        .disabled(true)
        .sample_id_all(true);
    let attr = match period {
        Some(n) => attr.period(n),
        None => attr.frequency(499),
    }
    .build();
    let spec = session.add_spec("sample", attr);
    let tid = match scope {
        Scope::Thread(tid) => tid as i32,
        Scope::System => -1,
    };
    for cpu in cpus {
        session.open(spec, tid, cpu).expect("perf_event_open");
    }
    let fmt = session.sample_format().expect("format");
    session.enable().expect("enable");
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < count && start.elapsed() < limit {
        session.wait(100).expect("poll");
        session.drain(|_, bytes| {
            if let Ok(Record::Sample(s)) = parse_record(bytes, &fmt) {
                if let Some(got) = to_fixture(&s) {
                    samples.push(got);
                }
            }
        });
    }
    session.disable();
    samples.truncate(count);
    samples
}

fn to_fixture(s: &perfring::record::Sample<'_>) -> Option<(u32, FixtureSample)> {
    let regs = s.regs_user?;
    let get = |i: usize| regs.get(i as u32);
    let regs = UserRegs {
        ip: get(PERF_REG_IP)?,
        sp: get(PERF_REG_SP)?,
        bp: get(PERF_REG_BP)?,
    };
    let chain: Vec<u64> = s
        .callchain?
        .frames()
        .filter(|(ctx, _)| *ctx == Some(CallchainContext::User))
        .map(|(_, v)| v)
        .collect();
    if chain.is_empty() {
        // A kernel thread, or a task without a user context.
        return None;
    }
    let sample = FixtureSample {
        tid: s.tid?,
        regs,
        stack: s.stack_user?.to_vec(),
        chain,
    };
    Some((s.pid?, sample))
}

/// The sched:sched_switch tracepoint's id (tracefs at /sys/kernel/tracing).
pub fn sched_switch_id() -> u64 {
    let path = "/sys/kernel/tracing/events/sched/sched_switch/id";
    std::fs::read_to_string(path)
        .expect("tracefs mounted at /sys/kernel/tracing")
        .trim()
        .parse()
        .expect("tracepoint id")
}
