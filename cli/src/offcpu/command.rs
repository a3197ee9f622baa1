//! `psample offcpu`: blocked time by stack, and who woke it, from perf_event tracepoints.
//!
//! Mechanism (fallback-first, reported in the summary):
//! - switch-outs with stacks: `sched:sched_switch` opened on the target tasks (with inherit,
//!   one event per task and CPU); it fires in the blocked task's context, so its callchain
//!   (or copied user stack, in DWARF mode) is the blocked stack;
//! - switch-ins: context-switch records (attr.context_switch, 4.3+) on those same events
//!   (SWITCH per task, SWITCH_CPU_WIDE system-wide); where the kernel refuses them, CPU-wide
//!   `sched_switch` events whose `next_pid` is a target thread (filtered in the kernel with
//!   PERF_EVENT_IOC_SET_FILTER where it accepts the filter, and always in userspace). The
//!   records are preferred even system-wide, where every sched_switch sample carries
//!   next_pid: the tracepoint does not fire for switches away from the idle task on every
//!   CPU, so next_pid alone misses tasks woken on an idle CPU;
//! - wakers (`--wakers`): `sched:sched_wakeup` opened per CPU for every task and filtered
//!   to the target threads (in the kernel where it takes the filter). The tracepoint runs in
//!   the waker's context, so the sample's callchain is the waker's stack; per-task events
//!   would only see wakeups the target performs, not the ones it receives.
//!
//! Sample times use CLOCK_MONOTONIC (use_clockid) so that the start and stop of the window
//! are on the same clock as the events; without it the window is taken from the events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use perfring::attr::{sample, AttrBuilder, EventKind, RawAttr};
use perfring::event::Session;
use perfring::features::{Feature, Support};
use perfring::record::{Record, Sample};
use perfring::sys::Kernel;
use perfring::tracepoint::{SchedSwitchDecoder, SchedWakeupDecoder, TaskState};

use super::intervals::{Engine, OffcpuEvent, Options, Report, StackId, StackKey, StateFilter};
use super::legacy;
use super::reorder::Reorder;
use crate::args::{self, CallGraph, OffcpuArgs};
use crate::continuous::{self, Intervals};
use crate::error::CliError;
use crate::fold::{Folder, NamedFrames};
use crate::names::Names;
use crate::output::{self, folded::escape_comm, pprof, Labels};
use crate::progress::Progress;
use crate::record::StackBuilder;
use crate::session::{self, Attach, Reader, Stopper};
use crate::stack::Frame;
use crate::summary::Summary;
use crate::target::{self, Launched, Target};
use crate::tracker::Tracker;

/// Interned stacks (leaf first).
#[derive(Default)]
struct Stacks {
    list: Vec<Box<[Frame]>>,
    ids: HashMap<Box<[Frame]>, StackId>,
}

impl Stacks {
    fn intern(&mut self, frames: &[Frame]) -> StackId {
        if let Some(id) = self.ids.get(frames) {
            return *id;
        }
        let id = self.list.len() as StackId;
        self.list.push(frames.into());
        self.ids.insert(frames.into(), id);
        id
    }

