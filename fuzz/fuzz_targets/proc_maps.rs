//! Arbitrary text as /proc/PID/maps (attacker-influenced: paths are chosen by whoever maps
//! files): parsing and building an address space from it must never panic, and lookups
//! must only return mappings that contain the address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unwind::Processes;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = Processes::parse_maps(&text);
    let mut procs = Processes::new();
    procs.load_maps_text(1, &text);
    for line in &lines {
        assert!(line.start < line.end, "parser returned an empty range: {line:?}");
        let _ = line.inode_triple();
        for addr in [line.start, line.end - 1, line.end, line.start.wrapping_sub(1)] {
            if let Some(id) = procs.find(1, addr) {
                let m = procs.get(id).expect("id from this Processes");
                assert!(m.start <= addr && addr < m.end, "{m:?} does not hold {addr:#x}");
            }
        }
        // The same lines as MMAP records of a forked child, then an exec.
        procs.on_mmap(2, line.start, line.end - line.start, line.pgoff, &line.path, line.exec, line.inode_triple(), None);
    }
    procs.on_fork(2, 3);
    let n = procs.mappings(3).count();
    std::hint::black_box(n);
    procs.on_exec(2);
    procs.on_exit(3);
});
