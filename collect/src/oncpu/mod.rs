//! `psample record`: sampled on-CPU stacks, user + kernel.

use std::time::Instant;

use perfring::attr::{sample, AttrBuilder, EventKind, RawAttr};
use perfring::event::Session;
use perfring::features::{Feature, Support};
use perfring::order::OrderedReader;
use perfring::record::Record;

use crate::continuous::{self, Intervals};
use crate::fold::{Folder, NamedFrames};
use crate::output::{self, folded::escape_comm, pprof, Labels};
use crate::profile::Profile;
use crate::session::{self, Attach, Observer, SessionOptions, StopCause, Stopper, Summary};
use crate::stack::{StackBuilder, StackMode};
use crate::target::{self, Launched, Target};
use crate::tracker::Tracker;
use crate::Error;

pub mod bpf;

use bpf::BpfMode;

/// What `record` takes besides the session options.
#[derive(Debug, Clone)]
pub struct OnCpuOptions {
    /// Targets, output, stack mode, symbolization.
    pub session: SessionOptions,
    /// Samples per second per CPU or thread (clamped to the kernel's maximum).
    pub freq: u64,
    /// `cpu-clock`, `task-clock`, `cycles` or `tracepoint:SUBSYS:NAME`.
    pub event: String,
    /// In-kernel stack aggregation.
    pub bpf: BpfMode,
}

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
    if let StackMode::Dwarf(size) = mode {
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
        time_nanos: pprof::time_nanos(window.0),
        duration_nanos: window.1.as_nanos().min(i64::MAX as u128) as i64,
    }))
}

fn labels() -> Labels {
    Labels {
        title: "psample record".into(),
        count_name: "samples".into(),
    }
}

/// `psample record` against any [`perfring::sys::Kernel`] (compat-tests pass emulated ones).
pub fn run(
    args: &OnCpuOptions,
    kernel: std::sync::Arc<dyn perfring::sys::Kernel>,
    observer: &mut dyn Observer,
) -> Result<(), Error> {
    continuous::run_command(
        &args.session,
        "record",
        labels(),
        observer,
        |target, iv, obs| run_session(args, target, kernel.clone(), iv, obs),
    )
}

