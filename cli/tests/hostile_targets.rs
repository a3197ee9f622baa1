//! Hostile targets (issue 22): whatever a profiled process controls — its files, its JIT map,
//! its address-space churn, its PID, the pid file and process name psample follows — cannot
//! make psample exhaust memory, crash, hang or name frames wrongly. Each test reproduces one
//! attack on a real process owned by an unprivileged user (`nobody`) where ownership matters,
//! and checks the bounded behaviour, the summary line that says what was left out, and (for
//! the memory cases) psample's peak RSS.
//!
//! The targets are small C programs in tests/hostile/, built into a scratch directory.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const NOBODY: u32 = 65534;
/// Peak RSS every memory case must stay under.
const MEMORY_LIMIT_KB: u64 = 64 * 1024;
/// Far beyond what any of these runs needs: reaching it means psample hung.
const HANG: Duration = Duration::from_secs(60);

/// A temporary directory the unprivileged target user can read and execute from.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Builds tests/hostile/`sources` into `name` with extra gcc flags.
    fn compile(&self, name: &str, sources: &[&str], flags: &[&str]) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
        let out = self.path().join(name);
        let o = Command::new("gcc")
            .args(["-std=gnu11", "-Wall"])
            .args(flags)
            .arg("-o")
            .arg(&out)
            .args(sources.iter().map(|s| src.join(s)))
            .output()
            .expect("gcc is needed (apt-get install gcc)");
        assert!(
            o.status.success(),
            "gcc {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown (run as root)");
}

