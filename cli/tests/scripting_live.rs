//! psample in scripts and CI jobs: a launched command's exit status is psample's, and
//! `--summary-json` gives the closing summary to programs.

mod support;

use std::process::Command;

use support::*;

/// psample's exit status and stderr for `args` (output discarded).
fn status_of(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(psample()).args(args).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_launched_command_status_is_psamples() {
    require!(Need::Perf);
    let (code, err) = status_of(&["record", "-o", "/dev/null", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    let (code, err) = status_of(&["record", "-o", "/dev/null", "--", "true"]);
    assert_eq!(code, Some(0), "{err}");
    // Killed by a signal: 128+N, as a shell reports it.
    let (code, err) = status_of(&[
        "offcpu",
        "-o",
        "/dev/null",
        "--",
        "sh",
        "-c",
        "kill -KILL $$",
    ]);
    assert_eq!(code, Some(137), "{err}");
    assert!(err.contains("killed by signal 9 (SIGKILL)"), "{err}");
}

#[test]
fn a_command_that_cannot_start_is_127_or_126_with_the_reason() {
    require!(Need::Perf);
    let (code, err) = status_of(&["record", "--", "/nonexistent/psample-no-such-cmd"]);
    assert_eq!(code, Some(127), "{err}");
    assert!(
        err.contains("/nonexistent/psample-no-such-cmd") && err.contains("No such file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let (code, err) = status_of(&["record", "--", script.to_str().unwrap()]);
    assert_eq!(code, Some(126), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

/// The JSON carries the numbers of the text summary, and the command's status.
#[test]
fn summary_json_has_the_summary_and_the_status() {
    require!(Need::Perf);
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let out = run_psample_env(
        &[
            "record",
            "-F",
            "499",
            "--summary-json",
            json.to_str().unwrap(),
            "--",
            workload("cpu_split_fp").to_str().unwrap(),
            "-t",
            "1",
        ],
        &[("WL_CPU_SECONDS", "0.5")],
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["command"], "record");
    assert_eq!(doc["exit_status"], 0);
    assert!(doc["error"].is_null());
    let s = &doc["sessions"][0];
    let samples = summary_number(&out.stderr, "samples").unwrap();
    assert!(samples > 0.0, "{}", out.stderr);
    assert_eq!(s["samples"].as_f64(), Some(samples), "{s}");
    assert_eq!(s["command_exit"]["status"], 0);
    assert_eq!(s["stopped"], "targets exited");
    assert!(s["lost"]["records"].is_u64(), "{s}");
    let folded: u64 = parse_folded(&out.folded).values().sum();
    assert_eq!(folded as f64, samples);

    // A failure is in the file too, with psample's status.
    let (code, err) = status_of(&[
        "record",
        "--summary-json",
        json.to_str().unwrap(),
        "--",
        "/nonexistent/psample-no-such-cmd",
    ]);
    assert_eq!(code, Some(127), "{err}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["exit_status"], 127);
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("No such file")),
        "{doc}"
    );
}

/// offcpu's JSON carries its numbers too, from the ring path and the in-kernel (BPF) path:
/// blocked time (equal to the text line's and to the folded output's), events, what was
/// filtered, lost records, stack health and the mechanisms.
#[test]
fn offcpu_summary_json_has_the_numbers() {
    require!(Need::Root);
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("offcpu.json");
    for bpf in ["never", "always"] {
        let out = run_psample_env(
            &[
                "offcpu",
                "--call-graph",
                "fp",
                "--bpf",
                bpf,
                "--summary-json",
                json.to_str().unwrap(),
                "--",
                workload("sleep_pipe").to_str().unwrap(),
                "-s",
                "1",
            ],
            &[],
        );
        assert_eq!(out.status, 0, "{bpf}: {}", out.stderr);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(doc["command"], "offcpu");
        let s = &doc["sessions"][0];
        let text = summary_number(&out.stderr, "blocked time").unwrap();
        let seconds = s["blocked"]["seconds"].as_f64().unwrap();
        assert!(seconds > 0.5, "{bpf}: {s}");
        assert!((seconds - text).abs() < 0.001, "{bpf}: {text} vs {s}");
        let folded_us: u64 = parse_folded(&out.folded).values().sum();
        assert!(
            (seconds * 1e6 - folded_us as f64).abs() < 1000.0,
            "{bpf}: {s}"
        );
        assert!(
            s["blocked"]["intervals"].as_u64().unwrap() > 50,
            "{bpf}: {s}"
        );
        let top = &s["blocked"]["top_threads"][0];
        assert_eq!(top["thread"], "sleep_pipe", "{bpf}: {s}");
        assert!(s["filtered"]["other_states"].is_u64(), "{bpf}: {s}");
        assert!(s["lost"]["records"].is_u64(), "{bpf}: {s}");
        assert!(s["fallbacks"].is_array(), "{bpf}: {s}");
        assert!(
            !s["mechanisms"].as_array().unwrap().is_empty(),
            "{bpf}: {s}"
        );
        assert_eq!(s["command_exit"]["status"], 0);
        if bpf == "never" {
            assert!(s["events"]["switch_outs"].as_u64().unwrap() > 50, "{s}");
            // In-kernel stacks are not walked by psample: no health to report there.
            assert!(
                s["stack_health"]["user_stacks"].as_u64().unwrap() > 0,
                "{s}"
            );
        } else {
            assert!(s["bpf"]["keys"].as_u64().unwrap() > 0, "{s}");
            assert!(s["switch_ins"]["unpaired_dropped"].is_u64(), "{s}");
        }
    }
}

/// Completions bash loads: completing `psample rec` offers `record`, and `psample record
/// --cg` offers `--cgroup`.
#[test]
fn bash_loads_the_completions() {
    let script = format!(
        "source <({} completions bash) || exit 9\n\
         complete -p psample || exit 8\n\
         COMP_WORDS=(psample rec); COMP_CWORD=1; _psample psample rec psample\n\
         echo \"1:${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(psample record --cg); COMP_CWORD=2; _psample psample --cg record\n\
         echo \"2:${{COMPREPLY[*]}}\"\n",
        psample()
    );
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = |n: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(n))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(line("1:"), "record", "{out}");
    assert_eq!(line("2:"), "--cgroup", "{out}");
    for shell in ["zsh", "fish"] {
        let (code, err) = status_of(&["completions", shell]);
        assert_eq!(code, Some(0), "{err}");
    }
}

/// Man pages from the same definitions, rendered by groff without warnings, with the
/// flags and the examples of `--help`.
#[test]
fn man_pages_render_with_the_flags_and_examples() {
    for (args, want) in [
        (&["man"][..], "psample-record(1)"),
        (&["man", "record"], "--cgroup"),
        (&["man", "offcpu"], "--wakers"),
    ] {
        let o = Command::new(psample()).args(args).output().unwrap();
        assert!(o.status.success());
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("page.1");
        std::fs::write(&page, &o.stdout).unwrap();
        let r = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(&page)
            .output()
            .expect("groff (apt-get install groff-base)");
        let text = String::from_utf8_lossy(&r.stdout).replace(['\u{2010}', '\u{2212}'], "-");
        let text = text.replace("\u{8}", "");
        assert!(
            r.status.success() && r.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(text.contains(want), "{args:?}: want {want} in\n{text}");
        if args.len() > 1 {
            assert!(text.contains("Examples:"), "{text}");
        }
    }
    let (code, err) = status_of(&["man", "nosuch"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("one of: record"), "{err}");
}
