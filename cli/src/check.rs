//! `psample check`: what this host and user allow, and what psample will therefore use.

use std::path::Path;

use perfring::attr::EventKind;
use perfring::features::Feature;
use perfring::probe::{self, Probe};
use perfring::sys::Kernel;

use crate::args::CheckArgs;
use collect::perms;
use collect::session;
use collect::Error as CliError;

fn yes_no(p: Probe, verbose: bool) -> String {
    match p {
        Probe::Yes => "yes".into(),
        Probe::No(e) if verbose => format!("no ({e})"),
        Probe::No(_) => "no".into(),
        Probe::Unknown(e) => format!("unknown ({})", e.desc()),
    }
}

/// Effective capabilities from /proc/self/status.
fn capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn memlock_limit() -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return "unknown".into();
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", r.rlim_cur / 1024)
    }
}

/// One `key  value` line of the report.
fn out(key: &str, val: String) {
    collect::outln!("  {key:<28} {val}");
}

pub fn run(args: CheckArgs) -> Result<i32, CliError> {
    let kernel = session::linux_kernel();
    let k: &dyn Kernel = kernel.as_ref();
    let v = args.verbose;
    collect::outln!(
        "psample check — this host, this user ({}):",
        if perms::is_root() {
            "root"
        } else {
            "unprivileged"
        }
    );
    permissions(k);
    let events = events(k, v);
    let answers = features(k, v);
    let has_feature = |f: Feature| answers.iter().any(|(x, p)| *x == f && p.is_yes());
    let (switch_ok, wakeup_ok) = tracing(k);
    collect::outln!("bpf");
    let bpf = perfring::bpf::probe();
    out(
        "perf_event BPF programs",
        match &bpf {
            Ok(()) => "yes".into(),
            Err(e) => format!("no ({e})"),
        },
    );
    let plan = Plan {
        events,
        kernel_stacks: has_feature(Feature::KernelSamples),
        bpf: bpf.is_ok(),
        offcpu: switch_ok && wakeup_ok,
        context_switch: has_feature(Feature::ContextSwitch),
    };
    if !plan.print() {
        return Err(CliError::new(
            "nothing can be sampled here: see the permissions above (perf_event_paranoid, capabilities)",
        ));
    }
    Ok(0)
}

fn permissions(k: &dyn Kernel) {
    collect::outln!("permissions");
    let paranoid = k.sysctl_i64("kernel/perf_event_paranoid");
    out(
        "perf_event_paranoid",
        paranoid.map_or("unknown".into(), |p| {
            format!("{p} ({})", perms::paranoid_meaning(p))
        }),
    );
    let caps = capabilities();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    out(
        "capabilities",
        format!(
            "CAP_SYS_ADMIN={} CAP_PERFMON={} CAP_SYS_PTRACE={} CAP_IPC_LOCK={} CAP_BPF={}",
            has(21),
            has(38),
            has(19),
            has(14),
            has(39)
        ),
    );
    out(
        "perf_event_mlock_kb",
        k.sysctl_i64("kernel/perf_event_mlock_kb")
            .map_or("unknown".into(), |v| format!("{v} KiB per CPU")),
    );
    out("RLIMIT_MEMLOCK", memlock_limit());
    out(
        "perf_event_max_sample_rate",
        k.sysctl_i64("kernel/perf_event_max_sample_rate")
            .map_or("unknown".into(), |v| format!("{v} Hz")),
    );
    out(
        "perf_event_max_stack",
        k.sysctl_i64("kernel/perf_event_max_stack")
            .map_or("absent (fixed 127 frames)".into(), |v| v.to_string()),
    );
    let kptr = k.sysctl_i64("kernel/kptr_restrict");
    out(
        "kptr_restrict",
        kptr.map_or("unknown".into(), |v| {
            format!(
                "{v} ({})",
                if v == 0 || (v == 1 && perms::is_root()) {
                    "kernel symbols visible"
                } else {
                    "kernel addresses hidden: kernel frames shown as [kernel]"
                }
            )
        }),
    );
}

/// The sampling events this host offers.
struct Events {
    cpu_clock: Probe,
    task_clock: Probe,
    cycles: Probe,
}

