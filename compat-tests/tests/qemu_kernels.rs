//! psample on real Debian kernels (5.10, 6.1, 6.12) booted under QEMU's TCG emulator.
//!
//! Opt-in: runs only with `PSAMPLE_QEMU=1` (CI sets it; `.ci/setup-qemu` installs what it
//! needs). Each kernel boots a tiny initramfs (static busybox, the static musl psample, two C
//! workloads) whose /init runs a guest script and frames every step's output with markers on
//! the serial console; this test parses that console log and checks the folded profiles.
//!
//! Environment:
//! - `PSAMPLE_QEMU=1`: run (otherwise the test reports that it was skipped, and passes).
//! - `PSAMPLE_QEMU_KERNELS`: series to boot, space separated (default `5.10 6.1 6.12`).
//! - `PSAMPLE_QEMU_GUEST=smoke`: boot with `qemu/guest/smoke.sh` instead, which needs no
//!   psample (proves kernels, console and workloads on their own).
//! - `PSAMPLE_QEMU_BIN`: a prebuilt static psample, relative to the workspace root or
//!   absolute (default: build it with
//!   `cargo build --release --target x86_64-unknown-linux-musl -p psample`).
//! - `PSAMPLE_QEMU_CACHE`, `PSAMPLE_QEMU_OFFLINE`: see `qemu/fetch-kernels.sh`.
//!
//! Console logs are kept in `<cache>/run/console-<series>.log` for post-mortems.
//!
//! A hang is reported, not waited out: /init kills a step still running after its limit
//! (`STEP_LIMIT`) and prints what every task was doing (state, wait channel, system call,
//! kernel stack), and the guest kernel's errors reach the console (RCU stalls, soft lockups:
//! under TCG on a loaded host a vCPU has been seen losing its timer interrupt). The host's
//! [`BOOT_TIMEOUT`] only bounds a guest that stopped altogether.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12"];
/// Per-VM limit. Three guests boot and run concurrently on two host cores in ~30-60 s (up to
/// ~5x that on a host loaded by other builds). A hung step is killed inside the guest after
/// 60 s, so this only bounds a guest that stopped altogether (its kernel stalled).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const RECORD_HZ: u64 = 499;
const RECORD_SECONDS: u64 = 2;

// ---------------------------------------------------------------------------------------
// Console protocol (see qemu/init)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct GuestRun {
    /// `uname -r` as printed by /init; None if the guest never reached userspace.
    release: Option<String>,
    /// The script ran to its end (a panic or timeout leaves this false).
    done: bool,
    steps: BTreeMap<String, Step>,
    /// Kernel lines saying the guest itself is stuck (RCU stalls, lockups, hung tasks).
    kernel_stalls: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct Step {
    output: String,
    /// None when the step began but its end marker never came (guest died inside it).
    rc: Option<i32>,
    /// /init's watchdog killed it after its time limit (the output ends with what its tasks
    /// were doing).
    hung: bool,
}

/// The text after `tag` inside a `@@...@@` marker on this line, if any. Markers can follow
/// terminal reset sequences that the firmware leaves on the first line, so they are searched
/// for anywhere in the line rather than at its start.
fn marker<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let start = line.find(&format!("@@{tag}"))? + 2 + tag.len();
    let rest = &line[start..];
    let end = rest.find("@@")?;
    Some(rest[..end].trim())
}

/// What the guest kernel prints when it, rather than a program, is stuck.
const KERNEL_STALLS: &[&str] = &[
    "detected stalls on CPUs",
    "self-detected stall on CPU",
    "timer wakeup didn't happen",
    "BUG: soft lockup",
    "blocked for more than",
];

