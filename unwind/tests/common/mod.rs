//! Test support: build the C targets, sample them with ptrace the way perf's REGS_USER /
//! STACK_USER would, and name frames from ELF symbols.
#![allow(dead_code)]

pub mod perf;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use object::{Object, ObjectSegment, ObjectSymbol};
use unwind::{Processes, UserRegs};

pub const STACK_SIZE: usize = 16 * 1024;

pub const CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-fno-optimize-sibling-calls",
];

fn program_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/programs")
        .join(name)
}

/// Compiled test targets in a temporary directory.
pub struct Built {
    pub dir: tempfile::TempDir,
    pub prog: PathBuf,
    pub lib: PathBuf,
}

pub fn build_programs() -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = dir.path().join("prog");
    let lib = dir.path().join("libhot.so");
    let status = Command::new("gcc")
        .args(CFLAGS)
        .arg(program_source("prog.c"))
        .arg("-o")
        .arg(&prog)
        .args(["-pthread", "-ldl"])
        .status()
        .expect("gcc must be installed for unwind tests");
    assert!(status.success(), "building prog.c failed");
    let status = Command::new("gcc")
        .args(CFLAGS)
        .args(["-shared", "-fPIC"])
        .arg(program_source("lib.c"))
        .arg("-o")
        .arg(&lib)
        .status()
        .expect("gcc");
    assert!(status.success(), "building lib.c failed");
    Built { dir, prog, lib }
}

/// A running test program (prog.c). Kills the child when dropped so a failing test leaves
/// nothing spinning.
pub struct Target {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    /// Kept open for the program's lines (a closed pipe would kill it with SIGPIPE).
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Block until the program prints `line` ("ready", "went"): it reached that point,
    /// however long a loaded machine took.
    pub fn wait_for(&mut self, line: &str) {
        use std::io::BufRead;
        loop {
            let mut got = String::new();
            let n = self
                .stdout
                .read_line(&mut got)
                .expect("read the program's output");
            assert!(n > 0, "the program exited before printing {line:?}");
            if got.trim_end() == line {
                return;
            }
        }
    }

    /// Let a program started with DELAY_MS "go" go on (see prog.c), and wait until it went.
    pub fn go(&mut self) {
        drop(self.stdin.take());
        self.wait_for("went");
    }
}

/// Start `prog ARGS` and wait until its main runs (the dynamic loader is done).
pub fn spawn(prog: &Path, args: &[&str]) -> Target {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn target");
    let stdin = child.stdin.take();
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut t = Target {
        child,
        stdin,
        stdout,
    };
    t.wait_for("ready");
    t
}

/// One captured sample: what PERF_SAMPLE_REGS_USER + PERF_SAMPLE_STACK_USER would carry.
#[derive(Clone)]
pub struct Sample {
    pub tid: u32,
    pub regs: UserRegs,
    pub stack: Vec<u8>,
}

/// ptrace-attached threads of one process.
pub struct Sampler {
    pid: u32,
    tids: Vec<u32>,
    mem: std::fs::File,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl Sampler {
    /// Attach to every current thread of `pid`. Fails loudly without ptrace permission.
    pub fn attach(pid: u32) -> Sampler {
        let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
            .expect("open /proc/PID/mem (tests need root or ptrace permission)");
        let mut sampler = Sampler {
            pid,
            tids: Vec::new(),
            mem,
        };
        sampler.attach_new_threads();
        assert!(!sampler.tids.is_empty(), "could not attach to {pid}");
        sampler
    }

    /// Seize threads created since the last call.
    pub fn attach_new_threads(&mut self) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if self.tids.contains(&tid) {
                continue;
            }
            // SAFETY: plain ptrace request on a thread of our own child.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_SEIZE,
                    tid as libc::pid_t,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            assert_eq!(rc, 0, "PTRACE_SEIZE {tid} failed: {}", errno());
            self.tids.push(tid);
        }
    }

    pub fn tids(&self) -> &[u32] {
        &self.tids
    }

    /// Stop `tid`, copy its registers and up to STACK_SIZE bytes from SP, resume it.
    pub fn sample(&self, tid: u32) -> Option<Sample> {
        // SAFETY: ptrace/waitpid on a thread we seized.
        unsafe {
            if libc::ptrace(
                libc::PTRACE_INTERRUPT,
                tid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            ) != 0
            {
                return None;
            }
            let mut status = 0;
            if libc::waitpid(tid as libc::pid_t, &mut status, libc::__WALL) < 0 {
                return None;
            }
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            let got = libc::ptrace(
                libc::PTRACE_GETREGS,
                tid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                &mut regs as *mut _ as *mut libc::c_void,
            );
            let sample = (got == 0).then(|| {
                let regs = UserRegs {
                    ip: regs.rip,
                    sp: regs.rsp,
                    bp: regs.rbp,
                };
                Sample {
                    tid,
                    regs,
                    stack: self.read_stack(regs.sp),
                }
            });
            libc::ptrace(
                libc::PTRACE_CONT,
                tid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            sample
        }
    }

    fn read_stack(&self, sp: u64) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; STACK_SIZE];
        let mut filled = 0;
        // Like the kernel's copy, this stops at the end of the stack mapping.
        while filled < buf.len() {
            match self.mem.read_at(&mut buf[filled..], sp + filled as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        buf.truncate(filled);
        buf
    }

    /// Take `count` samples round-robin over all threads, `gap` apart.
    pub fn run(&mut self, count: usize, gap: Duration) -> Vec<Sample> {
        let mut out = Vec::with_capacity(count);
        let mut attempts = 0;
        while out.len() < count && attempts < count * 3 {
            attempts += 1;
            let tid = self.tids[attempts % self.tids.len()];
            if let Some(s) = self.sample(tid) {
                out.push(s);
            }
            std::thread::sleep(gap);
        }
        out
    }
}

