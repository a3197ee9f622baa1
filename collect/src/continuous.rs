//! Continuous profiling: `--every DURATION --out-dir DIR [--keep N]`.
//!
//! The session stays open across intervals so no sample falls between two files. At each
//! boundary the command hands what it aggregated (with the tracker and tables it needs) to
//! the writer thread ([`Intervals::submit`]) and starts the next interval with fresh tables,
//! so the read loop goes on draining the rings while the ended interval is symbolized,
//! written under a timestamped name (atomic rename), pruned and pushed. Symbolizing a busy
//! host's first interval can take seconds; doing it in the read loop lost ring records.
//!
//! Memory stays flat because everything that grows with time is per interval: stack
//! tables, the tracker (swapped for a fresh one holding only live processes, see
//! [`crate::tracker::Tracker::refreshed`]) and the symbolizer (rebuilt when its module list
//! grows past [`MAX_SYMBOLIZER_MODULES`]). At most [`QUEUE`] ended intervals wait for the
//! writer; beyond that the read loop waits (and says so in the summary).
//!
//! With `--pid-file`/`--comm` the targets are looked up again when they exit, and a new
//! session is attached to the new process ([`crate::session::dispatch`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use symbolize::Symbolizer;

use crate::output::outdir::{self, OutDir};
use crate::output::{Format, Labels, OutputFile, Rendered};
use crate::push::{PushOptions, PushStats, Pusher};
use crate::target::{Lookup, Target, TargetSpec};
use crate::Error;

/// Continuous profiling: `--every`, `--out-dir`, `--keep`, `--push`.
#[derive(Debug, Clone)]
pub struct ContinuousOptions {
    /// Length of one interval.
    pub every: Duration,
    /// Where the interval profiles go (created if missing).
    pub out_dir: PathBuf,
    /// Keep only the newest N interval profiles (`None`: keep all).
    pub keep: Option<usize>,
    /// Also POST each interval to a Pyroscope-compatible server (an empty name is
    /// `psample.<command>`).
    pub push: Option<PushOptions>,
}

/// A symbolizer that has registered this many mappings, or parsed this many distinct files,
/// is replaced by a fresh one at the next boundary. Files still in use are parsed again
/// then, which costs some CPU once, but neither the module list (one entry per mapping per
/// interval) nor the parsed files (every new binary a busy host runs, system-wide) can grow
/// without bound.
pub const MAX_SYMBOLIZER_MODULES: usize = 20_000;
/// Distinct parsed files after which the symbolizer is replaced (see [`MAX_SYMBOLIZER_MODULES`]).
pub const MAX_SYMBOLIZER_OBJECTS: usize = 64;
/// And after this many intervals regardless: what a symbolizer holds is then at most what
/// the last few intervals touched, whatever their files cost (a host running freshly built
/// debug binaries all day).
pub const SYMBOLIZER_MAX_AGE: u32 = 10;
/// Ended intervals that may wait for the writer while it works on another. Each holds an
/// interval's aggregation and tracker, so this bounds memory when writing falls behind.
pub const QUEUE: usize = 1;

/// Renders one ended interval with the writer's symbolizer; runs on the writer thread.
pub type RenderJob = Box<dyn FnOnce(&mut Symbolizer) -> Rendered + Send>;

enum Msg {
    Interval {
        window: (SystemTime, Duration),
        render: RenderJob,
    },
    Flush(mpsc::Sender<Flushed>),
}

/// The writer's account so far, returned by [`Intervals::flush`].
#[derive(Debug, Default, Clone)]
pub struct Flushed {
    /// Interval files written.
    pub written: u64,
    /// Interval files that could not be written.
    pub write_errors: u64,
    /// Symbolizer and writer warnings, deduplicated.
    pub warnings: Vec<String>,
    /// Longest time one interval took to render and write.
    pub slowest: Duration,
}