fn parse_console(log: &str) -> GuestRun {
    let mut run = GuestRun::default();
    let mut current: Option<(String, Vec<&str>)> = None;
    let mut hung: Option<String> = None;
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        if KERNEL_STALLS.iter().any(|k| line.contains(k)) {
            run.kernel_stalls.push(line.trim().to_string());
        }
        if let Some(what) = marker(line, "PSQ-HUNG") {
            hung = what.split_whitespace().next().map(str::to_string);
            if let Some((_, lines)) = current.as_mut() {
                lines.push(line);
            }
        } else if let Some(release) = marker(line, "PSQ-BOOT") {
            run.release = Some(release.to_string());
        } else if marker(line, "PSQ-DONE").is_some() {
            run.done = true;
        } else if let Some(name) = marker(line, "PSQ-BEGIN") {
            current = Some((name.to_string(), Vec::new()));
        } else if let Some(end) = marker(line, "PSQ-END") {
            let (name, rc) = match end.rsplit_once(" rc=") {
                Some((name, rc)) => (name.trim(), rc.trim().parse().ok()),
                None => (end, None),
            };
            if let Some((begun, lines)) = current.take() {
                if begun == name {
                    // /init adds an empty line so the end marker always starts a line.
                    let output = lines.join("\n").trim_end().to_string();
                    let hung = hung.take().is_some_and(|h| h == begun);
                    run.steps.insert(begun, Step { output, rc, hung });
                }
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((name, lines)) = current {
        let step = Step {
            hung: hung.is_some_and(|h| h == name),
            output: lines.join("\n"),
            rc: None,
        };
        run.steps.insert(name, step);
    }
    run
}

// ---------------------------------------------------------------------------------------
// Folded stacks
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Folded {
    stacks: Vec<(Vec<String>, u64)>,
}

fn parse_folded(text: &str) -> Result<Folded, String> {
    let mut stacks = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (stack, count) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: no count: {line:?}", n + 1))?;
        let count: u64 = count
            .parse()
            .map_err(|_| format!("line {}: count is not an integer: {line:?}", n + 1))?;
        stacks.push((stack.split(';').map(str::to_string).collect(), count));
    }
    Ok(Folded { stacks })
}

/// Whether a folded frame names `function`, allowing a `module`` prefix and the palette
/// annotations (`_[k]`, `_[i]`, ...) or a trailing offset/suffix after a non-identifier
/// character.
fn frame_is(frame: &str, function: &str) -> bool {
    let base = frame.rsplit('`').next().unwrap_or(frame);
    let Some(rest) = base.strip_prefix(function) else {
        return false;
    };
    rest.is_empty()
        || ["_[k]", "_[i]", "_[j]", "_[w]"].contains(&rest)
        || rest
            .chars()
            .next()
            .is_some_and(|c| !(c.is_ascii_alphanumeric() || c == '_'))
}

impl Folded {
    fn total(&self) -> u64 {
        self.stacks.iter().map(|(_, c)| c).sum()
    }

    /// Total weight of stacks containing `function` anywhere.
    fn weight_of(&self, function: &str) -> u64 {
        self.stacks
            .iter()
            .filter(|(frames, _)| frames.iter().any(|f| frame_is(f, function)))
            .map(|(_, c)| c)
            .sum()
    }

    /// Weight of stacks containing both `caller` and, somewhere after it, `callee`.
    fn weight_of_path(&self, caller: &str, callee: &str) -> u64 {
        self.stacks
            .iter()
            .filter(|(frames, _)| {
                let Some(c) = frames.iter().position(|f| frame_is(f, caller)) else {
                    return false;
                };
                frames.iter().skip(c + 1).any(|f| frame_is(f, callee))
            })
            .map(|(_, c)| c)
            .sum()
    }

    fn stacks_with<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
        self.stacks
            .iter()
            .filter(move |(frames, _)| frames.iter().any(|f| frame_is(f, function)))
            .map(|(frames, _)| frames.as_slice())
    }
}

// ---------------------------------------------------------------------------------------
// Checks on one guest's output
// ---------------------------------------------------------------------------------------

/// Append a failure message to `errs` unless `ok`.
fn expect(errs: &mut Vec<String>, ok: bool, msg: impl FnOnce() -> String) {
    if !ok {
        errs.push(msg());
    }
}

fn step<'a>(run: &'a GuestRun, name: &str, errs: &mut Vec<String>) -> Option<&'a Step> {
    match run.steps.get(name) {
        None => {
            errs.push(format!("step {name:?} never ran"));
            None
        }
        Some(s) if s.hung => {
            errs.push(format!(
                "step {name:?} HUNG: /init killed it after its time limit; its output, then \
                 what every task was doing:\n{}",
                indent(&s.output)
            ));
            None
        }
        Some(s) if s.rc != Some(0) => {
            errs.push(format!(
                "step {name:?} failed (exit status {:?}); its output:\n{}",
                s.rc,
                indent(&s.output)
            ));
            None
        }
        Some(s) => Some(s),
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    | {l}\n")).collect()
}

