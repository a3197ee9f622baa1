//! A real process for the emulated kernels to "run": psample reads its /proc entries
//! (threads, names, maps) and symbolizes its binary for real, so the scripted samples must
//! point at its real functions. The C source is compiled once per test process with gcc.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::encode::MapInfo;
use crate::script::{Stack, Task};

const SOURCE: &str = include_str!("workload.c");

/// The executable's name, which is also the main thread's comm.
pub const EXE_NAME: &str = "emu_workload";
/// The worker thread's comm (set with prctl in the workload).
pub const WORKER_COMM: &str = "emu_worker";

/// Functions of the workload, by name, for building scripted stacks.
pub const FUNCTIONS: [&str; 11] = [
    "main",
    "emu_run",
    "emu_work",
    "emu_leaf_a",
    "emu_leaf_b",
    "emu_sleep_phase",
    "emu_wait_phase",
    "emu_wake_peer",
    "emu_worker_main",
    "emu_worker_spin",
    "emu_wait_stdin",
];

fn build() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("psample-compat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let src = dir.join("workload.c");
    std::fs::write(&src, SOURCE).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let exe = dir.join(EXE_NAME);
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()))
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| format!("running gcc (needed to build the workload): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gcc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(exe)
}

/// The compiled workload (built on first use).
pub fn executable() -> Result<PathBuf, String> {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(build).clone()
}

/// A function's place in the executable file: file offset of its start, and its size.
fn file_symbols(exe: &Path) -> Result<HashMap<String, (u64, u64)>, String> {
    let data = std::fs::read(exe).map_err(|e| format!("reading {}: {e}", exe.display()))?;
    let file =
        object::File::parse(&*data).map_err(|e| format!("parsing {}: {e}", exe.display()))?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    let mut out = HashMap::new();
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if !FUNCTIONS.contains(&name) || sym.size() == 0 {
            continue;
        }
        let addr = sym.address();
        let Some((seg_addr, _, seg_off)) = segments
            .iter()
            .find(|(a, size, _)| addr >= *a && addr < a + size)
        else {
            continue;
        };
        out.insert(name.to_string(), (addr - seg_addr + seg_off, sym.size()));
    }
    match FUNCTIONS.iter().find(|f| !out.contains_key(**f)) {
        Some(missing) => Err(format!("{} has no symbol {missing}", exe.display())),
        None => Ok(out),
    }
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone)]
struct MapsLine {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    maj: u32,
    min: u32,
    ino: u64,
    path: String,
}

fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (range, perms, off, dev, ino) =
                (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            let (maj, min) = dev.split_once(':')?;
            Some(MapsLine {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms: perms.to_string(),
                offset: u64::from_str_radix(off, 16).ok()?,
                maj: u32::from_str_radix(maj, 16).ok()?,
                min: u32::from_str_radix(min, 16).ok()?,
                ino: ino.parse().ok()?,
                path,
            })
        })
        .collect()
}

/// The running workload. Dropping it ends the process.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    pub pid: u32,
    pub worker_tid: u32,
    pub exe: PathBuf,
    /// Function name → (runtime start address, size).
    functions: HashMap<String, (u64, u64)>,
    text: MapsLine,
}

impl Workload {
    pub fn start() -> Result<Workload, String> {
        let exe = executable()?;
        let mut child = Command::new(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("reading the workload's stdout: {e}"))?;
        }
        let pid = child.id();
        let mut w = Workload {
            child,
            stdin,
            pid,
            worker_tid: 0,
            exe: exe.clone(),
            functions: HashMap::new(),
            text: MapsLine {
                start: 0,
                end: 0,
                perms: String::new(),
                offset: 0,
                maj: 0,
                min: 0,
                ino: 0,
                path: String::new(),
            },
        };
        if line.trim() != "ready" {
            return Err(format!("workload did not start (said {line:?})"));
        }
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("listing threads of {pid}: {e}"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        w.worker_tid = tids
            .into_iter()
            .find(|t| *t != pid)
            .ok_or("the workload has no worker thread")?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", w.worker_tid))
            .unwrap_or_default();
        if comm.trim_end() != WORKER_COMM {
            return Err(format!(
                "the worker thread is named {comm:?}, not {WORKER_COMM}"
            ));
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| format!("reading maps of {pid}: {e}"))?;
        let canonical = exe.canonicalize().unwrap_or(exe.clone());
        let maps: Vec<MapsLine> = parse_maps(&maps)
            .into_iter()
            .filter(|m| Path::new(&m.path) == canonical)
            .collect();
        for (name, (file_off, size)) in file_symbols(&exe)? {
            let m = maps
                .iter()
                .find(|m| file_off >= m.offset && file_off < m.offset + (m.end - m.start))
                .ok_or(format!("{name} is in no mapping of {}", exe.display()))?;
            if !m.perms.contains('x') {
                return Err(format!("{name} is in a non-executable mapping"));
            }
            w.text = m.clone();
            w.functions
                .insert(name, (m.start + (file_off - m.offset), size));
        }
        Ok(w)
    }

