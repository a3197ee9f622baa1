//! End-to-end: the in-kernel stack counter attached to real cpu-clock events on a busy C
//! child built with frame pointers. Needs root (BPF + perf_event); fails loudly without.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use perf_event_open_sys as sys;
use perfring::bpf::{StackCount, StackCounter, StackCounterOptions};

const FREQ: u64 = 999;

// psample_leaf burns CPU in user space; psample_read spends its time in the kernel
// (clearing pages for /dev/zero reads) so some samples carry kernel stacks.
const CHILD_SRC: &str = r#"
#include <fcntl.h>
#include <unistd.h>
volatile unsigned long sink;
static char buf[1 << 20];
static int zero_fd;
__attribute__((noinline)) void psample_leaf(void) {
    for (unsigned long i = 0; i < 200000; i++) sink += i;
}
__attribute__((noinline)) void psample_read(void) {
    if (read(zero_fd, buf, sizeof buf) < 0) sink = 0;
}
__attribute__((noinline)) void psample_caller(void) {
    for (int i = 0; i < 4; i++) psample_leaf();
    psample_read();
}
int main(void) {
    zero_fd = open("/dev/zero", O_RDONLY);
    /* The dynamic loader is done: the maps are final. */
    if (write(1, "ready\n", 6) != 6) return 1;
    for (;;) psample_caller();
}
"#;

fn build_child() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bpf_stack_counter");
    fs::create_dir_all(&dir).expect("create tmp dir");
    let src = dir.join("busy.c");
    let exe = dir.join(format!("busy-{}", std::process::id()));
    fs::write(&src, CHILD_SRC).expect("write C source");
    let status = Command::new("gcc")
        .args(["-O0", "-fno-omit-frame-pointer", "-g", "-o"])
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

