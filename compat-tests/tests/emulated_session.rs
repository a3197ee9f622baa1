//! perfring against every emulated kernel: which fallbacks the ladder takes, that the
//! records each kernel writes parse with the accepted attr, that LOST is reported, and how
//! the BPF ioctl answers.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::Arc;

use compat_tests::profile::{self, KernelProfile};
use compat_tests::workload::Workload;
use compat_tests::{Action, BpfPolicy, EmulatedKernel, Script};
use perfring::attr::{flag, sample, AttrBuilder, EventKind, RawAttr};
use perfring::event::Session;
use perfring::features::{Feature, Support};
use perfring::record::{parse_record, Record};
use perfring::sys::{Errno, Ioctl, Kernel};

/// Everything psample may ask for at once (record's attr plus offcpu's extras).
fn wanted_attr() -> RawAttr {
    AttrBuilder::new(EventKind::CpuClock)
        .frequency(99)
        .sample_type(sample::IP | sample::TID | sample::TIME | sample::CPU | sample::CALLCHAIN)
        .disabled(true)
        .mmap(true)
        .mmap2(true)
        .comm(true)
        .comm_exec(true)
        .task(true)
        .sample_id_all(true)
        .use_clockid(Some(libc::CLOCK_MONOTONIC))
        .context_switch(true)
        .sample_max_stack(64)
        .build()
}

/// The fallbacks each profile must report for [`wanted_attr`], from kernel-compat.md.
fn expected_fallbacks(p: &KernelProfile) -> BTreeSet<Feature> {
    use Feature::*;
    let v: &[Feature] = match p.name {
        "3.10" => &[
            Cloexec,
            Mmap2,
            CommExec,
            UseClockid,
            ContextSwitch,
            SampleMaxStack,
            IocId,
            RingDataOffset,
        ],
        "rhel-7-early" => &[UseClockid, ContextSwitch, SampleMaxStack, RingDataOffset],
        // RHEL 7.9 accepts sample_max_stack without honouring it: no fallback is visible
        // (see rhel7_accepts_sample_max_stack_without_effect).
        "rhel-7.9" | "4.9" | "4.19" | "5.4" | "5.15" | "6.x" => &[],
        other => panic!("no expectation for profile {other}"),
    };
    v.iter().copied().collect()
}

struct Setup {
    kernel: Arc<EmulatedKernel>,
    workload: Workload,
}

fn setup(p: KernelProfile, script: impl FnOnce(&Workload) -> Script) -> Setup {
    let workload = Workload::start().expect("workload");
    let script = script(&workload);
    let kernel = Arc::new(EmulatedKernel::new(p, script).expect("profile"));
    Setup { kernel, workload }
}

fn open_session(s: &Setup, attr: RawAttr, pages: usize) -> Session {
    let mut session = Session::new(s.kernel.clone(), pages);
    let spec = session.add_spec("cpu-clock", attr);
    for tid in [s.workload.pid, s.workload.worker_tid] {
        for cpu in [0, 1] {
            session
                .open(spec, tid as i32, cpu)
                .unwrap_or_else(|e| panic!("{}: open failed: {e}", s.kernel.profile().name));
        }
    }
    session
}

#[test]
fn the_ladder_takes_each_kernels_fallbacks_once() {
    for p in profile::all() {
        let name = p.name;
        let s = setup(p, |_| Script::new());
        let session = open_session(&s, wanted_attr(), 4);
        let got: BTreeSet<Feature> = session.ladder.fallbacks().into_iter().collect();
        assert_eq!(got, expected_fallbacks(s.kernel.profile()), "{name}");
        // Walked once: after the first success every later open is accepted first time.
        let opens = s.kernel.opens();
        let first_ok = opens.iter().position(|o| o.result.is_ok()).unwrap();
        assert!(
            opens[first_ok..].iter().all(|o| o.result.is_ok()),
            "{name}: later opens were refused: {:?}",
            opens.iter().map(|o| o.result).collect::<Vec<_>>()
        );
        assert_eq!(opens.len() - first_ok, 4, "{name}");
        // What the kernel stored is what the session parses with.
        let fmt = session.sample_format().unwrap();
        for (attr, _, _) in s.kernel.open_events() {
            assert_eq!(attr.sample_type, fmt.sample_type, "{name}");
            assert!(attr.flags & !s.kernel.profile().known_flags == 0, "{name}");
        }
        // Never a version check: every refusal was an errno the ladder read.
        for o in &opens[..first_ok] {
            assert!(
                matches!(o.result, Err(Errno::EINVAL | Errno::E2BIG)),
                "{name}: {:?}",
                o.result
            );
        }
    }
}

#[test]
fn hardware_events_fall_back_to_cpu_clock_everywhere() {
    for p in profile::all() {
        let name = p.name;
        let s = setup(p, |_| Script::new());
        let attr = AttrBuilder::new(EventKind::Cycles)
            .frequency(99)
            .sample_type(sample::IP | sample::TID)
            .disabled(true)
            .precise_ip(2)
            .build();
        let session = open_session(&s, attr, 1);
        assert_eq!(
            session.ladder.support(Feature::Hardware),
            Support::No,
            "{name}"
        );
        let (stored, _, _) = s.kernel.open_events()[0];
        assert_eq!(stored.type_, perfring::attr::event_type::SOFTWARE, "{name}");
    }
}

