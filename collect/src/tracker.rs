//! Following the targets' processes and threads from side-band records: names (COMM),
//! address spaces (MMAP/MMAP2, FORK, EXIT, exec), so samples can be attributed correctly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use perfring::record::{Comm, Mmap, MmapFileId, Record, TaskEvent};
use symbolize::identity::ProcessIdentity;
use unwind::Processes;

use crate::fast_map::{FastMap, FastSet};
use crate::frame::Frame;
use crate::target;

/// PERF_RECORD_MISC_KERNEL.
const KERNEL_CPUMODE: u16 = 1;

/// How long an exited process's address space is kept. Rings are drained in batches and a
/// sample taken on another CPU just before the exit can arrive after the EXIT record, and
/// BPF aggregation resolves its stacks only when the maps are drained (every second). Five
/// seconds covers both, and is short enough that `-a` on a host with heavy process churn
/// keeps only the live processes' spaces (and the unwinder's per-process state, which
/// follows them) in memory.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What the idle task is called: perf's name for pid 0 (its per-CPU kernel comm is
/// `swapper/N`, which would split one idle frame into one per CPU).
pub const IDLE_COMM: &str = "swapper";

/// Side-band records seen, by kind.
#[derive(Default, Debug, Clone)]
pub struct SidebandStats {
    /// MMAP and MMAP2 records.
    pub mmaps: u64,
    /// COMM records.
    pub comms: u64,
    /// Execs (COMM with the exec flag, or inferred).
    pub execs: u64,
    /// FORK records.
    pub forks: u64,
    /// EXIT records.
    pub exits: u64,
    /// THROTTLE records: the kernel lowered the sample rate.
    pub throttles: u64,
    /// UNTHROTTLE records.
    pub unthrottles: u64,
}

/// Process names and address spaces of the targets, kept current from side-band records.
pub struct Tracker {
    /// Address spaces and mappings.
    pub procs: Processes,
    comms: FastMap<u32, String>,
    pid_of: FastMap<u32, u32>,
    /// Whether COMM records carry the exec flag (comm_exec accepted by the kernel).
    pub comm_exec: bool,
    /// Side-band records seen.
    pub stats: SidebandStats,
    /// Threads seen in samples that have not exited (and been reaped) yet.
    sampled: FastSet<u32>,
    /// Threads that were in `sampled` and have been reaped since.
    sampled_gone: u64,
    /// Threads that exited, oldest first, with when we saw it; reaped after [`EXIT_GRACE`]:
    /// their names go, and a process's address space when its last thread (pid == tid) goes.
    exited: VecDeque<Exited>,
    /// Processes sampled before any record or snapshot described them, read from /proc
    /// once each (see [`Tracker::ensure_known`]).
    looked_up: FastSet<u32>,
}

/// Processes [`Tracker::ensure_known`] remembers having read; past this it starts over.
const MAX_LOOKED_UP: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
struct Exited {
    at: Instant,
    pid: u32,
    tid: u32,
}

impl Tracker {
    /// A tracker; `comm_exec`: COMM records say when they come from an exec.
    pub fn new(comm_exec: bool) -> Self {
        Tracker {
            procs: Processes::new(),
            comms: FastMap::default(),
            pid_of: FastMap::default(),
            comm_exec,
            stats: SidebandStats::default(),
            sampled: FastSet::default(),
            sampled_gone: 0,
            exited: VecDeque::new(),
            looked_up: FastSet::default(),
        }
    }

    /// Make sure process `pid` has an address space before its sample is unwound: a child
    /// forked while psample attached (between opening the inherited events and enabling
    /// them) is sampled, but its FORK record was never written, so nothing described it.
    /// Such a process is read from /proc once, as at attach. The idle task, and processes
    /// that records or the attach snapshot described, are left alone.
    pub fn ensure_known(&mut self, pid: u32) {
        if pid == 0 || self.procs.contains(pid) || self.looked_up.contains(&pid) {
            return;
        }
        if self.looked_up.len() >= MAX_LOOKED_UP {
            self.looked_up.clear();
        }
        self.looked_up.insert(pid);
        self.load_process(pid);
    }

