//! Command-line definitions. Each flag is defined once, in a group shared by the commands
//! that take it (target selection, call-graph mode, output, symbolization).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "psample",
    version,
    about = "Sampling profiler for Linux: on-CPU and off-CPU flame graphs from perf_event, \
             on kernels from 3.10 up",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sample on-CPU stacks (user + kernel) of processes, threads, a command or all CPUs.
    #[command(after_help = RECORD_EXAMPLES)]
    Record(RecordArgs),
    /// Measure blocked (off-CPU) time by stack, optionally with the waker's stack.
    #[command(after_help = OFFCPU_EXAMPLES)]
    Offcpu(OffcpuArgs),
    /// Where wall time goes: on-CPU, off-CPU and runnable time in one profile (ns).
    Wall(WallArgs),
    /// Report what this host and user allow, and what psample will use.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Differential flame graph of two profiles (folded or pprof): red grew, blue shrank.
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// Text summary of a profile (folded or pprof): top stacks and top self-time functions.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print a man page (roff): psample(1), or psample-COMMAND(1) for one command.
    #[command(after_help = MAN_EXAMPLES)]
    Man(ManArgs),
}

const RECORD_EXAMPLES: &str = "\
Examples:
  psample record -p 1234 -d 30 -o cpu.svg          flame graph of a running process
  psample record -F 999 -o prof.json -- ./server   a command, opened in speedscope
  psample record --cgroup system.slice/nginx.service --every 60s --out-dir /var/lib/psample \\
      --format pprof --push https://pyroscope:4040 --label env=prod";

const OFFCPU_EXAMPLES: &str = "\
Examples:
  psample offcpu -p 1234 -d 10 -o blocked.svg       where a process waits
  psample offcpu --wakers -o waits.folded -- ./app  and who wakes it
  psample offcpu -a -m 1000 -d 5                    blocks of 1 ms or more, system-wide";

const CHECK_EXAMPLES: &str = "\
Examples:
  psample check        what this host and user allow
  psample check -v     every kernel feature probed";

const DIFF_EXAMPLES: &str = "\
Examples:
  psample diff before.folded after.folded -o diff.svg
  psample diff --normalize old.pb.gz new.pb.gz -o diff.svg";

const REPORT_EXAMPLES: &str = "\
Examples:
  psample report cpu.pb.gz
  psample report --top 20 out.folded";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  source <(psample completions bash)
  psample completions zsh > \"${fpath[1]}/_psample\"
  psample completions fish > ~/.config/fish/completions/psample.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  psample man | man -l -
  psample man record > /usr/local/share/man/man1/psample-record.1";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// A command's page (psample-record(1)); without it, psample(1).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// What to profile. Exactly one of -p, -t, -a or a command after `--`.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Profile these processes (all their threads, including threads created later).
    #[arg(short = 'p', long = "pid", value_delimiter = ',', value_name = "PID",
          value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Profile only these threads.
    #[arg(
        short = 't',
        long = "tid",
        value_delimiter = ',',
        value_name = "TID",
        conflicts_with = "pids",
        value_parser = parse_pid
    )]
    pub tids: Vec<u32>,
    /// Profile every CPU (system-wide).
    #[arg(short = 'a', long = "all-cpus", conflicts_with_all = ["pids", "tids"])]
    pub all_cpus: bool,
    /// Profile the tasks of this cgroup (a container, a systemd service): its directory
    /// under /sys/fs/cgroup, or the path below the cgroup v2 mount
    /// (system.slice/nginx.service).
    #[arg(long = "cgroup", value_name = "PATH", conflicts_with_all = ["pids", "tids", "all_cpus"])]
    pub cgroup: Option<PathBuf>,
    /// Run as root even when started through sudo (by default a command launched under sudo
    /// runs as the invoking user, SUDO_UID/SUDO_GID).
    #[arg(long)]
    pub keep_root: bool,
    /// Launch this command and profile it until it exits.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How user stacks are collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallGraph {
    /// Frame pointers walked by the kernel.
    Fp,
    /// The kernel's frame-pointer chain with the leaf frames unwound by DWARF CFI from a copy
    /// of the user stack of this many bytes (hybrid).
    Auto(u32),
    /// DWARF CFI unwinding in psample from a copy of the user stack of this many bytes.
    Dwarf(u32),
}

pub const DEFAULT_DWARF_STACK: u32 = 16384;