/// Interval clock for one continuous run, and the handle of its writer thread.
pub struct Intervals {
    every: Duration,
    /// The format of the interval files.
    pub format: Format,
    started: Instant,
    started_wall: SystemTime,
    tx: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    pusher: Option<Arc<Pusher>>,
    /// Time the read loop spent blocked because the writer was behind.
    pub waited: Duration,
}

impl Intervals {
    /// Start the interval clock and the writer thread for `command`'s intervals of
    /// `target`.
    pub fn start(
        c: &ContinuousOptions,
        format: Option<Format>,
        symbols: &symbolize::SymbolizeOptions,
        target: &TargetSpec,
        command: &str,
        labels: Labels,
    ) -> Result<Intervals, Error> {
        if c.keep == Some(0) {
            return Err(Error::new("--keep must be at least 1"));
        }
        let format = Format::resolve(format, None).map_err(Error::new)?;
        let key = outdir::target_key(&describe_target(target));
        let out = OutDir::open(&c.out_dir, command, &key, format.extension())
            .map_err(|e| Error::new(format!("--out-dir: {e}")))?;
        let pusher = match &c.push {
            Some(p) => {
                let mut p = p.clone();
                if p.name.is_empty() {
                    p.name = format!("psample.{command}");
                }
                Some(Arc::new(Pusher::start(&p, format).map_err(Error::new)?))
            }
            None => None,
        };
        let writer = Writer::new(out, c.keep, format, labels, pusher.clone());
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let symbols = symbols.clone();
        let thread = std::thread::Builder::new()
            .name("psample-writer".into())
            .spawn(move || writer.run(rx, SymbolizerPool::new(symbols)))
            .map_err(|e| Error::new(format!("cannot start the writer thread: {e}")))?;
        Ok(Intervals {
            every: c.every,
            format,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            tx: Some(tx),
            writer: Some(thread),
            pusher,
            waited: Duration::ZERO,
        })
    }

    /// Whether the current interval is over.
    pub fn due(&self) -> bool {
        self.started.elapsed() >= self.every
    }

    /// Milliseconds until the boundary, for the poll timeout.
    pub fn ms_until_due(&self) -> i32 {
        let left = self.every.saturating_sub(self.started.elapsed());
        left.as_millis().clamp(1, 100) as i32
    }

    /// Start (wall clock) and length of the current interval.
    pub fn window(&self) -> (SystemTime, Duration) {
        (self.started_wall, self.started.elapsed())
    }

    /// Start the current interval's clock now: called when a session starts sampling, so
    /// attaching (or waiting for a restarted target) is not counted as profiled time.
    /// Whatever an earlier session left unwritten was already submitted when it ended.
    pub fn begin(&mut self) {
        self.started = Instant::now();
        self.started_wall = SystemTime::now();
    }

    /// End the current interval now and start the next: returns the ended one's window.
    pub fn cut(&mut self) -> (SystemTime, Duration) {
        let w = self.window();
        self.started = Instant::now();
        self.started_wall = SystemTime::now();
        w
    }

    /// Hand an ended interval (`window` from [`Self::cut`]) to the writer. Returns at once
    /// unless [`QUEUE`] intervals already wait.
    pub fn submit(&mut self, window: (SystemTime, Duration), render: RenderJob) {
        let Some(tx) = &self.tx else { return };
        let msg = match tx.try_send(Msg::Interval { window, render }) {
            Ok(()) => return,
            Err(mpsc::TrySendError::Full(msg)) => msg,
            Err(mpsc::TrySendError::Disconnected(_)) => {
                crate::errln!("psample: the interval writer stopped; interval not written");
                return;
            }
        };
        // Only time actually spent blocked counts as the writer being behind.
        let t = Instant::now();
        if tx.send(msg).is_err() {
            crate::errln!("psample: the interval writer stopped; interval not written");
        }
        self.waited += t.elapsed();
    }

