//! End-to-end: the off-CPU tracepoint programs attached to this kernel's `sched_switch`,
//! `sched_waking` and `sched_process_fork`, on a C child that alternates a 4 ms nanosleep
//! with a pipe read its own forked child answers after 2 ms. Needs root (skipped
//! without, failing under `PSAMPLE_REQUIRE_PERF=1`).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use perf_event_open_sys as sys;
use perfring::attr::{sample, AttrBuilder, EventKind};
use perfring::bpf::offcpu::{
    int_field, layout, state_decisions, BlockedCount, Filter, OffcpuBpf, OffcpuOptions, RawEntry,
    RawKey, Spilled, SwitchFields,
};
use perfring::event::Session;
use perfring::record::{parse_record, Record};
use perfring::tracepoint::{StateTable, TaskState, TracepointFormat};

const CHILD_SRC: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static int to_waker[2], from_waker[2];
static void nap(long ns) {
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}
__attribute__((noinline)) void psample_nap(void) { nap(4000000); }
__attribute__((noinline)) void psample_wait(void) {
    char c = 'g';
    if (write(to_waker[1], &c, 1) != 1 || read(from_waker[0], &c, 1) != 1) exit(1);
}
static void spin(long ns) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < ns);
}
int main(int argc, char **argv) {
    char c;
    if (argc > 2) { /* spin: 20 ms on CPU, 1 ms asleep, until killed */
        if (write(1, "ready\n", 6) != 6) return 1;
        for (;;) { spin(20000000); nap(1000000); }
    }
    int n = atoi(argv[1]);
    if (pipe(to_waker) || pipe(from_waker)) return 1;
    prctl(PR_SET_NAME, "psblocked");
    if (write(1, "ready\n", 6) != 6 || read(0, &c, 1) != 1) return 1;
    /* Forked after the programs are attached: a target through sched_process_fork. */
    if (fork() == 0) {
        prctl(PR_SET_NAME, "pswaker");
        close(to_waker[1]);
        close(from_waker[0]);
        while (read(to_waker[0], &c, 1) == 1) {
            nap(2000000);
            if (write(from_waker[1], &c, 1) != 1) _exit(1);
        }
        _exit(0);
    }
    for (int i = 0; i < n; i++) {
        psample_nap();
        psample_wait();
    }
    close(to_waker[1]);
    wait(NULL);
    return 0;
}
"#;

const ITERATIONS: u64 = 150;

fn build_child() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(compile_child).clone()
}

fn compile_child() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bpf_offcpu");
    fs::create_dir_all(&dir).expect("create tmp dir");
    let src = dir.join("blocker.c");
    let exe = dir.join(format!("blocker-{}", std::process::id()));
    fs::write(&src, CHILD_SRC).expect("write C source");
    let status = Command::new("gcc")
        .args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc must be installed for this test");
    assert!(status.success(), "gcc failed");
    exe
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn format(name: &str) -> TracepointFormat {
    let text = fs::read_to_string(format!("/sys/kernel/tracing/events/sched/{name}/format"))
        .expect("tracefs at /sys/kernel/tracing (run .ci/setup)");
    TracepointFormat::parse(&text).expect("format parses")
}