/// `--call-graph` when not given: hybrid with its measured copy size.
pub const DEFAULT_CALL_GRAPH: CallGraph = CallGraph::Auto(collect::stack::HYBRID_STACK_BYTES);

fn stack_size(sz: &str) -> Result<u32, String> {
    let n: u32 = sz
        .parse()
        .map_err(|_| format!("stack size {sz:?} is not a number of bytes"))?;
    if n == 0 || n > perfring::attr::MAX_STACK_USER || n % 8 != 0 {
        return Err(format!(
            "stack size must be a multiple of 8 between 8 and {} (got {n})",
            perfring::attr::MAX_STACK_USER
        ));
    }
    Ok(n)
}

pub fn parse_call_graph(s: &str) -> Result<CallGraph, String> {
    let (mode, size) = match s.split_once(',') {
        Some((m, sz)) => (m, Some(sz)),
        None => (s, None),
    };
    match (mode, size) {
        ("fp", None) => Ok(CallGraph::Fp),
        ("fp", Some(_)) => Err("fp takes no size".into()),
        ("auto", None) => Ok(DEFAULT_CALL_GRAPH),
        ("auto", Some(sz)) => Ok(CallGraph::Auto(stack_size(sz)?)),
        ("dwarf", None) => Ok(CallGraph::Dwarf(DEFAULT_DWARF_STACK)),
        ("dwarf", Some(sz)) => Ok(CallGraph::Dwarf(stack_size(sz)?)),
        _ => Err(format!(
            "unknown call-graph mode {mode:?}: use auto[,SIZE], fp or dwarf[,SIZE]"
        )),
    }
}

#[derive(Args, Debug, Clone)]
pub struct CallGraphArgs {
    /// Collect call graphs (perf's flag: psample always does, in the --call-graph mode).
    #[arg(short = 'g')]
    pub g: bool,
    /// auto[,SIZE] (default: frame pointers, leaf frames by DWARF from SIZE bytes of stack,
    /// default 512), fp (frame pointers only), or dwarf[,SIZE] for binaries built without
    /// frame pointers (SIZE bytes of user stack copied per sample, default 16384, at most
    /// 65528).
    #[arg(long = "call-graph", value_parser = parse_call_graph, value_name = "MODE")]
    pub call_graph: Option<CallGraph>,
}

impl CallGraphArgs {
    pub fn mode(&self) -> CallGraph {
        self.call_graph.unwrap_or(DEFAULT_CALL_GRAPH)
    }
}

#[derive(Args, Debug, Clone)]
pub struct SymbolArgs {
    /// Do not show inlined functions as their own frames.
    #[arg(long)]
    pub no_inline: bool,
    /// Show mangled C++/Rust names.
    #[arg(long)]
    pub no_demangle: bool,
    /// Extra directory to search for separate debug files (repeatable).
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// Debug files missing here from the debuginfod servers in DEBUGINFOD_URLS (cached
    /// where gdb and perf cache them): `auto` when the variable names a server, `off` never.
    #[arg(
        long = "debuginfod",
        value_enum,
        value_name = "MODE",
        default_value = "auto"
    )]
    pub debuginfod: DebuginfodMode,
    /// Longest time all debuginfod downloads of a run may take together (e.g. 30s, 2m).
    #[arg(long = "debuginfod-deadline", value_parser = parse_duration, value_name = "DURATION",
          default_value = "30s")]
    pub debuginfod_deadline: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DebuginfodMode {
    Auto,
    Off,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Stop after this many seconds (default: until Ctrl-C or the targets exit).
    #[arg(short = 'd', long = "duration", value_name = "SECONDS", value_parser = parse_seconds,
          allow_negative_numbers = true)]
    pub duration: Option<f64>,
    /// Output file: .svg writes a flame graph, .pb.gz/.pprof a pprof profile, anything else
    /// folded stacks (default: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format, when the file name does not say it (or to override it).
    #[arg(long = "format", value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    /// Say which kernel features and fallbacks were used, and more.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Data pages per CPU ring buffer (a power of two; default depends on the mode).
    #[arg(long = "mmap-pages", value_name = "PAGES", value_parser = parse_mmap_pages)]
    pub mmap_pages: Option<usize>,
    /// Add this label to every pprof sample and to the --push application name
    /// (repeatable; psample itself labels samples pid, tid, thread and container).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Also write the closing summary (samples, lost records, fallbacks, unwinding, push
    /// results, the command's exit status) as JSON to this file.
    #[arg(long = "summary-json", value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Folded,
    Svg,
    Pprof,
    Speedscope,
}