fn perf_open(attr: &mut sys::bindings::perf_event_attr, pid: i32, cpu: i32) -> OwnedFd {
    // SAFETY: attr is a fully initialised perf_event_attr with size set.
    let fd = unsafe {
        sys::perf_event_open(attr, pid, cpu, -1, sys::bindings::PERF_FLAG_FD_CLOEXEC as _)
    };
    assert!(
        fd >= 0,
        "perf_event_open(pid {pid}, cpu {cpu}) failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fd from the kernel.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn base_attr(config: u32) -> sys::bindings::perf_event_attr {
    let mut attr = sys::bindings::perf_event_attr {
        type_: sys::bindings::PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
        config: u64::from(config),
        ..Default::default()
    };
    attr.set_disabled(1);
    attr
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

fn ioctl_all(fds: &[OwnedFd], enable: bool) {
    for fd in fds {
        // SAFETY: plain perf ioctls on live fds.
        let rc = unsafe {
            if enable {
                sys::ioctls::ENABLE(fd.as_raw_fd(), 0)
            } else {
                sys::ioctls::DISABLE(fd.as_raw_fd(), 0)
            }
        };
        assert!(rc >= 0, "perf ioctl: {}", std::io::Error::last_os_error());
    }
}

/// Resolves addresses of one process's main executable to its function symbols, the way a
/// symbolizer would: /proc/PID/maps gives the file offset, ELF segments the link address.
struct ExeSymbols {
    maps: Vec<(u64, u64, u64)>,     // start, end, file offset
    segments: Vec<(u64, u64, u64)>, // file offset, file size, vaddr
    funcs: Vec<(u64, u64, String)>, // vaddr, size, name
}

impl ExeSymbols {
    fn load(pid: u32, exe: &Path) -> ExeSymbols {
        let exe_str = exe.to_str().unwrap();
        let maps_text = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
        let mut maps = Vec::new();
        for line in maps_text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 6 && cols[5] == exe_str {
                let (s, e) = cols[0].split_once('-').unwrap();
                maps.push((
                    u64::from_str_radix(s, 16).unwrap(),
                    u64::from_str_radix(e, 16).unwrap(),
                    u64::from_str_radix(cols[2], 16).unwrap(),
                ));
            }
        }
        assert!(!maps.is_empty(), "no mapping of {exe_str} in pid {pid}");
        let data = fs::read(exe).expect("read exe");
        let file = object::File::parse(&*data).expect("parse ELF");
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect();
        let funcs = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .collect();
        ExeSymbols {
            maps,
            segments,
            funcs,
        }
    }

    fn resolve(&self, addr: u64) -> Option<&str> {
        let &(start, _, off) = self.maps.iter().find(|m| m.0 <= addr && addr < m.1)?;
        let file_off = addr - start + off;
        let &(seg_off, _, seg_vaddr) = self
            .segments
            .iter()
            .find(|s| s.0 <= file_off && file_off < s.0 + s.1)?;
        let vaddr = file_off - seg_off + seg_vaddr;
        self.funcs
            .iter()
            .find(|f| f.0 <= vaddr && vaddr < f.0 + f.1)
            .map(|f| f.2.as_str())
    }

    /// Function names of a leaf-first user stack; callers' entries are return addresses,
    /// so look up the byte before them.
    fn frames(&self, stack: &[u64]) -> Vec<String> {
        stack
            .iter()
            .enumerate()
            .map(|(i, &ip)| {
                let probe = if i == 0 { ip } else { ip.saturating_sub(1) };
                self.resolve(probe).unwrap_or("?").to_string()
            })
            .collect()
    }
}

/// The child's CPU time in ns, read from a counting task-clock event.
fn read_counter(fd: &OwnedFd) -> u64 {
    let mut buf = [0u8; 8];
    let n = nix::unistd::read(fd.as_fd(), &mut buf).expect("read task-clock");
    assert_eq!(n, 8);
    u64::from_ne_bytes(buf)
}

#[test]
fn counts_frame_pointer_stacks_of_a_busy_child() {
    test_support::require!(test_support::Need::Root);
    let exe = build_child();
    let mut child = KillOnDrop(
        Command::new(&exe)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn child"),
    );
    let pid = child.0.id();
    // Wait for the dynamic loader to finish, so the maps are final.
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().expect("stdout")),
        &mut ready,
    )
    .expect("child ready line");
    assert_eq!(ready, "ready\n");

    let mut counter = StackCounter::load(&StackCounterOptions::default())
        .unwrap_or_else(|e| panic!("loading the BPF stack counter failed: {e}"));

    let mut sampling = Vec::new();
    for cpu in online_cpus() {
        let mut attr = base_attr(sys::bindings::PERF_COUNT_SW_CPU_CLOCK);
        attr.set_freq(1);
        attr.__bindgen_anon_1.sample_freq = FREQ;
        attr.sample_type =
            u64::from(sys::bindings::PERF_SAMPLE_IP | sys::bindings::PERF_SAMPLE_TID);
        let fd = perf_open(&mut attr, pid as i32, cpu);
        counter
            .attach(fd.as_fd())
            .unwrap_or_else(|e| panic!("attach to cpu {cpu} failed: {e}"));
        sampling.push(fd);
    }
    let mut clock_attr = base_attr(sys::bindings::PERF_COUNT_SW_TASK_CLOCK);
    let clock = perf_open(&mut clock_attr, pid as i32, -1);

    ioctl_all(std::slice::from_ref(&clock), true);
    ioctl_all(&sampling, true);
    // A drain while the events run, as long recordings do periodically: its counts and the
    // final drain's must add up to the whole run. Both halves last half a second of the
    // child's CPU time (as the task-clock counts it), not of wall time, so a loaded machine
    // changes how long this takes but not what is counted.
    let wait_cpu = |ns: u64| {
        let start = std::time::Instant::now();
        while read_counter(&clock) < ns {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "the child does not run"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_cpu(500_000_000);
    let mut counts: Vec<StackCount> = counter.drain().expect("periodic drain");
    wait_cpu(1_000_000_000);
    ioctl_all(&sampling, false);
    ioctl_all(std::slice::from_ref(&clock), false);
    let cpu_ns = read_counter(&clock);

    let symbols = ExeSymbols::load(pid, &exe);
    let first_half: u64 = counts.iter().map(|c| c.count).sum();
    counts.extend(counter.drain().expect("final drain"));
    assert!(first_half > 0, "the periodic drain found nothing");
    let missing = counter.missing();
    let total: u64 = counts.iter().map(|c| c.count).sum();
    eprintln!(
        "child cpu {:.3}s, {} keys, {} samples, missing {:?}",
        cpu_ns as f64 / 1e9,
        counts.len(),
        total,
        missing
    );

    // cpu-clock fires once per 1/FREQ s of the child's CPU time, so scale by what it got
    // (other builds may share these two cores).
    // Samples whose stack collided in the stack map (a hash table: two stacks in one bucket,
    // ~2 % of runs here with ~25 distinct kernel stacks) are spilled to the ring, which the
    // production path reads; this test has no ring, so it counts them as seen.
    let spilled = missing.spilled_samples();
    let expected = FREQ as f64 * cpu_ns as f64 / 1e9;
    let ratio = (total + spilled) as f64 / expected;
    assert!(
        (0.7..=1.3).contains(&ratio),
        "{total} samples + {spilled} spilled, expected ≈{expected:.0} (ratio {ratio:.2})"
    );
    assert!(
        counts.iter().all(|c| c.pid == pid && c.tid == pid),
        "foreign pid/tid in {counts:?}"
    );
    // Every spill has a cause the program counted (a stack it could not record, a full
    // count map, a drain racing the insert).
    let causes = missing.user.not_recorded()
        + missing.kernel.not_recorded()
        + missing.count_map_full
        + missing.insert_race;
    assert!(spilled <= causes, "unexplained spills: {missing:?}");
    assert_eq!(missing.lost_stacks(), 0, "{missing:?}");

    let mut in_leaf = 0u64;
    let mut leaf_under_caller = 0u64;
    let mut in_read = 0u64;
    let mut with_kernel = 0u64;
    for c in &counts {
        let frames = symbols.frames(&c.user_stack);
        if let Some(pos) = frames.iter().position(|f| f == "psample_leaf") {
            in_leaf += c.count;
            if frames.get(pos + 1).map(String::as_str) == Some("psample_caller")
                && frames.get(pos + 2).map(String::as_str) == Some("main")
            {
                leaf_under_caller += c.count;
            }
        }
        // libc's read() has no frame of its own, so a frame-pointer walk from inside the
        // syscall skips psample_read and lands in psample_caller; that is what perf shows too.
        if !c.kernel_stack.is_empty() && frames.iter().any(|f| f == "psample_caller") {
            in_read += c.count;
        }
        if !c.kernel_stack.is_empty() {
            with_kernel += c.count;
            assert!(
                c.kernel_stack.iter().all(|&ip| ip >= 0xffff_8000_0000_0000),
                "kernel stack with user addresses: {:x?}",
                c.kernel_stack
            );
        }
    }
    eprintln!("leaf {in_leaf} (under caller/main {leaf_under_caller}), read {in_read}, kernel {with_kernel}");
    assert!(
        in_leaf as f64 > 0.5 * total as f64,
        "only {in_leaf}/{total} samples resolved to psample_leaf"
    );
    assert!(
        leaf_under_caller as f64 > 0.9 * in_leaf as f64,
        "only {leaf_under_caller}/{in_leaf} psample_leaf samples have caller+main frames"
    );
    assert!(
        in_read > 0,
        "no in-kernel sample has a user stack through psample_caller"
    );
    assert!(with_kernel > 0, "no sample carried a kernel stack");

    // Everything was consumed: a second drain right away finds nothing new.
    let again = counter.drain().expect("second drain");
    assert!(again.iter().map(|c| c.count).sum::<u64>() == 0, "{again:?}");
}