fn check_boot(run: &GuestRun, series: &str, errs: &mut Vec<String>) {
    match &run.release {
        None => errs.push("the guest never reached /init".into()),
        Some(r) => expect(errs, r.starts_with(&format!("{series}.")), || {
            format!("guest runs kernel {r}, expected series {series}")
        }),
    }
    expect(errs, run.done, || {
        "the guest script did not run to its end (panic, hang or timeout; see the log)".into()
    });
    expect(errs, run.kernel_stalls.is_empty(), || {
        format!(
            "the guest kernel reported itself stuck (under TCG: the emulator starved by host \
             load, or a vCPU that lost its timer interrupt); first lines:\n{}",
            indent(
                &run.kernel_stalls
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        )
    });
}

fn check_smoke(run: &GuestRun, series: &str, errs: &mut Vec<String>) {
    check_boot(run, series, errs);
    if let Some(s) = step(run, "uname", errs) {
        expect(
            errs,
            s.output.trim().starts_with(&format!("{series}.")),
            || format!("uname -r printed {:?}", s.output),
        );
    }
    if let Some(s) = step(run, "paranoid", errs) {
        expect(errs, s.output.trim().parse::<i32>().is_ok(), || {
            format!("perf_event_paranoid is not a number: {:?}", s.output)
        });
    }
    // The off-CPU mode needs sched_switch from tracefs; its absence would be a harness
    // problem (mount) rather than a psample one, so the smoke run is where it is caught.
    step(run, "tracefs", errs);
    step(run, "workload", errs);
    step(run, "sleep_workload", errs);
}

fn check_psample(run: &GuestRun, series: &str, errs: &mut Vec<String>) {
    check_boot(run, series, errs);
    step(run, "check", errs);
    step(run, "record", errs);
    step(run, "offcpu", errs);
    if let Some(s) = step(run, "out.folded", errs) {
        match parse_folded(&s.output) {
            Err(e) => errs.push(format!("record output is not folded stacks: {e}")),
            Ok(f) => {
                let ran = step(run, "workload.run", errs).and_then(|s| workload_ran(&s.output));
                check_record(&f, ran, errs)
            }
        }
    }
    if let Some(s) = step(run, "off.folded", errs) {
        match parse_folded(&s.output) {
            Err(e) => errs.push(format!("offcpu output is not folded stacks: {e}")),
            Ok(f) => check_offcpu(&f, errs),
        }
    }
    step(run, "record_all", errs);
    if let Some(s) = step(run, "all.folded", errs) {
        match parse_folded(&s.output) {
            Err(e) => errs.push(format!("record -a output is not folded stacks: {e}")),
            Ok(f) => check_idle(&f, errs),
        }
    }
}

/// `record -a` in a guest that runs nothing else: most samples are the idle task, which
/// must be named `swapper` as perf names it (not `[pid_0]`).
fn check_idle(f: &Folded, errs: &mut Vec<String>) {
    let total = f.total();
    let idle: u64 = f
        .stacks
        .iter()
        .filter(|(frames, _)| frames.first().is_some_and(|c| c == "swapper"))
        .map(|(_, n)| n)
        .sum();
    expect(errs, idle * 2 >= total && idle > 0, || {
        format!("record -a: {idle} of {total} samples named swapper in an idle guest")
    });
    let unnamed = f
        .stacks
        .iter()
        .find(|(frames, _)| frames.first().is_some_and(|c| c.starts_with("[pid")));
    expect(errs, unnamed.is_none(), || {
        format!("record -a: a thread named by its pid: {unnamed:?}")
    });
}

/// Seconds the guest workload really executed in the record window, from the line it writes
/// at exit (see qemu/workload.c).
fn workload_ran(record_output: &str) -> Option<f64> {
    // The line may follow psample's progress line, erased but still in the log.
    let line = record_output
        .lines()
        .find_map(|l| Some(&l[l.find("psample-workload:")? + 17..]))?;
    line.split(',')
        .find_map(|kv| kv.trim().strip_prefix("ran "))?
        .trim_end_matches(" s")
        .parse()
        .ok()
}

/// `ran`: what [`workload_ran`] read from the workload's report.
fn check_record(f: &Folded, ran: Option<f64>, errs: &mut Vec<String>) {
    let total = f.total();
    let alpha = f.weight_of("psample_hot_alpha");
    let beta = f.weight_of("psample_hot_beta");
    let hot = alpha + beta;
    // One busy thread at RECORD_HZ for RECORD_SECONDS. Under TCG the guest clock keeps
    // running while the host deschedules the vCPU (three guests, a loaded host) and the
    // timer's expiries merge into one sample (52 of a nominal 998 under `stress-ng --cpu 2`),
    // so the floor is a share of the time the workload really executed, as it measured
    // itself; the ceiling catches double counting.
    let nominal = RECORD_HZ * RECORD_SECONDS;
    let Some(ran) = ran else {
        errs.push("record: the workload did not report how long it ran".into());
        return;
    };
    // Samples come at 1.1-2.1 × ran × RECORD_HZ, loaded or not (ran counts the fastest
    // round; the sampling interrupts themselves slow the others): 990 for 1.805 s and 735
    // for 0.714 s idle, 414 for 0.540 s and 758 for 1.110 s under `stress-ng --cpu 2`. A
    // third of ran × RECORD_HZ is a safe floor that still catches most samples going missing.
    let floor = (ran * RECORD_HZ as f64 / 3.0) as u64;
    expect(errs, (floor..=nominal * 3 / 2).contains(&total), || {
        format!(
            "record: {total} samples in total, expected about {:.0} (the workload ran \
             {ran:.3} s of the {RECORD_SECONDS} s window; at least {floor}, at most {})",
            ran * RECORD_HZ as f64,
            nominal * 3 / 2
        )
    });
    expect(errs, hot * 10 >= total * 6, || {
        format!(
            "record: only {hot} of {total} samples in psample_hot_alpha/beta \
             (alpha {alpha}, beta {beta})"
        )
    });
    // The workload gives alpha twice beta's work per round.
    expect(errs, alpha > beta && beta * 20 >= hot, || {
        format!("record: alpha {alpha} / beta {beta} samples, expected about 2:1")
    });
    // Frame-pointer callchains from the kernel must reach main on every kernel version.
    let rooted = f.weight_of_path("main", "psample_hot_alpha")
        + f.weight_of_path("main", "psample_hot_beta");
    expect(errs, rooted * 2 >= hot, || {
        format!("record: only {rooted} of {hot} hot samples unwind to main")
    });
    let bad_root = f
        .stacks_with("psample_hot_alpha")
        .find(|frames| !frames.first().is_some_and(|c| is_comm(c, "workload")));
    expect(errs, bad_root.is_none(), || {
        format!("record: stack not rooted at the workload's comm: {bad_root:?}")
    });
}

fn check_offcpu(f: &Folded, errs: &mut Vec<String>) {
    let nap = f.weight_of("psample_nap");
    let pipe = f.weight_of("psample_wait_pipe");
    let blocked = nap + pipe;
    // Microseconds, as bcc's offcputime: the parent blocks almost all of the 2 s window, the
    // child (if followed) as well. Off by 1000 either way would mean the wrong unit.
    expect(errs, (500_000..=6_000_000).contains(&blocked), || {
        format!(
            "offcpu: {blocked} us blocked in psample_nap/psample_wait_pipe (nap {nap}, pipe \
             {pipe}), expected 0.5-6 s of a 2 s run"
        )
    });
    expect(errs, nap * 20 >= blocked && pipe * 20 >= blocked, || {
        format!("offcpu: nap {nap} us / pipe wait {pipe} us: both should be substantial")
    });
    // Blocking happens in the kernel: an off-CPU stack without kernel frames has lost them.
    let with_kernel = f
        .stacks_with("psample_nap")
        .chain(f.stacks_with("psample_wait_pipe"))
        .any(|frames| frames.iter().any(|fr| fr.ends_with("_[k]")));
    expect(errs, with_kernel, || {
        "offcpu: no blocked stack carries kernel frames (_[k])".into()
    });
    let bad_root = f
        .stacks_with("psample_wait_pipe")
        .find(|frames| !frames.first().is_some_and(|c| is_comm(c, "sleep_workload")));
    expect(errs, bad_root.is_none(), || {
        format!("offcpu: stack not rooted at the workload's comm: {bad_root:?}")
    });
}

/// `comm`, `comm-PID` or `comm-PID/TID` (stackcollapse-perf's --pid/--tid forms).
fn is_comm(frame: &str, comm: &str) -> bool {
    frame == comm
        || frame.strip_prefix(comm).is_some_and(|rest| {
            rest.strip_prefix('-')
                .is_some_and(|ids| ids.chars().all(|c| c.is_ascii_digit() || c == '/'))
        })
}

// ---------------------------------------------------------------------------------------
// Host side: building, fetching, booting
// ---------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compat-tests lives inside the workspace")
        .to_path_buf()
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn require_tools() {
    let missing: Vec<&str> = ["qemu-system-x86_64", "gcc", "dpkg-deb", "apt-get", "strip"]
        .into_iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    assert!(
        missing.is_empty() && Path::new("/bin/busybox").exists(),
        "PSAMPLE_QEMU=1 but tools are missing: {missing:?}{}; run .ci/setup-qemu",
        if Path::new("/bin/busybox").exists() {
            ""
        } else {
            " and /bin/busybox (busybox-static)"
        }
    );
}

fn build_workloads(qemu_dir: &Path, out: &Path) -> Vec<PathBuf> {
    ["workload", "sleep_workload"]
        .iter()
        .map(|name| {
            let exe = out.join(name);
            run_ok(
                Command::new("gcc")
                    .args(["-static", "-O1", "-fno-omit-frame-pointer", "-o"])
                    .arg(&exe)
                    .arg(qemu_dir.join(format!("{name}.c"))),
                "building a workload",
            );
            exe
        })
        .collect()
}

fn psample_binary(ws: &Path) -> PathBuf {
    if let Some(bin) = env::var_os("PSAMPLE_QEMU_BIN") {
        // Tests run in the package directory, not where cargo was started; the workspace
        // root is the one directory a relative path can sensibly mean.
        let bin = ws.join(bin);
        assert!(bin.is_file(), "PSAMPLE_QEMU_BIN: no file {}", bin.display());
        return bin;
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_ok(
        Command::new(cargo).current_dir(ws).args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-musl",
            "-p",
            "psample",
        ]),
        "building the static psample (rustup target add x86_64-unknown-linux-musl?)",
    );
    ws.join("target/x86_64-unknown-linux-musl/release/psample")
}