    /// Wait until everything submitted is written (and pushes had a few seconds to finish);
    /// the writer's account for the summary.
    pub fn flush(&mut self) -> Flushed {
        let (tx, rx) = mpsc::channel();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|t| t.send(Msg::Flush(tx)).is_ok());
        let mut f = match sent.then(|| rx.recv().ok()).flatten() {
            Some(f) => f,
            None => Flushed {
                warnings: vec!["the interval writer stopped unexpectedly".into()],
                ..Flushed::default()
            },
        };
        if self.waited >= Duration::from_millis(100) {
            f.warnings.push(format!(
                "the writer fell behind: sampling waited {:.1} s for it (longest interval \
                 took {:.1} s to write); use a longer --every",
                self.waited.as_secs_f64(),
                f.slowest.as_secs_f64()
            ));
        }
        f
    }

    /// Passed to the push endpoint as `sampleRate`.
    pub fn set_sample_rate(&self, hz: u64) {
        if let Some(p) = &self.pusher {
            p.set_sample_rate(hz);
        }
    }

    /// Pusher statistics for the summary, if pushing, after giving queued uploads (and
    /// their retries) a few seconds to finish.
    pub fn push_stats(&self) -> Option<PushStats> {
        let p = self.pusher.as_ref()?;
        p.wait_idle(Duration::from_secs(5));
        Some(p.stats())
    }
}

impl Drop for Intervals {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
    }
}

/// The symbolizer shared by consecutive intervals, rebuilt when it holds too much.
struct SymbolizerPool {
    symbols: symbolize::SymbolizeOptions,
    sym: Option<Symbolizer>,
    /// Intervals rendered since `sym` was created.
    age: u32,
    /// Warnings of replaced symbolizers (bounded: a run may last for days).
    retired_warnings: Vec<String>,
}

/// Distinct symbolizer warnings kept for the summary.
const MAX_WARNINGS: usize = 100;

impl SymbolizerPool {
    fn new(symbols: symbolize::SymbolizeOptions) -> Self {
        SymbolizerPool {
            symbols,
            sym: None,
            age: 0,
            retired_warnings: Vec::new(),
        }
    }

    /// The symbolizer for the next interval (bounded, see [`MAX_SYMBOLIZER_MODULES`]).
    fn next(&mut self) -> &mut Symbolizer {
        if self.sym.as_ref().is_some_and(|s| {
            s.module_count() > MAX_SYMBOLIZER_MODULES
                || s.object_count() > MAX_SYMBOLIZER_OBJECTS
                || self.age >= SYMBOLIZER_MAX_AGE
        }) {
            let old = self.sym.take().map(|s| s.warnings()).unwrap_or_default();
            for w in old {
                if self.retired_warnings.len() < MAX_WARNINGS && !self.retired_warnings.contains(&w)
                {
                    self.retired_warnings.push(w);
                }
            }
        }
        if self.sym.is_none() {
            self.age = 0;
        }
        self.age = self.age.saturating_add(1);
        let symbols = &self.symbols;
        self.sym
            .get_or_insert_with(|| Symbolizer::new(symbols.clone()))
    }

    fn warnings(&self) -> Vec<String> {
        let mut all = self.retired_warnings.clone();
        if let Some(d) = self.sym.as_ref().and_then(|s| s.debuginfod_summary()) {
            all.push(format!("debuginfod: {d}"));
        }
        for w in self.sym.as_ref().map(|s| s.warnings()).unwrap_or_default() {
            if !all.contains(&w) {
                all.push(w);
            }
        }
        all
    }
}

/// Output and retention of interval files; lives on the writer thread.
struct Writer {
    out: OutDir,
    keep: Option<usize>,
    format: Format,
    labels: Labels,
    pusher: Option<Arc<Pusher>>,
    written: u64,
    write_errors: u64,
    slowest: Duration,
}

