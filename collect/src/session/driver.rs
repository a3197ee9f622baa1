//! The session driver: one read loop for every command.
//!
//! [`Attached::run`] loads the tracker, enables the events (or starts the launched
//! command), reads the rings in time order until a stop condition, ends intervals in
//! continuous mode, drains kernel-side aggregation periodically, reads what is left after
//! the stop, and reports what every command reports (duration, lost records, throttling,
//! unwinding, fallbacks, output). What is done with the records is the [`Collector`]'s:
//! `record` counts samples per stack, `offcpu` pairs switch-outs with switch-ins. A command
//! that needs both (on-CPU samples and off-CPU intervals in one session) is one more
//! collector over the same [`Pipeline`].

use std::time::{Duration, Instant, SystemTime};

use perfring::features::{Feature, Support};
use perfring::order::{Ordered, OrderedReader};
use perfring::record::{Comm, Record};
use symbolize::Symbolizer;

use super::{Attached, Observer, StopCause, Stopper, Summary};
use crate::continuous::Intervals;
use crate::output::{Format, Labels, Rendered};
use crate::pipeline::Pipeline;
use crate::tables::{Keep, Remap, Snapshot};
use crate::target::{self, Target};
use crate::tracker::Tracker;
use crate::Error;

/// The wall-clock start and the length of what an aggregation covers.
pub type Window = (SystemTime, Duration);

/// An ended interval's (or the whole run's) aggregation, rendered after collection — on
/// the writer thread in continuous mode — with the tables it refers to.
pub trait Aggregation: Send {
    /// Distinct stacks aggregated, for the summary.
    fn distinct_stacks(&self) -> usize;
    /// Folded lines or a pprof profile, symbolizing each distinct frame once.
    fn render(
        &self,
        snapshot: &Snapshot,
        sym: &mut Symbolizer,
        format: Format,
        window: Window,
    ) -> Rendered;
}

/// What a collector hands over when recording stops.
pub struct Finished {
    /// The last aggregation (the whole run's, or the last interval's).
    pub aggregation: Box<dyn Aggregation>,
    /// How long the aggregation covers (the output's time window).
    pub window: Duration,
}

/// How the read loop ended.
#[derive(Clone, Copy, Debug)]
pub struct Stopped {
    /// Why it stopped.
    pub cause: StopCause,
    /// Time from the start of sampling to the stop.
    pub elapsed: Duration,
    /// CLOCK_MONOTONIC at the stop, in ns (the clock of `use_clockid` events).
    pub monotonic_ns: u64,
    /// When the events were disabled (the summary says how long output took after it).
    pub at: Instant,
}