struct Kernel {
    series: String,
    vmlinuz: PathBuf,
    package: String,
}

fn fetch_kernels(qemu_dir: &Path, series: &[String]) -> Vec<Kernel> {
    let out = run_ok(
        Command::new(qemu_dir.join("fetch-kernels.sh")).args(series),
        "fetching kernel images",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let kernels: Vec<Kernel> = text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            Some(Kernel {
                series: cols.next()?.to_string(),
                vmlinuz: PathBuf::from(cols.next()?),
                package: cols.next()?.to_string(),
            })
        })
        .collect();
    assert_eq!(
        kernels.len(),
        series.len(),
        "fetch-kernels.sh resolved {} of {series:?}:\n{text}",
        kernels.len()
    );
    kernels
}

struct Boot {
    log: String,
    elapsed: Duration,
    status: String,
    /// Why the guest was booted a second time, if it was.
    retried: Option<String>,
}

/// Boot `kernel` with the initramfs; boot it once more if the first guest never reached
/// /init. Then psample never ran, so a second boot cannot hide a psample defect: the guest
/// kernel itself failed under emulation (seen once: 6.12 oopsed in `psi_task_switch` during
/// `sched_init_debug`, under `-cpu max` TCG). The report notes the second boot.
fn boot(qemu_dir: &Path, kernel: &Kernel, initramfs: &Path, log_path: &Path) -> Boot {
    let first = boot_once(qemu_dir, kernel, initramfs, log_path);
    if parse_console(&first.log).release.is_some() {
        return first;
    }
    let first_log = log_path.with_extension("first-boot.log");
    if let Err(e) = fs::write(&first_log, &first.log) {
        eprintln!("qemu_kernels: cannot save {}: {e}", first_log.display());
    }
    let mut again = boot_once(qemu_dir, kernel, initramfs, log_path);
    again.elapsed += first.elapsed;
    again.retried = Some(format!(
        "the first boot never reached /init ({}; log {}), booted again",
        first_symptom(&first.log),
        first_log.display()
    ));
    again
}

