//! Side-by-side with `perf record --call-graph dwarf` + `perf script` on the same binary
//! (2 busy threads, 70/30 split). Ignored by default: it needs the `perf` tool and runs for
//! several seconds. Run: `cargo test -p unwind --test compare_perf -- --ignored --nocapture`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{build_programs, has_chain, spawn, Names, Sampler};
use unwind::{Processes, StopReason, Unwinder};

struct Score {
    samples: usize,
    reach_thread_main: usize,
    hot1: usize,
    hot2: usize,
}

impl Score {
    fn add(&mut self, names: &[String]) {
        self.samples += 1;
        if has_chain(names, &["a", "thread_main"]) {
            self.reach_thread_main += 1;
        }
        if has_chain(names, &["work", "hot1", "c", "b", "a"]) {
            self.hot1 += 1;
        } else if has_chain(names, &["work", "hot2", "c", "b", "a"]) {
            self.hot2 += 1;
        }
    }

    fn print(&self, label: &str) {
        eprintln!(
            "{label}: {} samples, {:.1}% reach thread_main, hot1 {:.1}% of {} work samples",
            self.samples,
            100.0 * self.reach_thread_main as f64 / self.samples.max(1) as f64,
            100.0 * self.hot1 as f64 / (self.hot1 + self.hot2).max(1) as f64,
            self.hot1 + self.hot2
        );
    }
}

#[test]
#[ignore]
fn psample_unwinder_is_at_least_as_complete_as_perf() {
    test_support::require!(test_support::Need::Perf);
    let built = build_programs();
    let mut target = spawn(&built.prog, &["threads", "2", "0"]);
    target.wait_for("went");
    let pid = target.pid();

    let perf_data = built.dir.path().join("perf.data");
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "--call-graph",
            "dwarf,16384",
        ])
        .arg("-o")
        .arg(&perf_data)
        .args(["-p", &pid.to_string(), "--", "sleep", "3"])
        .status()
        .expect("perf must be installed");
    assert!(status.success());
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(&perf_data)
        .args(["-F", "tid,ip,sym"])
        .output()
        .expect("perf script");
    let text = String::from_utf8_lossy(&script.stdout);
    let mut perf = Score {
        samples: 0,
        reach_thread_main: 0,
        hot1: 0,
        hot2: 0,
    };
    for block in text.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        if header.trim().parse::<u32>().ok() == Some(pid) {
            continue; // main thread, blocked in pthread_join
        }
        let names: Vec<String> = lines
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect();
        perf.add(&names);
    }

    let mut procs = Processes::new();
    procs.load_proc_maps(pid).expect("maps");
    let mut sampler = Sampler::attach(pid);
    let samples = sampler.run(3000, Duration::from_micros(300));
    let mut unwinder = Unwinder::new();
    let mut names = Names::default();
    let mut ours = Score {
        samples: 0,
        reach_thread_main: 0,
        hot1: 0,
        hot2: 0,
    };
    let mut entry = 0;
    let mut frames = Vec::new();
    for s in samples.iter().filter(|s| s.tid != pid) {
        frames.clear();
        let r = unwinder.unwind_dwarf(&procs, pid, s.regs, &s.stack, &mut frames);
        entry += usize::from(r.reason == StopReason::ReachedEntry);
        ours.add(&names.stack(&procs, pid, &frames));
    }
    perf.print("perf record --call-graph dwarf + perf script");
    ours.print("unwind::Unwinder::unwind_dwarf");
    eprintln!("ours: {entry}/{} ReachedEntry", ours.samples);
    assert!(perf.samples > 1000 && ours.samples > 1000);
    let share = |s: &Score| s.reach_thread_main as f64 / s.samples as f64;
    assert!(share(&ours) >= share(&perf) - 0.01);
    assert!(share(&ours) >= 0.95);
}
