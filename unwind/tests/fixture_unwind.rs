//! The committed fixture (binaries + maps + samples) unwinds completely using only the
//! committed module files, and hostile inputs never panic.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use proptest::prelude::*;
use unwind::fixture::Fixture;
use unwind::{Processes, StopReason, Unwinder, UserRegs};

fn fixture() -> Fixture {
    Fixture::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/threads"))
        .expect("committed fixture loads")
}

#[test]
fn committed_fixture_unwinds_completely() {
    let fx = fixture();
    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let mut reasons = BTreeMap::new();
    let mut frames = Vec::new();
    for s in &fx.samples {
        frames.clear();
        let r = unwinder.unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut frames);
        *reasons.entry(r.reason).or_insert(0usize) += 1;
        assert!(r.frames >= 3, "{r:?}");
    }
    eprintln!("fixture reasons: {reasons:?}");
    let complete = reasons.get(&StopReason::ReachedEntry).copied().unwrap_or(0);
    assert!(complete * 100 >= fx.samples.len() * 95, "{reasons:?}");
    // The fixture's own files were used: (parsed files, mapping modules) are cached.
    let (files, _) = unwinder.cache_sizes();
    assert!(files >= 2, "exe and libc parsed");
}

#[test]
fn fixture_without_module_files_degrades_cleanly() {
    let fx = fixture();
    let mut unwinder = Unwinder::with_resolver(Box::new(|_, _| None));
    let mut frames = Vec::new();
    for s in &fx.samples {
        frames.clear();
        let r = unwinder.unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut frames);
        assert_eq!(r.frames, frames.len());
        assert!(r.frames >= 1);
    }
}

#[test]
fn unknown_process_or_address_stops_with_no_mapping() {
    let fx = fixture();
    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let s = &fx.samples[0];
    let mut frames = Vec::new();
    let r = unwinder.unwind_dwarf(&fx.processes, fx.pid + 1, s.regs, &s.stack, &mut frames);
    assert_eq!((r.frames, r.reason), (1, StopReason::NoMapping));
    frames.clear();
    let regs = UserRegs { ip: 0x10, ..s.regs };
    let r = unwinder.unwind_dwarf(&fx.processes, fx.pid, regs, &s.stack, &mut frames);
    assert_eq!((r.frames, r.reason), (1, StopReason::NoMapping));
    frames.clear();
    let r = unwinder.unwind_dwarf(&fx.processes, fx.pid, s.regs, &[], &mut frames);
    assert_eq!(r.reason, StopReason::StackOutOfRange);
}

/// Shared across proptest cases: parsing libc per case would dominate the run time.
fn shared() -> &'static (Fixture, Mutex<Unwinder>) {
    static SHARED: OnceLock<(Fixture, Mutex<Unwinder>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let fx = fixture();
        let unwinder = Unwinder::with_resolver(fx.resolver());
        (fx, Mutex::new(unwinder))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_stacks_and_registers_never_panic(
        sample in 0usize..32,
        stack in proptest::collection::vec(any::<u8>(), 0..4096),
        sp_delta in any::<i32>(),
        bp in any::<u64>(),
        use_real_ip in any::<bool>(),
        ip in any::<u64>(),
    ) {
        let (fx, unwinder) = shared();
        let mut unwinder = unwinder.lock().expect("no poisoned lock");
        let real = &fx.samples[sample % fx.samples.len()];
        let regs = UserRegs {
            ip: if use_real_ip { real.regs.ip } else { ip },
            sp: real.regs.sp.wrapping_add_signed(i64::from(sp_delta)),
            bp,
        };
        let mut frames = Vec::new();
        let r = unwinder.unwind_dwarf(&fx.processes, fx.pid, regs, &stack, &mut frames);
        prop_assert_eq!(r.frames, frames.len());
        prop_assert!(r.frames <= unwind::MAX_FRAMES);
        frames.clear();
        let r = unwinder.unwind_fp(&fx.processes, fx.pid, regs, &stack, &mut frames);
        prop_assert_eq!(r.frames, frames.len());
    }

    #[test]
    fn garbage_maps_text_never_panics(text in "\\PC{0,400}", lines in proptest::collection::vec("[0-9a-f]{1,16}-[0-9a-f]{1,16} [rwxp-]{4} [0-9a-f]{1,8} [0-9a-f]{1,3}:[0-9a-f]{1,3} [0-9]{1,6} ?[ -~]{0,20}", 0..20)) {
        let mut procs = Processes::new();
        procs.load_maps_text(1, &text);
        procs.load_maps_text(2, &lines.join("\n"));
        let mut unwinder = Unwinder::with_resolver(Box::new(|_, _| None));
        let mut frames = Vec::new();
        for id in procs.mappings(2).collect::<Vec<_>>() {
            let m = procs.mapping(id).clone();
            prop_assert!(m.start < m.end);
            let regs = UserRegs { ip: m.start, sp: 0x1000, bp: 0 };
            unwinder.unwind_dwarf(&procs, 2, regs, &[0u8; 64], &mut frames);
            unwinder.is_thread_entry(&procs, 2, m.start);
        }
    }
}
