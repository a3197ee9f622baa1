//! Regenerates `tests/fixtures/threads/` (run explicitly:
//! `cargo test -p unwind --test record_fixture -- --ignored`). Ignored by default because it
//! rewrites committed files; the committed fixture is checked by `fixture_unwind.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{build_programs, spawn, Sampler};
use unwind::fixture::{encode_samples, FixtureSample};
use unwind::Processes;

#[test]
#[ignore]
fn record_threads_fixture() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/threads");
    std::fs::create_dir_all(&out).expect("mkdir");
    let built = build_programs();
    let prog = built.dir.path().join("prog");
    let mut target = spawn(&prog, &["threads", "2", "0"]);
    target.wait_for("went");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).expect("maps");
    let mut sampler = Sampler::attach(target.pid());
    assert_eq!(sampler.tids().len(), 3);
    let samples = sampler.run(32, Duration::from_millis(3));
    assert_eq!(samples.len(), 32);

    // Module files travel with the fixture under their basename.
    for line in Processes::parse_maps(&maps) {
        if !line.exec || !line.path.starts_with('/') {
            continue;
        }
        let name = Path::new(&line.path).file_name().expect("file name");
        if name.to_string_lossy().starts_with("ld-linux") {
            // The dynamic loader has no frames in steady-state samples.
            continue;
        }
        std::fs::copy(&line.path, out.join(name)).expect("copy module");
    }
    std::fs::write(out.join("maps.txt"), &maps).expect("write maps");
    // The main thread's samples are keyed by the process id; workers by their own tid but
    // all unwind in the process's space.
    let pid = target.pid();
    let mut fixture: Vec<FixtureSample> = samples
        .into_iter()
        .map(|s| FixtureSample {
            tid: s.tid,
            regs: s.regs,
            stack: s.stack,
            chain: Vec::new(),
        })
        .collect();
    // The loader takes the process id from the first sample.
    fixture.sort_by_key(|s| s.tid != pid);
    std::fs::write(out.join("samples.bin"), encode_samples(&fixture)).expect("write samples");
}
