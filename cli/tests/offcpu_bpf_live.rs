//! `psample offcpu --bpf`: blocked time summed in the kernel, on real processes, against
//! the ring path and the workload's own clock.

mod support;

use support::*;

/// One `offcpu` run of `sleep_pipe -s 3` (7 ms nanosleep + ~3 ms pipe wait per
/// iteration): the folded profile, the summary, and the phases the workload measured.
struct SleepPipe {
    folded: std::collections::BTreeMap<String, u64>,
    stderr: String,
    sleep_ref: f64,
    wait_ref: f64,
}

impl SleepPipe {
    fn run(flags: &[&str]) -> SleepPipe {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("off.folded");
        let o = std::process::Command::new(psample())
            .arg("offcpu")
            // The mode BPF aggregates (the default, auto, keeps the ring: hybrid_live.rs).
            .args(["--call-graph", "fp"])
            .args(flags)
            .arg("-o")
            .arg(&out_path)
            .arg("--")
            .arg(workload("sleep_pipe"))
            .args(["-s", "3"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "psample {flags:?} failed: {stderr}");
        let stdout = String::from_utf8_lossy(&o.stdout);
        let measured = |key: &str| -> f64 {
            stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in the workload's output: {stdout}"))
        };
        SleepPipe {
            folded: parse_folded(&std::fs::read_to_string(&out_path).unwrap()),
            sleep_ref: measured("sleep_us="),
            wait_ref: measured("wait_us="),
            stderr,
        }
    }

    /// Blocked µs under the parent's two phases.
    fn phases(&self) -> (f64, f64) {
        (
            count_with(&self.folded, "sleep_phase") as f64,
            count_with(&self.folded, "wait_phase") as f64,
        )
    }

    fn split(&self) -> f64 {
        let (s, w) = self.phases();
        100.0 * s / (s + w)
    }

    fn measured_split(&self) -> f64 {
        100.0 * self.sleep_ref / (self.sleep_ref + self.wait_ref)
    }

    /// Blocked time of the phases over what the workload measured for them.
    fn total_ratio(&self) -> f64 {
        let (s, w) = self.phases();
        (s + w) / (self.sleep_ref + self.wait_ref)
    }
}

/// The known 70/30 split: `--bpf always` and `--bpf never` each match the phases the
/// workload timed itself (the reference that moves with load) within 3 points and 5 % of
/// the total, so they agree with each other as closely; nothing is lost in the kernel.
#[test]
fn bpf_and_ring_give_the_same_split_and_total() {
    require!(Need::Root);
    let _serial = serial();
    let bpf = SleepPipe::run(&["--bpf", "always"]);
    let ring = SleepPipe::run(&["--bpf", "never"]);
    for (name, r) in [("bpf", &bpf), ("ring", &ring)] {
        eprintln!(
            "{name}: split {:.1}% (measured {:.1}%), blocked {:.3} of the measured phases",
            r.split(),
            r.measured_split(),
            r.total_ratio()
        );
        assert!(
            (r.split() - r.measured_split()).abs() <= 3.0,
            "{name}: split {:.1}%, the workload measured {:.1}%\n{}",
            r.split(),
            r.measured_split(),
            r.stderr
        );
        assert!(
            (r.total_ratio() - 1.0).abs() <= 0.05,
            "{name}: blocked {:.3} of what the workload measured\n{}",
            r.total_ratio(),
            r.stderr
        );
    }
    assert!(
        bpf.stderr.contains("in-kernel aggregation"),
        "{}",
        bpf.stderr
    );
    assert_eq!(
        summary_number(&bpf.stderr, "bpf lost"),
        Some(0.0),
        "{}",
        bpf.stderr
    );
    // Both name the same frames: the parent's phases under the same kernel paths.
    for phase in ["sleep_phase", "wait_phase"] {
        let kernel_path = |r: &SleepPipe| -> Vec<String> {
            r.folded
                .keys()
                .filter(|s| s.split(';').any(|f| f == phase))
                .map(|s| {
                    s.split(';')
                        .skip_while(|f| *f != phase)
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .collect()
        };
        assert_eq!(kernel_path(&bpf), kernel_path(&ring), "{phase}");
    }
}

/// `--wakers` with `--bpf`: the pipe wait is ended by the child's write, so (nearly) all of
/// it carries the writer's stack, pipe_write in its kernel part.
#[test]
fn bpf_wakers_carry_the_writer_stack() {
    require!(Need::Root);
    let _serial = serial();
    let r = SleepPipe::run(&["--bpf", "always", "--wakers"]);
    let wait: u64 = count_with(&r.folded, "wait_phase");
    let by_writer: u64 = r
        .folded
        .iter()
        .filter(|(s, _)| s.split(';').any(|f| f == "wait_phase"))
        .filter(|(s, _)| {
            s.split(";--;")
                .nth(1)
                .is_some_and(|w| w.contains("pipe_write"))
        })
        .map(|(_, c)| *c)
        .sum();
    eprintln!("wait_phase {wait} us, {by_writer} us with the writer's stack");
    assert!(wait > 0, "{}", r.stderr);
    assert!(
        by_writer * 100 >= wait * 95,
        "{by_writer} of {wait} us carry the writer's stack\n{}",
        r.stderr
    );
}

/// `auto` falls back to the ring path where BPF cannot give the same result (DWARF
/// stacks), saying why; `always` refuses instead.
#[test]
fn bpf_auto_falls_back_and_always_refuses() {
    require!(Need::Root);
    let _serial = serial();
    let w = start("sleep_pipe", &["-s", "10"]);
    let pid = w.pid.to_string();
    let dwarf = ["offcpu", "-p", &pid, "-d", "1", "--call-graph", "dwarf"];
    let auto = run_psample(&[&dwarf[..], &["--bpf", "auto"]].concat());
    assert_eq!(auto.status, 0, "{}", auto.stderr);
    assert!(
        auto.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("bpf")
                && l.contains("not used: BPF stack maps cannot unwind DWARF")),
        "{}",
        auto.stderr
    );
    assert!(count_with(&parse_folded(&auto.folded), "sleep_phase") > 0);
    let always = run_psample(&[&dwarf[..], &["--bpf", "always"]].concat());
    assert_ne!(always.status, 0);
    assert!(always.stderr.contains("--bpf always"), "{}", always.stderr);
}

/// System-wide: every process's blocked time, the known split among it.
#[test]
fn bpf_system_wide_sees_the_split() {
    require!(Need::Root);
    let _serial = serial();
    let w = start("sleep_pipe", &["-s", "10"]);
    let args = [
        "offcpu",
        "-a",
        "-d",
        "3",
        "--call-graph",
        "fp",
        "--bpf",
        "always",
    ];
    let out = run_psample(&args);
    drop(w);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let folded = parse_folded(&out.folded);
    let split = share(&folded, "sleep_phase", "wait_phase");
    // 7 ms against ~3 ms (plus wake-up latency on both): 70 % within a few points.
    assert!(
        (62.0..=78.0).contains(&split),
        "split {split:.1}%\n{}",
        out.stderr
    );
    assert!(
        summary_number(&out.stderr, "switch-ins").is_some(),
        "{}",
        out.stderr
    );
}

/// Inside a pid namespace (as in a container: `unshare --pid --fork --mount-proc`), the
/// off-CPU programs would see global pids that psample's /proc does not know: `--bpf auto`
/// takes the ring (whose records carry the namespace's ids) and says why, `--bpf always`
/// refuses. The ring's profile names the command and its phases.
#[test]
fn bpf_in_a_pid_namespace_uses_the_ring() {
    require!(Need::Root);
    let _serial = serial();
    let wl = workload("sleep_pipe");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ns.folded");
    let run = |bpf: &str| {
        std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(psample())
            .args(["offcpu", "--call-graph", "fp", "--bpf", bpf, "-o"])
            .arg(&out)
            .arg("--")
            .arg(&wl)
            .args(["-s", "1"])
            .output()
            .unwrap()
    };
    let o = run("auto");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("nested pid namespace"), "{err}");
    assert!(!err.contains("in-kernel aggregation"), "{err}");
    let folded = parse_folded(&std::fs::read_to_string(&out).unwrap());
    assert!(folded.keys().all(|s| !s.starts_with("[pid_")), "{folded:?}");
    let split = share(&folded, "sleep_phase", "wait_phase");
    assert!(
        (55.0..=85.0).contains(&split),
        "split {split:.1}%\n{folded:?}"
    );
    let o = run("always");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--bpf always") && err.contains("nested pid namespace"),
        "{err}"
    );
}