fn sideband_and_samples(w: &Workload) -> Script {
    let main = w.main_task();
    let worker = w.worker_task();
    let hot = w
        .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
        .unwrap();
    let spin = w.stack(&["emu_worker_spin", "emu_worker_main"]).unwrap();
    let mut s = Script::new();
    s.push(
        0,
        0,
        Action::Mmap {
            task: main.clone(),
            map: w.text_mapping(),
        },
    );
    s.push(
        10,
        1,
        Action::Comm {
            task: worker.clone(),
            exec: false,
        },
    );
    s.on_cpu(&main, &hot, 0, 1_000, 1_000, 30);
    s.on_cpu(&worker, &spin, 1, 1_500, 1_000, 20);
    s
}

#[test]
fn every_kernels_records_parse_with_the_accepted_layout() {
    for p in profile::all() {
        let name = p.name;
        let knows_mmap2 = p.knows_flag(flag::MMAP2);
        let s = setup(p, sideband_and_samples);
        let mut session = open_session(&s, wanted_attr(), 8);
        session.enable().unwrap();
        s.kernel.run_due(true);
        let fmt = session.sample_format().unwrap();
        let (mut samples, mut mmaps, mut mmap2s, mut comms, mut errors) = (0, 0, 0, 0, 0);
        let mut last_time = [0u64; 2];
        let mut ids = Vec::new();
        session.drain(|cpu, bytes| match parse_record(bytes, &fmt) {
            Ok(Record::Sample(smp)) => {
                samples += 1;
                ids.push(smp.id.expect("PERF_SAMPLE_ID is always on"));
                let t = smp.time.unwrap();
                assert!(t >= last_time[cpu as usize], "{name}: ring out of order");
                last_time[cpu as usize] = t;
                assert_eq!(smp.cpu, Some(cpu), "{name}");
                let chain: Vec<u64> = smp.callchain.unwrap().iter().collect();
                assert_eq!(chain[0], compat_tests::encode::CONTEXT_USER, "{name}");
            }
            Ok(Record::Mmap(m)) => {
                if m.is_mmap2() {
                    mmap2s += 1;
                } else {
                    mmaps += 1;
                }
                // sample_id_all is known everywhere, so the trailer is there.
                assert!(m.sample_id.time.is_some(), "{name}");
            }
            Ok(Record::Comm(c)) => {
                comms += 1;
                assert!(!c.exec, "{name}");
                assert_eq!(c.comm, b"emu_worker", "{name}");
            }
            Ok(other) => panic!("{name}: unexpected {other:?}"),
            Err(e) => {
                errors += 1;
                eprintln!("{name}: {e}");
            }
        });
        assert_eq!(errors, 0, "{name}");
        assert_eq!(samples, 50, "{name}");
        // Ids came from IOC_ID or, before 3.12, from read(): either way they resolve.
        assert!(
            ids.iter().all(|id| session.spec_for_id(*id) == Some(0)),
            "{name}"
        );
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>().len(),
            2,
            "{name}: one event per thread and CPU"
        );
        assert_eq!(comms, 1, "{name}");
        if knows_mmap2 {
            assert_eq!(
                (mmaps, mmap2s),
                (0, 1),
                "{name}: MMAP2 where mmap2 is known"
            );
        } else {
            assert_eq!((mmaps, mmap2s), (1, 0), "{name}: plain MMAP before mmap2");
        }
        let expect_legacy = !s.kernel.profile().ring_data_offset;
        assert_eq!(
            session.ladder.support(Feature::RingDataOffset) == Support::No,
            expect_legacy,
            "{name}"
        );
    }
}

#[test]
fn a_full_ring_reports_lost_records() {
    for p in profile::all() {
        let name = p.name;
        let s = setup(p, |w| {
            let mut s = Script::new();
            let stack = w
                .stack(&["emu_leaf_b", "emu_work", "emu_run", "main"])
                .unwrap();
            // A burst far beyond one 4 KiB ring, then a trickle after the reader caught up.
            s.on_cpu(&w.main_task(), &stack, 0, 0, 100, 2_000);
            s.on_cpu(&w.main_task(), &stack, 0, 1_000_000, 100, 5);
            s
        });
        let mut session = open_session(&s, wanted_attr(), 1);
        session.enable().unwrap();
        s.kernel.run_until(500_000);
        let mut read = 0u64;
        session.drain(|_, _| read += 1);
        let burst_lost = s.kernel.delivery().lost;
        assert!(
            burst_lost > 0,
            "{name}: a 4 KiB ring cannot hold 2000 samples"
        );
        // The kernel reports the loss only in front of the next record that fits.
        assert_eq!(session.ring_stats()[0].1.lost_records, 0, "{name}");
        s.kernel.run_until(2_000_000);
        session.drain(|_, _| read += 1);
        let stats = session.ring_stats()[0].1;
        let d = s.kernel.delivery();
        assert_eq!(d.lost, burst_lost, "{name}: the trickle fits");
        assert_eq!(stats.lost_records, burst_lost, "{name}");
        assert_eq!(stats.lost_events, 1, "{name}");
        assert_eq!(d.samples + d.lost, 2_005, "{name}");
        // Every sample written was read, plus the one LOST record.
        assert_eq!(read, d.samples + 1, "{name}");
    }
}