/// The first kernel line that says what went wrong in a boot that never reached /init.
fn first_symptom(log: &str) -> String {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| {
            ["BUG:", "Oops", "Kernel panic", "general protection"]
                .iter()
                .any(|k| l.contains(k))
        })
        .map_or_else(|| "no oops in the log".to_string(), str::to_string)
}

fn boot_once(qemu_dir: &Path, kernel: &Kernel, initramfs: &Path, log_path: &Path) -> Boot {
    let started = Instant::now();
    let result = Command::new(qemu_dir.join("boot.sh"))
        .arg(&kernel.vmlinuz)
        .arg(initramfs)
        .arg(BOOT_TIMEOUT.as_secs().to_string())
        .output();
    let elapsed = started.elapsed();
    let (log, status) = match result {
        Ok(out) => {
            let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            (log, out.status.to_string())
        }
        Err(e) => (String::new(), format!("boot.sh did not start: {e}")),
    };
    if let Err(e) = fs::write(log_path, &log) {
        eprintln!("qemu_kernels: cannot save {}: {e}", log_path.display());
    }
    Boot {
        log,
        elapsed,
        status,
        retried: None,
    }
}

#[test]
fn psample_on_debian_kernels_under_qemu() {
    if env::var("PSAMPLE_QEMU").as_deref() != Ok("1") {
        eprintln!(
            "\n*** qemu_kernels: SKIPPED — set PSAMPLE_QEMU=1 to boot Debian 5.10/6.1/6.12 \
             under QEMU and run psample inside (needs .ci/setup-qemu; takes a few minutes) ***\n"
        );
        return;
    }
    require_tools();
    let ws = workspace_root();
    let qemu_dir = ws.join("compat-tests/qemu");
    let cache = env::var_os("PSAMPLE_QEMU_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target/qemu-cache"));
    let work = cache.join("run");
    fs::create_dir_all(&work).expect("creating the qemu work directory");

    let series: Vec<String> = match env::var("PSAMPLE_QEMU_KERNELS") {
        Ok(s) if !s.trim().is_empty() => s.split_whitespace().map(str::to_string).collect(),
        _ => DEFAULT_SERIES.iter().map(|s| s.to_string()).collect(),
    };
    let smoke = env::var("PSAMPLE_QEMU_GUEST").as_deref() == Ok("smoke");

    let prep = Instant::now();
    let workloads = build_workloads(&qemu_dir, &work);
    let mut payload: Vec<PathBuf> = workloads;
    if !smoke {
        payload.push(psample_binary(&ws));
    }
    let kernels = fetch_kernels(&qemu_dir, &series);
    let script = qemu_dir.join(if smoke {
        "guest/smoke.sh"
    } else {
        "guest/psample.sh"
    });
    let initramfs = work.join("initramfs.cpio");
    run_ok(
        Command::new(qemu_dir.join("mkinitramfs.sh"))
            .arg(&initramfs)
            .arg(&script)
            .args(&payload),
        "building the initramfs",
    );
    eprintln!("qemu_kernels: prepared in {:.1?}", prep.elapsed());

    // All guests at once: each is mostly single-threaded emulation, and booting them one
    // after another would triple the wall time.
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|k| {
                let log = work.join(format!("console-{}.log", k.series));
                let (qemu_dir, initramfs) = (&qemu_dir, &initramfs);
                s.spawn(move || boot(qemu_dir, k, initramfs, &log))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread panicked"))
            .collect()
    });

    let mut report = String::new();
    let mut failed = false;
    for (k, b) in kernels.iter().zip(&boots) {
        let run = parse_console(&b.log);
        let mut errs = Vec::new();
        if smoke {
            check_smoke(&run, &k.series, &mut errs);
        } else {
            check_psample(&run, &k.series, &mut errs);
        }
        let log_path = work.join(format!("console-{}.log", k.series));
        report.push_str(&format!(
            "{} ({}): {} in {:.1?}, qemu {}, log {}\n",
            k.series,
            k.package,
            if errs.is_empty() { "ok" } else { "FAILED" },
            b.elapsed,
            b.status,
            log_path.display()
        ));
        if let Some(why) = &b.retried {
            report.push_str(&format!("  note: {why}\n"));
        }
        for e in &errs {
            report.push_str(&format!("  - {}\n", e.trim_end()));
        }
        if !errs.is_empty() {
            failed = true;
            let tail: Vec<&str> = b.log.lines().rev().take(40).collect();
            report.push_str("  last console lines:\n");
            for l in tail.into_iter().rev() {
                report.push_str(&format!("    | {}\n", l.trim_end_matches('\r')));
            }
        }
    }
    eprintln!(
        "qemu_kernels ({} guest):\n{report}",
        if smoke { "smoke" } else { "psample" }
    );
    assert!(!failed, "psample under QEMU failed:\n{report}");
}