impl Writer {
    fn new(
        out: OutDir,
        keep: Option<usize>,
        format: Format,
        labels: Labels,
        pusher: Option<Arc<Pusher>>,
    ) -> Writer {
        Writer {
            out,
            keep,
            format,
            labels,
            pusher,
            written: 0,
            write_errors: 0,
            slowest: Duration::ZERO,
        }
    }

    fn run(mut self, rx: Receiver<Msg>, mut pool: SymbolizerPool) {
        for msg in rx {
            match msg {
                Msg::Interval { window, render } => {
                    let t = Instant::now();
                    let rendered = render(pool.next());
                    self.emit(rendered, window);
                    self.slowest = self.slowest.max(t.elapsed());
                }
                Msg::Flush(reply) => {
                    let _ = reply.send(Flushed {
                        written: self.written,
                        write_errors: self.write_errors,
                        warnings: pool.warnings(),
                        slowest: self.slowest,
                    });
                }
            }
        }
    }

    /// Write an ended interval, prune, and push it. Failures are reported on stderr and
    /// counted, never fatal: one full disk must not end a run that is meant to last for days.
    fn emit(&mut self, rendered: Rendered, window: (SystemTime, Duration)) -> Option<PathBuf> {
        let (start, len) = window;
        // Named by sequence, so intervals in the same millisecond, or after the wall clock
        // stepped back, are distinct and ordered.
        let path = self.out.next_path(&utc_stamp(start));
        let result = self.write(&rendered, &path);
        if let Some(p) = &self.pusher {
            match rendered.to_bytes() {
                Ok(bytes) => p.submit(bytes, start, start + len),
                Err(e) => crate::errln!("psample: cannot encode the interval for --push: {e}"),
            }
        }
        match result {
            Ok(id) => {
                self.written += 1;
                self.out.wrote(&path, id);
                if let Some(keep) = self.keep {
                    self.out.prune(keep);
                }
                Some(path)
            }
            Err(e) => {
                self.write_errors += 1;
                crate::errln!("psample: writing {} failed: {e}", path.display());
                None
            }
        }
    }

    /// Write `rendered` under the new name `path`; its device and inode.
    fn write(&self, rendered: &Rendered, path: &Path) -> std::io::Result<(u64, u64)> {
        let mut file = OutputFile::create_new(path)?;
        rendered.write_into(&mut file, self.format, &self.labels)?;
        let id = file
            .file_id()
            .ok_or_else(|| std::io::Error::other("interval file has no inode"))?;
        file.commit()?;
        Ok(id)
    }
}

/// What `--pid-file`/`--comm`/`-p`/`-t`/`-a`/`-- CMD` name, for the interval files' key.
fn describe_target(t: &TargetSpec) -> String {
    let list = |v: &[u32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    };
    match t {
        TargetSpec::Lookup(Lookup::PidFile(f)) => format!("pid-file {}", f.display()),
        TargetSpec::Lookup(Lookup::Comm { name, .. }) => format!("comm {name}"),
        TargetSpec::Fixed(Target::Pids(p)) => format!("pid {}", list(p)),
        TargetSpec::Fixed(Target::Tids(t)) => format!("tid {}", list(t)),
        TargetSpec::Fixed(Target::AllCpus) => "all".to_string(),
        TargetSpec::Fixed(Target::Cgroup(dir)) => format!("cgroup {}", dir.display()),
        TargetSpec::Fixed(Target::Command(argv)) => format!("command {}", argv.join("\0")),
    }
}

