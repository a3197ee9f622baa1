//! From the command line to the pipeline's option structs: every flag's value becomes a
//! plain field of a `collect` option struct here, and nowhere else.

use std::time::Duration;

use collect::continuous::ContinuousOptions;
use collect::offcpu::{OffCpuOptions, StateFilter};
use collect::oncpu::{bpf::BpfMode, OnCpuOptions};
use collect::output::Format;
use collect::push::PushOptions;
use collect::session::SessionOptions;
use collect::stack::StackMode;
use collect::target::{Lookup, Target, TargetSpec};
use collect::wall::WallOptions;
use collect::Error;
use symbolize::SymbolizeOptions;

use crate::args::{
    self, CallGraph, CommonArgs, ContinuousArgs, OffcpuArgs, OutputFormat, RecordArgs, SymbolArgs,
    TargetArgs, WallArgs,
};

/// `-p`, `-t`, `-a` or `-- CMD`: exactly one of them.
pub fn target(a: &TargetArgs) -> Result<Target, String> {
    let chosen = [
        !a.pids.is_empty(),
        !a.tids.is_empty(),
        a.all_cpus,
        a.cgroup.is_some(),
        !a.command.is_empty(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen == 0 {
        return Err(
            "nothing to profile: give -p PID, -t TID, -a, --cgroup PATH, or -- COMMAND".into(),
        );
    }
    if chosen > 1 {
        return Err("choose one target: -p, -t, -a, --cgroup or -- COMMAND".into());
    }
    if let Some(path) = &a.cgroup {
        return Ok(Target::Cgroup(collect::target::cgroup_dir(path)?));
    }
    Ok(if !a.pids.is_empty() {
        Target::Pids(a.pids.clone())
    } else if !a.tids.is_empty() {
        Target::Tids(a.tids.clone())
    } else if a.all_cpus {
        Target::AllCpus
    } else {
        Target::Command(a.command.clone())
    })
}

/// `--no-inline`, `--no-demangle`, `--debug-dir`, `--debuginfod`, `--debuginfod-deadline`.
pub fn symbols(a: &SymbolArgs) -> SymbolizeOptions {
    SymbolizeOptions {
        inline: !a.no_inline,
        demangle: !a.no_demangle,
        debug_dirs: a.debug_dirs.clone(),
        kernel: true,
        debuginfod: (a.debuginfod == args::DebuginfodMode::Auto).then_some(a.debuginfod_deadline),
    }
}

/// `--format`.
pub fn format(f: Option<OutputFormat>) -> Option<Format> {
    f.map(|f| match f {
        OutputFormat::Folded => Format::Folded,
        OutputFormat::Svg => Format::Svg,
        OutputFormat::Pprof => Format::Pprof,
        OutputFormat::Speedscope => Format::Speedscope,
    })
}

fn stack(mode: CallGraph) -> StackMode {
    match mode {
        CallGraph::Fp => StackMode::Fp,
        CallGraph::Auto(n) => StackMode::Auto(n),
        CallGraph::Dwarf(n) => StackMode::Dwarf(n),
    }
}

/// `--every`, `--out-dir`, `--keep`, `--push`, `--push-name` (`None` without `--every`).
fn continuous(c: &ContinuousArgs, common: &CommonArgs) -> Result<Option<ContinuousOptions>, Error> {
    let (Some(every), Some(dir)) = (c.every, c.out_dir.as_ref()) else {
        return Ok(None);
    };
    if common.output.is_some() {
        return Err(Error::new(
            "--every writes into --out-dir; -o cannot be used with it",
        ));
    }
    let push = c.push.as_ref().map(|url| PushOptions {
        url: url.clone(),
        name: c.push_name.clone().unwrap_or_default(),
        labels: common.labels.clone(),
        headers: c.push_headers.clone(),
    });
    Ok(Some(ContinuousOptions {
        every,
        out_dir: dir.clone(),
        keep: c.keep,
        push,
    }))
}

/// Fixed targets, or (`--pid-file`, `--comm`) targets looked up again after restarts.
fn target_spec(t: &TargetArgs, c: &ContinuousArgs) -> Result<TargetSpec, Error> {
    Ok(match (&c.pid_file, &c.comm) {
        (Some(f), _) => TargetSpec::Lookup(Lookup::PidFile(f.clone())),
        (_, Some(n)) => TargetSpec::Lookup(Lookup::Comm {
            name: n.clone(),
            user: c.user.clone(),
        }),
        _ => TargetSpec::Fixed(target(t).map_err(Error::new)?),
    })
}

/// `-d SECONDS`.
fn duration(d: Option<f64>) -> Result<Option<Duration>, Error> {
    d.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| Error::new(format!("-d {s}: not a duration in seconds")))
    })
    .transpose()
}

fn session(
    target: &TargetArgs,
    call_graph: &args::CallGraphArgs,
    common: &CommonArgs,
    symbols_args: &SymbolArgs,
    c: &ContinuousArgs,
) -> Result<SessionOptions, Error> {
    let continuous = continuous(c, common)?;
    Ok(SessionOptions {
        target: target_spec(target, c)?,
        continuous,
        duration: duration(common.duration)?,
        output: common.output.clone(),
        format: format(common.format),
        verbose: common.verbose,
        mmap_pages: common.mmap_pages,
        stack: stack(call_graph.mode()),
        keep_root: target.keep_root,
        symbols: symbols(symbols_args),
        labels: common.labels.clone(),
    })
}

/// `psample record`'s flags.
pub fn record(a: &RecordArgs) -> Result<OnCpuOptions, Error> {
    Ok(OnCpuOptions {
        session: session(
            &a.target,
            &a.call_graph,
            &a.common,
            &a.symbols,
            &a.continuous,
        )?,
        freq: a.freq,
        event: a.event.clone(),
        bpf: bpf_mode(a.bpf),
    })
}

/// `psample offcpu`'s flags.
pub fn offcpu(a: &OffcpuArgs) -> Result<OffCpuOptions, Error> {
    Ok(OffCpuOptions {
        session: session(
            &a.target,
            &a.call_graph,
            &a.common,
            &a.symbols,
            &a.continuous,
        )?,
        min_us: a.min_us,
        max_us: a.max_us,
        state: match a.state {
            None => StateFilter::Blocked,
            Some(args::StateFilter::Any) => StateFilter::Any,
            Some(args::StateFilter::S) => StateFilter::Interruptible,
            Some(args::StateFilter::D) => StateFilter::Uninterruptible,
        },
        wakers: a.wakers,
        bpf: bpf_mode(a.bpf),
    })
}

fn bpf_mode(m: args::BpfMode) -> BpfMode {
    match m {
        args::BpfMode::Auto => BpfMode::Auto,
        args::BpfMode::Never => BpfMode::Never,
        args::BpfMode::Always => BpfMode::Always,
    }
}

/// `psample wall`'s flags.
pub fn wall(a: &WallArgs) -> Result<WallOptions, Error> {
    Ok(WallOptions {
        session: session(
            &a.target,
            &a.call_graph,
            &a.common,
            &a.symbols,
            &a.continuous,
        )?,
        freq: a.freq,
        min_us: a.min_us,
        max_us: a.max_us,
        states: a.state,
        wakers: a.wakers,
    })
}
