//! Binaries as distros ship them: stripped of every symbol but `.dynsym`, static functions
//! unnamed, debug info elsewhere. Built here from `workloads/distro_demo.c`, stripped with
//! binutils, and profiled for real.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// A stripped copy of distro_demo with its debug file kept apart, and the function table of
/// the unstripped build (name → (file offset of the start, size)).
pub struct Stripped {
    pub dir: tempfile::TempDir,
    pub binary: PathBuf,
    pub debug: PathBuf,
    pub functions: BTreeMap<String, (u64, u64)>,
    pub build_id: String,
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (binutils) is needed: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The PIE's text is linked at file offset == address (checked), so `nm`'s addresses are
/// the file offsets psample names unnamed code by.
fn text_offset_is_address(binary: &Path) {
    let phdrs = tool("readelf", &["-lW", binary.to_str().unwrap()]);
    let text = phdrs
        .lines()
        .find(|l| l.trim_start().starts_with("LOAD") && l.contains("R E"))
        .expect("an executable LOAD segment");
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        u64::from_str_radix(f[1].trim_start_matches("0x"), 16).unwrap(),
        u64::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap(),
        "text segment offset != address: {text}"
    );
}

pub fn stripped_demo() -> Stripped {
    let built = workload("distro_demo");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("distro_demo");
    let debug = dir.path().join("distro_demo.debug");
    std::fs::copy(&built, &binary).unwrap();
    let (b, d) = (binary.to_str().unwrap(), debug.to_str().unwrap());
    tool("objcopy", &["--only-keep-debug", b, d]);
    // As dh_strip does for a program: everything but what the dynamic linker needs.
    tool(
        "strip",
        &["--strip-unneeded", "--remove-section=.comment", b],
    );
    let sections = tool("readelf", &["-SW", b]);
    assert!(!sections.contains(".symtab") && !sections.contains(".debug_info"));
    text_offset_is_address(&binary);
    let mut functions = BTreeMap::new();
    for l in tool("nm", &["-S", built.to_str().unwrap()]).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 4 && (f[2] == "t" || f[2] == "T") {
            let addr = u64::from_str_radix(f[0], 16).unwrap();
            let size = u64::from_str_radix(f[1], 16).unwrap();
            functions.insert(f[3].to_string(), (addr, size));
        }
    }
    let notes = tool("readelf", &["-n", b]);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("build-id note")
        .to_string();
    Stripped {
        dir,
        binary,
        debug,
        functions,
        build_id,
    }
}

impl Stripped {
    pub fn frame(&self, function: &str) -> String {
        format!("distro_demo+0x{:x}", self.functions[function].0)
    }
}

#[test]
fn stripped_static_functions_are_one_frame_each_named_by_their_start() {
    require_perf_access();
    let _g = serial();
    let s = stripped_demo();
    let bin = s.binary.to_str().unwrap().to_string();
    let out = run_psample(&["record", "-F", "499", "--", &bin, "-s", "2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let folded = parse_folded(&out.folded);

    // Every frame in the stripped binary is a function start: no per-address siblings.
    let starts: BTreeSet<String> = s.functions.keys().map(|f| s.frame(f)).collect();
    let ours: BTreeSet<&str> = folded
        .keys()
        .flat_map(|k| k.split(';'))
        .filter(|f| f.starts_with("distro_demo+0x"))
        .collect();
    let stray: Vec<&&str> = ours.iter().filter(|f| !starts.contains(**f)).collect();
    assert!(
        stray.is_empty(),
        "frames not at a function start: {stray:?}"
    );
    let path = format!(
        "{};{};{}",
        s.frame("main"),
        s.frame("demo_round"),
        s.frame("demo_alpha")
    );
    let alpha: u64 = folded
        .iter()
        .filter(|(k, _)| k.contains(&path))
        .map(|(_, c)| c)
        .sum();
    let beta = count_with(&folded, &s.frame("demo_beta"));
    let total: u64 = folded.values().sum();
    assert!(
        alpha * 2 >= total && beta > 0 && alpha > beta,
        "main;demo_round;demo_alpha {alpha}, demo_beta {beta} of {total}:\n{}",
        out.folded
    );
}

/// (address, mapping id, function name) of one pprof location.
type RawLocation = (u64, u64, String);

/// `go tool pprof -raw`: every location, and each mapping's (start, file offset) by id.
fn pprof_raw(file: &Path) -> (Vec<RawLocation>, BTreeMap<u64, (u64, u64)>) {
    let raw = tool("go", &["tool", "pprof", "-raw", file.to_str().unwrap()]);
    let mut locations = Vec::new();
    let mut mappings = BTreeMap::new();
    let mut section = "";
    for l in raw.lines() {
        match l.trim() {
            "Locations" | "Mappings" => section = l.trim(),
            t if section == "Locations" => {
                // "3: 0x563acb5da374 M=1 dd+0x1110 :0 s=0"
                let f: Vec<&str> = t.split_whitespace().collect();
                if let (Some(addr), Some(m), Some(name)) = (
                    f.get(1).and_then(|a| a.strip_prefix("0x")),
                    f.get(2).and_then(|m| m.strip_prefix("M=")),
                    f.get(3),
                ) {
                    locations.push((
                        u64::from_str_radix(addr, 16).unwrap(),
                        m.parse().unwrap(),
                        name.to_string(),
                    ));
                }
            }
            t if section == "Mappings" => {
                // "1: 0x563acb5da000/0x563acb5db000/0x1000 /tmp/x/distro_demo ID [FN]"
                let f: Vec<&str> = t.split_whitespace().collect();
                if let (Some(id), Some(range)) = (f.first(), f.get(1)) {
                    let r: Vec<u64> = range
                        .split('/')
                        .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap())
                        .collect();
                    mappings.insert(id.trim_end_matches(':').parse().unwrap(), (r[0], r[2]));
                }
            }
            _ => {}
        }
    }
    (locations, mappings)
}

#[test]
fn pprof_keeps_exact_addresses_of_unnamed_functions() {
    require_perf_access();
    let _g = serial();
    let s = stripped_demo();
    let bin = s.binary.to_str().unwrap().to_string();
    let out_file = s.dir.path().join("out.pb.gz");
    let o = Command::new(psample())
        .args(["record", "-F", "499", "-o"])
        .arg(&out_file)
        .args(["--", &bin, "-s", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (locations, mappings) = pprof_raw(&out_file);
    let mut by_function: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (addr, m, name) in &locations {
        let Some(function) = s.functions.keys().find(|f| s.frame(f) == *name) else {
            continue;
        };
        let (start, pgoff) = mappings[m];
        let offset = addr - start + pgoff;
        let (fstart, size) = s.functions[function];
        assert!(
            (fstart..fstart + size).contains(&offset),
            "location 0x{addr:x} (offset 0x{offset:x}) is named {name} but lies outside \
             {function} 0x{fstart:x}+0x{size:x}"
        );
        by_function.entry(function).or_default().insert(offset);
    }
    let alpha = by_function.get("demo_alpha").map_or(0, BTreeSet::len);
    assert!(
        alpha >= 2,
        "demo_alpha's samples should keep their distinct addresses: {by_function:?}"
    );
}