// ---------------------------------------------------------------------------------------
// The parsers and checks themselves (always run: they decide what the opt-in test reports)
// ---------------------------------------------------------------------------------------

#[test]
fn console_steps_are_framed_by_markers() {
    let log = "\x1bc\x1b[?7l\x1b[2J@@PSQ-BOOT 6.1.0-56-cloud-amd64@@\r\n\
               @@PSQ-BEGIN uname@@\r\n6.1.0-56-cloud-amd64\r\n\r\n@@PSQ-END uname rc=0@@\r\n\
               [    3.1] some kernel line\r\n\
               @@PSQ-BEGIN record@@\r\nerror: no\r\n\r\n@@PSQ-END record rc=2@@\r\n\
               @@PSQ-BEGIN offcpu@@\r\npartial\r\n";
    let run = parse_console(log);
    assert_eq!(run.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
    assert!(!run.done);
    assert_eq!(
        run.steps["uname"],
        Step {
            output: "6.1.0-56-cloud-amd64".into(),
            rc: Some(0),
            hung: false,
        }
    );
    assert_eq!(run.steps["record"].rc, Some(2));
    assert_eq!(run.steps["offcpu"].rc, None);
    assert!(!run.steps.contains_key("[    3.1] some kernel line"));

    let mut errs = Vec::new();
    check_boot(&run, "6.12", &mut errs);
    assert_eq!(errs.len(), 2, "{errs:?}"); // wrong series, and not done
}

#[test]
fn a_hung_step_and_a_stalled_kernel_are_reported_as_such() {
    let log = "@@PSQ-BOOT 6.1.0-57-cloud-amd64@@\r\n\
               @@PSQ-BEGIN record@@\r\nok\r\n\r\n@@PSQ-END record rc=0@@\r\n\
               @@PSQ-BEGIN offcpu@@\r\n2s 271 samples\r\n\r\n\
               @@PSQ-HUNG offcpu limit=60s@@\r\n\
               -- /proc/90/task/91 ring-drainer state=S wchan=hrtimer_nanosleep\r\n\
               [  231.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\r\n\
               \r\n@@PSQ-END offcpu rc=137@@\r\n@@PSQ-DONE@@\r\n";
    let run = parse_console(log);
    assert!(run.steps["offcpu"].hung);
    assert!(!run.steps["record"].hung);
    assert!(run.steps["offcpu"].output.contains("ring-drainer"));
    assert_eq!(run.kernel_stalls.len(), 1);
    let mut errs = Vec::new();
    assert!(step(&run, "offcpu", &mut errs).is_none());
    assert!(step(&run, "record", &mut errs).is_some());
    check_boot(&run, "6.1", &mut errs);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("HUNG") && errs[0].contains("wchan=hrtimer_nanosleep"));
    assert!(errs[1].contains("kernel reported itself stuck"));
}