    pub fn main_task(&self) -> Task {
        Task {
            pid: self.pid,
            tid: self.pid,
            comm: EXE_NAME.to_string(),
        }
    }

    pub fn worker_task(&self) -> Task {
        Task {
            pid: self.pid,
            tid: self.worker_tid,
            comm: WORKER_COMM.to_string(),
        }
    }

    /// An address in the middle of `function` (a return address there still lies inside it
    /// after psample's minus-one adjustment).
    pub fn addr(&self, function: &str) -> Option<u64> {
        self.functions
            .get(function)
            .map(|(start, size)| start + size / 2)
    }

    /// A user stack from function names, leaf first. Unknown names are a bug in the test.
    pub fn stack(&self, leaf_first: &[&str]) -> Result<Stack, String> {
        let user = leaf_first
            .iter()
            .map(|f| {
                self.addr(f)
                    .ok_or(format!("no function {f} in the workload"))
            })
            .collect::<Result<Vec<u64>, String>>()?;
        Ok(Stack {
            user,
            ..Stack::default()
        })
    }

    /// The executable mapping of the workload's text, as an MMAP/MMAP2 record describes it.
    pub fn text_mapping(&self) -> MapInfo {
        MapInfo {
            addr: self.text.start,
            len: self.text.end - self.text.start,
            pgoff: self.text.offset,
            maj: self.text.maj,
            min: self.text.min,
            ino: self.text.ino,
            prot: (libc::PROT_READ | libc::PROT_EXEC) as u32,
            flags: libc::MAP_PRIVATE as u32,
            path: self.text.path.clone(),
            exec: true,
        }
    }
}

/// The user stack of the main thread, blocked in libc's `read` under `emu_wait_stdin`, as a
/// kernel's sched_switch sample would carry it: the user registers, up to `copy` bytes of
/// stack from the stack pointer, and the frame-pointer chain the kernel walks
/// (`perf_callchain_user`: the IP, then the return address of each frame record from rbp
/// on, until a record cannot be read). Taken with ptrace (the thread is stopped for the
/// copy and resumed; its read is restarted) and /proc/PID/mem.
pub fn blocked_main_stack(pid: u32, copy: usize) -> Result<Stack, String> {
    // After "ready" the main thread still has to get into read(0, …): syscall 0 on x86_64.
    let in_read = || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some("0"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !in_read() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{pid} never blocked in read"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let regs = ptrace_regs(pid)?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| format!("opening /proc/{pid}/mem: {e}"))?;
    let read_at = |addr: u64, buf: &mut [u8]| -> usize {
        use std::os::unix::fs::FileExt;
        let mut filled = 0;
        while filled < buf.len() {
            match mem.read_at(&mut buf[filled..], addr + filled as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        filled
    };
    let (ip, sp, bp) = (regs.rip, regs.rsp, regs.rbp);
    let mut stack = vec![0u8; copy];
    let got = read_at(sp, &mut stack);
    stack.truncate(got);
    let mut user = vec![ip];
    let mut fp = bp;
    // The kernel's own bound (perf_event_max_stack's default).
    while user.len() < 127 && fp != 0 {
        let mut record = [0u8; 16];
        if read_at(fp, &mut record) != 16 {
            break;
        }
        let word = |i: usize| u64::from_ne_bytes(record[i * 8..i * 8 + 8].try_into().unwrap());
        user.push(word(1));
        fp = word(0);
    }
    Ok(Stack {
        user,
        user_regs: Some([ip, sp, bp]),
        user_stack: stack,
        ..Stack::default()
    })
}

/// Registers of thread `tid` (of a child of ours), stopped with PTRACE_INTERRUPT and
/// detached again.
fn ptrace_regs(tid: u32) -> Result<libc::user_regs_struct, String> {
    let t = tid as libc::pid_t;
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace requests on a thread of a process this test started; the registers
    // are written into a local struct of the type PTRACE_GETREGS fills.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, t, null, null) != 0 {
            return Err(format!(
                "PTRACE_SEIZE {tid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        let mut status = 0;
        let ok = libc::ptrace(libc::PTRACE_INTERRUPT, t, null, null) == 0
            && libc::waitpid(t, &mut status, libc::__WALL) == t
            && libc::ptrace(
                libc::PTRACE_GETREGS,
                t,
                null,
                &mut regs as *mut _ as *mut libc::c_void,
            ) == 0;
        let err = std::io::Error::last_os_error();
        libc::ptrace(libc::PTRACE_DETACH, t, null, null);
        if !ok {
            return Err(format!("reading the registers of {tid}: {err}"));
        }
        Ok(regs)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Closing stdin ends it normally; kill in case it is stuck, then reap.
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