#[test]
fn rhel7_accepts_sample_max_stack_without_effect() {
    for p in [profile::rhel_7_9(), profile::v4_9()] {
        let honours = p.honours_sample_max_stack;
        let s = setup(p, |w| {
            let mut s = Script::new();
            let stack = w
                .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
                .unwrap();
            s.on_cpu(&w.main_task(), &stack, 0, 0, 100, 1);
            s
        });
        let attr = AttrBuilder::new(EventKind::CpuClock)
            .frequency(99)
            .sample_type(sample::TID | sample::CALLCHAIN)
            .disabled(true)
            .sample_max_stack(2)
            .build();
        let mut session = open_session(&s, attr, 1);
        assert_eq!(
            session.ladder.support(Feature::SampleMaxStack),
            Support::Yes
        );
        session.enable().unwrap();
        s.kernel.run_due(true);
        let fmt = session.sample_format().unwrap();
        let mut frames = None;
        session.drain(|_, b| {
            if let Ok(Record::Sample(smp)) = parse_record(b, &fmt) {
                frames = Some(smp.callchain.unwrap().len() - 1);
            }
        });
        // The open succeeded on both; only the frame count shows whether it worked.
        assert_eq!(frames, Some(if honours { 2 } else { 4 }));
    }
}

#[test]
fn bpf_attach_is_refused_cleanly_where_the_kernel_cannot_do_it() {
    // A real BPF program loaded on this host (root needed; fail loudly without it).
    let counter = perfring::bpf::stack_counter::StackCounter::load(&Default::default())
        .expect("loading the BPF stack counter needs root and a BPF-capable host kernel");
    for p in profile::all() {
        let name = p.name;
        let has_set_bpf = p.ioc_set_bpf;
        let is_rhel = name.starts_with("rhel");
        let s = setup(p, |w| {
            let mut s = Script::new();
            let stack = w
                .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
                .unwrap();
            s.on_cpu(&w.main_task(), &stack, 0, 0, 100, 10);
            s
        });
        if is_rhel {
            // RHEL 7's eBPF is a tracing-only tech preview: assume perf_event programs fail.
            s.kernel.set_bpf_policy(BpfPolicy::Refuse(Errno::EINVAL));
        }
        let mut session = open_session(&s, wanted_attr(), 4);
        let fds: Vec<_> = session.fds_of(0).collect();
        let answer = s.kernel.ioctl(fds[0], Ioctl::SetBpf(counter.prog_fd()));
        let expected = match (has_set_bpf, is_rhel) {
            (false, _) => Err(Errno::ENOTTY),
            (true, true) => Err(Errno::EINVAL),
            (true, false) => Ok(0),
        };
        assert_eq!(answer, expected, "{name}");
        // A non-BPF fd is never taken for a program.
        if has_set_bpf && !is_rhel {
            let not_bpf = s.kernel.ioctl(fds[1], Ioctl::SetBpf(fds[1]));
            assert_eq!(not_bpf, Err(Errno::EBADF), "{name}");
        }
        drop(fds);
        // A refused attach leaves the event sampling into its ring as before.
        session.enable().unwrap();
        s.kernel.run_due(true);
        let mut samples = 0;
        let fmt = session.sample_format().unwrap();
        session.drain(|_, b| {
            if let Ok(Record::Sample(_)) = parse_record(b, &fmt) {
                samples += 1;
            }
        });
        let to_bpf = s.kernel.delivery().to_bpf;
        if answer.is_ok() {
            assert_eq!(
                (samples, to_bpf),
                (0, 10),
                "{name}: samples go to the program"
            );
        } else {
            assert_eq!((samples, to_bpf), (10, 0), "{name}: fallback to the ring");
        }
    }
}

#[test]
fn pause_output_and_filters() {
    for p in profile::all() {
        let name = p.name;
        let has_pause = p.ioc_pause_output;
        let s = setup(p, |_| Script::new());
        let session = open_session(&s, wanted_attr(), 1);
        let fd = session.fds_of(0).next().unwrap();
        let r = s.kernel.ioctl(fd.as_fd(), Ioctl::PauseOutput(true));
        assert_eq!(r.is_ok(), has_pause, "{name}: {r:?}");
        if !has_pause {
            assert_eq!(r, Err(Errno::ENOTTY), "{name}");
        }
        // Filters apply to tracepoints only.
        assert_eq!(
            s.kernel.ioctl(fd, Ioctl::SetFilter("prev_pid == 1")),
            Err(Errno::EINVAL),
            "{name}"
        );
    }
}