#[test]
fn frames_match_with_annotations_but_not_longer_names() {
    assert!(frame_is("psample_nap", "psample_nap"));
    assert!(frame_is("sleep_workload`psample_nap", "psample_nap"));
    assert!(frame_is("psample_nap_[i]", "psample_nap"));
    assert!(frame_is("psample_nap+0x12", "psample_nap"));
    assert!(!frame_is("psample_nap2", "psample_nap"));
    assert!(!frame_is("psample_nap_more", "psample_nap"));
    assert!(!frame_is("x_psample_nap", "psample_nap"));
    assert!(is_comm("workload", "workload"));
    assert!(is_comm("workload-42/43", "workload"));
    assert!(!is_comm("workload2", "workload"));
    assert!(!is_comm("sleep_workload", "workload"));
}

fn record_errors(text: &str) -> Vec<String> {
    record_errors_ran(text, Some(RECORD_SECONDS as f64))
}

fn record_errors_ran(text: &str, ran: Option<f64>) -> Vec<String> {
    let mut errs = Vec::new();
    check_record(&parse_folded(text).unwrap(), ran, &mut errs);
    errs
}

#[test]
fn record_floor_follows_what_the_workload_ran() {
    let out = "psample-workload: window 2.000 s, ran 0.180 s, cpu 1.990 s\npsample record:";
    assert_eq!(workload_ran(out), Some(0.18));
    assert_eq!(workload_ran("psample record:\n  samples 3"), None);
    let after_progress = "\u{1b}[2K⠚ 0s 21 samples  psample-workload: window 2.000 s, ran 0.714 s";
    assert_eq!(workload_ran(after_progress), Some(0.714));
    // A starved vCPU: 52 samples are right for 0.18 s of execution, not for 2 s.
    let starved = "workload;main;spin_for;psample_hot_alpha 35\n\
                   workload;main;spin_for;psample_hot_beta 17\n";
    assert_eq!(record_errors_ran(starved, Some(0.18)), Vec::<String>::new());
    assert_eq!(record_errors_ran(starved, Some(2.0)).len(), 1);
    assert_eq!(record_errors_ran(starved, None).len(), 1);
}

