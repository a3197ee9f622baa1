//! The hybrid splice on recorded samples (`tests/fixtures/offmix`, `tests/fixtures/libcsplit`:
//! perf samples with the kernel's frame-pointer callchain, user registers and 16 KiB of
//! stack, of the bundled workloads `sleep_pipe_libc` and `libc_split`, built with frame
//! pointers over the host's libc, which has none). Re-record with `record_hybrid_fixture`.

mod common;

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use common::Names;
use proptest::prelude::*;
use unwind::fixture::{Fixture, FixtureSample};
use unwind::{Completion, HybridResult, StopReason, Unwinder, UserRegs, HYBRID_STACK_BYTES};

fn fixture(name: &str) -> Fixture {
    Fixture::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("committed fixture loads")
}

/// One sample unwound three ways: the kernel's chain alone (fp mode), DWARF over the whole
/// 16 KiB copy (the reference), and hybrid over the default copy size.
struct Unwound {
    fp: Vec<String>,
    full: Vec<u64>,
    hybrid: Vec<u64>,
    hybrid_names: Vec<String>,
    result: HybridResult,
}

fn unwind_all(fx: &Fixture, copy: usize) -> Vec<Unwound> {
    let mut names = Names::in_dir(&fx.dir);
    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let mut out = Vec::new();
    for s in &fx.samples {
        assert!(!s.chain.is_empty(), "fixture has kernel callchains");
        let mut full = Vec::new();
        unwinder.unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut full);
        let mut hybrid = Vec::new();
        let stack = &s.stack[..s.stack.len().min(copy)];
        let result =
            unwinder.unwind_hybrid(&fx.processes, fx.pid, s.regs, stack, &s.chain, &mut hybrid);
        assert_eq!(result.frames, hybrid.len());
        out.push(Unwound {
            fp: names.stack(&fx.processes, fx.pid, &s.chain),
            hybrid_names: names.stack(&fx.processes, fx.pid, &hybrid),
            full,
            hybrid,
            result,
        });
    }
    out
}

fn has(names: &[String], f: &str) -> bool {
    names.iter().any(|n| n == f)
}

/// What every spliced stack must be: DWARF's stack as far as the kernel's chain reaches
/// (the kernel chain of these programs ends at libc's start code, which has no frame
/// pointer), ending where the kernel chain ends.
fn assert_spliced_like_dwarf(u: &Unwound, chain: &[u64]) {
    assert!(
        matches!(u.result.completion, Completion::Spliced { .. }),
        "{:?} {:?}",
        u.result,
        u.hybrid_names
    );
    assert!(u.full.starts_with(&u.hybrid), "{:?}", u.hybrid_names);
    assert_eq!(u.hybrid.last(), chain.last());
    assert_eq!(u.result.dropped, 0);
    assert!(u.result.stack_used <= HYBRID_STACK_BYTES as usize);
}

#[test]
fn offmix_every_blocked_stack_keeps_its_caller() {
    let fx = fixture("offmix");
    let all = unwind_all(&fx, HYBRID_STACK_BYTES as usize);
    let (mut sleep, mut wait, mut fp_lost) = (0, 0, 0);
    for (u, s) in all.iter().zip(&fx.samples) {
        assert_spliced_like_dwarf(u, &s.chain);
        let in_sleep = has(&u.hybrid_names, "sleep_phase");
        let in_wait = has(&u.hybrid_names, "wait_phase");
        assert!(in_sleep != in_wait, "{:?}", u.hybrid_names);
        assert!(has(&u.hybrid_names, "main"));
        sleep += usize::from(in_sleep);
        wait += usize::from(in_wait);
        if !has(&u.fp, "sleep_phase") && !has(&u.fp, "wait_phase") {
            fp_lost += 1;
            assert!(u.result.recovered() >= 1, "{:?}", u.result);
        }
    }
    eprintln!("offmix: sleep_phase {sleep}, wait_phase {wait}, lost by fp {fp_lost}");
    // One switch-out per phase per iteration: by count the two are about even (their
    // 70/30 is in blocked time, checked live). The kernel's chain lost the caller in all.
    assert!(sleep >= 30 && wait >= 30);
    assert_eq!(fp_lost, all.len());
}

#[test]
fn libcsplit_samples_in_libc_keep_their_caller_and_the_70_30_split() {
    let fx = fixture("libcsplit");
    let all = unwind_all(&fx, HYBRID_STACK_BYTES as usize);
    let (mut a, mut b) = (0usize, 0usize);
    for (u, s) in all.iter().zip(&fx.samples) {
        assert_spliced_like_dwarf(u, &s.chain);
        if u.hybrid_names
            .first()
            .is_some_and(|n| n.starts_with("__memchr"))
        {
            // A frameless libc leaf: the kernel's chain skips the scan function.
            assert!(!has(&u.fp, "scan_a") && !has(&u.fp, "scan_b"), "{:?}", u.fp);
            assert!(u.result.recovered() >= 1);
        }
        a += usize::from(has(&u.hybrid_names, "scan_a"));
        b += usize::from(has(&u.hybrid_names, "scan_b"));
    }
    let share = a as f64 / (a + b).max(1) as f64;
    eprintln!("libcsplit: scan_a {a}, scan_b {b}: {:.1} %", share * 100.0);
    assert!(a + b >= all.len() * 9 / 10);
    assert!((0.6..=0.8).contains(&share), "scan_a share {share}");
}

