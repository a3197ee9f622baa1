//! Output formats a file name or `--format` asks for: unknown extensions are refused before
//! anything runs, and speedscope files are valid against speedscope's own schema.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// The speedscope version whose npm package's schema the output is checked against.
const SPEEDSCOPE: &str = "speedscope-1.25.0";

#[test]
fn unknown_extensions_and_out_of_range_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("launched");
    for name in ["perf.data", "prof.xyz", "out.2026"] {
        let out = dir.path().join(name);
        let o = Command::new(psample())
            .args(["record", "-o", out.to_str().unwrap(), "--", "touch"])
            .arg(&marker)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("--format"), "{name}: {err}");
        assert!(!out.exists() && !marker.exists(), "{name}: ran anyway");
    }
    let o = Command::new(psample())
        .args([
            "record",
            "-o",
            dir.path().join("perf.data").to_str().unwrap(),
        ])
        .args(["-p", "1", "-d", "1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not write perf.data"));
    for bad in [
        &["-F", "0"][..],
        &["-F", "-5"],
        &["-d", "0"],
        &["-d", "nan"],
        &["--mmap-pages", "3"],
        &["--label", "pid=1"],
    ] {
        let o = Command::new(psample())
            .arg("record")
            .args(bad)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?} is a usage error");
    }
}

#[test]
fn format_flag_overrides_the_name() {
    require!(Need::Perf);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.data");
    let o = Command::new(psample())
        .args(["record", "--format", "folded", "-o", out.to_str().unwrap()])
        .args(["--", "sh", "-c", "exit 0"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.exists());
}

/// The schema speedscope's npm package ships (fetched once into target/ by `.ci/setup`, or
/// here when it did not run).
fn speedscope_schema() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = root.join("target/ci-npm").join(SPEEDSCOPE);
    let schema = dir.join("package/dist/release/file-format-schema.json");
    if !schema.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let spec = SPEEDSCOPE.replacen('-', "@", 1);
        let o = Command::new("npm")
            .args(["pack", "--silent", &spec])
            .current_dir(&dir)
            .output()
            .expect("npm (comes with nodejs; see .ci/setup)");
        assert!(o.status.success(), "npm pack {spec} failed");
        let st = Command::new("tar")
            .arg("xzf")
            .arg(format!("{SPEEDSCOPE}.tgz"))
            .arg("package/dist/release/file-format-schema.json")
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let _ = std::fs::remove_file(dir.join(format!("{SPEEDSCOPE}.tgz")));
    }
    schema
}

/// Validate `file` against `schema` with python's jsonschema (python3-jsonschema).
fn validate(schema: &Path, file: &Path) {
    let script = "import json,sys,jsonschema\n\
                  s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
                  jsonschema.validate(d, s)\n";
    let ok = ["python3", "/usr/bin/python3"].iter().any(|py| {
        Command::new(py)
            .args(["-c", "import jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success())
            && {
                let o = Command::new(py)
                    .args(["-c", script])
                    .arg(schema)
                    .arg(file)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "{} is not valid speedscope: {}",
                    file.display(),
                    String::from_utf8_lossy(&o.stderr)
                );
                true
            }
    });
    assert!(
        ok,
        "no python3 with jsonschema (apt-get install python3-jsonschema)"
    );
}

/// record and offcpu write speedscope files the schema accepts, with the workload's
/// threads, its call graph and the weights of the folded output.
#[test]
fn speedscope_files_match_the_schema_and_the_folded_profile() {
    require!(Need::SystemWide);
    let _serial = serial();
    let schema = speedscope_schema();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("prof.json");
    let wl = workload("cpu_split_fp");
    let o = Command::new(psample())
        .args(["record", "-F", "499", "-o", json.to_str().unwrap(), "--"])
        .arg(&wl)
        .args(["-t", "2"])
        .env("WL_CPU_SECONDS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    validate(&schema, &json);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let samples = summary_number(&err, "samples").unwrap();
    let profiles = doc["profiles"].as_array().unwrap();
    let total: f64 = profiles
        .iter()
        .map(|p| p["endValue"].as_f64().unwrap())
        .sum();
    assert_eq!(total, samples, "weights add up to the samples");
    assert!(profiles.iter().all(|p| p["name"] == "cpu_split_fp"));
    assert_eq!(profiles[0]["unit"], "none");
    let frames = doc["shared"]["frames"].as_array().unwrap();
    let name = |i: &serde_json::Value| frames[i.as_u64().unwrap() as usize]["name"].clone();
    let hot = profiles[0]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_array().unwrap().iter().any(|f| name(f) == "hot_a"));
    assert!(hot, "hot_a is sampled");

    let off = dir.path().join("off.json");
    let o = Command::new(psample())
        .args(["offcpu", "-o", off.to_str().unwrap(), "--"])
        .args(["sh", "-c", "sleep 0.2"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    validate(&schema, &off);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&off).unwrap()).unwrap();
    assert_eq!(doc["profiles"][0]["unit"], "microseconds", "{doc}");
}
