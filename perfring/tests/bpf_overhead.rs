//! Benchmark (ignored by default): CPU cost of in-kernel aggregation versus ring-buffer
//! sampling with frame-pointer callchains, at 99 and 999 Hz on 1 and 2 busy threads.
//!
//!     cargo test -p perfring --release --test bpf_overhead -- --ignored --nocapture
//!
//! Cost = the workload's extra CPU time for a fixed amount of work (kernel-side sampling
//! cost lands there: the timer interrupt, the callchain walk, the BPF program or the ring
//! write) plus the profiler's own CPU (ring reader thread, or the BPF drain). The ring
//! reader only advances the tail — parsing and unwinding in psample cost more on top — so
//! this is a lower bound for ring mode.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use perf_event_open_sys as sys;
use perfring::bpf::{StackCounter, StackCounterOptions};

const CHILD_SRC: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static unsigned long iters;
__attribute__((noinline)) unsigned long bench_leaf(unsigned long x) {
    for (int i = 0; i < 1000; i++) x = x * 6364136223846793005UL + 1;
    return x;
}
__attribute__((noinline)) void *bench_worker(void *arg) {
    volatile unsigned long sink = 0;
    for (unsigned long i = 0; i < iters; i++) sink += bench_leaf(i);
    return arg;
}
int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    iters = strtoul(argv[2], 0, 10);
    char go;
    if (read(0, &go, 1) != 1) return 1;
    pthread_t t[16];
    for (int i = 0; i < threads && i < 16; i++) pthread_create(&t[i], 0, bench_worker, 0);
    for (int i = 0; i < threads && i < 16; i++) pthread_join(t[i], 0);
    return 0;
}
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Off,
    Bpf,
    Ring,
}