    fn get(&self, id: StackId) -> &[Frame] {
        self.list.get(id as usize).map_or(&[], |b| &b[..])
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn tracepoint_attr(
    id: u64,
    st: u64,
    mode: CallGraph,
    inherit: bool,
    on_exec: bool,
    sideband: bool,
) -> RawAttr {
    let mut b = AttrBuilder::new(EventKind::Tracepoint(id)).period(1);
    if let CallGraph::Dwarf(size) = mode {
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

fn state_filter(s: Option<args::StateFilter>) -> StateFilter {
    match s {
        None => StateFilter::Blocked,
        Some(args::StateFilter::Any) => StateFilter::Any,
        Some(args::StateFilter::S) => StateFilter::Interruptible,
        Some(args::StateFilter::D) => StateFilter::Uninterruptible,
    }
}

/// Kernel frames of a blocked thread from /proc/PID/task/TID/stack (root only; lines look
/// like `[<0>] do_nanosleep+0x6d/0x150`), leaf first.
fn proc_kernel_stack(pid: u32, tid: u32, named: &mut NamedFrames) -> Vec<Frame> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")) else {
        return Vec::new();
    };
    text.lines()
        .take(128)
        .filter_map(|l| {
            let sym = l.split_once(']').map_or(l, |(_, r)| r).trim();
            let name = sym.split('+').next()?.trim();
            (!name.is_empty()).then(|| Frame::Named(named.intern(&format!("{name}_[k]"))))
        })
        .collect()
}

fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// What the engine saw, for the summary.
#[derive(Default)]
struct Counts {
    switch_outs: u64,
    switch_ins: u64,
    wakeups: u64,
    decode_errors: u64,
}

struct Specs {
    switch: usize,
    wakeup: Option<usize>,
    /// CPU-wide sched_switch for switch-ins when context-switch records are refused.
    cpu_switch: Option<usize>,
    /// Per-task syscall exits ending intervals, beside `cpu_switch` (see [`legacy`]).
    sys_exit: Option<usize>,
}

pub fn run(args: OffcpuArgs) -> Result<i32, CliError> {
    run_with_kernel(args, session::linux_kernel())
}

fn labels(wakers: bool) -> Labels {
    Labels {
        title: if wakers {
            "psample offcpu (with wakers)".into()
        } else {
            "psample offcpu".into()
        },
        count_name: "us".into(),
    }
}

/// `offcpu` against any [`Kernel`] (compat-tests pass emulated kernels).
pub fn run_with_kernel(args: OffcpuArgs, kernel: Arc<dyn Kernel>) -> Result<i32, CliError> {
    continuous::run_command(
        &args.continuous,
        &args.common,
        &args.symbols,
        &args.target,
        "offcpu",
        labels(args.wakers),
        |target, intervals| run_session(&args, target, kernel.clone(), intervals),
    )
}

/// One session on one target; in continuous mode (`intervals`) one profile per interval.
pub fn run_session(
    args: &OffcpuArgs,
    target: Target,
    kernel: Arc<dyn Kernel>,
    mut intervals: Option<&mut Intervals>,
) -> Result<session::StopCause, CliError> {
    let format = output::Format::resolve(args.common.format, args.common.output.as_deref());
    if let Some(p) = &args.common.output {
        output::check_writable(p).map_err(CliError::new)?;
    }
    if let Some(max) = args.max_us {
        if max < args.min_us {
            return Err(CliError::new(format!(
                "-M {max} is below -m {}: no interval could match",
                args.min_us
            )));
        }
    }
    let mut summary = Summary::new("offcpu");
    let tracing = crate::tracing::locate(kernel.as_ref())?;
    let fs = crate::tracing::Fs(kernel.as_ref());
    let tp = |name: &str| -> Result<(u64, perfring::tracepoint::TracepointFormat), CliError> {
        let id = tracing
            .event_id(&fs, "sched", name)
            .map_err(|e| CliError::new(format!("offcpu needs sched:{name}: {e}")))?;
        let fmt = tracing
            .format(&fs, "sched", name)
            .map_err(|e| CliError::new(format!("reading sched:{name} format: {e}")))?;
        Ok((id, fmt))
    };
    let (switch_id, switch_fmt) = tp("sched_switch")?;
    let switch_dec = SchedSwitchDecoder::new(&switch_fmt)
        .map_err(|e| CliError::new(format!("sched_switch format not understood: {e}")))?;
    let wakeup = if args.wakers {
        let (id, fmt) = tp("sched_wakeup")?;
        let dec = SchedWakeupDecoder::new(&fmt)
            .map_err(|e| CliError::new(format!("sched_wakeup format not understood: {e}")))?;
        Some((id, dec))
    } else {
        None
    };

    let mode = args.call_graph.mode();
    let system_wide = matches!(target, Target::AllCpus);
    let is_cmd = matches!(target, Target::Command(_));
    let inherit = !matches!(target, Target::Tids(_) | Target::AllCpus);
    let mut st = sample::IP
        | sample::TID
        | sample::TIME
        | sample::CPU
        | sample::PERIOD
        | sample::CALLCHAIN
        | sample::RAW;
    if let CallGraph::Dwarf(_) = mode {
        st |= sample::REGS_USER | sample::STACK_USER;
    }
    let pages = args.common.mmap_pages.unwrap_or(match mode {
        CallGraph::Fp => 128,
        CallGraph::Dwarf(_) => 512,
    });
    session::check_ring_fits(pages, mode)?;
    let mut session = Session::new(kernel.clone(), pages);
    session.ladder.allow_user_only = false;
    let mut switch_attr = tracepoint_attr(switch_id, st, mode, inherit, is_cmd, true);
    // Switch-ins come from context-switch records, also system-wide: the sched_switch
    // tracepoint does not fire for switches away from the idle task on every CPU (seen on
    // 6.18: never on CPU 1), so its next_pid misses the switch-ins of tasks woken on an idle
    // CPU, while the SWITCH_CPU_WIDE records come from the scheduler's perf hooks.
    switch_attr.set(perfring::attr::flag::CONTEXT_SWITCH, true);
    let switch_spec = session.add_spec("sched:sched_switch", switch_attr);
    // Wakeups are opened per CPU for every task: per-task events only see wakeups their own
    // task performs (the tracepoint runs in the waker's context), not the ones it receives.
    let wakeup_spec = wakeup.as_ref().map(|(id, _)| {
        session.add_spec(
            "sched:sched_wakeup",
            tracepoint_attr(*id, st, mode, false, false, false),
        )
    });

    let mut launched = match &target {
        Target::Command(argv) => Some(
            Launched::spawn(argv, target::sudo_user(args.target.keep_root))
                .map_err(|e| CliError::new(format!("cannot start {:?}: {e}", argv[0])))?,
        ),
        _ => None,
    };
    crate::signals::install();
    let cpu_specs: Vec<usize> = wakeup_spec.into_iter().collect();
    let pids = session::attach(
        Attach {
            session: &mut session,
            task_specs: &[switch_spec],
            cpu_specs: &cpu_specs,
        },
        &target,
        launched.as_ref(),
    )?;
    let mut specs = Specs {
        switch: switch_spec,
        wakeup: wakeup_spec,
        cpu_switch: None,
        sys_exit: None,
    };
    let switch_records = session.ladder.support(Feature::ContextSwitch) == Support::Yes;
    let mut mechanisms = vec![format!(
        "switch-outs: sched_switch {}",
        if system_wide { "per CPU" } else { "per task" }
    )];
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
        // Before 4.3: CPU-wide sched_switch and per-task syscall exits (see `legacy`).
        let tids: Vec<u32> = pids
            .iter()
            .flat_map(|p| target::threads_of(*p).unwrap_or_default())
            .collect();
        let attrs = legacy::Attrs {
            switch: session.spec(switch_spec).attr,
            inherit,
            on_exec: is_cmd,
            dwarf: matches!(mode, CallGraph::Dwarf(_)),
        };
        let sources = legacy::Sources::open(
            &mut session,
            kernel.as_ref(),
            &tracing,
            &attrs,
            switch_spec,
            &tids,
        )?;
        specs.cpu_switch = Some(sources.cpu_switch);
        specs.sys_exit = sources.sys_exit;
        mechanisms.push(sources.mechanism);
    }
    if let Some(spec) = wakeup_spec {
        // Only wakeups of target threads matter: filter them in the kernel where it accepts
        // the filter (new threads are still caught by the userspace check in the engine).
        let tids: Vec<u32> = pids
            .iter()
            .flat_map(|p| target::threads_of(*p).unwrap_or_default())
            .collect();
        let filtered = !system_wide
            && !tids.is_empty()
            && tids.len() <= 64
            && session
                .set_filter(spec, &field_filter("pid", &tids))
                .is_ok();
        mechanisms.push(format!(
            "wakers: sched_wakeup per CPU{}",
            if filtered {
                ", filtered in the kernel"
            } else {
                ""
            }
        ));
    }
    let fmt = session
        .sample_format()
        .ok_or_else(|| CliError::new("no event was opened"))?;
    let clock_monotonic = session.ladder.support(Feature::UseClockid) == Support::Yes;
    let comm_exec = session.ladder.support(Feature::CommExec) == Support::Yes;
    let mut tracker = Tracker::new(comm_exec);
    if !is_cmd {
        for &pid in &pids {
            tracker.load_process(pid);
        }
    }
    let cpu_count = kernel
        .online_cpus()
        .map(|c| c.iter().max().map_or(1, |m| *m as usize + 1))
        .unwrap_or(1);

    let mut builder = StackBuilder::new(mode);
    if !system_wide && !is_cmd {
        // As in record: big binaries are loaded before the first switch-out needs them.
        for &pid in &pids {
            builder.prepare(&tracker, pid);
        }
    }
    if !is_cmd {
        session.enable().map_err(|e| CliError::new(e.to_string()))?;
    }
    if let Some(l) = launched.as_mut() {
        // Per-task events start at the exec (enable_on_exec); CPU-wide ones cannot, so they
        // start now.
        for spec in specs.wakeup.iter().chain(&specs.cpu_switch) {
            session
                .enable_spec(*spec)
                .map_err(|e| CliError::new(e.to_string()))?;
        }
        l.start()
            .map_err(|e| CliError::new(format!("cannot start the command: {e}")))?;
    }
    if let Some(iv) = intervals.as_deref_mut() {
        iv.begin();
    }
    let start_ns = monotonic_ns();
    let opts = Options {
        min_ns: args.min_us.saturating_mul(1000),
        max_ns: args.max_us.map(|m| m.saturating_mul(1000)),
        states: state_filter(args.state),
        wakers: args.wakers,
    };
    let mut engine = Engine::new(opts, if clock_monotonic { start_ns } else { 0 });
    let mut stacks = Stacks::default();
    let mut named = NamedFrames::default();
    let mut names = Names::default();
    // Threads already blocked: counted from the start under a frame that says so.
    if !system_wide && !is_cmd {
        for &pid in &pids {
            for tid in target::threads_of(pid).unwrap_or_default() {
                let Some(letter) = thread_state(pid, tid) else {
                    continue;
                };
                let state = TaskState::from_proc_letter(letter);
                if state == TaskState::Runnable {
                    continue;
                }
                let mut frames = proc_kernel_stack(pid, tid, &mut named);
                frames.push(Frame::Label("[blocked at start]"));
                let id = stacks.intern(&frames);
                let who = names.intern(tracker.comm(pid, tid));
                engine.blocked_at_start(who, tid, state, id);
            }
        }
    }

    let mut c = Collector {
        tracker,
        builder,
        stacks,
        names,
        totals: Report::default(),
        reorder: Reorder::new(cpu_count),
        counts: Counts::default(),
        specs,
        ids: session.id_table(),
        switch_dec,
        wakeup_dec: wakeup.map(|(_, d)| d),
        own_pid: std::process::id(),
        system_wide,
        switch_records,
        targets: pids.iter().copied().collect(),
        first_time: None,
        last_time: 0,
    };
    session::drain_in_background(&mut session, pages)?;
    let mut reader = Reader::new();
    let mut stopper = Stopper::new(args.common.duration, &target, &pids);
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let mut upkeep = Upkeep::new();
    let cause = loop {
        if let Some(cause) = stopper.check(launched.as_ref()) {
            break cause;
        }
        if let Some(iv) = intervals.as_deref_mut() {
            if iv.due() {
                c.end_interval(iv, &mut engine, &named, format);
            }
        }
        upkeep.run(&mut engine);
        let timeout = match intervals.as_deref() {
            Some(iv) => stopper.poll_timeout_ms().min(iv.ms_until_due()),
            None => stopper.poll_timeout_ms(),
        };
        match session.wait(timeout) {
            Ok((_, hup)) => stopper.after_wait(hup),
            Err(e) => {
                summary.warnings.push(format!("stopping early: {e}"));
                break session::StopCause::Signal;
            }
        }
        reader.pump(&mut session, &fmt, |cpu, rec| c.on_record(cpu, rec));
        c.reorder.end_round(|_, e| engine.push(e));
        progress.tick(c.counts.switch_outs);
    };
    session.disable();
    let stop_ns = monotonic_ns();
    let stop_started = Instant::now();
    reader.pump(&mut session, &fmt, |cpu, rec| c.on_record(cpu, rec));
    c.reorder.drain_all(|_, e| engine.push(e));
    progress.finish();
    let Collector {
        tracker,
        stacks,
        names,
        mut totals,
        counts,
        first_time,
        last_time,
        specs,
        ..
    } = c;
    let elapsed = stopper.elapsed();
    // Targets that exited end the window at their last record: the loop notices the exit only
    // after its current batch, which can be long (a cold DWARF unwind), and that time after
    // the exit was nobody's blocked time.
    let stop_ns = if clock_monotonic && cause == session::StopCause::TargetsExited {
        last_time.clamp(start_ns, stop_ns)
    } else {
        stop_ns
    };
    let stop_time = if clock_monotonic { stop_ns } else { last_time };
    let tables = format!(
        "{}; {} stacks, {} names, {} engine threads",
        tracker.describe_tables(),
        stacks.list.len(),
        names.len(),
        engine.thread_entries()
    );
    let report = engine.finish(stop_time);
    // The summary is about the whole session: in continuous mode, every interval's report.
    totals.add_totals(&report);
    let window_ns = if clock_monotonic {
        stop_ns.saturating_sub(start_ns)
    } else {
        last_time.saturating_sub(first_time.unwrap_or(last_time))
    };

    let mut own_sym = None;
    let mut flushed = None;
    let ended = Ended {
        report,
        stacks,
        procs: tracker.procs,
        named: named.clone(),
        names: names.clone(),
    };
    match intervals.as_deref_mut() {
        // Continuous: the report holds only the last, partial interval.
        Some(iv) => {
            let window = iv.cut();
            ended.submit(iv, window, format);
            flushed = Some(iv.flush());
        }
        None => {
            let window = (
                std::time::SystemTime::now() - std::time::Duration::from_nanos(window_ns),
                std::time::Duration::from_nanos(window_ns),
            );
            let sym = own_sym.insert(crate::symbols::symbolizer(&args.symbols));
            ended
                .render(sym, format, window)
                .write(args.common.output.as_deref(), format, &labels(args.wakers))
                .map_err(|e| CliError::new(format!("writing the profile failed: {e}")))?;
        }
    }
    let report = totals;

    summary.line("stopped", cause.describe());
    summary.line("duration", format!("{:.2} s", elapsed.as_secs_f64()));
    summary.line(
        "blocked time",
        format!(
            "{:.3} s in {} intervals ({} threads)",
            report.blocked_ns as f64 / 1e9,
            report.counted_intervals,
            report.thread_count()
        ),
    );
    let mut threads: Vec<(&u32, &super::intervals::ThreadTotals)> =
        report.per_thread.iter().collect();
    threads.sort_by(|a, b| b.1.blocked_ns.cmp(&a.1.blocked_ns).then(a.0.cmp(b.0)));
    for (tid, t) in threads.iter().take(10) {
        let comm = names.get(t.who);
        let pct = if window_ns > 0 {
            100.0 * t.blocked_ns as f64 / window_ns as f64
        } else {
            0.0
        };
        summary.line(
            &format!("  {comm}/{tid}"),
            format!(
                "{:.3} s blocked ({pct:.0}% of the window), {} intervals",
                t.blocked_ns as f64 / 1e9,
                t.intervals
            ),
        );
    }
    summary.line(
        "events",
        format!(
            "{} switch-outs, {} switch-ins, {} wakeups{}",
            counts.switch_outs,
            counts.switch_ins,
            counts.wakeups,
            if counts.decode_errors > 0 {
                format!(", {} undecodable", counts.decode_errors)
            } else {
                String::new()
            }
        ),
    );
    if specs.cpu_switch.is_some() {
        summary.line(
            "switch-ins",
            legacy::describe_ends(
                &report,
                counts.switch_ins,
                specs.sys_exit.is_some(),
                args.wakers,
            ),
        );
    }
    summary.add_lost(&session, reader.parse_errors);
    if report.dropped_intervals > 0 || report.capped_intervals > 0 {
        summary.line(
            "not counted",
            format!(
                "{} intervals dropped and {} capped around lost records (up to {:.3} s)",
                report.dropped_intervals,
                report.capped_intervals,
                report.dropped_ns_lost as f64 / 1e9
            ),
        );
    }
    summary.line(
        "filtered",
        format!(
            "{} preemptions/other states, {} outside -m/-M",
            report.not_blocked, report.filtered
        ),
    );
    summary.line("mechanisms", mechanisms.join("; "));
    if args.common.verbose {
        summary.line("tables", tables);
    }
    if !clock_monotonic {
        summary
            .warnings
            .push("no use_clockid: the window is taken from the first and last event".into());
    }
    summary.add_fallbacks(&session);
    summary.line(
        "output ready",
        format!("{} ms after stop", stop_started.elapsed().as_millis()),
    );
    if let Some(p) = &args.common.output {
        summary.line("written", p.display().to_string());
    }
    match (intervals.as_deref(), flushed) {
        (Some(iv), Some(f)) => {
            summary.line(
                "intervals",
                format!("{} written, {} failed", f.written, f.write_errors),
            );
            if let Some(p) = iv.push_stats() {
                summary.line("push", p);
            }
            summary.warnings.extend(f.warnings);
        }
        _ => {
            if let Some(d) = own_sym.as_ref().and_then(|s| s.debuginfod_summary()) {
                summary.line("debuginfod", d);
            }
            summary
                .warnings
                .extend(own_sym.map(|s| s.warnings()).unwrap_or_default())
        }
    }
    summary.print(args.common.verbose);
    Ok(cause)
}

/// A report as folded lines or pprof, in microseconds. pprof values are rounded so that
/// every folded line's total is exactly the folded output's (which sums nanoseconds per
/// line, then truncates to microseconds): largest remainders get the leftover units.
fn render(
    report: &Report,
    t: &Tables<'_>,
    sym: &mut symbolize::Symbolizer,
    format: output::Format,
    window: (std::time::SystemTime, std::time::Duration),
) -> output::Rendered {
    let stacks = report.by_stack.keys().flat_map(|k| {
        let waker = k.waker.map(|w| t.stacks.get(w.stack)).unwrap_or_default();
        t.stacks.get(k.stack).iter().chain(waker)
    });
    crate::fold::prefetch_debuginfo(sym, t.procs, stacks);
    if format != output::Format::Pprof {
        return output::Rendered::Lines(fold_report(report, t, sym));
    }
    let lines = report_lines(report, t, sym);
    let stacks = t.stacks;
    let mut by_line: BTreeMap<&str, Vec<(&StackKey, u64)>> = BTreeMap::new();
    for (key, ns) in &report.by_stack {
        if let Some(l) = lines.get(key) {
            by_line.entry(l.as_str()).or_default().push((key, *ns));
        }
    }
    let mut b = pprof::Builder::new(sym, t.procs, t.named);
    for (_, mut keys) in by_line {
        let line_ns: u64 = keys.iter().map(|k| k.1).sum();
        let mut left = line_ns / 1000 - keys.iter().map(|k| k.1 / 1000).sum::<u64>();
        // Deterministic: by remainder, then key order.
        keys.sort_by(|a, b| (b.1 % 1000).cmp(&(a.1 % 1000)).then(a.0.cmp(b.0)));
        for (key, ns) in keys {
            let mut us = ns / 1000;
            if left > 0 {
                us += 1;
                left -= 1;
            }
            if us == 0 {
                continue;
            }
            let comm = escape_comm(t.names.get(key.who));
            let mut nodes: Vec<pprof::Node<'_>> = Vec::new();
            let waker_comm;
            if let Some(w) = key.waker {
                waker_comm = escape_comm(t.names.get(w.who));
                nodes.push(pprof::Node::Text(&waker_comm));
                nodes.extend(
                    stacks
                        .get(w.stack)
                        .iter()
                        .rev()
                        .map(|f| pprof::Node::Waker(*f)),
                );
                nodes.push(pprof::Node::Text("--"));
            }
            // Leaf first, the reverse of the folded line: waker's comm, waker root..leaf,
            // "--", blocked leaf..root, comm.
            let mut blocked: Vec<pprof::Node<'_>> = stacks
                .get(key.stack)
                .iter()
                .map(|f| pprof::Node::Frame(*f))
                .collect();
            blocked.push(pprof::Node::Text(&comm));
            nodes.extend(blocked);
            b.add(&nodes, &[i64::try_from(us).unwrap_or(i64::MAX)]);
        }
    }
    output::Rendered::Pprof(b.finish(&pprof::Meta {
        sample_types: vec![("off-cpu".into(), "microseconds".into())],
        period_type: ("off-cpu".into(), "microseconds".into()),
        period: 1,
        time_nanos: crate::record::pprof_time(window.0),
        duration_nanos: window.1.as_nanos().min(i64::MAX as u128) as i64,
    }))
}

/// An ftrace filter matching any of `tids` in `field`.
pub(super) fn field_filter(field: &str, tids: &[u32]) -> String {
    tids.iter()
        .map(|t| format!("{field} == {t}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// Turns records into engine events, in per-CPU ring order.
struct Collector {
    tracker: Tracker,
    builder: StackBuilder,
    stacks: Stacks,
    /// Thread names (comm) of blocked and waking threads, as they were at the event.
    names: Names,
    /// Continuous mode: the counters of the intervals already written, for the summary.
    totals: Report,
    reorder: Reorder<OffcpuEvent>,
    counts: Counts,
    specs: Specs,
    /// Event id → spec, for telling switch, wakeup and CPU-wide samples apart.
    ids: HashMap<u64, usize>,
    switch_dec: SchedSwitchDecoder,
    wakeup_dec: Option<SchedWakeupDecoder>,
    own_pid: u32,
    system_wide: bool,
    /// Switch-ins come from SWITCH / SWITCH_CPU_WIDE records (else from next_pid).
    switch_records: bool,
    targets: HashSet<u32>,
    first_time: Option<u64>,
    last_time: u64,
}

impl Collector {
    /// Continuous mode: write the intervals closed so far, then shrink everything to what
    /// open intervals still need (their stacks) and live processes.
    fn end_interval(
        &mut self,
        iv: &mut Intervals,
        engine: &mut Engine,
        named: &NamedFrames,
        format: output::Format,
    ) {
        // Events still held for cross-CPU ordering go in now; an interval spanning the
        // boundary is paired as usual, in the report it closes in.
        self.reorder.drain_all(|_, e| engine.push(e));
        let report = engine.take_report();
        self.totals.add_totals(&report);
        self.totals
            .trim_threads(TRIM_THREADS, |tid| !target::thread_alive(tid));
        let window = iv.cut();

        let fresh = self.tracker.refreshed();
        let mut kept = Stacks::default();
        let mut remap: HashMap<StackId, StackId> = HashMap::new();
        for id in engine.open_stacks() {
            if remap.contains_key(&id) {
                continue;
            }
            let frames: Vec<Frame> = self
                .stacks
                .get(id)
                .iter()
                .map(|f| rebase_frame(*f, &self.tracker.procs, &fresh.procs))
                .collect();
            remap.insert(id, kept.intern(&frames));
        }
        engine.remap_stacks(|id| remap.get(&id).copied().unwrap_or(id));
        engine.forget_threads(|tid| !target::thread_alive(tid));
        // The ended interval's tables go to the writer with its report; the names table is
        // shared by all intervals (bounded, see `names::MAX_NAMES`), so it goes as a copy.
        let ended = Ended {
            report,
            stacks: std::mem::replace(&mut self.stacks, kept),
            procs: std::mem::replace(&mut self.tracker, fresh).procs,
            named: named.clone(),
            names: self.names.clone(),
        };
        ended.submit(iv, window, format);
        let stats = std::mem::take(&mut self.builder.unwind_stats);
        self.builder = StackBuilder::new(self.builder.mode);
        self.builder.unwind_stats = stats;
    }

    fn on_record(&mut self, cpu: u32, rec: &Record<'_>) {
        let time = crate::session::record_time(rec);
        if time != 0 {
            self.first_time.get_or_insert(time);
            self.last_time = self.last_time.max(time);
        }
        let ring = cpu as usize;
        match rec {
            Record::Sample(s) => self.on_sample(cpu, s),
            Record::Switch(sw) if !sw.out => {
                if let Some(tid) = sw.sample_id.tid {
                    self.counts.switch_ins += 1;
                    self.reorder
                        .push(ring, time, OffcpuEvent::SwitchIn { time, cpu, tid });
                }
            }
            Record::SwitchCpuWide(sw) if !sw.out => {
                // Written in the incoming task's context: it is the sample_id's task
                // (next_prev names the task that left).
                if let Some(tid) = sw.sample_id.tid.filter(|&t| t != 0) {
                    self.counts.switch_ins += 1;
                    self.reorder
                        .push(ring, time, OffcpuEvent::SwitchIn { time, cpu, tid });
                }
            }
            Record::Lost(l) => {
                // Untimed (no sample_id_all): it belongs after the ring's last record.
                let t = l.sample_id.time.or(self.reorder.latest(ring));
                let ev = OffcpuEvent::Lost {
                    cpu,
                    time: t,
                    count: l.lost,
                };
                self.reorder.push(ring, t.unwrap_or(0), ev);
            }
            Record::Exit(e) => {
                self.tracker.on_record(rec);
                let ev = OffcpuEvent::Exit {
                    time: e.time,
                    pid: e.pid,
                    tid: e.tid,
                };
                self.reorder.push(ring, e.time, ev);
            }
            Record::Comm(c) if c.exec => {
                self.tracker.on_record(rec);
                self.reorder
                    .push(ring, time, OffcpuEvent::Exec { time, pid: c.pid });
            }
            _ => {
                self.tracker.on_record(rec);
            }
        }
    }

    fn on_sample(&mut self, cpu: u32, s: &Sample<'_>) {
        let (Some(pid), Some(tid), Some(time), Some(raw)) = (s.pid, s.tid, s.time, s.raw) else {
            return;
        };
        let Some(spec) = s.id.and_then(|id| self.ids.get(&id).copied()) else {
            return;
        };
        let ring = cpu as usize;
        if Some(spec) == self.specs.sys_exit {
            // Taken in the thread's own context: it is running again (see `legacy`).
            if tid != 0 && pid != self.own_pid {
                let ev = OffcpuEvent::Ran { time, cpu, tid };
                self.reorder.push(ring, time, ev);
            }
            return;
        }
        if spec == self.specs.switch || Some(spec) == self.specs.cpu_switch {
            let Ok(sw) = self.switch_dec.decode(raw) else {
                self.counts.decode_errors += 1;
                return;
            };
            let next = sw.next_pid.max(0) as u32;
            let cpu_wide_fallback = Some(spec) == self.specs.cpu_switch;
            if (self.system_wide && !self.switch_records) || cpu_wide_fallback {
                let wanted =
                    self.system_wide || self.targets.contains(&pid_of_thread(&self.tracker, next));
                if next != 0 && next != self.own_pid && wanted {
                    self.counts.switch_ins += 1;
                    self.reorder.push(
                        ring,
                        time,
                        OffcpuEvent::SwitchIn {
                            time,
                            cpu,
                            tid: next,
                        },
                    );
                }
                if cpu_wide_fallback {
                    return;
                }
            }
            // The sample runs in the context of prev: the blocked task.
            if tid == 0 || pid == self.own_pid {
                return;
            }
            self.tracker.saw_thread(tid);
            self.builder.build(&self.tracker, s, pid);
            let stack = self.stacks.intern(&self.builder.frames);
            let who = self.names.intern(self.tracker.comm(pid, tid));
            self.counts.switch_outs += 1;
            let state = sw.prev_state;
            let ev = OffcpuEvent::SwitchOut {
                time,
                cpu,
                tid,
                who,
                state,
                stack,
            };
            self.reorder.push(ring, time, ev);
        } else if Some(spec) == self.specs.wakeup {
            let Some(dec) = &self.wakeup_dec else { return };
            let Ok(w) = dec.decode(raw) else {
                self.counts.decode_errors += 1;
                return;
            };
            // Before 4.3 the tracepoint also fires for wakeups that woke nothing.
            if w.success == Some(false) || w.pid <= 0 {
                return;
            }
            // Wakers are often outside the target (another process, an interrupt on top of
            // any task): learn their address space and name the first time they show up.
            if pid != 0 && !self.tracker.procs.contains(pid) {
                self.tracker.load_process(pid);
            }
            self.builder.build(&self.tracker, s, pid);
            let waker_stack = self.stacks.intern(&self.builder.frames);
            // An interrupt on an idle CPU wakes in the context of the idle task.
            let waker = if tid == 0 {
                self.names.intern("swapper")
            } else {
                self.names.intern(self.tracker.comm(pid, tid))
            };
            self.counts.wakeups += 1;
            let ev = OffcpuEvent::Wakeup {
                time,
                cpu,
                target_tid: w.pid as u32,
                waker,
                waker_stack,
            };
            self.reorder.push(ring, time, ev);
        }
    }
}

/// A frame of an old tracker's address spaces, re-expressed in a fresh tracker's: the same
/// process and address, if the process still maps it.
fn rebase_frame(f: Frame, old: &unwind::Processes, new: &unwind::Processes) -> Frame {
    let Frame::User { mapping, addr } = f else {
        return f;
    };
    let Some(m) = old.get(mapping) else {
        return Frame::Unmapped(addr);
    };
    // Frames are canonical (see `Processes::canonical`): the process that first mapped the
    // file may be gone while others still map it.
    let found = new
        .find(m.pid, addr)
        .map(|id| new.canonical(id, addr))
        .or_else(|| new.equivalent(m, addr));
    match found {
        Some((mapping, addr)) => Frame::User { mapping, addr },
        None => Frame::Unmapped(addr),
    }
}

fn pid_of_thread(tracker: &Tracker, tid: u32) -> u32 {
    tracker
        .pid_of(tid)
        .or_else(|| target::tgid_of(tid))
        .unwrap_or(tid)
}

/// Render the report as folded lines with microsecond counts.
fn fold_report(
    report: &Report,
    t: &Tables<'_>,
    sym: &mut symbolize::Symbolizer,
) -> Vec<(String, u64)> {
    let lines = report_lines(report, t, sym);
    let mut by_line: BTreeMap<String, u64> = BTreeMap::new();
    for (key, ns) in &report.by_stack {
        if let Some(l) = lines.get(key) {
            *by_line.entry(l.clone()).or_insert(0) += ns;
        }
    }
    by_line
        .into_iter()
        .map(|(l, ns)| (l, ns / 1000))
        .filter(|(_, us)| *us > 0)
        .collect()
}

/// The folded line of every key of a report.
fn report_lines(
    report: &Report,
    t: &Tables<'_>,
    sym: &mut symbolize::Symbolizer,
) -> HashMap<StackKey, String> {
    let mut out: HashMap<StackKey, String> = HashMap::new();
    let mut folder = Folder::new(sym, t.procs, t.named);
    for key in report.by_stack.keys() {
        let mut line = folder.render(t.names.get(key.who), t.stacks.get(key.stack));
        if let Some(w) = key.waker {
            line.push_str(";--");
            let waker = folder.render_reversed(t.stacks.get(w.stack), "_[w]");
            if !waker.is_empty() {
                line.push(';');
                line.push_str(&waker);
            }
            line.push(';');
            line.push_str(&escape_comm(t.names.get(w.who)));
        }
        out.insert(*key, line);
    }
    out
}

/// What rendering a report needs besides the symbolizer: the tables its ids refer to.
struct Tables<'a> {
    stacks: &'a Stacks,
    procs: &'a unwind::Processes,
    named: &'a NamedFrames,
    names: &'a Names,
}

/// An ended report with the tables it refers to, owned, so that it can be rendered on the
/// continuous-mode writer thread while the next interval is collected.
struct Ended {
    report: Report,
    stacks: Stacks,
    procs: unwind::Processes,
    named: NamedFrames,
    names: Names,
}

impl Ended {
    fn render(
        &self,
        sym: &mut symbolize::Symbolizer,
        format: output::Format,
        window: (std::time::SystemTime, std::time::Duration),
    ) -> output::Rendered {
        let t = Tables {
            stacks: &self.stacks,
            procs: &self.procs,
            named: &self.named,
            names: &self.names,
        };
        render(&self.report, &t, sym, format, window)
    }

    fn submit(
        self,
        iv: &mut Intervals,
        window: (std::time::SystemTime, std::time::Duration),
        format: output::Format,
    ) {
        iv.submit(
            window,
            Box::new(move |sym| self.render(sym, format, window)),
        );
    }
}

/// `per_thread` entries kept before exited threads' are dropped (see
/// [`Report::trim_threads`]); grows when most threads are alive.
const TRIM_THREADS: usize = 4096;

/// One-shot runs keep one report for the whole run; on a host with process churn, what the
/// engine and the report hold per thread must not pile up. Every few seconds: forget
/// exited threads' engine state and trim per-thread totals.
struct Upkeep {
    last: Instant,
    limit: usize,
}

impl Upkeep {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new() -> Self {
        Upkeep {
            last: Instant::now(),
            limit: TRIM_THREADS,
        }
    }

    fn run(&mut self, engine: &mut Engine) {
        if self.last.elapsed() < Self::EVERY {
            return;
        }
        self.last = Instant::now();
        // Cheap: only exited threads whose final switch-out was not seen are looked up.
        engine.forget_threads(|tid| !target::thread_alive(tid));
        self.limit = engine.trim_threads(self.limit, |tid| !target::thread_alive(tid));
    }
}