fn events(k: &dyn Kernel, v: bool) -> Events {
    collect::outln!("events");
    let cpu_clock = probe::event(k, EventKind::CpuClock);
    let task_clock = probe::event(k, EventKind::TaskClock);
    let cycles = probe::event(k, EventKind::Cycles);
    out("cpu-clock (software)", yes_no(cpu_clock, v));
    out("task-clock (software)", yes_no(task_clock, v));
    out("cycles (hardware PMU)", yes_no(cycles, v));
    out(
        "perf_event_attr size",
        probe::attr_size(k).map_or("unknown".into(), |s| format!("{s} bytes")),
    );

    Events {
        cpu_clock,
        task_clock,
        cycles,
    }
}

fn features(k: &dyn Kernel, v: bool) -> Vec<(Feature, Probe)> {
    collect::outln!("kernel features (fallback ladder)");
    let mut answers = Vec::new();
    for f in Feature::ALL {
        let p = probe::feature(k, f);
        let text = match p {
            Probe::Yes => "yes".to_string(),
            _ => format!("{} → {}", yes_no(p, v), f.fallback()),
        };
        out(f.name(), text);
        answers.push((f, p));
    }
    answers
}

/// The tracing directory and the sched tracepoints: whether switch and wakeup exist.
fn tracing(k: &dyn Kernel) -> (bool, bool) {
    collect::outln!("tracing");
    let tracing = perfring::tracepoint::Tracing::locate(&collect::tracing::Fs(k), perms::is_root());
    let found = match &tracing {
        Ok(t) => {
            out(
                "tracing directory",
                format!(
                    "{} ({:?}{})",
                    t.root.display(),
                    t.kind,
                    if t.mounted_by_us {
                        ", mounted by psample"
                    } else {
                        ""
                    }
                ),
            );
            let fs = collect::tracing::Fs(k);
            let sw = t.event_id(&fs, "sched", "sched_switch");
            let wk = t.event_id(&fs, "sched", "sched_wakeup");
            out(
                "sched:sched_switch",
                sw.as_ref()
                    .map_or_else(|e| format!("no ({e})"), |id| format!("yes (id {id})")),
            );
            out(
                "sched:sched_wakeup",
                wk.as_ref()
                    .map_or_else(|e| format!("no ({e})"), |id| format!("yes (id {id})")),
            );
            (sw.is_ok(), wk.is_ok())
        }
        Err(e) => {
            out("tracing directory", format!("not available: {e}"));
            (false, false)
        }
    };
    let kallsyms_ok = Path::new("/proc/kallsyms").exists();
    out(
        "/proc/kallsyms",
        if kallsyms_ok {
            "readable".into()
        } else {
            "missing".into()
        },
    );
    found
}

/// What psample will use, from the answers above.
struct Plan {
    events: Events,
    kernel_stacks: bool,
    bpf: bool,
    offcpu: bool,
    context_switch: bool,
}

impl Plan {
    /// Print the plan; false when nothing can be sampled.
    fn print(&self) -> bool {
        collect::outln!("psample will use");
        let e = &self.events;
        let sampling = if e.cpu_clock.is_yes() {
            Some("cpu-clock")
        } else if e.task_clock.is_yes() {
            Some("task-clock")
        } else {
            None
        };
        match sampling {
            Some(ev) => out(
                "record",
                format!(
                    "{ev}{}, frame-pointer or DWARF user stacks{}{}",
                    if e.cycles.is_yes() {
                        " (cycles available with -e cycles)"
                    } else {
                        ""
                    },
                    if self.kernel_stacks {
                        " + kernel stacks"
                    } else {
                        ", user stacks only (kernel sampling not permitted)"
                    },
                    if self.bpf {
                        "; in-kernel BPF aggregation for fp stacks"
                    } else {
                        ""
                    }
                ),
            ),
            None => out("record", "nothing: no sampling event can be opened".into()),
        }
        let offcpu = if !self.offcpu {
            "unavailable: needs sched:sched_switch and sched:sched_wakeup tracepoints"
        } else if self.context_switch {
            "sched_switch samples + context-switch records for switch-ins"
        } else {
            "sched_switch samples + CPU-wide sched_switch or syscall exits for switch-ins"
        };
        out("offcpu", offcpu.to_string());
        let wall = if !self.offcpu || !e.cpu_clock.is_yes() {
            "unavailable: needs cpu-clock and the offcpu tracepoints"
        } else {
            "cpu-clock per task + offcpu's events, sched_wakeup for runnable time"
        };
        out("wall", wall.to_string());
        sampling.is_some()
    }
}