fn build_child() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bpf_overhead");
    fs::create_dir_all(&dir).expect("tmp dir");
    let src = dir.join("bench.c");
    let exe = dir.join(format!("bench-{}", std::process::id()));
    fs::write(&src, CHILD_SRC).expect("write source");
    let ok = Command::new("gcc")
        .args(["-O1", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc")
        .success();
    assert!(ok, "gcc failed");
    exe
}

fn online_cpus() -> Vec<i32> {
    let text = fs::read_to_string("/sys/devices/system/cpu/online").expect("cpu list");
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<i32>().unwrap()..=b.parse::<i32>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Ring {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only touched through atomics on the header's head/tail words.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: &OwnedFd, data_pages: usize) -> Ring {
        let page = 4096usize;
        let len = page * (1 + data_pages);
        // SAFETY: mapping a perf fd's ring as the kernel requires (shared, read-write).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            base,
            libc::MAP_FAILED,
            "mmap ring: {}",
            std::io::Error::last_os_error()
        );
        Ring {
            base: base.cast(),
            len,
        }
    }

    /// Consume everything written so far; returns bytes consumed.
    fn consume(&self) -> u64 {
        // SAFETY: data_head (1024) and data_tail (1032) are 8-byte aligned u64s in the
        // header page, shared with the kernel.
        let (head, tail) = unsafe {
            (
                &*(self.base.add(1024) as *const AtomicU64),
                &*(self.base.add(1032) as *const AtomicU64),
            )
        };
        let h = head.load(Ordering::Acquire);
        let t = tail.load(Ordering::Relaxed);
        tail.store(h, Ordering::Release);
        h.wrapping_sub(t)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what was mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

struct Outcome {
    workload_cpu_s: f64,
    profiler_cpu_s: f64,
    samples: u64,
}

// The child is reaped with wait4, which std's Child does not know about, to get its rusage.
#[allow(clippy::zombie_processes)]
fn run(exe: &Path, mode: Mode, freq: u64, threads: u32, iters: u64) -> Outcome {
    let mut child = Command::new(exe)
        .arg(threads.to_string())
        .arg(iters.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;

    let mut counter = (mode == Mode::Bpf).then(|| {
        StackCounter::load(&StackCounterOptions::default()).expect("load BPF stack counter")
    });
    let mut fds = Vec::new();
    let mut rings = Vec::new();
    let cpus = if mode == Mode::Off {
        Vec::new()
    } else {
        online_cpus()
    };
    for cpu in cpus {
        let mut attr = sys::bindings::perf_event_attr {
            type_: sys::bindings::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
            config: u64::from(sys::bindings::PERF_COUNT_SW_CPU_CLOCK),
            sample_type: u64::from(
                sys::bindings::PERF_SAMPLE_IP
                    | sys::bindings::PERF_SAMPLE_TID
                    | sys::bindings::PERF_SAMPLE_TIME
                    | sys::bindings::PERF_SAMPLE_CALLCHAIN,
            ),
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_freq = freq;
        attr.set_freq(1);
        attr.set_inherit(1);
        // SAFETY: a fully initialised attr.
        let fd = unsafe {
            sys::perf_event_open(
                &mut attr,
                pid,
                cpu,
                -1,
                sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
            )
        };
        assert!(
            fd >= 0,
            "perf_event_open: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match mode {
            Mode::Bpf => counter
                .as_ref()
                .expect("loaded")
                .attach(fd.as_fd())
                .expect("attach"),
            Mode::Ring | Mode::Off => rings.push(Ring::map(&fd, 64)),
        }
        fds.push(fd);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reader = (mode == Mode::Ring).then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let start = thread_cpu_ns();
            let mut bytes = 0u64;
            loop {
                let done = stop.load(Ordering::Acquire);
                bytes += rings.iter().map(Ring::consume).sum::<u64>();
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (thread_cpu_ns() - start, bytes)
        })
    });

    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"g")
        .expect("start child");
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let workload_cpu_s = tv(usage.ru_utime) + tv(usage.ru_stime);

    stop.store(true, Ordering::Release);
    let (profiler_cpu_s, samples) = match mode {
        Mode::Off => (0.0, 0),
        Mode::Ring => {
            let (ns, bytes) = reader.expect("reader").join().expect("reader thread");
            (ns as f64 / 1e9, bytes)
        }
        Mode::Bpf => {
            let start = thread_cpu_ns();
            let counts = counter.as_mut().expect("loaded").drain().expect("drain");
            let n = counts.iter().map(|c| c.count).sum();
            ((thread_cpu_ns() - start) as f64 / 1e9, n)
        }
    };
    Outcome {
        workload_cpu_s,
        profiler_cpu_s,
        samples,
    }
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn bpf_versus_ring_cpu_cost() {
    test_support::require!(test_support::Need::Root);
    let exe = build_child();
    let iters: u64 = std::env::var("PSAMPLE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600_000);
    let reps: usize = std::env::var("PSAMPLE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Other work on the machine only ever adds CPU time, so the fastest of a few runs is
    // the least noisy estimate of each configuration's own cost.
    let best = |mode: Mode, freq: u64, threads: u32| -> Outcome {
        (0..reps.max(1))
            .map(|_| run(&exe, mode, freq, threads, iters))
            .min_by(|a, b| a.workload_cpu_s.total_cmp(&b.workload_cpu_s))
            .expect("at least one run")
    };
    println!("best of {reps}; ring mode only advances the tail (no parsing), a lower bound");
    println!("threads   Hz  mode  workload-cpu-s  overhead-vs-off  profiler-cpu-ms  samples(ring: bytes)");
    for threads in [1u32, 2] {
        let base = best(Mode::Off, 99, threads).workload_cpu_s;
        println!("{threads:>7} {:>4} {:>5} {base:>15.3}", "-", "off");
        for freq in [99u64, 999] {
            for mode in [Mode::Ring, Mode::Bpf] {
                let o = best(mode, freq, threads);
                println!(
                    "{threads:>7} {freq:>4} {:>5} {:>15.3} {:>15.2}% {:>16.2} {:>8}",
                    format!("{mode:?}").to_lowercase(),
                    o.workload_cpu_s,
                    (o.workload_cpu_s / base - 1.0) * 100.0,
                    o.profiler_cpu_s * 1e3,
                    o.samples
                );
                if mode == Mode::Bpf {
                    let expected = o.workload_cpu_s * freq as f64;
                    assert!(
                        (o.samples as f64) > 0.7 * expected,
                        "BPF counted {} samples for {expected:.0} expected",
                        o.samples
                    );
                }
            }
        }
    }
}
