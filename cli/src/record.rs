//! `psample record`: sampled on-CPU stacks, user + kernel.

use std::io::IsTerminal;
use std::time::Instant;

use perfring::attr::{sample, AttrBuilder, EventKind, RawAttr};
use perfring::event::Session;
use perfring::features::{Feature, Support};
use perfring::record::{Record, Sample};
use unwind::{StopReason, UnwindResult, Unwinder, UserRegs};

use crate::args::{CallGraph, RecordArgs};
use crate::continuous::{self, Intervals};
use crate::error::CliError;
use crate::fold::{Folder, NamedFrames};
use crate::output::{self, folded::escape_comm, pprof, Labels};
use crate::profile::Profile;
use crate::session::{self, Attach, Reader, StopCause, Stopper};
use crate::stack::{split_callchain, Frame};
use crate::summary::Summary;
use crate::target::{self, Launched, Target};
use crate::tracker::Tracker;
use crate::{bpf_mode, progress, symbols};

/// Parse `-e`: returns the event and a printable name.
pub fn parse_event(
    spec: &str,
    kernel: &dyn perfring::sys::Kernel,
) -> Result<(EventKind, String), CliError> {
    match spec {
        "cpu-clock" => Ok((EventKind::CpuClock, spec.into())),
        "task-clock" => Ok((EventKind::TaskClock, spec.into())),
        "cycles" | "cpu-cycles" => Ok((EventKind::Cycles, "cycles".into())),
        _ => {
            let rest = spec
                .strip_prefix("tracepoint:")
                .or_else(|| spec.strip_prefix("t:"));
            let Some((subsys, name)) = rest.and_then(|r| r.split_once(':')) else {
                return Err(CliError::new(format!(
                    "unknown event {spec:?}: use cpu-clock, task-clock, cycles or \
                     tracepoint:SUBSYS:NAME (see /sys/kernel/tracing/available_events)"
                )));
            };
            let tracing = crate::tracing::locate(kernel)?;
            let id = tracing
                .event_id(&crate::tracing::Fs(kernel), subsys, name)
                .map_err(|e| CliError::new(format!("tracepoint {subsys}:{name}: {e}")))?;
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
    mode: CallGraph,
    inherit: bool,
    on_exec: bool,
) -> RawAttr {
    let mut st =
        sample::IP | sample::TID | sample::TIME | sample::CPU | sample::PERIOD | sample::CALLCHAIN;
    let mut b = AttrBuilder::new(kind);
    if let CallGraph::Dwarf(size) = mode {
        st |= sample::REGS_USER | sample::STACK_USER;
        b = b
            .sample_regs_user(unwind::arch::x86_64::SAMPLE_REGS_USER)
            .sample_stack_user(size)
            .exclude_callchain_user(true);
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

/// Unwinding and completeness accounting for user stacks.
#[derive(Default)]
pub struct UnwindStats {
    pub samples: u64,
    pub complete: u64,
    pub reasons: std::collections::BTreeMap<String, u64>,
}

impl UnwindStats {
    pub fn add(&mut self, r: &UnwindResult) {
        self.samples += 1;
        if r.reason == StopReason::ReachedEntry {
            self.complete += 1;
        } else {
            *self.reasons.entry(format!("{:?}", r.reason)).or_insert(0) += 1;
        }
    }
}

/// Per-sample state reused across samples so the hot path does not allocate.
pub struct StackBuilder {
    pub mode: CallGraph,
    pub unwinder: Unwinder,
    kernel: Vec<u64>,
    user: Vec<u64>,
    pub frames: Vec<Frame>,
    pub unwind_stats: UnwindStats,
}

impl StackBuilder {
    pub fn new(mode: CallGraph) -> Self {
        StackBuilder {
            mode,
            unwinder: Unwinder::new(),
            kernel: Vec::new(),
            user: Vec::new(),
            frames: Vec::new(),
            unwind_stats: UnwindStats::default(),
        }
    }

    /// Loads what unwinding `pid`'s samples needs (DWARF mode: its modules' CFI) before
    /// sampling starts, so the first samples do not stall the ring reader.
    pub fn prepare(&mut self, tracker: &Tracker, pid: u32) {
        if let CallGraph::Dwarf(_) = self.mode {
            self.unwinder.prepare(&tracker.procs, pid);
        }
    }

    /// Build `self.frames` (leaf first) from a sample.
    pub fn build(&mut self, tracker: &Tracker, s: &Sample<'_>, pid: u32) {
        self.kernel.clear();
        self.user.clear();
        self.frames.clear();
        if let Some(cc) = &s.callchain {
            split_callchain(cc.iter(), &mut self.kernel, &mut self.user);
        }
        if let CallGraph::Dwarf(_) = self.mode {
            // The kernel's user callchain (if exclude_callchain_user was refused) is replaced
            // by our own unwinding of the copied stack.
            self.user.clear();
            if let (Some(regs), Some(stack)) = (&s.regs_user, s.stack_user) {
                let (ip, sp, bp) = (
                    regs.get(unwind::arch::x86_64::PERF_REG_IP as u32),
                    regs.get(unwind::arch::x86_64::PERF_REG_SP as u32),
                    regs.get(unwind::arch::x86_64::PERF_REG_BP as u32),
                );
                if let (Some(ip), Some(sp), Some(bp)) = (ip, sp, bp) {
                    let r = self.unwinder.unwind_dwarf(
                        &tracker.procs,
                        pid,
                        UserRegs { ip, sp, bp },
                        stack,
                        &mut self.user,
                    );
                    self.unwind_stats.add(&r);
                    for a in self.user.iter_mut().skip(1) {
                        *a = a.wrapping_sub(1);
                    }
                }
            }
        }
        self.frames
            .extend(self.kernel.iter().map(|a| Frame::Kernel(*a)));
        for &a in &self.user {
            self.frames.push(tracker.user_frame(pid, a));
        }
    }
}

pub fn run(args: RecordArgs) -> Result<i32, CliError> {
    run_with_kernel(args, session::linux_kernel())
}

/// The profile of a run or of one interval, in the output format. `period_ns` converts
/// sample counts to CPU time for pprof's (cpu, nanoseconds) value.
pub fn render(
    profile: &Profile,
    procs: &unwind::Processes,
    sym: &mut symbolize::Symbolizer,
    format: output::Format,
    period_ns: u64,
    window: (std::time::SystemTime, std::time::Duration),
) -> output::Rendered {
    let named = NamedFrames::default();
    crate::fold::prefetch_debuginfo(sym, procs, profile.iter().flat_map(|(_, f, _)| f));
    if format != output::Format::Pprof {
        return output::Rendered::Lines(Folder::new(sym, procs, &named).fold(profile));
    }
    let mut b = pprof::Builder::new(sym, procs, &named);
    for (name, frames, count) in profile.iter() {
        let comm = escape_comm(profile.name(name));
        let mut nodes: Vec<pprof::Node<'_>> = Vec::with_capacity(frames.len() + 1);
        nodes.extend(frames.iter().map(|f| pprof::Node::Frame(*f)));
        nodes.push(pprof::Node::Text(&comm));
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        b.add(&nodes, &[count, count.saturating_mul(period_ns as i64)]);
    }
    output::Rendered::Pprof(b.finish(&pprof::Meta {
        sample_types: vec![
            ("samples".into(), "count".into()),
            ("cpu".into(), "nanoseconds".into()),
        ],
        period_type: ("cpu".into(), "nanoseconds".into()),
        period: period_ns as i64,
        time_nanos: pprof_time(window.0),
        duration_nanos: window.1.as_nanos().min(i64::MAX as u128) as i64,
    }))
}

/// Nanoseconds since the epoch, as pprof's time_nanos.
pub fn pprof_time(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// `record` against any [`perfring::sys::Kernel`] (compat-tests pass emulated kernels).
pub fn run_with_kernel(
    args: RecordArgs,
    kernel: std::sync::Arc<dyn perfring::sys::Kernel>,
) -> Result<i32, CliError> {
    let labels = Labels {
        title: "psample record".into(),
        count_name: "samples".into(),
    };
    continuous::run_command(
        &args.continuous,
        &args.common,
        &args.symbols,
        &args.target,
        "record",
        labels,
        |target, intervals| run_session(&args, target, kernel.clone(), intervals),
    )
}

/// One session on one target: attach, sample until stopped, write. In continuous mode
/// (`intervals`), one profile per interval is written instead of one at the end.
pub fn run_session(
    args: &RecordArgs,
    target: Target,
    kernel: std::sync::Arc<dyn perfring::sys::Kernel>,
    mut intervals: Option<&mut Intervals>,
) -> Result<StopCause, CliError> {
    let format = output::Format::resolve(args.common.format, args.common.output.as_deref());
    if let Some(p) = &args.common.output {
        output::check_writable(p).map_err(CliError::new)?;
    }
    let mut summary = Summary::new("record");
    let hz = clamp_frequency(args.freq, kernel.as_ref(), &mut summary.warnings);
    let period_ns = 1_000_000_000 / hz.max(1);
    if let Some(iv) = intervals.as_deref() {
        iv.set_sample_rate(hz);
    }
    let (kind, event_name) = parse_event(&args.event, kernel.as_ref())?;
    let mode = args.call_graph.mode();
    let is_cmd = matches!(target, Target::Command(_));
    let inherit = !matches!(target, Target::Tids(_) | Target::AllCpus);
    let attr = sampling_attr(kind, hz, mode, inherit, is_cmd);
    let pages = args.common.mmap_pages.unwrap_or(match mode {
        CallGraph::Fp => 64,
        CallGraph::Dwarf(_) => 512,
    });
    session::check_ring_fits(pages, mode)?;
    let mut session = Session::new(kernel.clone(), pages);
    session.ladder.allow_user_only = !crate::perms::is_root();
    let spec = session.add_spec(&event_name, attr);

    let mut launched = match &target {
        Target::Command(argv) => Some(
            Launched::spawn(argv, target::sudo_user(args.target.keep_root))
                .map_err(|e| CliError::new(format!("cannot start {:?}: {e}", argv[0])))?,
        ),
        _ => None,
    };
    crate::signals::install();
    let pids = session::attach(
        Attach {
            session: &mut session,
            task_specs: &[spec],
            cpu_specs: &[],
        },
        &target,
        launched.as_ref(),
    )?;
    if session.ladder.support(Feature::Hardware) == Support::No && kind.is_hardware() {
        summary
            .warnings
            .push("no hardware PMU here: sampling cpu-clock instead of cycles".into());
    }
    let fmt = session
        .sample_format()
        .ok_or_else(|| CliError::new("no event was opened"))?;
    let comm_exec = session.ladder.support(Feature::CommExec) == Support::Yes;
    let mut tracker = Tracker::new(comm_exec);
    if !matches!(target, Target::Command(_)) {
        for &pid in &pids {
            tracker.load_process(pid);
        }
    }
    let mut bpf = match bpf_mode::setup(args.bpf, mode, &session, spec, args.common.verbose)? {
        bpf_mode::Decision::Use(b) => Some(b),
        bpf_mode::Decision::NotUsed(why) => {
            if args.bpf != crate::args::BpfMode::Never {
                summary.line("bpf", format!("not used: {why}"));
            }
            None
        }
    };
    let mut builder = StackBuilder::new(mode);
    if matches!(target, Target::Pids(_) | Target::Tids(_)) {
        for &pid in &pids {
            builder.prepare(&tracker, pid);
        }
    }
    if !is_cmd {
        session.enable().map_err(|e| CliError::new(e.to_string()))?;
    }
    if let Some(l) = launched.as_mut() {
        l.start()
            .map_err(|e| CliError::new(format!("cannot start the command: {e}")))?;
    }

    if let Some(iv) = intervals.as_deref_mut() {
        iv.begin();
    }
    let mut rec = Recorder {
        tracker,
        builder,
        profile: Profile::new(),
        samples: 0,
        own_pid: std::process::id(),
    };
    session::drain_in_background(&mut session, pages)?;
    let mut reader = Reader::new();
    let mut stopper = Stopper::new(args.common.duration, &target, &pids);
    let mut progress = progress::Progress::new(std::io::stderr().is_terminal());
    let mut last_bpf_drain = Instant::now();
    let cause = loop {
        if let Some(c) = stopper.check(launched.as_ref()) {
            break c;
        }
        if let Some(iv) = intervals.as_deref_mut() {
            if iv.due() {
                if let Some(b) = bpf.as_mut() {
                    if let Err(e) = b.drain(&mut rec.tracker, &mut rec.profile, rec.own_pid) {
                        summary.warnings.push(format!("reading BPF counts: {e}"));
                    }
                }
                rec.end_interval(iv, format, period_ns);
            }
        }
        let timeout = match intervals.as_deref() {
            Some(iv) => stopper.poll_timeout_ms().min(iv.ms_until_due()),
            None => stopper.poll_timeout_ms(),
        };
        match session.wait(timeout) {
            Ok((_, hup)) => stopper.after_wait(hup),
            Err(e) => {
                summary.warnings.push(format!("stopping early: {e}"));
                break StopCause::Signal;
            }
        }
        reader.pump(&mut session, &fmt, |_cpu, r| rec.handle(r));
        // Drain the BPF maps about once a second so they never fill on long runs.
        if let Some(b) = bpf.as_mut() {
            if last_bpf_drain.elapsed() >= std::time::Duration::from_secs(1) {
                if let Err(e) = b.drain(&mut rec.tracker, &mut rec.profile, rec.own_pid) {
                    summary.warnings.push(format!("reading BPF counts: {e}"));
                }
                last_bpf_drain = Instant::now();
            }
        }
        progress.tick(rec.samples + bpf.as_ref().map_or(0, |b| b.samples));
    };
    session.disable();
    let stop_started = Instant::now();
    reader.pump(&mut session, &fmt, |_cpu, r| rec.handle(r));
    if let Some(b) = bpf.as_mut() {
        if let Err(e) = b.drain(&mut rec.tracker, &mut rec.profile, rec.own_pid) {
            summary.warnings.push(format!("reading BPF counts: {e}"));
        }
        rec.samples += b.samples;
        summary.line(
            "bpf",
            format!(
                "in-kernel aggregation: {} samples in {} stack keys; {}",
                b.samples,
                b.keys,
                b.missing()
            ),
        );
    }
    progress.finish();
    let elapsed = stopper.elapsed();
    let Recorder {
        tracker,
        builder,
        profile,
        samples,
        ..
    } = rec;

    summary.line("stopped", cause.describe());
    summary.line("duration", format!("{:.2} s", elapsed.as_secs_f64()));
    summary.line(
        "event",
        format!(
            "{event_name} at {hz} Hz, call graph {}",
            describe_mode(mode)
        ),
    );
    summary.line("samples", samples.to_string());
    summary.line("threads seen", tracker.threads_seen().to_string());
    if args.common.verbose {
        summary.line(
            "tables",
            format!(
                "{}; {} distinct stacks",
                tracker.describe_tables(),
                profile.distinct_stacks()
            ),
        );
    }
    summary.add_lost(&session, reader.parse_errors);
    if tracker.stats.throttles > 0 {
        summary.line(
            "throttled",
            format!(
                "{} times (kernel lowered the sample rate)",
                tracker.stats.throttles
            ),
        );
    }
    if let CallGraph::Dwarf(_) = mode {
        summary.add_unwind(&builder.unwind_stats);
    }
    summary.add_fallbacks(&session);
    // Symbolization is the memory peak (DWARF of every module): give back the rings, the
    // batch arena and the unwinder's caches first.
    drop((session, reader, builder, bpf));

    if let Some(iv) = intervals {
        // The last, partial interval (stop or target exit).
        let window = iv.cut();
        iv.submit(
            window,
            Box::new(move |sym| render(&profile, &tracker.procs, sym, format, period_ns, window)),
        );
        let flushed = iv.flush();
        summary.line(
            "intervals",
            format!(
                "{} written, {} failed",
                flushed.written, flushed.write_errors
            ),
        );
        if let Some(p) = iv.push_stats() {
            summary.line("push", p);
        }
        summary.warnings.extend(flushed.warnings);
        summary.print(args.common.verbose);
        return Ok(cause);
    }
    let mut sym = symbols::symbolizer(&args.symbols);
    let window = (std::time::SystemTime::now() - elapsed, elapsed);
    let rendered = render(
        &profile,
        &tracker.procs,
        &mut sym,
        format,
        period_ns,
        window,
    );
    rendered
        .write(
            args.common.output.as_deref(),
            format,
            &Labels {
                title: "psample record".into(),
                count_name: "samples".into(),
            },
        )
        .map_err(|e| CliError::new(format!("writing the profile failed: {e}")))?;
    summary.line(
        "stacks",
        format!(
            "{} distinct, {} {}",
            profile.distinct_stacks(),
            rendered.len(),
            if format == output::Format::Pprof {
                "pprof samples"
            } else {
                "folded lines"
            }
        ),
    );
    summary.line(
        "output ready",
        format!("{} ms after stop", stop_started.elapsed().as_millis()),
    );
    if let Some(p) = &args.common.output {
        summary.line("written", p.display().to_string());
    }
    if let Some(d) = sym.debuginfod_summary() {
        summary.line("debuginfod", d);
    }
    for w in sym.warnings() {
        summary.warnings.push(w);
    }
    summary.print(args.common.verbose);
    if samples == 0 {
        crate::errln!("psample: no samples were collected (was the target idle or blocked? try `psample offcpu`)");
    }
    Ok(cause)
}

fn describe_mode(mode: CallGraph) -> String {
    match mode {
        CallGraph::Fp => "fp".into(),
        CallGraph::Dwarf(n) => format!("dwarf ({n} bytes of stack)"),
    }
}

/// The per-record state of a recording.
struct Recorder {
    tracker: Tracker,
    builder: StackBuilder,
    profile: Profile,
    samples: u64,
    own_pid: u32,
}

impl Recorder {
    /// Hand the interval that just ended to the writer and start the next one with empty
    /// tables and a tracker of live processes only, so nothing grows with the length of the
    /// run. The old tracker goes with the profile: its address spaces symbolize it.
    fn end_interval(&mut self, iv: &mut Intervals, format: output::Format, period_ns: u64) {
        let profile = std::mem::take(&mut self.profile);
        let window = iv.cut();
        let fresh = self.tracker.refreshed();
        let old = std::mem::replace(&mut self.tracker, fresh);
        iv.submit(
            window,
            Box::new(move |sym| render(&profile, &old.procs, sym, format, period_ns, window)),
        );
        let stats = std::mem::take(&mut self.builder.unwind_stats);
        self.builder = StackBuilder::new(self.builder.mode);
        self.builder.unwind_stats = stats;
    }

    fn handle(&mut self, rec: &Record<'_>) {
        if self.tracker.on_record(rec) {
            return;
        }
        let Record::Sample(s) = rec else { return };
        let (Some(pid), Some(tid)) = (s.pid, s.tid) else {
            return;
        };
        // With -a psample would sample itself reading the rings: leave it out.
        if pid == self.own_pid {
            return;
        }
        self.tracker.saw_thread(tid);
        self.builder.build(&self.tracker, s, pid);
        let name = self.profile.name_id(self.tracker.comm(pid, tid));
        self.profile.add(name, &self.builder.frames, 1);
        self.samples += 1;
    }
}
