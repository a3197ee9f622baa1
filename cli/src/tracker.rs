//! Following the targets' processes and threads from side-band records: names (COMM),
//! address spaces (MMAP/MMAP2, FORK, EXIT, exec), so samples can be attributed correctly.

use std::collections::HashMap;

use perfring::record::{Comm, Mmap, MmapFileId, Record, TaskEvent};
use unwind::Processes;

use crate::target;

/// PERF_RECORD_MISC_KERNEL.
const KERNEL_CPUMODE: u16 = 1;

#[derive(Default, Debug, Clone)]
pub struct SidebandStats {
    pub mmaps: u64,
    pub comms: u64,
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
    pub throttles: u64,
    pub unthrottles: u64,
}

pub struct Tracker {
    pub procs: Processes,
    comms: HashMap<u32, String>,
    pid_of: HashMap<u32, u32>,
    /// Whether COMM records carry the exec flag (comm_exec accepted by the kernel).
    pub comm_exec: bool,
    pub stats: SidebandStats,
    pub threads_seen: std::collections::HashSet<u32>,
}

impl Tracker {
    pub fn new(comm_exec: bool) -> Self {
        Tracker {
            procs: Processes::new(),
            comms: HashMap::new(),
            pid_of: HashMap::new(),
            comm_exec,
            stats: SidebandStats::default(),
            threads_seen: Default::default(),
        }
    }

    /// Snapshot a process as it is now: its maps and thread names.
    pub fn load_process(&mut self, pid: u32) {
        let _ = self.procs.load_proc_maps(pid);
        if let Ok(tids) = target::threads_of(pid) {
            for tid in tids {
                self.pid_of.insert(tid, pid);
                if let Some(c) = target::comm_of(tid) {
                    self.comms.insert(tid, c);
                }
            }
        }
    }

    /// The process a thread belongs to, if seen.
    pub fn pid_of(&self, tid: u32) -> Option<u32> {
        self.pid_of.get(&tid).copied()
    }

    /// The name to show for a thread: its own comm, else its process's.
    pub fn comm(&mut self, pid: u32, tid: u32) -> &str {
        if !self.comms.contains_key(&tid) {
            let name = target::comm_of(tid)
                .or_else(|| self.comms.get(&pid).cloned())
                .unwrap_or_else(|| format!("[pid {pid}]"));
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
                let _ = e;
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
        self.pid_of.insert(f.tid, f.pid);
        self.threads_seen.insert(f.tid);
        if f.pid != f.ppid {
            self.procs.on_fork(f.ppid, f.pid);
        }
        // A new thread or process starts with its parent's name.
        if let Some(name) = self.comms.get(&f.ptid).cloned() {
            self.comms.entry(f.tid).or_insert(name);
        }
    }
}