/// A disabled tracepoint event on CPU 0 for every task: a tracepoint program attached to
/// it runs on every CPU.
fn attach(name: &str, prog: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    let id = format(name).id.expect("format has an ID");
    let mut attr = sys::bindings::perf_event_attr {
        type_: sys::bindings::PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
        config: id,
        ..Default::default()
    };
    attr.set_disabled(1);
    // SAFETY: attr is a fully initialised perf_event_attr with size set.
    let fd = unsafe {
        sys::perf_event_open(
            &mut attr,
            -1,
            0,
            -1,
            sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
        )
    };
    assert!(
        fd >= 0,
        "perf_event_open {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd from the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SET_BPF takes the program fd by value; both fds are live.
    let rc = unsafe { sys::ioctls::SET_BPF(fd.as_raw_fd(), prog.as_raw_fd() as u32) };
    assert!(
        rc >= 0,
        "SET_BPF {name}: {}",
        std::io::Error::last_os_error()
    );
    fd
}

fn options(stack_entries: u32) -> OffcpuOptions {
    let switch = format("sched_switch");
    let table = StateTable::from_print_fmt(&switch.print_fmt);
    let (states, unknown_state) = state_decisions(&table, |s| s != TaskState::Runnable);
    OffcpuOptions {
        filter: Filter::Processes,
        own_tgid: std::process::id(),
        min_ns: 0,
        max_ns: None,
        states,
        unknown_state,
        switch: SwitchFields::from_format(&switch).expect("sched_switch fields"),
        waking_pid: Some(int_field(&format("sched_waking"), "pid").expect("waking pid")),
        wakers: true,
        runtime_off: perfring::bpf::offcpu::runtime_offset(),
        fork_child_pid: Some(
            int_field(&format("sched_process_fork"), "child_pid").expect("child_pid"),
        ),
        threads: 1024,
        count_entries: 4096,
        stack_entries,
        cpus: 256,
        user_stacks: true,
        kernel_stacks: true,
        log_verifier: false,
    }
}

fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// What a run collected: the drained counts and the spilled records.
struct Run {
    bpf: OffcpuBpf,
    counts: Vec<BlockedCount>,
    stacks: HashMap<u64, (Vec<u64>, Vec<u64>)>,
    intervals: Vec<Spilled>,
    /// Spill records the rings dropped.
    lost: u64,
    pid: u32,
}

/// Per-CPU bpf-output events with rings, for the spilled records.
fn spill_session() -> Session {
    let kernel: Arc<dyn perfring::sys::Kernel> = Arc::new(perfring::sys::LinuxKernel);
    let mut session = Session::new(kernel, 512);
    let attr = AttrBuilder::new(EventKind::BpfOutput)
        .period(1)
        .sample_type(sample::RAW | sample::TID | sample::TIME | sample::CPU)
        .sample_id_all(true)
        .wakeup_events(1)
        .build();
    let spec = session.add_spec("bpf-output", attr);
    let cpus = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let last: u32 = cpus
        .trim()
        .rsplit(['-', ','])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for cpu in 0..=last {
        session.open(spec, -1, cpu).expect("bpf-output event");
    }
    session.enable().expect("enable");
    session
}

/// Start the child, attach, let it run its iterations while draining as psample does,
/// then read the spilled records.
fn run(stack_entries: u32) -> Run {
    let exe = build_child();
    let child = Command::new(&exe)
        .arg(ITERATIONS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("child says ready");
    assert_eq!(line, "ready\n");

    let mut session = spill_session();
    let bpf = OffcpuBpf::load(&options(stack_entries)).unwrap_or_else(|e| panic!("load: {e}"));
    bpf.add_target(pid).expect("add target");
    for (cpu, fd) in session.fds_of(0).enumerate() {
        bpf.set_spill_event(cpu as u32, fd.as_raw_fd())
            .expect("spill event");
    }
    let _switch = attach("sched_switch", bpf.switch_prog());
    let _waking = attach("sched_waking", bpf.waking_prog().unwrap());
    let _fork = attach("sched_process_fork", bpf.fork_prog().unwrap());
    bpf.arm(true).expect("arm");
    child.0.stdin.as_mut().unwrap().write_all(b"g").expect("go");
    let fmt = session.sample_format().unwrap();
    let mut r = Run {
        bpf,
        counts: Vec::new(),
        stacks: HashMap::new(),
        intervals: Vec::new(),
        lost: 0,
        pid,
    };
    // Drain while it runs, as psample does, so epochs turn over under open intervals.
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        r.counts.extend(r.bpf.drain().expect("drain"));
        session.drain(|_, bytes| {
            if let Ok(Record::Sample(s)) = parse_record(bytes, &fmt) {
                match s.raw.and_then(Spilled::decode) {
                    Some(Spilled::Stacks {
                        seq, user, kernel, ..
                    }) => {
                        r.stacks.insert(seq, (user, kernel));
                    }
                    Some(i @ Spilled::Interval { .. }) => r.intervals.push(i),
                    None => panic!("undecodable spill record"),
                }
            }
            if let Ok(Record::Lost(l)) = parse_record(bytes, &fmt) {
                r.lost += l.lost;
            }
        });
        if child.0.try_wait().expect("wait").is_some() {
            break;
        }
    }
    r.counts.extend(r.bpf.drain().expect("final drain"));
    r
}

impl Run {
    /// Blocked ns and intervals of `name`'s threads, counted or spilled, and how many of
    /// its intervals `waker` woke (with a waker kernel stack).
    fn totals(&self, name: &str, waker: &str) -> (u64, u64, u64) {
        let (mut ns, mut n, mut woken) = (0, 0, 0);
        for c in self.counts.iter().filter(|c| comm(&c.key.comm) == name) {
            assert!(
                c.key.tgid != 0 && !c.kernel.is_empty(),
                "a count without a kernel stack: {c:?}"
            );
            ns += c.blocked_ns;
            n += c.intervals;
            if comm(&c.key.waker_comm) == waker && !c.waker_kernel.is_empty() {
                woken += c.intervals;
            }
        }
        for i in &self.intervals {
            let Spilled::Interval {
                key,
                blocked_ns,
                blocked_seq,
                waker_seq,
                flags,
            } = i
            else {
                continue;
            };
            if comm(&key.comm) != name {
                continue;
            }
            if flags & 1 != 0 {
                let (_, kernel) = self
                    .stacks
                    .get(blocked_seq)
                    .expect("spilled interval without its stacks");
                assert!(!kernel.is_empty(), "spilled kernel stack is empty");
            }
            if flags & 2 != 0 {
                assert!(
                    self.stacks.contains_key(waker_seq),
                    "spilled waker without its stacks"
                );
            }
            ns += blocked_ns;
            n += 1;
            if comm(&key.waker_comm) == waker {
                woken += 1;
            }
        }
        (ns, n, woken)
    }
}

#[test]
fn blocked_time_wakers_and_children_are_counted_in_the_kernel() {
    test_support::require!(test_support::Need::Root);
    let r = run(4096);
    let counters = r.bpf.counters().expect("counters");
    eprintln!(
        "{counters:?}, unresolved {}, {} spilled intervals",
        r.bpf.unresolved,
        r.intervals.len()
    );
    let (blocked, intervals, woken) = r.totals("psblocked", "pswaker");
    // Each iteration sleeps 4 ms and waits ≥ 2 ms for the waker: load only adds to that.
    assert!(
        blocked >= ITERATIONS * 6_000_000,
        "{blocked} ns blocked in {intervals} intervals"
    );
    // Switch-ins that fire no sched_switch (this VM has them) are dated by the thread's
    // CPU time: no interval is dropped.
    assert_eq!(counters.unpaired, 0, "{counters:?}");
    // 5.12+ says how often it skipped the programs (BPF already active on the CPU).
    if perfring::bpf::sys::kernel_version_code() >= (5 << 16) | (12 << 8) {
        let skipped = r.bpf.skipped_runs();
        eprintln!("program runs skipped: {skipped:?}");
        assert!(skipped.is_some());
    }
    assert!(intervals >= 2 * ITERATIONS, "{intervals} intervals");
    // The pipe waits were woken by pswaker (sched_waking runs in the waker's context),
    // unless pswaker's wakeup ran where tracepoints do not fire.
    assert!(
        woken + counters.ended_by_runtime >= ITERATIONS - 1,
        "{woken} wakeups by pswaker"
    );
    // The forked waker was followed: its own reads and naps are there too.
    let (waker_blocked, _, _) = r.totals("pswaker", "psblocked");
    assert!(
        waker_blocked >= ITERATIONS * 2_000_000,
        "waker blocked {waker_blocked}"
    );
    assert!(
        r.counts
            .iter()
            .any(|c| c.key.tgid == r.pid && !c.user.is_empty()),
        "no user stacks"
    );
    assert_eq!((counters.spill_failed, r.lost), (0, 0), "{counters:?}");
    assert_eq!(r.bpf.unresolved, 0);
}

/// One-entry stack maps: nearly every stack collides, so nearly every interval goes to the
/// ring with its stacks; counted and spilled together still cover all the blocked time, and
/// every spilled interval finds its stacks.
#[test]
fn stacks_that_do_not_fit_go_to_the_ring() {
    test_support::require!(test_support::Need::Root);
    let r = run(1);
    let counters = r.bpf.counters().expect("counters");
    let (blocked, intervals, woken) = r.totals("psblocked", "pswaker");
    eprintln!(
        "{counters:?}: {} spilled intervals, {blocked} ns in {intervals}",
        r.intervals.len()
    );
    assert!(
        counters.spilled_intervals > 0,
        "nothing spilled with 1-entry stack maps"
    );
    assert!(blocked >= ITERATIONS * 6_000_000);
    assert!(
        woken + counters.ended_by_runtime >= ITERATIONS - 1,
        "{woken} wakeups by pswaker"
    );
    assert_eq!((counters.spill_failed, r.lost), (0, 0), "{counters:?}");
    assert_eq!(r.bpf.unresolved, 0);
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A thread's CPU time in ns (`se.sum_exec_runtime`, the first field of schedstat). While
/// the thread runs, the stored value lags its true CPU time by what it ran since its last
/// scheduler update (at most a tick): nothing outside its own process reads it closer.
fn cpu_time_ns(tid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{tid}/schedstat")).expect("schedstat");
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Keep `pid` (0: this thread) on `cpu`; the old mask comes back on drop.
fn pin(pid: u32, cpu: usize) -> impl Drop {
    struct Restore(libc::pid_t, libc::cpu_set_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a valid cpu_set_t of the right size.
            unsafe {
                libc::sched_setaffinity(self.0, std::mem::size_of::<libc::cpu_set_t>(), &self.1)
            };
        }
    }
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain bytes; the calls read or write one of the given size.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(pid as i32, size, &mut old);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(pid as i32, size, &set),
            0,
            "pin to CPU {cpu}"
        );
        Restore(pid as i32, old)
    }
}