/// One session on one target: attach, sample until stopped, write. In continuous mode
/// (`intervals`), one profile per interval is written instead of one at the end.
pub fn run_session(
    args: &OnCpuOptions,
    target: Target,
    kernel: std::sync::Arc<dyn perfring::sys::Kernel>,
    mut intervals: Option<&mut Intervals>,
    observer: &mut dyn Observer,
) -> Result<StopCause, Error> {
    let common = &args.session;
    let format = output::Format::resolve(common.format, common.output.as_deref());
    if let Some(p) = &common.output {
        output::check_writable(p).map_err(Error::new)?;
    }
    let mut summary = Summary::new("record");
    let hz = clamp_frequency(args.freq, kernel.as_ref(), &mut summary.warnings);
    let period_ns = 1_000_000_000 / hz.max(1);
    if let Some(iv) = intervals.as_deref() {
        iv.set_sample_rate(hz);
    }
    let (kind, event_name) = parse_event(&args.event, kernel.as_ref())?;
    let mode = common.stack;
    let is_cmd = matches!(target, Target::Command(_));
    let inherit = !matches!(target, Target::Tids(_) | Target::AllCpus);
    let attr = sampling_attr(kind, hz, mode, inherit, is_cmd);
    let pages = common.mmap_pages.unwrap_or(match mode {
        StackMode::Fp => 64,
        StackMode::Dwarf(_) => 512,
    });
    session::check_ring_fits(pages, mode)?;
    let mut session = Session::new(kernel.clone(), pages);
    session.ladder.allow_user_only = !crate::perms::is_root();
    let spec = session.add_spec(&event_name, attr);

    let mut launched = match &target {
        Target::Command(argv) => Some(
            Launched::spawn(argv, target::sudo_user(common.keep_root))
                .map_err(|e| Error::new(format!("cannot start {:?}: {e}", argv[0])))?,
        ),
        _ => None,
    };
    session::signals::install();
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
        .ok_or_else(|| Error::new("no event was opened"))?;
    let comm_exec = session.ladder.support(Feature::CommExec) == Support::Yes;
    let mut tracker = Tracker::new(comm_exec);
    if !matches!(target, Target::Command(_)) {
        for &pid in &pids {
            tracker.load_process(pid);
        }
    }
    let mut bpf = match bpf::setup(args.bpf, mode, &session, spec, common.verbose)? {
        bpf::Decision::Use(b) => Some(b),
        bpf::Decision::NotUsed(why) => {
            if args.bpf != BpfMode::Never {
                summary.line("bpf", format!("not used: {why}"));
            }
            None
        }
    };
    if !is_cmd {
        session.enable().map_err(|e| Error::new(e.to_string()))?;
    }
    if let Some(l) = launched.as_mut() {
        l.start()
            .map_err(|e| Error::new(format!("cannot start the command: {e}")))?;
    }

    if let Some(iv) = intervals.as_deref_mut() {
        iv.begin();
    }
    let mut rec = Recorder {
        tracker,
        builder: StackBuilder::new(mode),
        profile: Profile::new(),
        samples: 0,
        own_pid: std::process::id(),
    };
    let mut reader = OrderedReader::new(fmt);
    let mut stopper = Stopper::new(common.duration, &target, &pids);
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
        if let Err(e) = session.wait(timeout) {
            summary.warnings.push(format!("stopping early: {e}"));
            break StopCause::Signal;
        }
        reader.pump(&mut session, |o| rec.handle(&o.record));
        // Drain the BPF maps about once a second so they never fill on long runs.
        if let Some(b) = bpf.as_mut() {
            if last_bpf_drain.elapsed() >= std::time::Duration::from_secs(1) {
                if let Err(e) = b.drain(&mut rec.tracker, &mut rec.profile, rec.own_pid) {
                    summary.warnings.push(format!("reading BPF counts: {e}"));
                }
                last_bpf_drain = Instant::now();
            }
        }
        observer.progress(rec.samples + bpf.as_ref().map_or(0, |b| b.samples));
    };
    session.disable();
    let stop_started = Instant::now();
    reader.pump(&mut session, |o| rec.handle(&o.record));
    reader.finish(|o| rec.handle(&o.record));
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
    observer.progress_done();
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
        format!("{event_name} at {hz} Hz, call graph {}", mode.describe()),
    );
    summary.line("samples", samples.to_string());
    summary.line("threads seen", tracker.threads_seen().to_string());
    if common.verbose {
        summary.line(
            "tables",
            format!(
                "{}; {} distinct stacks",
                tracker.describe_tables(),
                profile.distinct_stacks()
            ),
        );
    }
    summary.add_lost(&session, reader.stats().parse_errors);
    if tracker.stats.throttles > 0 {
        summary.line(
            "throttled",
            format!(
                "{} times (kernel lowered the sample rate)",
                tracker.stats.throttles
            ),
        );
    }
    if let StackMode::Dwarf(_) = mode {
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
        summary.verbose = common.verbose;
        observer.summary(&summary);
        return Ok(cause);
    }
    let mut sym = symbolize::Symbolizer::new(common.symbols.clone());
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
        .write(common.output.as_deref(), format, &labels())
        .map_err(|e| Error::new(format!("writing the profile failed: {e}")))?;
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
    if let Some(p) = &common.output {
        summary.line("written", p.display().to_string());
    }
    for w in sym.warnings() {
        summary.warnings.push(w);
    }
    if samples == 0 {
        summary.warnings.push(
            "no samples were collected (was the target idle or blocked? try `psample offcpu`)"
                .into(),
        );
    }
    summary.verbose = common.verbose;
    observer.summary(&summary);
    Ok(cause)
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