    /// Forget threads and the address spaces of processes that exited more than
    /// [`EXIT_GRACE`] ago, so `-a` on a host that starts thousands of processes keeps only
    /// the live ones. Mappings stay in the arena, so stacks already collected still symbolize.
    pub fn reap_exited(&mut self, now: Instant) {
        while let Some(&e) = self.exited.front() {
            if now.duration_since(e.at) < EXIT_GRACE {
                break;
            }
            self.exited.pop_front();
            if self.pid_of.get(&e.tid).is_none_or(|&p| p == e.pid) {
                self.pid_of.remove(&e.tid);
                self.comms.remove(&e.tid);
            }
            if self.sampled.remove(&e.tid) {
                self.sampled_gone += 1;
            }
            if e.pid == e.tid {
                self.procs.on_exit(e.pid);
            }
        }
    }

    /// Note a thread seen in a sample (for the summary's count).
    pub fn saw_thread(&mut self, tid: u32) {
        self.sampled.insert(tid);
    }

    /// Distinct threads seen in samples.
    pub fn threads_seen(&self) -> u64 {
        self.sampled.len() as u64 + self.sampled_gone
    }

    /// Sizes of what the tracker holds, for `-v` summaries (memory diagnostics).
    pub fn describe_tables(&self) -> String {
        format!(
            "{} mappings, {} address spaces, {} thread names, {} pending exits (oldest {:.1} s)",
            self.procs.mapping_count(),
            self.procs.space_count(),
            self.comms.len(),
            self.exited.len(),
            self.exited
                .front()
                .map_or(0.0, |e| e.at.elapsed().as_secs_f64())
        )
    }

    /// Threads whose name is known (live ones, and exited ones within [`EXIT_GRACE`]).
    pub fn known_threads(&self) -> usize {
        self.comms.len()
    }

    /// Exited processes whose address space is still kept.
    pub fn pending_exits(&self) -> usize {
        self.exited.iter().filter(|e| e.pid == e.tid).count()
    }

    /// Snapshot a process as it is now: its identity, maps and thread names.
    pub fn load_process(&mut self, pid: u32) {
        let identity = ProcessIdentity::of(pid);
        let _ = self.procs.load_proc_maps(pid);
        self.procs
            .set_start_time(pid, identity.map(|i| i.start_time));
        if let Ok(tids) = target::threads_of(pid) {
            for tid in tids {
                self.pid_of.insert(tid, pid);
                if let Some(c) = target::comm_of(tid) {
                    self.comms.insert(tid, c);
                }
            }
        }
    }

    /// A tracker holding only what is still alive: the live processes among those this one
    /// knew, re-read from /proc. Continuous profiling swaps it in at interval boundaries so
    /// address spaces (and the mapping arena) of exited processes do not pile up for hours.
    pub fn refreshed(&self) -> Tracker {
        let mut pids: Vec<u32> = self.pid_of.values().copied().collect();
        pids.sort_unstable();
        pids.dedup();
        let mut fresh = Tracker::new(self.comm_exec);
        // Counters describe the whole run (the summary's throttle count, for one).
        fresh.stats = self.stats.clone();
        for pid in pids {
            // The same process, not whichever took its PID since.
            let same = match self.procs.known_start_time(pid) {
                Some(start_time) => ProcessIdentity { pid, start_time }.is_running(),
                None => target::process_alive(pid),
            };
            if same {
                fresh.load_process(pid);
            }
        }
        fresh
    }

    /// The frame for user address `addr` of `pid`. Canonical: the same binary in many
    /// processes (ASLR) aggregates as one stack, so stack tables grow with distinct code
    /// paths, not with process churn. A "return address" in data (a frame-pointer walk
    /// through a frame that keeps none) is not code: it names no function, and data
    /// mappings are freed when their process exits, so frames must not refer to them.
    pub fn user_frame(&self, pid: u32, addr: u64) -> Frame {
        match self.procs.find_code(pid, addr) {
            Some(mapping) => {
                let (mapping, addr) = self.procs.canonical(mapping, addr);
                Frame::User { mapping, addr }
            }
            None => Frame::Unmapped(addr),
        }
    }

    /// The process a thread belongs to, if seen.
    pub fn pid_of(&self, tid: u32) -> Option<u32> {
        self.pid_of.get(&tid).copied()
    }