/// What a switch-in that fires no `sched_switch` leaves behind: an interval still open
/// when its thread, running since, switches out. Forced here by writing such an entry for
/// the running child, as if it had blocked 50 ms before (over the child's own entry, if its
/// last switch-in was one of those): with BTF the program dates the switch-in by the CPU
/// time the thread gained since (about when the entry was written); with only a wakeup
/// time, it closes the interval there; with neither it drops it.
///
/// The child spins 20 ms, then sleeps 1 ms, on CPU 1 while this thread keeps to CPU 0 (so
/// the child is not waiting for this thread's CPU when the entry is written). An entry
/// written while it sleeps or waits for a CPU is closed by its ordinary switch-in instead:
/// `accept` says which outcome the caller is after (the count of the entry, or `None` when
/// it was dropped), and other attempts are retried.
fn missed_switch_in(
    runtime_off: Option<i32>,
    woken_ago: Option<u64>,
    accept: impl Fn(Option<&BlockedCount>) -> bool,
) -> Option<BlockedCount> {
    let child = Command::new(build_child())
        .args(["0", "spin"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("child says ready");
    let _pinned = (pin(0, 0), pin(pid, 1));
    let mut opts = options(1024);
    opts.runtime_off = runtime_off;
    let mut bpf = OffcpuBpf::load(&opts).unwrap_or_else(|e| panic!("load: {e}"));
    bpf.add_target(pid).expect("add target");
    let _switch = attach("sched_switch", bpf.switch_prog());
    bpf.arm(true).expect("arm");
    for attempt in 0..50 {
        let mut key = RawKey::decode(&[0u8; 72]).unwrap();
        (key.tgid, key.tid) = (pid, pid);
        (key.ustack, key.kstack) = (layout::AT_START, 1000 + attempt);
        key.waker_ustack = layout::NO_WAKER;
        let now = monotonic_ns();
        let entry = RawEntry {
            key,
            ts: now - 50_000_000,
            flags: 0,
            blocked_seq: 0,
            waker_seq: 0,
            woken: woken_ago.map_or(0, |ago| now - ago),
            runtime: cpu_time_ns(pid),
        };
        bpf.replace_open_interval(&entry).expect("write entry");
        // Its next switch-out (the end of a 20 ms spin at the latest) finds the entry.
        let ours = |e: &RawEntry| e.key.kstack == 1000 + attempt;
        let mut gone = false;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            gone = !bpf.open_intervals().expect("open").iter().any(ours);
            if gone {
                break;
            }
        }
        assert!(gone, "the child never switched out");
        let count = bpf
            .drain()
            .expect("drain")
            .into_iter()
            .find(|c| c.key.kstack == 1000 + attempt);
        eprintln!(
            "attempt {attempt}: {:?}",
            count.as_ref().map(|c| c.blocked_ns)
        );
        if accept(count.as_ref()) {
            return count;
        }
    }
    panic!("in 50 attempts no written entry met a switch-out of the running child");
}

#[test]
fn a_switch_in_without_sched_switch_is_dated_by_cpu_time() {
    test_support::require!(test_support::Need::Root);
    let Some(off) = perfring::bpf::offcpu::runtime_offset() else {
        eprintln!("no BTF here: the CPU-time dating is not available");
        return;
    };
    // Without a wakeup time the entry is counted only if its switch-in is dated (or it met
    // an ordinary switch-in, which gives the same range): never dropped.
    let count = missed_switch_in(Some(off), None, |_| true).expect("counted, not dropped");
    // Blocked from the fake switch-out to about the write: 50 ms, plus whatever the thread
    // waited for a CPU after it (its CPU time did not grow then), well under 1 s; less the
    // lag of the CPU time written with the entry (a tick at most: 10 ms at HZ=100).
    let ns = count.blocked_ns;
    assert!((40_000_000..1_050_000_000).contains(&ns), "{ns} ns");
}

#[test]
fn without_cpu_time_a_missed_switch_in_ends_at_the_wakeup_or_is_dropped() {
    test_support::require!(test_support::Need::Root);
    // Closed at the wakeup: 20 ms from the fake switch-out to the fake wakeup (an ordinary
    // switch-in would give at least 50 ms).
    let at_wakeup = |c: Option<&BlockedCount>| c.is_some_and(|c| c.blocked_ns < 50_000_000);
    let count = missed_switch_in(None, Some(30_000_000), at_wakeup).unwrap();
    assert_eq!(count.blocked_ns, 20_000_000);
    // Neither: dropped.
    assert!(missed_switch_in(None, None, |c| c.is_none()).is_none());
}
