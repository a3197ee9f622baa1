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
pub const FUNCTIONS: [&str; 10] = [
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

impl Drop for Workload {
    fn drop(&mut self) {
        // Closing stdin ends it normally; kill in case it is stuck, then reap.
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