/// What a command does with a session's records. The driver owns the session, the read
/// loop, the intervals and the common summary lines; a collector only aggregates.
pub trait Collector {
    /// Title and count unit of the command's flame graphs.
    fn labels(&self) -> Labels;
    /// Sampling starts now (events enabled): e.g. note threads already blocked.
    fn start(&mut self, _p: &mut Pipeline) {}
    /// Recording stops now (the events were just disabled): stop what the events do not
    /// control, e.g. in-kernel aggregation, so nothing after the stop time is counted.
    fn stopping(&mut self) {}
    /// One record, in time order, after the tracker has applied it.
    fn record(&mut self, p: &mut Pipeline, rec: &Ordered<'_>);
    /// Called on every turn of the read loop (rate-limit yourself).
    fn upkeep(&mut self, _p: &mut Pipeline) {}
    /// Move what was aggregated outside the rings (in-kernel BPF maps) into the
    /// collector's aggregation. Called about once a second, before an interval ends, and
    /// after the final read. Errors are reported in the summary, never fatal.
    fn drain(&mut self, _p: &mut Pipeline) -> Result<(), String> {
        Ok(())
    }
    /// Recording stopped and every record was read: compare with the kernel's event
    /// counters, e.g. to find samples the kernel counted but never wrote.
    fn counters(&mut self, _session: &perfring::event::Session) {}
    /// The interval ended: hand over its aggregation and start a new one.
    fn end_interval(&mut self, p: &mut Pipeline) -> Box<dyn Aggregation>;
    /// Ids the collector still refers to after [`Collector::end_interval`].
    fn keep(&self, _keep: &mut Keep) {}
    /// Renumber them: the pipeline's tables were compacted.
    fn remap(&mut self, _remap: &Remap) {}
    /// Recording stopped and everything was read: the last aggregation.
    fn finish(&mut self, p: &mut Pipeline, stopped: &Stopped) -> Finished;
    /// Events collected so far, for the progress display.
    fn progress(&self) -> u64;
    /// The command's lines, after `stopped` and `duration`.
    fn summarize(&self, p: &Pipeline, s: &mut Summary);
    /// The command's lines after the common loss and unwinding lines.
    fn summarize_tail(&self, _p: &Pipeline, _s: &mut Summary) {}
    /// Sizes of the collector's own tables for the verbose `tables` line (", N …").
    fn table_sizes(&self) -> String {
        String::new()
    }
}

/// Drain kernel-side aggregation this often.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Enable the events; with a launched command, the per-task ones wait for its exec
/// (enable_on_exec) and only the CPU-wide ones are enabled, as the command starts.
fn enable(a: &mut Attached<'_>) -> Result<(), Error> {
    let Some(l) = a.launched.as_mut() else {
        return a.session.enable().map_err(|e| Error::new(e.to_string()));
    };
    for &spec in &a.cpu_wide {
        a.session
            .enable_spec(spec)
            .map_err(|e| Error::new(e.to_string()))?;
    }
    l.start()
        .map_err(|e| Error::with_exit_code(e.message, e.code))
}

/// How the launched command ended, if it did: when it ended the session, its status; when
/// psample stopped first on a signal (the terminal's Ctrl-C reaches the command too), a
/// moment to exit; after `-d` it is left running.
fn command_status(a: &Attached<'_>, cause: StopCause) -> Option<crate::launch::ExitStatus> {
    let l = a.launched.as_ref()?;
    match cause {
        StopCause::TargetsExited => Some(l.wait()),
        StopCause::Signal => l.wait_briefly(Duration::from_millis(500)),
        StopCause::Duration => l.try_wait(),
    }
}

/// What may be held outside the rings (the drainer's copies and the records the reader
/// still holds), at least: one cold DWARF unwind of a large binary held the reader 0.9 s,
/// behind ~10 MiB of `offcpu --wakers --call-graph dwarf` records (issue 17).
const HELD_MIN: usize = 16 << 20;
/// ... and at most, whatever the rings' size.
const HELD_MAX: usize = 256 << 20;

/// Let a background thread copy out rings the reader leaves past half full
/// ([`perfring::event::Session::drain_in_background`]), so a reader held up by slow work
/// loses nothing. What is held outside the rings stays under the rings' own size (between
/// [`HELD_MIN`] and [`HELD_MAX`]): a target that keeps psample behind for good (a flood of
/// mappings) costs counted lost records, not memory. The copies keep the rings' order: the
/// ordered reader takes each ring's copies, as one chunk, before what is still in it, so a
/// ring and its copies read as one bigger ring and the time-ordering rules hold as they are.
fn start_drainer(session: &mut perfring::event::Session) -> Result<(), Error> {
    let limit = session.ring_bytes().clamp(HELD_MIN, HELD_MAX);
    session
        .drain_in_background(limit)
        .map_err(|e| Error::new(format!("cannot start the ring drainer thread: {e}")))
}

/// One record, in time order: to the tracker, then the collector. Before an exec replaces a
/// process's address space, what the kernel aggregated (BPF counts carry no time) is drained,
/// so counts from before the exec are named with the image they ran in. Drains read only
/// what was counted since the last one, so an exec storm costs map reads, not memory. A
/// failed drain here is not reported: the periodic drain reports it once a second, and one
/// warning per exec would grow without bound under an exec storm.
fn apply(p: &mut Pipeline, c: &mut dyn Collector, o: &Ordered<'_>) {
    if matches!(o.record, Record::Comm(Comm { exec: true, .. })) {
        let _ = c.drain(p);
    }
    p.tracker.on_record(&o.record);
    c.record(p, o);
}

/// A session while it samples.
struct Live<'a, 'c> {
    a: Attached<'a>,
    c: &'c mut dyn Collector,
    p: Pipeline,
    reader: OrderedReader,
    stopper: Stopper,
    last_drain: Instant,
}

impl Attached<'_> {
    /// Sample until a stop condition, then write the profile (or, in continuous mode, the
    /// last interval) and report to `observer`.
    pub fn run(
        self,
        c: &mut dyn Collector,
        mut intervals: Option<&mut Intervals>,
        observer: &mut dyn Observer,
    ) -> Result<StopCause, Error> {
        let mut live = Live::start(self, c)?;
        if let Some(iv) = intervals.as_deref_mut() {
            iv.begin();
        }
        live.c.start(&mut live.p);
        let cause = live.read_loop(intervals.as_deref_mut(), observer);
        let stopped = live.stop(cause, observer);
        let finished = live.c.finish(&mut live.p, &stopped);
        live.summarize(&stopped);
        live.output(finished, &stopped, intervals, observer)?;
        Ok(cause)
    }
}