    /// The name to show for a thread: its own comm, else its process's. The idle task
    /// (pid 0, one per CPU, with no /proc entry) is `swapper`, as perf names it.
    pub fn comm(&mut self, pid: u32, tid: u32) -> &str {
        if !self.comms.contains_key(&tid) {
            let name = if pid == 0 && tid == 0 {
                IDLE_COMM.to_string()
            } else {
                target::comm_of(tid)
                    .or_else(|| self.comms.get(&pid).cloned())
                    .unwrap_or_else(|| format!("[pid {pid}]"))
            };
            self.comms.insert(tid, name);
        }
        self.comms.get(&tid).map_or("?", String::as_str)
    }

    /// Apply a side-band record. Returns true if it was one.
    pub fn on_record(&mut self, rec: &Record<'_>) -> bool {
        match rec {
            Record::Mmap(m) => {
                self.on_mmap(m);
                true
            }
            Record::Comm(c) => {
                self.on_comm(c);
                true
            }
            Record::Fork(f) => {
                self.on_fork(f);
                true
            }
            Record::Exit(e) => {
                self.stats.exits += 1;
                self.exited.push_back(Exited {
                    at: Instant::now(),
                    pid: e.pid,
                    tid: e.tid,
                });
                self.reap_exited(Instant::now());
                true
            }
            Record::Throttle(_) => {
                self.stats.throttles += 1;
                true
            }
            Record::Unthrottle(_) => {
                self.stats.unthrottles += 1;
                true
            }
            _ => false,
        }
    }

    fn on_mmap(&mut self, m: &Mmap<'_>) {
        self.stats.mmaps += 1;
        // Kernel-side mappings (cpumode kernel) describe modules, not process memory.
        if m.cpumode() == KERNEL_CPUMODE {
            return;
        }
        let path = String::from_utf8_lossy(m.filename);
        let (inode, build_id) = match m.file_id {
            Some(MmapFileId::Inode { maj, min, ino, .. }) => (Some((maj, min, ino)), None),
            Some(MmapFileId::BuildId(b)) => (None, Some(b)),
            None => (None, None),
        };
        // MMAP records (no prot) are only emitted for executable mappings unless mmap_data.
        let exec = m
            .prot
            .map_or(!m.is_data(), |p| p & libc::PROT_EXEC as u32 != 0);
        self.procs
            .on_mmap(m.pid, m.addr, m.len, m.pgoff, &path, exec, inode, build_id);
    }

    fn on_comm(&mut self, c: &Comm<'_>) {
        self.stats.comms += 1;
        let name = String::from_utf8_lossy(c.comm).into_owned();
        let main_thread = c.pid == c.tid;
        let changed = self.comms.get(&c.tid).is_some_and(|old| *old != name);
        let exec = c.exec || (!self.comm_exec && main_thread && changed);
        if exec {
            self.stats.execs += 1;
            self.procs.on_exec(c.pid);
            if !self.comm_exec {
                // Without the exec flag, MMAP records of the new image may already have
                // arrived; re-read the maps so nothing of the new image is missing.
                let _ = self.procs.load_proc_maps(c.pid);
            }
        }
        self.pid_of.insert(c.tid, c.pid);
        self.comms.insert(c.tid, name);
    }