fn offmix_sample(fx: &Fixture, leaf: &str) -> FixtureSample {
    let mut names = Names::in_dir(&fx.dir);
    fx.samples
        .iter()
        .find(|s| names.name(&fx.processes, fx.pid, s.regs.ip, false) == leaf)
        .expect("a sample with that leaf")
        .clone()
}

fn hybrid(
    fx: &Fixture,
    s: &FixtureSample,
    regs: UserRegs,
    copy: usize,
    chain: &[u64],
) -> (HybridResult, Vec<u64>) {
    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let mut out = Vec::new();
    let stack = &s.stack[..s.stack.len().min(copy)];
    let r = unwinder.unwind_hybrid(&fx.processes, fx.pid, regs, stack, chain, &mut out);
    assert_eq!(r.frames, out.len());
    (r, out)
}

/// The fewest bytes of copy with which the splice is made (the extent of the frames below
/// the first one with a frame record).
fn needed_copy(unwinder: &mut Unwinder, fx: &Fixture, s: &FixtureSample) -> usize {
    let mut out = Vec::new();
    (0..=s.stack.len())
        .step_by(8)
        .find(|&n| {
            out.clear();
            let r = unwinder.unwind_hybrid(
                &fx.processes,
                fx.pid,
                s.regs,
                &s.stack[..n],
                &s.chain,
                &mut out,
            );
            matches!(r.completion, Completion::Spliced { .. })
        })
        .expect("spliced with the whole copy")
}

#[test]
fn the_default_copy_covers_every_recorded_leaf_with_room_to_spare() {
    for name in ["offmix", "libcsplit", "rbpclobber"] {
        let fx = fixture(name);
        let mut unwinder = Unwinder::with_resolver(fx.resolver());
        let mut needed: Vec<usize> = fx
            .samples
            .iter()
            .map(|s| needed_copy(&mut unwinder, &fx, s))
            .collect();
        needed.sort_unstable();
        let max = needed.last().copied().unwrap_or(0);
        eprintln!(
            "{name}: copy needed: median {} max {max} bytes",
            needed[needed.len() / 2]
        );
        assert!(max * 4 <= HYBRID_STACK_BYTES as usize, "{name}: {max}");
    }
}

#[test]
fn without_a_usable_copy_the_kernel_chain_is_kept_as_it_is() {
    let fx = fixture("offmix");
    let s = offmix_sample(&fx, "clock_nanosleep");
    // No stack bytes: DWARF cannot unwind even the leaf.
    let (r, out) = hybrid(&fx, &s, s.regs, 0, &s.chain);
    assert_eq!(r.completion, Completion::KernelOnly);
    assert_eq!(out, s.chain);
    // A chain taken at another IP does not line up with these registers.
    let mut other = s.chain.clone();
    other[0] += 1;
    let (r, out) = hybrid(&fx, &s, s.regs, 512, &other);
    assert_eq!(r.completion, Completion::KernelOnly);
    assert_eq!(out, other);
}

#[test]
fn a_copy_too_short_to_meet_the_chain_keeps_both_with_a_possible_gap() {
    let fx = fixture("offmix");
    let s = offmix_sample(&fx, "clock_nanosleep");
    let (full, _) = hybrid(&fx, &s, s.regs, 512, &s.chain);
    assert!(full.stack_used > 8, "{full:?}");
    // 8 bytes: clock_nanosleep's return into nanosleep, not nanosleep's into sleep_phase.
    let (r, out) = hybrid(&fx, &s, s.regs, 8, &s.chain);
    assert_eq!(
        r.completion,
        Completion::Unanchored {
            dwarf: 2,
            kernel: 1
        }
    );
    assert_eq!(out[0], s.regs.ip);
    assert_eq!(&out[2..], &s.chain[1..]);
    assert_eq!(r.dropped, 0);
}

