//! pprof output on real processes, validated by `go tool pprof` (apt package golang-go):
//! the totals and per-function counts it reads equal the folded stacks of the same file.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::*;

fn go_pprof(args: &[&str], file: &Path) -> String {
    let o = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .output()
        .expect("`go` is needed to validate pprof files (apt-get install golang-go)");
    assert!(
        o.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// "Showing nodes accounting for X, 100% of TOTAL total" → TOTAL as text.
fn go_total(top: &str) -> String {
    top.lines()
        .find_map(|l| {
            l.split(" of ")
                .nth(1)?
                .strip_suffix(" total")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no total in:\n{top}"))
}

/// Flat value per function from `-top -nodecount=1000` with plain counts.
fn go_flat(top: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut in_table = false;
    for l in top.lines() {
        if l.trim_start().starts_with("flat") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 6 {
            if let Ok(v) = f[0].parse::<u64>() {
                m.insert(f[5..].join(" "), v);
            }
        }
    }
    m
}

fn folded_of(path: &Path) -> BTreeMap<String, u64> {
    collect::output::input::load_folded(path)
        .expect("psample reads its own pprof")
        .into_iter()
        .collect()
}

#[test]
fn record_pprof_loads_in_go_pprof_with_the_folded_totals() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpu.pb.gz");
    let pid = w.pid.to_string();
    // 2 CPU-seconds of the one busy thread: ~1000 samples at 499 Hz, and at least 2 s of
    // wall time, however loaded the machine is.
    let args: Vec<String> = ["record", "-F", "499", "-p", &pid, "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect();
    let run = profile_until_cpu(psample(), &args, w.pid, 2.0);
    let stderr = run.stderr;
    assert_eq!(run.status, 0, "{stderr}");
    let samples = summary_number(&stderr, "samples").expect("samples in summary") as u64;
    assert!(samples > 600, "too few samples: {samples}\n{stderr}");

    let folded = folded_of(&out);
    assert_eq!(folded.values().sum::<u64>(), samples);

    let top = go_pprof(&["-top", "-nodecount=1000", "-sample_index=samples"], &out);
    assert_eq!(go_total(&top), samples.to_string(), "{top}");
    let flat = go_flat(&top);
    let leaf = |f: &str| -> u64 {
        folded
            .iter()
            .filter(|(s, _)| s.rsplit(';').next() == Some(f))
            .map(|(_, c)| c)
            .sum()
    };
    for f in ["hot_a", "hot_b"] {
        assert_eq!(flat.get(f).copied(), Some(leaf(f)), "{f} in\n{top}");
    }
    // CPU time is samples × period (1/499 s).
    let period = 1_000_000_000 / 499;
    let p = collect::output::pprof::Profile::read(&std::fs::read(&out).unwrap(), 1 << 30).unwrap();
    assert_eq!(p.period, period);
    let cpu: i64 = p.sample.iter().map(|s| s.value[1]).sum();
    assert_eq!(cpu, samples as i64 * period);
    assert!(p.duration_nanos > 1_500_000_000 && p.time_nanos > 0);
    // The workload's own binary is a mapping with its build-id.
    let raw = go_pprof(&["-raw"], &out);
    assert!(raw.contains("cpu_split_fp"), "{raw}");
    assert!(p.mapping.iter().any(
        |m| p.string(m.filename).ends_with("cpu_split_fp") && p.string(m.build_id).len() == 40
    ));
}

#[test]
fn inline_frames_are_lines_of_one_location() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inl.pprof");
    let o = Command::new(psample())
        .args(["record", "-F", "499", "--format", "pprof", "-o"])
        .arg(&out)
        .arg("--")
        .arg(workload("inline_demo"))
        .args(["-s", "0"])
        .env("WL_CPU_SECONDS", "0.5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = collect::output::pprof::Profile::read(&std::fs::read(&out).unwrap(), 1 << 30).unwrap();
    let inlined = p.location.iter().filter(|l| l.line.len() > 1).count();
    assert!(inlined > 0, "no location with inline lines");
    assert!(p.location.iter().any(|l| l.line.iter().any(|x| x.line > 0)));
    assert!(p
        .mapping
        .iter()
        .any(|m| m.has_inline_frames && m.has_line_numbers));
    // go reads it too, and the folded view marks the inlined callees.
    let top = go_pprof(&["-top", "-sample_index=samples"], &out);
    let folded = folded_of(&out);
    assert_eq!(go_total(&top), folded.values().sum::<u64>().to_string());
    assert!(folded.keys().any(|k| k.contains("_[i]")));
}

#[test]
fn offcpu_pprof_totals_equal_in_microseconds() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("sleep_pipe", &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("off.pb.gz");
    let pid = w.pid.to_string();
    let o = Command::new(psample())
        .args(["offcpu", "-d", "1.5", "-p", &pid, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let folded = folded_of(&out);
    let total_us: u64 = folded.values().sum();
    assert!(total_us > 1_000_000, "blocked time {total_us} us");
    let p = collect::output::pprof::Profile::read(&std::fs::read(&out).unwrap(), 1 << 30).unwrap();
    assert_eq!(p.string(p.sample_type[0].ty), "off-cpu");
    assert_eq!(p.string(p.sample_type[0].unit), "microseconds");
    // go prints microseconds as durations; -unit=us keeps it exact.
    let top = go_pprof(&["-top", "-unit=us"], &out);
    assert_eq!(go_total(&top), format!("{total_us}us"), "{top}");
}

/// Every sample carries pid, tid, thread and container labels and the `--label`s, as
/// `go tool pprof -tags` reads them; the executable is the main (first) mapping.
#[test]
fn pprof_samples_are_labelled_and_the_executable_is_the_main_mapping() {
    require!(Need::Root);
    let _g = serial();
    let cg = TestCgroup::new();
    let w = start("cpu_split_fp", &["-t", "2", "-s", "0"]);
    cg.add(w.pid);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpu.pb.gz");
    let pid = w.pid;
    let args: Vec<String> = [
        "record",
        "-F",
        "499",
        "--label",
        "env=test",
        "--label",
        "team=perf",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        out.display().to_string(),
    ])
    .collect();
    let run = profile_until_cpu(psample(), &args, pid, 1.0);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let tags = go_pprof(&["-tags", "-sample_index=samples"], &out);
    let container = cg.name.trim_start_matches('/');
    for want in [
        "env: Total".to_string(),
        "team: Total".to_string(),
        format!("{pid}"),
        format!(": {container}"),
        ": cpu_split_fp".to_string(),
    ] {
        assert!(tags.contains(&want), "want {want:?} in\n{tags}");
    }
    // Two threads, each with its own tid label; all samples are the one process's.
    let p = collect::output::pprof::Profile::read(&std::fs::read(&out).unwrap(), 1 << 30).unwrap();
    let label = |s: &collect::output::pprof::proto::Sample, k: &str| {
        s.label.iter().find(|l| p.string(l.key) == k).copied()
    };
    let mut tids = std::collections::BTreeSet::new();
    for s in &p.sample {
        assert_eq!(label(s, "pid").map(|l| l.num), Some(pid as i64));
        tids.insert(label(s, "tid").unwrap().num);
        assert_eq!(p.string(label(s, "env").unwrap().str), "test");
        assert_eq!(p.string(label(s, "container").unwrap().str), container);
    }
    assert_eq!(tids.len(), 2, "{tids:?}");
    assert!(tids.contains(&(pid as i64)));
    assert!(p.string(p.mapping[0].filename).ends_with("/cpu_split_fp"));
    let raw = go_pprof(&["-raw"], &out);
    let first = raw
        .lines()
        .skip_while(|l| !l.starts_with("Mappings"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.contains("cpu_split_fp"), "{raw}");
}

/// offcpu's samples carry the same labels as record's, from the ring path and from the
/// in-kernel (BPF) path: pid, tid, thread, container and every `--label`.
#[test]
fn offcpu_pprof_samples_are_labelled() {
    require!(Need::Root);
    let _g = serial();
    let cg = TestCgroup::new();
    let w = start("sleep_pipe", &[]);
    cg.add(w.pid);
    let container = cg.name.trim_start_matches('/').to_string();
    let dir = tempfile::tempdir().unwrap();
    for bpf in ["never", "always"] {
        let out = dir.path().join(format!("off-{bpf}.pb.gz"));
        let pid = w.pid.to_string();
        let o = Command::new(psample())
            .args(["offcpu", "-d", "1", "--call-graph", "fp", "--bpf", bpf])
            .args(["--label", "env=test", "-p", &pid, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{bpf}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let tags = go_pprof(&["-tags"], &out);
        for want in [
            "env: Total",
            &pid,
            &format!(": {container}"),
            ": sleep_pipe",
        ] {
            assert!(tags.contains(want), "{bpf}: want {want:?} in\n{tags}");
        }
        let p =
            collect::output::pprof::Profile::read(&std::fs::read(&out).unwrap(), 1 << 30).unwrap();
        let label = |s: &collect::output::pprof::proto::Sample, k: &str| {
            s.label.iter().find(|l| p.string(l.key) == k).copied()
        };
        assert!(!p.sample.is_empty(), "{bpf}");
        for s in &p.sample {
            assert_eq!(label(s, "pid").map(|l| l.num), Some(w.pid as i64), "{bpf}");
            assert_eq!(label(s, "tid").map(|l| l.num), Some(w.pid as i64), "{bpf}");
            assert_eq!(p.string(label(s, "thread").unwrap().str), "sleep_pipe");
            assert_eq!(p.string(label(s, "env").unwrap().str), "test");
            assert_eq!(p.string(label(s, "container").unwrap().str), container);
        }
    }
}