    fn on_fork(&mut self, f: &TaskEvent) {
        self.stats.forks += 1;
        // A reused tid: the pending removal was for the previous thread of that number.
        self.exited.retain(|e| e.tid != f.tid);
        self.pid_of.insert(f.tid, f.pid);
        if f.pid != f.ppid {
            self.procs.on_fork(f.ppid, f.pid);
        }
        // A new thread or process starts with its parent's name.
        if let Some(name) = self.comms.get(&f.ptid).cloned() {
            self.comms.entry(f.tid).or_insert(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perfring::record::SampleId;

    fn task(pid: u32, tid: u32) -> TaskEvent {
        TaskEvent {
            pid,
            ppid: 1,
            tid,
            ptid: 1,
            time: 0,
            sample_id: SampleId::default(),
        }
    }

    fn with_space(pid: u32) -> Tracker {
        let mut t = Tracker::new(true);
        t.procs
            .on_mmap(pid, 0x1000, 0x1000, 0, "/bin/x", true, None, None);
        t
    }

    /// A real process no record described (forked while psample attached): its first
    /// sample reads it from /proc, so its code is named instead of `[unknown]`; once only.
    #[test]
    fn a_process_sampled_before_any_record_is_read_from_proc() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Its code, as /proc shows it (sleep has exec'd once this lists the sleep binary).
        let code = (0..3000)
            .find_map(|_| {
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
                let line = maps.lines().find(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 6 && f[1].contains('x') && f[5].ends_with("/sleep")
                });
                if line.is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                line.and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
            })
            .expect("sleep's code mapping");
        let mut t = Tracker::new(true);
        assert_eq!(t.user_frame(pid, code), Frame::Unmapped(code));
        t.ensure_known(pid);
        assert!(matches!(t.user_frame(pid, code), Frame::User { .. }));
        assert_eq!(t.comm(pid, pid), "sleep");
        // Not read again: a process gone from /proc is not retried per sample.
        t.ensure_known(u32::MAX - 2);
        assert!(t.looked_up.contains(&(u32::MAX - 2)));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn exited_process_space_is_released_after_the_grace_period() {
        let mut t = with_space(50);
        // A thread exit keeps the process.
        t.on_record(&Record::Exit(task(50, 51)));
        assert_eq!(t.pending_exits(), 0);
        let before_exit = Instant::now();
        t.on_record(&Record::Exit(task(50, 50)));
        assert_eq!(t.pending_exits(), 1);
        // Within the grace period late samples still resolve (at most the time of the exit,
        // so a slow machine cannot push this past the grace period).
        t.reap_exited(before_exit);
        assert!(t.procs.find(50, 0x1800).is_some());
        t.reap_exited(Instant::now() + EXIT_GRACE + Duration::from_millis(1));
        assert!(!t.procs.contains(50));
        assert_eq!(t.pending_exits(), 0);
        // The mapping itself stays resolvable for symbolizing collected stacks.
        assert_eq!(t.procs.mapping_count(), 1);
    }

    #[test]
    fn the_idle_task_is_swapper() {
        let mut t = Tracker::new(true);
        assert_eq!(t.comm(0, 0), "swapper");
    }

    #[test]
    fn reused_pid_cancels_the_pending_release() {
        let mut t = with_space(60);
        t.on_record(&Record::Exit(task(60, 60)));
        t.on_record(&Record::Fork(task(60, 60)));
        t.procs
            .on_mmap(60, 0x5000, 0x1000, 0, "/bin/y", true, None, None);
        t.reap_exited(Instant::now() + EXIT_GRACE * 2);
        assert!(t.procs.find(60, 0x5800).is_some());
    }

    #[test]
    fn exited_threads_names_are_forgotten() {
        let mut t = Tracker::new(true);
        for tid in 2000..4000u32 {
            t.on_record(&Record::Fork(TaskEvent {
                pid: 1,
                ppid: 1,
                tid,
                ptid: 1,
                time: 0,
                sample_id: SampleId::default(),
            }));
            t.comms.insert(tid, "worker".into());
            t.saw_thread(tid);
            t.on_record(&Record::Exit(task(1, tid)));
        }
        assert_eq!(t.threads_seen(), 2000);
        t.reap_exited(Instant::now() + EXIT_GRACE * 2);
        assert_eq!(t.known_threads(), 0);
        assert!(t.pid_of.is_empty());
        assert_eq!(t.threads_seen(), 2000, "the count survives the reaping");
    }

    #[test]
    fn frames_refer_to_code_only() {
        let mut t = with_space(70);
        t.procs.on_mmap(
            70,
            0x9000,
            0x1000,
            0,
            "/bin/x",
            false,
            Some((8, 1, 3)),
            None,
        );
        assert!(matches!(t.user_frame(70, 0x1800), Frame::User { .. }));
        // Data is not code, and is freed with the process: a frame must not keep its id.
        assert_eq!(t.user_frame(70, 0x9800), Frame::Unmapped(0x9800));
        assert_eq!(t.user_frame(70, 0x20000), Frame::Unmapped(0x20000));
    }

    #[test]
    fn churn_keeps_only_live_spaces() {
        let mut t = Tracker::new(true);
        for pid in 1000..3000u32 {
            t.procs.on_mmap(
                pid,
                0x1000 * u64::from(pid),
                0x1000,
                0,
                "/bin/x",
                true,
                None,
                None,
            );
            t.on_record(&Record::Exit(task(pid, pid)));
        }
        t.reap_exited(Instant::now() + EXIT_GRACE * 2);
        assert_eq!(t.pending_exits(), 0);
        assert!((1000..3000).all(|p| !t.procs.contains(p)));
    }
}