/// A running target; killed and reaped on drop.
struct Proc {
    child: Child,
    pid: u32,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Proc {
    /// Starts `cmd` and waits for its `pid=` line (the PID of the process that matters, which
    /// for spawn_at_pid is not the child's own).
    fn start(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read pid line");
        let pid = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{cmd:?} printed {line:?}"));
        Proc { child, pid, stdout }
    }

    fn kill(&mut self) {
        // SAFETY: signalling a process this test started (or the one it names by pid=).
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn as_nobody(cmd: &mut Command) -> &mut Command {
    cmd.uid(NOBODY).gid(NOBODY)
}

/// The outcome of one psample run.
struct Run {
    code: Option<i32>,
    stderr: String,
    /// Peak resident set size in KiB (getrusage of the reaped child, like `time -f %M`).
    max_rss_kb: u64,
}

impl Run {
    fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }

    fn assert_memory_bounded(&self) {
        assert!(
            self.max_rss_kb < MEMORY_LIMIT_KB,
            "peak RSS {} KiB (limit {MEMORY_LIMIT_KB}):\n{}",
            self.max_rss_kb,
            self.stderr
        );
    }

    /// The summary line under "budget" mentioning `what`.
    fn budget_line(&self, what: &str) -> &str {
        self.stderr
            .lines()
            .find(|l| l.trim_start().starts_with("budget") && l.contains(what))
            .unwrap_or_else(|| panic!("no budget line about {what:?}:\n{}", self.stderr))
    }
}

/// A psample run in progress; killed and reaped on drop unless [`finish`]ed (a test that
/// fails midway must not leave a continuous run behind).
struct Psample(Option<Child>);

impl Psample {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Psample {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns psample (stderr to a file, so nothing blocks on a full pipe).
fn spawn_psample(args: &[&str], dir: &Path) -> Psample {
    Psample(Some(
        Command::new(psample())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
            .spawn()
            .expect("run psample"),
    ))
}

/// Waits for a psample child, measuring its peak RSS; fails the test if it hangs.
fn finish(mut run: Psample, dir: &Path) -> Run {
    let child = run.0.take().expect("running");
    let pid = child.id() as i32;
    let deadline = Instant::now() + HANG;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-buffer.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        if Instant::now() > deadline {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            panic!("psample hung (killed after {HANG:?}):\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::mem::forget(child);
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr: std::fs::read_to_string(dir.join("stderr")).unwrap_or_default(),
        max_rss_kb: usage.ru_maxrss as u64,
    }
}

fn run_measured(args: &[&str], dir: &Path) -> Run {
    finish(spawn_psample(args, dir), dir)
}

/// `psample record -p PID ARGS... -o FILE`, measured: the run and its folded stacks.
fn record(s: &Scratch, pid: u32, args: &[&str]) -> (Run, std::collections::BTreeMap<String, u64>) {
    let out = s.path().join("out.folded");
    let pid = pid.to_string();
    let mut all = vec!["record", "-p", &pid, "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = run_measured(&all, s.path());
    let folded = parse_folded(&std::fs::read_to_string(&out).unwrap_or_default());
    (run, folded)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// A file removed on drop (JIT maps live in the host's /tmp under a fixed name).
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `/tmp/perf-PID.map` with `body`, owned by `uid`, mode 0644.
fn perf_map(pid: u32, body: &str, uid: u32) -> Removed {
    let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let guard = Removed(path.clone());
    std::fs::write(&path, body).expect("write perf map");
    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    guard
}

/// The interval files of a continuous run, oldest first, with their contents.
fn intervals(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                name.starts_with("psample-")
                    .then(|| Some((name, std::fs::read_to_string(e.path()).ok()?)))?
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until an interval file satisfies `pred`; fails after `HANG`.
fn wait_for_interval(dir: &Path, what: &str, pred: impl Fn(&str) -> bool) -> usize {
    let deadline = Instant::now() + HANG;
    loop {
        let all = intervals(dir);
        if let Some(i) = all.iter().position(|(_, text)| pred(text)) {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no interval with {what}: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A GNU-style compressed section (`.zdebug_*`) declaring `size` bytes of zeros: 2 GiB is
/// 2 MiB deflated. Built with python3's zlib, which deflates far faster than a debug build.
fn zdebug_bomb(path: &Path, size: u64) {
    let script = r#"
import struct, sys, zlib
size = int(sys.argv[2])
z = zlib.compressobj(9)
chunk = bytes(1 << 20)
with open(sys.argv[1], "wb") as f:
    f.write(b"ZLIB" + struct.pack(">Q", size))
    left = size
    while left:
        n = min(left, len(chunk))
        f.write(z.compress(chunk[:n]))
        left -= n
    f.write(z.flush())
"#;
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(size.to_string())
        .status()
        .expect("python3 is needed");
    assert!(st.success(), "building the compressed section failed");
}

#[test]
fn compressed_section_bomb_is_not_inflated() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    // No -g: the only DWARF and CFI sections besides .eh_frame are the bombs.
    let bin = s.compile(
        "bomb_target",
        &["cfi_spin.c"],
        &["-O2", "-fno-omit-frame-pointer"],
    );
    let bomb = s.path().join("bomb.z");
    zdebug_bomb(&bomb, 2 << 30);
    let o = Command::new("objcopy")
        .arg(format!("--add-section=.zdebug_frame={}", bomb.display()))
        .arg(format!("--add-section=.zdebug_info={}", bomb.display()))
        .arg(&bin)
        .output()
        .expect("objcopy is needed (binutils)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(size < 8 << 20, "the hostile binary is small ({size} bytes)");
    chown_nobody(&bin);
    let target = Proc::start(as_nobody(&mut Command::new(&bin)));
    let (run, folded) = record(
        &s,
        target.pid,
        &["--call-graph", "dwarf", "-F", "199", "-d", "2"],
    );
    run.assert_ok();
    run.assert_memory_bounded();
    let line = run.budget_line("compressed section(s)");
    assert!(line.contains("not inflated"), "{line}");
    // Profiled all the same, and named from .symtab.
    assert!(count_with(&folded, "hot_fn") > 0, "{folded:?}");
    eprintln!("peak RSS {} KiB; {line}", run.max_rss_kb);
}

/// Starts the JIT-like target (as `uid`); returns it and the address of its JIT code.
fn jit_target(bin: &Path, uid: u32) -> (Proc, u64) {
    let mut cmd = Command::new(bin);
    cmd.uid(uid).gid(uid);
    let mut p = Proc::start(&mut cmd);
    let _ = &mut p.stdout;
    (p, 0x7e00_0000_0100)
}

#[test]
fn huge_jit_map_is_read_within_budget() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    let bin = s.compile("jit_spin", &["jit_spin.c"], &["-O1"]);
    let (target, code) = jit_target(&bin, NOBODY);
    // 250 MB of map written by the target's user, the live function's line at the end (where
    // a runtime appends it).
    let path = PathBuf::from(format!("/tmp/perf-{}.map", target.pid));
    let _map = Removed(path.clone());
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut written = 0u64;
        let mut i = 0u64;
        while written < 250_000_000 {
            let line = format!(
                "{:x} 20 LazyCompile:*filler_function_{i} /srv/app/node_modules/x.js:1:1\n",
                0x5000_0000_0000u64 + i * 0x40
            );
            f.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            i += 1;
        }
        writeln!(f, "{code:x} 100 hot_jit_function").unwrap();
    }
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (run, folded) = record(&s, target.pid, &["-F", "199", "-d", "2"]);
    run.assert_ok();
    run.assert_memory_bounded();
    let line = run.budget_line("JIT map(s)");
    assert!(
        count_with(&folded, "hot_jit_function_[j]") > 0,
        "the live function, at the end of the map, is named: {folded:?}"
    );
    let ready = run
        .stderr
        .lines()
        .find(|l| l.contains("output ready"))
        .unwrap_or("");
    eprintln!("peak RSS {} KiB; {}; {line}", run.max_rss_kb, ready.trim());
}

#[test]
fn executable_mapping_churn_is_bounded() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    let bin = s.compile("mmap_churn", &["mmap_churn.c"], &["-O1"]);
    let target = Proc::start(as_nobody(Command::new(&bin).arg("6")));
    // Until the target exits: every MMAP2 record it causes is seen (or counted as lost).
    let (run, _) = record(&s, target.pid, &["-F", "99", "--mmap-pages", "1024"]);
    run.assert_ok();
    run.assert_memory_bounded();
    let line = run.budget_line("dropped from");
    let forgotten: u64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a count");
    assert!(forgotten > 0, "{line}");
    let lost = run
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("lost"))
        .unwrap_or("");
    eprintln!("peak RSS {} KiB; {line}; {}", run.max_rss_kb, lost.trim());
}

/// Sends SIGINT to a continuous run and waits for it.
fn stop(run: Psample, dir: &Path) -> Run {
    signal(run.id(), libc::SIGINT);
    finish(run, dir)
}

#[test]
fn debug_file_truncated_by_its_owner_while_mapped() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    let bin = s.compile(
        "two_phase",
        &["two_phase_a.c", "two_phase_b.c"],
        &["-g", "-O1", "-fno-omit-frame-pointer"],
    );
    // The DWARF lives in a separate debug file next to the binary, found by debuglink.
    let debug = s.path().join("two_phase.debug");
    for args in [
        vec![
            "--only-keep-debug".to_string(),
            bin.display().to_string(),
            debug.display().to_string(),
        ],
        vec![
            "--strip-debug".into(),
            format!("--add-gnu-debuglink={}", debug.display()),
            bin.display().to_string(),
        ],
    ] {
        let o = Command::new("objcopy")
            .args(&args)
            .output()
            .expect("objcopy");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    chown_nobody(&debug);
    chown_nobody(&bin);
    let trigger = s.path().join("trigger");
    let target = Proc::start(as_nobody(Command::new(&bin).arg(&debug).arg(&trigger)));
    let out = s.path().join("intervals");
    let pid = target.pid.to_string();
    let child = spawn_psample(
        &[
            "record",
            "-F",
            "299",
            "-p",
            &pid,
            "--every",
            "1s",
            "--out-dir",
            out.to_str().unwrap(),
        ],
        s.path(),
    );
    // Symbolizing the first interval maps the debug file (the symbolizer keeps it).
    wait_for_interval(&out, "phase_a", |t| t.contains("phase_a"));
    // The target truncates the file psample holds mapped, then runs code in a compilation
    // unit whose DWARF psample has not read yet.
    std::fs::write(&trigger, "").unwrap();
    wait_for_interval(&out, "phase_b", |t| t.contains("phase_b"));
    let run = stop(child, s.path());
    run.assert_ok();
    assert!(
        run.stderr.contains("shrank while psample read it"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::metadata(&debug).unwrap().len(),
        0,
        "the target did truncate it"
    );
}

/// A root-owned pid file naming `pid`.
fn pid_file(dir: &Path, pid: u32) -> PathBuf {
    let f = dir.join("target.pid");
    std::fs::write(&f, format!("{pid}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    f
}

/// What the PID-reuse tests share: A (`nobody`, JIT map naming its code A_SECRET_NAME) is
/// followed through a pid file; once its code was named, A is killed and B, a root process,
/// takes A's PID at once (clone3 set_tid) and runs JIT code at the same address. `b_map`
/// is B's own map, if any. Returns the run, the intervals and the index of the first
/// interval B's frames (`b_frame`) show in.
fn pid_reuse(b_map: Option<&str>, b_frame: &str) -> (Run, Vec<(String, String)>, usize) {
    let s = Scratch::new();
    let jit = s.compile("jit_spin", &["jit_spin.c"], &["-O1"]);
    let spawn = s.compile("spawn_at_pid", &["spawn_at_pid.c"], &["-O1"]);
    let (mut a, code) = jit_target(&jit, NOBODY);
    let pid = a.pid;
    let a_map = perf_map(pid, &format!("{code:x} 100 A_SECRET_NAME\n"), NOBODY);
    let pf = pid_file(s.path(), pid);
    let out = s.path().join("intervals");
    let child = spawn_psample(
        &[
            "record",
            "-F",
            "299",
            "--pid-file",
            pf.to_str().unwrap(),
            "--every",
            "1s",
            "--out-dir",
            out.to_str().unwrap(),
        ],
        s.path(),
    );
    wait_for_interval(&out, "A's JIT frames", |t| t.contains("A_SECRET_NAME_[j]"));
    a.kill();
    let b = Proc::start(Command::new(&spawn).arg(pid.to_string()).arg(&jit));
    assert_eq!(b.pid, pid, "B did not get A's PID");
    let _b_map = b_map.map(|body| {
        drop(a_map);
        perf_map(pid, body, 0)
    });
    let first_b = wait_for_interval(&out, b_frame, |t| t.contains(b_frame));
    let run = stop(child, s.path());
    (run, intervals(&out), first_b)
}

#[test]
fn pid_reused_at_once_is_noticed_and_re_attached() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let (run, all, first_b) = pid_reuse(Some("7e0000000100 100 B_OWN_NAME\n"), "B_OWN_NAME_[j]");
    run.assert_ok();
    assert!(run.stderr.contains("re-attaching"), "{}", run.stderr);
    // From the first interval of B on, only B's own names.
    for (name, text) in &all[first_b..] {
        assert!(!text.contains("A_SECRET_NAME"), "{name}: {text}");
    }
}

#[test]
fn reused_pid_never_gets_the_old_process_jit_names() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    // B has no map of its own; A's (owned by nobody) is still in /tmp.
    let (run, all, first_b) = pid_reuse(None, "[anon]+0x");
    run.assert_ok();
    for (name, text) in &all[first_b..] {
        assert!(!text.contains("A_SECRET_NAME"), "{name}: {text}");
    }
}

/// Runs `record --pid-file FILE --every 1s` and expects a quick, clear refusal.
fn pid_file_refused(file: &Path, needle: &str) {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "record",
        "--pid-file",
        file.to_str().unwrap(),
        "--every",
        "1s",
        "--out-dir",
        out.path().to_str().unwrap(),
    ];
    let run = run_measured(&args, out.path());
    assert_eq!(run.code, Some(1), "{}: {}", file.display(), run.stderr);
    assert!(
        run.stderr.contains(needle),
        "expected {needle:?}:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run.assert_memory_bounded();
}

#[test]
fn hostile_pid_files_are_refused() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let s = Scratch::new();
    let bin = s.compile("jit_spin", &["jit_spin.c"], &["-O1"]);
    let victim = Proc::start(as_nobody(&mut Command::new(bin)));
    let pid = victim.pid;
    // 2 GB (sparse): read whole every 200 ms before.
    let big = s.path().join("big.pid");
    std::fs::write(&big, format!("{pid}\n")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    pid_file_refused(&big, "a pid file holds one number");
    // A FIFO nobody writes to: the open used to hang, ignoring -d and SIGINT.
    let fifo = s.path().join("fifo.pid");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    pid_file_refused(&fifo, "regular file");
    // Written by another user: that user would choose what root profiles.
    let theirs = s.path().join("theirs.pid");
    std::fs::write(&theirs, format!("{pid}\n")).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
    chown_nobody(&theirs);
    pid_file_refused(&theirs, "owned by uid 65534");
    // Writable by everyone.
    let open = s.path().join("open.pid");
    std::fs::write(&open, format!("{pid}\n")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    pid_file_refused(&open, "writable by group or others");
    // Symlink tricks: psample would have profiled itself.
    let link = s.path().join("link.pid");
    std::os::unix::fs::symlink("/proc/self/stat", &link).unwrap();
    pid_file_refused(&link, "symbolic link");
    let dir_link = s.path().join("self");
    std::os::unix::fs::symlink("/proc/self", &dir_link).unwrap();
    pid_file_refused(&dir_link.join("stat"), "/proc or /sys");
}

/// `record --comm NAME --every 1s -d 3` (plus `extra`): its stderr and interval files.
fn follow_comm(name: &str, extra: &[&str]) -> (Run, Vec<(String, String)>) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("intervals");
    let mut args = vec![
        "record",
        "-F",
        "299",
        "--comm",
        name,
        "--every",
        "1s",
        "-d",
        "3",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = run_measured(&args, out.path());
    (run, intervals(&dir))
}

#[test]
fn comm_never_mixes_in_another_users_process() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    let bin = s.compile("psvc_hostile", &["jit_spin.c"], &["-O1"]);
    // The service (root) and a look-alike another user started.
    let (svc, code) = jit_target(&bin, 0);
    let (other, _) = jit_target(&bin, NOBODY);
    let _m1 = perf_map(svc.pid, &format!("{code:x} 100 ROOT_SERVICE_JIT\n"), 0);
    let _m2 = perf_map(
        other.pid,
        &format!("{code:x} 100 NOBODY_LOOKALIKE_JIT\n"),
        NOBODY,
    );
    let (first_owner, want, unwanted) = if svc.pid < other.pid {
        ("user root", "ROOT_SERVICE_JIT", "NOBODY_LOOKALIKE_JIT")
    } else {
        ("user nobody", "NOBODY_LOOKALIKE_JIT", "ROOT_SERVICE_JIT")
    };
    let (run, all) = follow_comm("psvc_hostile", &[]);
    run.assert_ok();
    assert!(
        run.stderr
            .contains(&format!("following processes of {first_owner}"))
            && run
                .stderr
                .contains("ignoring 1 matching processes of other users"),
        "{}",
        run.stderr
    );
    assert!(all.iter().any(|(_, t)| t.contains(want)), "{all:?}");
    assert!(all.iter().all(|(_, t)| !t.contains(unwanted)), "{all:?}");
    // --user chooses.
    let (run, all) = follow_comm("psvc_hostile", &["--user", "nobody"]);
    run.assert_ok();
    assert!(
        all.iter().any(|(_, t)| t.contains("NOBODY_LOOKALIKE_JIT")),
        "{all:?}"
    );
    assert!(
        all.iter().all(|(_, t)| !t.contains("ROOT_SERVICE_JIT")),
        "{all:?}"
    );
    let (run, _) = follow_comm("psvc_hostile", &["--user", "no_such_user_here"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("no such user"), "{}", run.stderr);
}

/// A "container": a static program whose root is `root` in its own mount namespace (so
/// /proc/PID/maps shows its paths as it sees them), which then mounts `source` over `target`
/// (paths inside the container) after the program mapped its binary: the path in its maps
/// now leads elsewhere. Returns the program's process.
fn container(s: &Scratch, root: &Path, source: &str, target: &str) -> Proc {
    let init = s.compile("container_init", &["container_init.c"], &["-O1"]);
    Proc::start(
        Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(init)
            .arg(root)
            .args([source, target]),
    )
}

/// Profiles the container program with DWARF unwinding: must finish, and unwind and name
/// its frames from the mapped binary itself (through map_files).
fn profile_container(s: &Scratch, p: &Proc) {
    let (run, folded) = record(s, p.pid, &["--call-graph", "dwarf", "-F", "299", "-d", "2"]);
    run.assert_ok();
    let chain = folded
        .iter()
        .filter(|(st, _)| st.contains("main;outer_fn;hot_fn"))
        .map(|(_, c)| c)
        .sum::<u64>();
    let all: u64 = folded.values().sum();
    assert!(
        all > 0 && chain * 10 >= all * 9,
        "stacks unwound from the real binary ({chain} of {all}): {folded:?}\n{}",
        run.stderr
    );
}

fn container_root(s: &Scratch) -> PathBuf {
    let root = s.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let bin = s.compile(
        "cfi_spin",
        &["cfi_spin.c"],
        &[
            "-static",
            "-O2",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
    );
    std::fs::copy(&bin, root.join("bin/prog")).unwrap();
    root
}

#[test]
fn fifo_over_a_mapped_path_in_a_container_never_blocks() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    let root = container_root(&s);
    let c = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let p = container(&s, &root, "/fifo", "/bin/prog");
    profile_container(&s, &p);
}

#[test]
fn absolute_symlink_in_a_container_resolves_inside_it() {
    // Root: an unprivileged target is played against root psample.
    require!(Need::Root);
    let _g = serial();
    let s = Scratch::new();
    let root = container_root(&s);
    // A decoy ELF on the host, and inside the container a directory whose "prog" is an
    // absolute symlink to the decoy's host path (which does not exist inside the root).
    let decoy = s.compile("decoy", &["jit_spin.c"], &["-O0"]);
    std::fs::create_dir(root.join("evil")).unwrap();
    std::os::unix::fs::symlink(&decoy, root.join("evil/prog")).unwrap();
    let p = container(&s, &root, "/evil", "/bin");
    profile_container(&s, &p);
}

#[test]
fn numeric_flags_are_refused_before_anything_runs() {
    for args in [
        &["record", "-d", "NaN", "--", "true"][..],
        &["record", "-d", "inf", "--", "true"],
        &["record", "-d", "1e20", "--", "true"],
        &["record", "-d=-1", "--", "true"],
        &["offcpu", "-d", "-1", "--", "true"],
        &["record", "-p", "0"],
        &["record", "-p", "4294967295"],
        &["record", "-t", "-1"],
        &["record", "-F", "0", "--", "true"],
        &["record", "--mmap-pages", "99999999999", "--", "true"],
    ] {
        let o = Command::new(psample()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("invalid value") || err.contains("unexpected"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn closed_or_broken_stderr_and_stdout_keep_the_exit_code() {
    // Closed (2>&-, >&-): an error run still exits 1, a usage error 2.
    for (args, code) in [
        (&["record", "-p", "2147483647", "-d", "1"][..], 1),
        (&["record", "-d", "NaN", "--", "true"], 2),
        (&["check"], 0),
    ] {
        let mut c = Command::new(psample());
        c.args(args);
        // SAFETY: closing the standard streams in the child before exec.
        unsafe {
            c.pre_exec(|| {
                libc::close(1);
                libc::close(2);
                Ok(())
            });
        }
        let st = c.status().unwrap();
        assert_eq!(st.code(), Some(code), "{args:?} with stdout/stderr closed");
    }
    // A pipe whose reader is gone: writes fail with EPIPE (SIGPIPE is ignored by Rust).
    for (args, code) in [
        (&["record", "-p", "2147483647", "-d", "1"][..], 1),
        (&["check"], 0),
    ] {
        let mut child = Command::new(psample())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        drop(child.stderr.take());
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(code), "{args:?} into closed pipes");
    }
}

#[test]
fn launched_commands_get_what_the_caller_had() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let script = format!(
        "{{ yes | head -1; ulimit -n; grep -E '^Sig(Ign|Blk)' /proc/self/status; env | sort; }} \
         > {} 2>&1",
        report.display()
    );
    let out = dir.path().join("out.folded");
    let mut c = Command::new(psample());
    c.args([
        "record",
        "-o",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ])
    .env("PSAMPLE_TEST_MARKER", "kept")
    .stderr(Stdio::piped());
    // A soft open-files limit below the hard one: psample raises its own, not the command's.
    // SAFETY: setrlimit in the child before exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 4096,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("y"), "{text}");
    assert_eq!(
        lines.next(),
        Some("512"),
        "the caller's NOFILE limit: {text}"
    );
    assert!(
        !text.contains("Broken pipe"),
        "SIGPIPE must be default: {text}"
    );
    assert!(
        text.contains("SigIgn:\t0000000000000000"),
        "no signal ignored: {text}"
    );
    assert!(
        text.contains("SigBlk:\t0000000000000000"),
        "no signal blocked: {text}"
    );
    assert!(text.contains("PSAMPLE_TEST_MARKER=kept"), "{text}");
    // Nothing psample-specific was added to the environment.
    let mut expected: Vec<String> = std::env::vars()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once("PSAMPLE_TEST_MARKER=kept".to_string()))
        .collect();
    expected.sort();
    for var in ["PWD", "SHLVL", "_", "OLDPWD"] {
        expected.retain(|l| !l.starts_with(&format!("{var}=")));
    }
    let got: Vec<&str> = text
        .lines()
        .filter(|l| l.contains('='))
        .filter(|l| {
            !["PWD=", "SHLVL=", "_=", "OLDPWD="]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    for e in &expected {
        if !e.contains('\n') {
            assert!(
                got.contains(&e.as_str()),
                "{e} missing from the command's env:\n{text}"
            );
        }
    }
}
