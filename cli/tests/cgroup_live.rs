//! `--cgroup PATH`: the tasks of one cgroup, as perf's `-G` (a container, a service), with
//! the per-process fallback where the kernel refuses cgroup mode.

mod support;

use std::path::Path;

use collect::output::pprof::Profile;
use support::*;

/// The pids in a pprof file's `pid` labels.
fn sampled_pids(file: &Path) -> std::collections::BTreeSet<i64> {
    let p = Profile::read(&std::fs::read(file).unwrap(), 1 << 30).unwrap();
    p.sample
        .iter()
        .filter_map(|s| s.label.iter().find(|l| p.string(l.key) == "pid"))
        .map(|l| l.num)
        .collect()
}

/// A busy process in a cgroup v2 group made here and another busy one outside it: only the
/// group's is sampled, on the ring and on the BPF path, and its stacks are whole.
#[test]
fn cgroup_mode_samples_only_the_groups_tasks() {
    require!(Need::Root);
    let _serial = serial();
    let cg = TestCgroup::new();
    let inside = start("cpu_split_fp", &["-t", "2", "-s", "0"]);
    cg.add(inside.pid);
    let outside = start("cpu_split_fp", &["-t", "1", "-s", "0"]);
    for bpf in ["never", "always"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cg.pb.gz");
        let args: Vec<String> = ["record", "-F", "499", "--call-graph", "fp", "--bpf", bpf]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--cgroup".into(),
                cg.path.display().to_string(),
                "-o".into(),
            ])
            .chain([out.display().to_string()])
            .collect();
        let run = profile_until_cpu(psample(), &args, inside.pid, 1.0);
        assert_eq!(run.status, 0, "--bpf {bpf}: {}", run.stderr);
        assert!(
            run.stderr.contains("perf_event cgroup mode"),
            "{}",
            run.stderr
        );
        let pids = sampled_pids(&out);
        assert_eq!(
            pids,
            [i64::from(inside.pid)].into(),
            "--bpf {bpf}: only the group's process (outside: {})",
            outside.pid
        );
        let folded: std::collections::BTreeMap<String, u64> =
            collect::output::input::load_folded(&out)
                .unwrap()
                .into_iter()
                .collect();
        let total: u64 = folded.values().sum();
        let hot = count_with(&folded, "hot_a") + count_with(&folded, "hot_b");
        assert!(
            total > 0 && hot * 10 >= total * 9,
            "--bpf {bpf}: {folded:?}"
        );
    }
}

/// A cgroup v1 group of a hierarchy without the perf_event controller: the kernel refuses
/// cgroup mode, and psample profiles the processes in the group, saying so.
#[test]
fn a_group_the_kernel_refuses_falls_back_to_its_processes() {
    require!(Need::Root);
    let v1 = Path::new("/sys/fs/cgroup/pids");
    if !v1.join("cgroup.procs").exists() || Path::new("/sys/fs/cgroup/perf_event").exists() {
        eprintln!("skipped: no cgroup v1 hierarchy without perf_event on this host");
        return;
    }
    let _serial = serial();
    let cg = TestCgroup::new_in(v1);
    let inside = start("cpu_split_fp", &["-t", "1", "-s", "0"]);
    cg.add(inside.pid);
    let _outside = start("cpu_split_fp", &["-t", "1", "-s", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cg.pb.gz");
    let args: Vec<String> = vec![
        "record".into(),
        "-F".into(),
        "499".into(),
        "--cgroup".into(),
        cg.path.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    let run = profile_until_cpu(psample(), &args, inside.pid, 0.5);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused cgroup mode") && run.stderr.contains("cgroup.procs"),
        "{}",
        run.stderr
    );
    assert_eq!(sampled_pids(&out), [i64::from(inside.pid)].into());
}

#[test]
fn a_path_that_is_not_a_cgroup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(psample())
        .args(["record", "--cgroup"])
        .arg(dir.path())
        .args(["-d", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a cgroup directory"));
}