/// Longest run or interval accepted (a year): anything longer is a typo, and larger numbers
/// overflow time arithmetic.
pub const MAX_SECONDS: f64 = 366.0 * 86400.0;
/// Highest `-F` accepted; the kernel's perf_event_max_sample_rate clamps it further.
pub const MAX_FREQ: u64 = 10_000_000;
/// Largest `--mmap-pages`: 256 MiB per CPU ring (root has no mlock limit to stop it).
pub const MAX_MMAP_PAGES: usize = 65_536;

/// `-d SECONDS`: a finite, positive number of seconds up to [`MAX_SECONDS`].
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !n.is_finite() || n <= 0.0 || n > MAX_SECONDS {
        return Err(format!(
            "{s:?} is out of range: give a number of seconds above 0 and at most {MAX_SECONDS}"
        ));
    }
    Ok(n)
}

/// A process or thread id: 1 to `i32::MAX` (pid_t). 0 and -1 mean "this process" and "all
/// processes" to perf_event_open, never what a user typed.
pub fn parse_pid(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a process id"))?;
    if n == 0 || n > i32::MAX as u32 {
        return Err(format!("{n} is not a valid process id"));
    }
    Ok(n)
}

/// `--mmap-pages`: a power of two from 1 to [`MAX_MMAP_PAGES`].
pub fn parse_mmap_pages(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of pages"))?;
    if n == 0 || n > MAX_MMAP_PAGES || !n.is_power_of_two() {
        return Err(format!(
            "{n} pages: give a power of two from 1 to {MAX_MMAP_PAGES}"
        ));
    }
    Ok(n)
}

/// Parse a duration such as `60`, `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 30s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_SECONDS {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Continuous profiling: one profile per interval into a directory.
#[derive(Args, Debug, Clone)]
pub struct ContinuousArgs {
    /// Write one profile per interval (e.g. 60s, 5m) until stopped; needs --out-dir.
    #[arg(long = "every", value_parser = parse_duration, value_name = "DURATION", requires = "out_dir")]
    pub every: Option<std::time::Duration>,
    /// Directory for the interval profiles (named psample-<command>-<UTC time>.<ext>).
    #[arg(long = "out-dir", value_name = "DIR", requires = "every")]
    pub out_dir: Option<PathBuf>,
    /// Keep only the newest N interval profiles (default: keep all).
    #[arg(long = "keep", value_name = "N", requires = "every")]
    pub keep: Option<usize>,
    /// Profile the process whose PID is in this file; re-read (and re-attach) when it restarts.
    #[arg(
        long = "pid-file",
        value_name = "FILE",
        requires = "every",
        conflicts_with = "comm"
    )]
    pub pid_file: Option<PathBuf>,
    /// Profile processes with this name (/proc/PID/comm); re-attach when they restart.
    /// Only one user's processes are followed: --user, else the owner of the first match.
    #[arg(long = "comm", value_name = "NAME", requires = "every")]
    pub comm: Option<String>,
    /// With --comm: follow only this user's processes (name or uid).
    #[arg(long = "user", value_name = "USER", requires = "comm")]
    pub user: Option<String>,
    /// POST each interval's profile to a Pyroscope-compatible server
    /// (http[s]://[USER:PASSWORD@]HOST[:PORT][/PREFIX]; userinfo is sent as basic auth).
    /// Failures are retried in the background and never hold up sampling.
    #[arg(long = "push", value_name = "URL", requires = "every")]
    pub push: Option<String>,
    /// Application name sent with --push (default: psample.<command>); --label values are
    /// added in Pyroscope's NAME{KEY=VALUE,...} form.
    #[arg(long = "push-name", value_name = "NAME", requires = "push")]
    pub push_name: Option<String>,
    /// An HTTP header sent with every --push upload, e.g. X-Scope-OrgID=TENANT (repeatable).
    #[arg(long = "push-header", value_name = "NAME=VALUE", requires = "push",
          value_parser = parse_push_header)]
    pub push_headers: Vec<(String, String)>,
}