impl Sampler {
    /// Like [`Sampler::run`], but a thread is sampled again only once it has run 100 µs more
    /// CPU time (its schedstat): on a loaded machine a preempted thread would otherwise give
    /// the same point sample after sample, so a split's spread would grow with the load.
    pub fn run_progressing(&mut self, count: usize, gap: Duration) -> Vec<Sample> {
        let mut last: std::collections::HashMap<u32, u64> = Default::default();
        let mut out = Vec::with_capacity(count);
        let mut attempts = 0;
        while out.len() < count && attempts < count * 20 {
            attempts += 1;
            let tid = self.tids[attempts % self.tids.len()];
            let ran = self.cpu_ns(tid);
            let moved = match (ran, last.get(&tid)) {
                (Some(now), Some(&before)) => now >= before + 100_000,
                _ => true,
            };
            if moved {
                if let Some(s) = self.sample(tid) {
                    if let Some(now) = ran {
                        last.insert(tid, now);
                    }
                    out.push(s);
                }
            }
            std::thread::sleep(gap);
        }
        out
    }

    /// The thread's CPU time in ns (the first field of /proc/PID/task/TID/schedstat).
    fn cpu_ns(&self, tid: u32) -> Option<u64> {
        let path = format!("/proc/{}/task/{tid}/schedstat", self.pid);
        let text = std::fs::read_to_string(path).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Sampler {
    /// Detach so the target can be killed and reaped normally: traced threads that exit
    /// would otherwise wait for us (the tracer) to reap them, and the leader with them.
    fn drop(&mut self) {
        for &tid in &self.tids {
            // SAFETY: ptrace/waitpid on threads we seized; failures mean the thread is gone.
            unsafe {
                if libc::ptrace(
                    libc::PTRACE_INTERRUPT,
                    tid as libc::pid_t,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                ) != 0
                {
                    continue;
                }
                let mut status = 0;
                libc::waitpid(tid as libc::pid_t, &mut status, libc::__WALL);
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    tid as libc::pid_t,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
            }
        }
    }
}

/// Names addresses from ELF symbol tables of the mapped files (test oracle, independent of
/// the unwinder's own module handling).
#[derive(Default)]
pub struct Names {
    files: HashMap<String, Option<NamedFile>>,
    /// Read module files from here by basename (a recorded fixture) instead of their path.
    dir: Option<PathBuf>,
}

struct NamedFile {
    /// (vaddr - offset) of each load segment with its file range.
    segments: Vec<(u64, u64, u64)>,
    symbols: Vec<(u64, u64, String)>,
}

impl Names {
    /// Names from the module files of a recorded fixture directory.
    pub fn in_dir(dir: &Path) -> Names {
        Names {
            files: HashMap::new(),
            dir: Some(dir.to_path_buf()),
        }
    }

    /// Function containing `addr` (a return address if `is_ra`).
    pub fn name(&mut self, procs: &Processes, pid: u32, addr: u64, is_ra: bool) -> String {
        let lookup = if is_ra { addr - 1 } else { addr };
        let Some(id) = procs.find(pid, lookup) else {
            return format!("?{addr:#x}");
        };
        let m = procs.mapping(id).clone();
        let path = match (&self.dir, Path::new(&m.path).file_name()) {
            (Some(dir), Some(base)) => dir.join(base),
            _ => PathBuf::from(&m.path),
        };
        let file = self
            .files
            .entry(m.path.clone())
            .or_insert_with(|| load_names(&path))
            .as_ref();
        let Some(file) = file else {
            return format!("{}+{:#x}", m.path, lookup - m.start);
        };
        let file_off = lookup - m.start + m.pgoff;
        let Some(&(bias, _, _)) = file
            .segments
            .iter()
            .find(|(_, off, size)| (*off & !0xfff) <= file_off && file_off < off + size)
        else {
            return format!("?seg{addr:#x}");
        };
        let svma = file_off.wrapping_add(bias);
        file.symbols
            .iter()
            .filter(|(start, size, _)| *start <= svma && svma < start + (*size).max(1))
            .min_by_key(|(_, size, _)| *size)
            .map(|(_, _, n)| n.clone())
            .unwrap_or_else(|| format!("{}+{svma:#x}", m.path))
    }

    /// Names of a whole stack (leaf first).
    pub fn stack(&mut self, procs: &Processes, pid: u32, frames: &[u64]) -> Vec<String> {
        frames
            .iter()
            .enumerate()
            .map(|(i, &a)| self.name(procs, pid, a, i > 0))
            .collect()
    }
}

fn load_names(path: &Path) -> Option<NamedFile> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let segments = file
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (s.address().wrapping_sub(off), off, size)
        })
        .collect();
    let symbols = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    Some(NamedFile { segments, symbols })
}

/// Whether `names` contains `chain` as a contiguous run (leaf first).
pub fn has_chain(names: &[String], chain: &[&str]) -> bool {
    names
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(n, c)| n == c))
}