#[test]
fn record_checks_accept_a_plausible_profile_and_reject_broken_ones() {
    let good = "workload;_start;__libc_start_main;main;spin_for;psample_hot_alpha 600\n\
                workload;_start;__libc_start_main;main;spin_for;psample_hot_beta 300\n\
                workload;psample_hot_alpha 20\n\
                workload;clock_gettime 30\n";
    assert_eq!(record_errors(good), Vec::<String>::new());
    // Too few samples overall.
    assert_eq!(
        record_errors("workload;main;psample_hot_alpha 50\n").len(),
        2
    );
    // Names missing (e.g. unsymbolized addresses).
    assert!(!record_errors("workload;main;0x401234 900\n").is_empty());
    // Inverted ratio.
    assert!(!record_errors(
        "workload;main;psample_hot_alpha 300\nworkload;main;psample_hot_beta 600\n"
    )
    .is_empty());
    // Callchains that stop at the leaf.
    assert!(
        !record_errors("workload;psample_hot_alpha 600\nworkload;psample_hot_beta 300\n")
            .is_empty()
    );
    // Wrong root frame.
    assert!(
        !record_errors("sh;main;psample_hot_alpha 600\nworkload;main;psample_hot_beta 300\n")
            .is_empty()
    );
    assert!(parse_folded("a;b c\n").is_err());
}

#[test]
fn offcpu_checks_want_microseconds_both_sites_and_kernel_frames() {
    let check = |text: &str| {
        let mut errs = Vec::new();
        check_offcpu(&parse_folded(text).unwrap(), &mut errs);
        errs
    };
    let good = "sleep_workload;main;psample_nap;entry_SYSCALL_64_[k];schedule_[k] 900000\n\
                sleep_workload;main;psample_wait_pipe;entry_SYSCALL_64_[k];schedule_[k] 800000\n";
    assert_eq!(check(good), Vec::<String>::new());
    // Nanoseconds instead of microseconds.
    assert!(!check(
        "sleep_workload;main;psample_nap;schedule_[k] 900000000\n\
         sleep_workload;main;psample_wait_pipe;schedule_[k] 800000000\n"
    )
    .is_empty());
    // Only one of the two blocking sites.
    assert!(!check("sleep_workload;main;psample_nap;schedule_[k] 1500000\n").is_empty());
    // User stacks only.
    assert!(!check(
        "sleep_workload;main;psample_nap 900000\nsleep_workload;main;psample_wait_pipe 800000\n"
    )
    .is_empty());
}

#[test]
fn first_symptom_names_the_oops_of_a_boot_that_never_reached_init() {
    let log = "[    2.19] BUG: unable to handle page fault for address: ff3e922596401000\r\n\
               [    2.20] Oops: 0000 [#1] PREEMPT SMP NOPTI\r\n";
    assert_eq!(
        first_symptom(log),
        "[    2.19] BUG: unable to handle page fault for address: ff3e922596401000"
    );
    assert_eq!(
        first_symptom("[    0.1] Linux version\n"),
        "no oops in the log"
    );
}