fn parse_push_header(s: &str) -> Result<(String, String), String> {
    collect::push::parse_header(s)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    collect::output::sample_labels::parse_label(s)
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The baseline profile (folded or pprof).
    pub before: PathBuf,
    /// The profile to compare (folded or pprof).
    pub after: PathBuf,
    /// Output SVG (default: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Scale the counts so both profiles have the same total (compare shapes, not volumes).
    #[arg(long)]
    pub normalize: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The profile (folded or pprof).
    pub file: PathBuf,
    /// How many stacks and functions to list.
    #[arg(long = "top", default_value_t = 10, value_name = "N")]
    pub top: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BpfMode {
    Auto,
    Never,
    Always,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Samples per second per CPU/thread.
    #[arg(short = 'F', long = "freq", default_value_t = 99, value_name = "HZ",
          value_parser = clap::value_parser!(u64).range(1..=MAX_FREQ))]
    pub freq: u64,
    /// Event to sample: cpu-clock (default), task-clock, cycles, or tracepoint:SUBSYS:NAME.
    #[arg(
        short = 'e',
        long = "event",
        default_value = "cpu-clock",
        value_name = "EVENT"
    )]
    pub event: String,
    #[command(flatten)]
    pub call_graph: CallGraphArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub symbols: SymbolArgs,
    /// In-kernel stack aggregation with eBPF: auto uses it when it gives the same result
    /// (frame-pointer stacks) and the kernel allows it.
    #[arg(long, value_enum, default_value_t = BpfMode::Auto)]
    pub bpf: BpfMode,
    #[command(flatten)]
    pub continuous: ContinuousArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    /// Every switch-out, including preemption.
    Any,
    /// Interruptible sleep only.
    #[value(name = "S")]
    S,
    /// Uninterruptible sleep only (typically disk I/O).
    #[value(name = "D")]
    D,
}

#[derive(Args, Debug)]
pub struct OffcpuArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Ignore blocked intervals shorter than this many microseconds.
    #[arg(
        short = 'm',
        long = "min-us",
        default_value_t = 1,
        value_name = "MIN_US"
    )]
    pub min_us: u64,
    /// Ignore blocked intervals longer than this many microseconds.
    #[arg(short = 'M', long = "max-us", value_name = "MAX_US")]
    pub max_us: Option<u64>,
    /// Which switch-out states count (default: any blocked state, not preemption).
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Append the waker's stack to each blocked stack (offwaketime style).
    #[arg(long)]
    pub wakers: bool,
    /// Sum blocked time in the kernel with eBPF (sched_switch/sched_waking programs):
    /// nothing crosses the ring per switch. auto uses it when it gives the same result
    /// (frame-pointer stacks) and the kernel allows it, else the ring path, saying why.
    #[arg(long, value_enum, default_value_t = BpfMode::Never)]
    pub bpf: BpfMode,
    #[command(flatten)]
    pub call_graph: CallGraphArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub symbols: SymbolArgs,
    #[command(flatten)]
    pub continuous: ContinuousArgs,
}