/// `20261127T032100.123Z`: the UTC time, for people (ordering uses sequence numbers).
pub fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::dir_names as names;

    #[test]
    fn utc_stamps_are_calendar_correct() {
        let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(utc_stamp(t(0, 0)), "19700101T000000.000Z");
        assert_eq!(utc_stamp(t(951_782_400, 5)), "20000229T000000.005Z");
        assert_eq!(utc_stamp(t(1_798_761_599, 999)), "20261231T235959.999Z");
    }

    fn args(
        dir: &Path,
        keep: Option<usize>,
    ) -> (ContinuousOptions, symbolize::SymbolizeOptions, Labels) {
        let c = ContinuousOptions {
            every: Duration::from_secs(3600),
            out_dir: dir.to_path_buf(),
            keep,
            push: None,
        };
        let symbols = symbolize::SymbolizeOptions::default();
        let labels = Labels {
            title: "t".into(),
            count_name: "samples".into(),
            extra: Vec::new(),
        };
        (c, symbols, labels)
    }

    fn pid_target(pid: u32) -> TargetSpec {
        TargetSpec::Fixed(Target::Pids(vec![pid]))
    }

    fn writer_for(dir: &Path, keep: Option<usize>, key: &str) -> Writer {
        let (_, _, labels) = args(dir, keep);
        let out = OutDir::open(dir, "record", key, "folded").unwrap();
        Writer::new(out, keep, Format::Folded, labels, None)
    }

    fn writer(dir: &Path, keep: Option<usize>) -> Writer {
        writer_for(dir, keep, "k1")
    }

    fn emit_at(w: &mut Writer, start: SystemTime, line: &str) -> PathBuf {
        let rendered = Rendered::Lines(vec![(line.to_string(), 1)]);
        w.emit(rendered, (start, Duration::from_secs(1))).unwrap()
    }

    #[test]
    fn emit_writes_distinct_files_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("unrelated.folded"), "x 1\n").unwrap();
        let mut w = writer(dir.path(), Some(2));
        // Forced, not hoped for: all four start in the same millisecond.
        let t = UNIX_EPOCH + Duration::from_millis(1_798_761_599_999);
        let paths: Vec<PathBuf> = (1..=4)
            .map(|i| emit_at(&mut w, t, &format!("a;b{i}")))
            .collect();
        assert_eq!(w.written, 4);
        assert_eq!(names(dir.path()).len(), 3, "{:?}", names(dir.path()));
        assert!(dir.path().join("unrelated.folded").exists());
        assert!(!paths[0].exists() && !paths[1].exists());
        assert_eq!(std::fs::read_to_string(&paths[2]).unwrap(), "a;b3 1\n");
        assert_eq!(std::fs::read_to_string(&paths[3]).unwrap(), "a;b4 1\n");
    }

    #[test]
    fn a_wall_clock_stepping_back_does_not_delete_new_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), Some(2));
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        let first = emit_at(&mut w, t, "a;first");
        // An NTP step back by an hour, then by a day.
        let second = emit_at(&mut w, t - Duration::from_secs(3600), "a;second");
        let third = emit_at(&mut w, t - Duration::from_secs(86_400), "a;third");
        assert!(!first.exists(), "the oldest interval goes");
        assert!(second.exists() && third.exists(), "{:?}", names(dir.path()));
    }

    #[test]
    fn a_later_run_prunes_earlier_runs_files_for_its_target_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        let mut first = writer_for(dir.path(), Some(2), "k1");
        let old: Vec<PathBuf> = (0..3).map(|_| emit_at(&mut first, t, "a;old")).collect();
        drop(first);
        // Another target's run shares the directory: untouched by either.
        let mut other = writer_for(dir.path(), Some(1), "k2");
        let others: Vec<PathBuf> = (0..2).map(|_| emit_at(&mut other, t, "a;other")).collect();
        assert!(!others[0].exists() && others[1].exists());
        let mut second = writer_for(dir.path(), Some(2), "k1");
        assert_eq!(second.out.tracked().len(), 2, "the first run kept two");
        let new = emit_at(&mut second, t - Duration::from_secs(60), "a;new");
        // The newest earlier file and ours are kept: ordered by run, not by stamp.
        assert!(!old[1].exists() && old[2].exists() && new.exists());
        assert!(others[1].exists());
        assert!(new
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains("-k1-0002-000001-"));
    }

    /// Another user plants names of our form; none of them is ever deleted, and a file we
    /// wrote that someone replaced is left alone too.
    #[test]
    fn planted_files_are_never_pruned() {
        use std::os::unix::fs::{chown, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        let mut w = writer(dir.path(), Some(1));
        let ours = emit_at(&mut w, t, "a;ours");
        drop(w);
        let stamp = utc_stamp(t);
        let planted = [
            format!("psample-record-k1-0000-000001-{stamp}.folded"),
            format!("psample-record-k1-0009-000001-{stamp}.folded"),
            "psample-record-9.folded".to_string(),
            "psample-record-zz.folded".to_string(),
        ];
        for n in &planted {
            let p = dir.path().join(n);
            std::fs::write(&p, "a;planted 1\n").unwrap();
            chown(&p, Some(65534), Some(65534)).unwrap();
        }
        // A name of ours hard-linked elsewhere is not "ours alone" either.
        let linked = dir
            .path()
            .join(format!("psample-record-k1-0005-000001-{stamp}.folded"));
        std::fs::write(&linked, "a;linked 1\n").unwrap();
        std::fs::hard_link(&linked, dir.path().join("elsewhere")).unwrap();
        let mut w = writer(dir.path(), Some(1));
        assert_eq!(w.out.tracked().len(), 1, "{:?}", w.out.tracked());
        let mine = emit_at(&mut w, t, "a;mine");
        let replaced = emit_at(&mut w, t, "a;replaced");
        assert!(!ours.exists() && !mine.exists());
        // Someone swaps the file we wrote for their own: retention must not delete theirs.
        std::fs::remove_file(&replaced).unwrap();
        std::fs::write(&replaced, "a;theirs 1\n").unwrap();
        chown(&replaced, Some(65534), Some(65534)).unwrap();
        emit_at(&mut w, t, "a;last");
        assert!(replaced.exists());
        for n in &planted {
            assert!(dir.path().join(n).exists(), "{n} was deleted");
        }
        assert!(linked.exists());
    }

    #[test]
    fn intervals_are_written_by_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (c, symbols, labels) = args(dir.path(), None);
        let mut iv =
            Intervals::start(&c, None, &symbols, &pid_target(1), "record", labels).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        // A slow render must not block the caller (only a second queued one may).
        let w = iv.cut();
        iv.submit(
            w,
            Box::new(move |_sym: &mut Symbolizer| {
                rx.recv().unwrap();
                Rendered::Lines(vec![("a;slow".into(), 3)])
            }),
        );
        assert_eq!(iv.waited, Duration::ZERO, "the first submit never waits");
        tx.send(()).unwrap();
        let w = iv.cut();
        iv.submit(w, Box::new(|_| Rendered::Lines(vec![("b".into(), 1)])));
        let f = iv.flush();
        assert_eq!((f.written, f.write_errors), (2, 0));
        let mut contents: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        contents.sort();
        assert_eq!(
            contents,
            vec!["a;slow 3\n".to_string(), "b 1\n".to_string()]
        );
    }

    #[test]
    fn symbolizer_is_rebuilt_after_max_age() {
        let (_, symbols, _) = args(Path::new("/nonexistent"), None);
        let mut pool = SymbolizerPool::new(symbols);
        let mut sym = pool.next();
        let spec = |start: u64| symbolize::ModuleSpec {
            kind: symbolize::ModuleKind::Anon,
            path: String::new(),
            pid: 1,
            pid_start: None,
            start,
            end: start + 4096,
            pgoff: 0,
            build_id: None,
            inode: None,
        };
        sym.add_module(spec(0x1000));
        for _ in 0..SYMBOLIZER_MAX_AGE - 1 {
            sym = pool.next();
            assert_eq!(sym.module_count(), 1, "kept while young");
        }
        assert_eq!(pool.next().module_count(), 0, "fresh after max age");
        assert_eq!(pool.age, 1);
    }
}