impl<'a, 'c> Live<'a, 'c> {
    /// Load the tracker (and, for -p/-t, what unwinding the targets needs), enable the
    /// events or start the command, and let the background drainer watch the rings.
    fn start(mut a: Attached<'a>, c: &'c mut dyn Collector) -> Result<Self, Error> {
        let fmt = a
            .session
            .sample_format()
            .ok_or_else(|| Error::new("no event was opened"))?;
        let comm_exec = a.session.ladder.support(Feature::CommExec) == Support::Yes;
        let mut tracker = Tracker::new(comm_exec);
        if a.launched.is_none() {
            for &pid in &a.pids {
                tracker.load_process(pid);
            }
        }
        let mut p = Pipeline::new(tracker, a.opts.stack);
        if matches!(a.target, Target::Pids(_) | Target::Tids(_)) {
            // Big binaries are loaded before the first samples need them.
            for &pid in &a.pids {
                p.builder.prepare(&p.tracker, pid);
            }
        }
        enable(&mut a)?;
        if matches!(a.target, Target::Pids(_)) {
            // Children forked between opening the inherited events and enabling them are
            // sampled, but their FORK records were never written: snapshot them now.
            for &pid in &a.pids {
                for child in target::descendants_of(pid) {
                    p.tracker.ensure_known(child);
                }
            }
        }
        start_drainer(&mut a.session)?;
        let stopper = Stopper::new(a.opts.duration, &a.target, &a.pids);
        Ok(Live {
            p,
            reader: OrderedReader::new(fmt),
            stopper,
            last_drain: Instant::now(),
            a,
            c,
        })
    }

    fn read_loop(
        &mut self,
        mut intervals: Option<&mut Intervals>,
        observer: &mut dyn Observer,
    ) -> StopCause {
        loop {
            if let Some(cause) = self.stopper.check(self.a.launched.as_ref()) {
                return cause;
            }
            if let Some(iv) = intervals.as_deref_mut().filter(|iv| iv.due()) {
                self.end_interval(iv);
            }
            self.c.upkeep(&mut self.p);
            let mut timeout = self.stopper.poll_timeout_ms();
            if let Some(iv) = intervals.as_deref() {
                timeout = timeout.min(iv.ms_until_due());
            }
            match self.a.session.wait(timeout) {
                Ok((_, hup)) => self.stopper.after_wait(hup),
                Err(e) => {
                    self.a.summary.warnings.push(format!("stopping early: {e}"));
                    return StopCause::Signal;
                }
            }
            self.pump();
            if self.last_drain.elapsed() >= DRAIN_EVERY {
                self.drain();
            }
            observer.progress(self.c.progress());
        }
    }

    /// One round over the rings; every record goes to the tracker, then the collector.
    fn pump(&mut self) {
        let (p, c) = (&mut self.p, &mut *self.c);
        self.reader.pump(&mut self.a.session, |o| apply(p, c, o));
    }

    fn drain(&mut self) {
        if let Err(e) = self.c.drain(&mut self.p) {
            self.a.summary.warnings.push(e);
        }
        self.last_drain = Instant::now();
    }

    /// Hand the ended interval to the writer; the next starts with compacted tables.
    /// Records the reader still holds for ordering (at most one round's) count in the next.
    fn end_interval(&mut self, iv: &mut Intervals) {
        self.drain();
        let aggregation = self.c.end_interval(&mut self.p);
        let mut keep = Keep::default();
        self.c.keep(&mut keep);
        let window = iv.cut();
        let (snapshot, remap) = self.p.cut(&keep);
        self.c.remap(&remap);
        let format = self.a.format;
        iv.submit(
            window,
            Box::new(move |sym| aggregation.render(&snapshot, sym, format, window)),
        );
    }

    /// Disable the events and read everything they wrote.
    fn stop(&mut self, cause: StopCause, observer: &mut dyn Observer) -> Stopped {
        self.a.session.disable();
        self.c.stopping();
        let monotonic_ns = monotonic_ns();
        let at = Instant::now();
        self.pump();
        let (p, c) = (&mut self.p, &mut *self.c);
        self.reader.finish(|o| apply(p, c, o));
        self.drain();
        self.c.counters(&self.a.session);
        observer.progress_done();
        Stopped {
            cause,
            elapsed: self.stopper.elapsed(),
            monotonic_ns,
            at,
        }
    }