#[derive(Args, Debug)]
pub struct WallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// On-CPU samples per second of each thread's CPU time (each counts as 1/HZ).
    #[arg(short = 'F', long = "freq", default_value_t = 99, value_name = "HZ",
          value_parser = clap::value_parser!(u64).range(1..=MAX_FREQ))]
    pub freq: u64,
    /// Leave out blocked intervals shorter than this many microseconds (said in the summary).
    #[arg(
        short = 'm',
        long = "min-us",
        default_value_t = 0,
        value_name = "MIN_US"
    )]
    pub min_us: u64,
    /// Leave out blocked intervals longer than this many microseconds.
    #[arg(short = 'M', long = "max-us", value_name = "MAX_US")]
    pub max_us: Option<u64>,
    /// Name the blocked state in off-CPU leaves: [off-cpu:S], [off-cpu:D], ...
    #[arg(long)]
    pub state: bool,
    /// Append the waker's stack to blocked and woken-then-runnable stacks.
    #[arg(long)]
    pub wakers: bool,
    #[command(flatten)]
    pub call_graph: CallGraphArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub symbols: SymbolArgs,
    #[command(flatten)]
    pub continuous: ContinuousArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also print every probe's raw errno.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_continuous_flags() {
        assert_eq!(parse_duration("90"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(
            parse_duration("5m"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("1h"),
            Ok(std::time::Duration::from_secs(3600))
        );
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        // --every without --out-dir (and the reverse) is refused.
        assert!(Cli::try_parse_from(["psample", "record", "-p", "1", "--every", "5s"]).is_err());
        assert!(
            Cli::try_parse_from(["psample", "record", "-p", "1", "--out-dir", "/tmp"]).is_err()
        );
        let c = Cli::try_parse_from([
            "psample",
            "offcpu",
            "--comm",
            "nginx",
            "--every",
            "1m",
            "--out-dir",
            "/tmp",
            "--keep",
            "5",
        ])
        .unwrap();
        match c.command {
            Command::Offcpu(o) => {
                assert_eq!(o.continuous.comm.as_deref(), Some("nginx"));
                assert_eq!(o.continuous.keep, Some(5));
            }
            _ => panic!("wrong command"),
        }
    }

    #[test]
    fn numeric_flags_are_validated_at_parse_time() {
        let parse = |args: &[&str]| {
            let mut v = vec!["psample", "record"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        for d in ["NaN", "inf", "-inf", "1e20", "-1", "0", "x", "1e-400"] {
            assert!(parse(&["-p", "1", "-d", d]).is_err(), "-d {d}");
        }
        assert!(parse(&["-p", "1", "-d=-1"]).is_err());
        assert!(parse(&["-p", "1", "-d", "0.5"]).is_ok());
        for p in ["0", "-1", "4294967295", "2147483648"] {
            assert!(parse(&["-p", p]).is_err(), "-p {p}");
            assert!(parse(&["-t", p]).is_err(), "-t {p}");
        }
        assert!(parse(&["-p", "1,0"]).is_err());
        for f in ["0", "-5", "99999999999"] {
            assert!(parse(&["-p", "1", "-F", f]).is_err(), "-F {f}");
        }
        for m in ["0", "3", "131072", "99999999999"] {
            assert!(
                parse(&["-p", "1", "--mmap-pages", m]).is_err(),
                "--mmap-pages {m}"
            );
        }
        assert!(parse(&["-p", "1", "--mmap-pages", "1024"]).is_ok());
    }

    #[test]
    fn call_graph_modes() {
        assert_eq!(parse_call_graph("fp"), Ok(CallGraph::Fp));
        assert_eq!(
            parse_call_graph("dwarf"),
            Ok(CallGraph::Dwarf(DEFAULT_DWARF_STACK))
        );
        assert_eq!(parse_call_graph("dwarf,8192"), Ok(CallGraph::Dwarf(8192)));
        assert!(parse_call_graph("dwarf,100000").is_err());
        assert!(parse_call_graph("dwarf,12").is_err());
        assert!(parse_call_graph("lbr").is_err());
        assert_eq!(parse_call_graph("auto"), Ok(DEFAULT_CALL_GRAPH));
        assert_eq!(parse_call_graph("auto,1024"), Ok(CallGraph::Auto(1024)));
        assert!(parse_call_graph("auto,7").is_err());
        assert!(parse_call_graph("auto,x").is_err());
    }

    #[test]
    fn wall_takes_both_commands_flags() {
        let c = Cli::try_parse_from([
            "psample", "wall", "-p", "1", "-F", "999", "-m", "5", "--state", "--wakers",
        ])
        .unwrap();
        match c.command {
            Command::Wall(w) => {
                assert_eq!((w.freq, w.min_us, w.state, w.wakers), (999, 5, true, true));
            }
            _ => panic!("wrong command"),
        }
        assert!(Cli::try_parse_from(["psample", "wall", "-p", "1", "-F", "0"]).is_err());
    }

    #[test]
    fn conflicting_targets_are_rejected() {
        assert!(Cli::try_parse_from(["psample", "record", "-p", "1", "-a"]).is_err());
        assert!(Cli::try_parse_from(["psample", "record", "-p", "1", "-t", "2"]).is_err());
        let c = Cli::try_parse_from(["psample", "record", "-p", "1,2", "-F", "999"]).unwrap();
        match c.command {
            Command::Record(r) => {
                assert_eq!(r.target.pids, vec![1, 2]);
                assert_eq!(r.freq, 999);
            }
            _ => panic!("wrong command"),
        }
        let c = Cli::try_parse_from(["psample", "record", "--", "ls", "-l"]).unwrap();
        match c.command {
            Command::Record(r) => assert_eq!(r.target.command, vec!["ls", "-l"]),
            _ => panic!("wrong command"),
        }
    }
}