#[test]
fn kernel_entries_the_dwarf_walk_disproves_are_dropped() {
    // rbp_clobber.c: mix() keeps a pointer to a decoy record in rbp; the kernel's walk
    // reports the decoy (an address in decoy(), not a return address), then rejoins the true
    // chain at spin's record. mix's CFI says where its caller's return address really is.
    let fx = fixture("rbpclobber");
    let all = unwind_all(&fx, HYBRID_STACK_BYTES as usize);
    let (mut in_mix, mut decoys) = (0, 0);
    for (u, s) in all.iter().zip(&fx.samples) {
        if u.hybrid_names.first().map(String::as_str) != Some("mix") {
            continue;
        }
        in_mix += 1;
        if !has(&u.fp, "decoy") {
            // Sampled in mix's prologue or epilogue, before rbp held the decoy.
            continue;
        }
        decoys += 1;
        assert_eq!(&u.fp[..2], ["mix", "decoy"], "{:?}", u.fp);
        assert_eq!(u.result.dropped, 1, "{:?}", u.result);
        assert_eq!(
            u.result.completion,
            Completion::Spliced { at: 2, kernel: 2 }
        );
        assert_eq!(
            &u.hybrid_names[..3],
            ["mix", "spin", "main"],
            "{:?}",
            u.hybrid_names
        );
        assert_eq!(&u.hybrid[2..], &s.chain[2..]);
        assert!(u.full.starts_with(&u.hybrid));
    }
    assert!(
        in_mix >= 30 && decoys * 10 >= in_mix * 9,
        "{in_mix} in mix, {decoys} decoys"
    );

    // rbp pointing below the stack: the kernel's entries read there are not return
    // addresses; all go.
    let fx = fixture("offmix");
    let s = offmix_sample(&fx, "clock_nanosleep");
    let (_, reference) = hybrid(&fx, &s, s.regs, 512, &s.chain);
    let regs = UserRegs {
        bp: s.regs.sp - 64,
        ..s.regs
    };
    let chain = [s.regs.ip, 0x1234, 0x5678];
    let (r, out) = hybrid(&fx, &s, regs, 16384, &chain);
    assert_eq!(r.completion, Completion::DwarfOnly, "{r:?}");
    assert_eq!(r.dropped, 2);
    assert_eq!(&out[..3], &reference[..3]);
    assert!(!out.contains(&0x1234) && !out.contains(&0x5678));
}

#[test]
fn modules_without_unwind_information_keep_the_kernel_chain() {
    let fx = fixture("libcsplit");
    // Neither the program nor libc can be opened: no CFI anywhere, so the leaf is walked
    // by frame pointer, exactly like the kernel did.
    let mut unwinder = Unwinder::with_resolver(Box::new(|_, _| None));
    let mut out = Vec::new();
    for s in &fx.samples {
        out.clear();
        unwinder.unwind_hybrid(&fx.processes, fx.pid, s.regs, &s.stack, &s.chain, &mut out);
        assert_eq!(out, s.chain);
    }
}

#[test]
fn without_a_kernel_chain_it_is_a_dwarf_unwind_of_the_copy() {
    let fx = fixture("offmix");
    let s = &fx.samples[0];
    let (r, out) = hybrid(&fx, s, s.regs, 16384, &[]);
    assert_eq!(r.completion, Completion::DwarfOnly);
    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let mut full = Vec::new();
    let d = unwinder.unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut full);
    assert_eq!(out, full);
    assert_eq!(r.reason, d.reason);
    assert_ne!(r.reason, StopReason::StackOutOfRange);
}

/// Shared across proptest cases: parsing libc per case would dominate the run time.
fn shared() -> &'static (Fixture, Mutex<Unwinder>) {
    static SHARED: OnceLock<(Fixture, Mutex<Unwinder>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let fx = fixture("offmix");
        let unwinder = Unwinder::with_resolver(fx.resolver());
        (fx, Mutex::new(unwinder))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_chains_stacks_and_registers_never_panic(
        sample in 0usize..80,
        copy in 0usize..1024,
        flip in proptest::collection::vec((0usize..1024, any::<u8>()), 0..8),
        chain_noise in proptest::collection::vec(any::<u64>(), 0..40),
        keep_chain in 0usize..8,
        bp in proptest::option::of(any::<u64>()),
        sp_delta in -64i64..64,
    ) {
        let (fx, unwinder) = shared();
        let mut unwinder = unwinder.lock().expect("no poisoned lock");
        let s = &fx.samples[sample % fx.samples.len()];
        let mut stack = s.stack[..s.stack.len().min(copy)].to_vec();
        for (at, v) in flip {
            if let Some(b) = stack.get_mut(at) {
                *b = v;
            }
        }
        let mut chain: Vec<u64> = s.chain.iter().copied().take(keep_chain).collect();
        chain.extend(chain_noise);
        let regs = UserRegs {
            bp: bp.unwrap_or(s.regs.bp),
            sp: s.regs.sp.wrapping_add_signed(sp_delta * 8),
            ..s.regs
        };
        let mut out = vec![7];
        let r = unwinder.unwind_hybrid(&fx.processes, fx.pid, regs, &stack, &chain, &mut out);
        prop_assert_eq!(out[0], 7);
        prop_assert_eq!(r.frames, out.len() - 1);
        prop_assert!(r.frames <= unwind::MAX_FRAMES);
        prop_assert!(r.frames >= 1);
        prop_assert!(r.stack_used <= stack.len());
        prop_assert!(out[1..].iter().all(|&a| a != 0));
    }
}