    /// The lines every command reports, around the collector's own.
    fn summarize(&mut self, stopped: &Stopped) {
        let status = command_status(&self.a, stopped.cause);
        let still_running = self.a.launched.as_ref().map(|l| l.pid);
        let (p, s) = (&self.p, &mut self.a.summary);
        s.line("stopped", stopped.cause.describe());
        s.fact("stopped", stopped.cause.describe());
        s.line(
            "duration",
            format!("{:.2} s", stopped.elapsed.as_secs_f64()),
        );
        s.fact("duration_s", stopped.elapsed.as_secs_f64());
        match (status, still_running) {
            (Some(st), _) => {
                s.line("command", st.describe());
                s.command_status = Some(st);
            }
            (None, Some(pid)) => s.line(
                "command",
                format!("still running (pid {pid}); psample's exit status is its own"),
            ),
            (None, None) => {}
        }
        self.c.summarize(p, s);
        s.add_lost(&self.a.session, self.reader.stats().parse_errors);
        let throttles = p.tracker.stats.throttles;
        if throttles > 0 {
            s.line(
                "throttled",
                format!("{throttles} times (kernel lowered the sample rate)"),
            );
        }
        s.add_stacks(&p.builder);
        self.c.summarize_tail(p, s);
        if s.verbose {
            s.line(
                "tables",
                format!(
                    "{}; {} stacks, {} names{}",
                    p.tracker.describe_tables(),
                    p.tables.stacks.len(),
                    p.tables.names.len(),
                    self.c.table_sizes()
                ),
            );
        }
        s.add_fallbacks(&self.a.session);
    }

    /// Write the profile, or hand the last interval to the writer and wait for it.
    fn output(
        self,
        finished: Finished,
        stopped: &Stopped,
        intervals: Option<&mut Intervals>,
        observer: &mut dyn Observer,
    ) -> Result<(), Error> {
        let Live {
            a, c, p, reader, ..
        } = self;
        drop(reader);
        let Attached {
            opts,
            session,
            mut summary,
            format,
            ..
        } = a;
        // Symbolization is the memory peak (DWARF of every module): give back the rings
        // and the unwinder's caches first.
        drop(session);
        let snapshot = p.into_snapshot();
        let Finished {
            aggregation,
            window,
        } = finished;
        match intervals {
            Some(iv) => {
                let w = iv.cut();
                iv.submit(
                    w,
                    Box::new(move |sym| aggregation.render(&snapshot, sym, format, w)),
                );
                let flushed = iv.flush();
                summary.line(
                    "intervals",
                    format!(
                        "{} written, {} failed",
                        flushed.written, flushed.write_errors
                    ),
                );
                summary.fact(
                    "intervals",
                    serde_json::json!({"written": flushed.written, "failed": flushed.write_errors}),
                );
                if let Some(p) = iv.push_stats() {
                    summary.line("push", p.describe());
                    summary.fact("push", p.to_json());
                    if p.not_delivered() > 0 {
                        summary.warnings.push(format!(
                            "--push: {} of {} intervals were not delivered",
                            p.not_delivered(),
                            p.not_delivered() + p.delivered
                        ));
                    }
                }
                summary.warnings.extend(flushed.warnings);
            }
            None => {
                let mut sym = Symbolizer::new(opts.symbols.clone());
                let w = (SystemTime::now() - window, window);
                let rendered = aggregation.render(&snapshot, &mut sym, format, w);
                rendered
                    .write(opts.output.as_deref(), format, &c.labels())
                    .map_err(|e| Error::new(format!("writing the profile failed: {e}")))?;
                let what = if format == Format::Pprof {
                    "pprof samples"
                } else {
                    "folded lines"
                };
                let distinct = aggregation.distinct_stacks();
                let lines = rendered.len();
                summary.line("stacks", format!("{distinct} distinct, {lines} {what}"));
                summary.fact("distinct_stacks", distinct as u64);
                if let Some(d) = sym.debuginfod_summary() {
                    summary.line("debuginfod", d);
                }
                summary.warnings.extend(sym.warnings());
            }
        }
        summary.line(
            "output ready",
            format!("{} ms after stop", stopped.at.elapsed().as_millis()),
        );
        if let Some(p) = &opts.output {
            summary.line("written", p.display().to_string());
            summary.fact("output", p.display().to_string());
        }
        observer.summary(&summary);
        Ok(())
    }
}
