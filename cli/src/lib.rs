//! # psample (cli) — commands, aggregation and output writers
//!
//! The `psample` binary is a thin `main.rs` over this library so that aggregation and output
//! code can be benchmarked and tested without a terminal. Layout:
//!
//! - [`args`]: the command line, one definition per flag;
//! - [`target`]: which processes/threads to attach to, launching `-- CMD`;
//! - [`session`]: attaching a perfring session to a target and the batched read loop;
//! - [`tracker`]: process names and address spaces from side-band records;
//! - [`names`]: interned thread and frame names;
//! - [`stack`], [`profile`]: raw stacks and their aggregation before symbolization;
//! - [`fold`]: symbolizing each distinct frame once and rendering folded stacks;
//! - [`output`]: folded, SVG and pprof writers (atomic);
//! - [`continuous`], [`push`]: one profile per interval, uploads to Pyroscope-compatible servers;
//! - [`record`], [`offcpu`], [`check`], [`diff`], [`report`]: the commands.

pub mod args;
pub mod bpf_mode;
pub mod check;
pub mod continuous;
pub mod diff;
pub mod error;
pub mod fold;
pub mod follow;
pub mod limits;
pub mod names;
pub mod offcpu;
pub mod output;
pub mod perms;
pub mod profile;
pub mod progress;
pub mod push;
pub mod record;
pub mod report;
pub mod session;
pub mod signals;
pub mod stack;
pub mod stdio;
pub mod summary;
pub mod symbols;
pub mod target;
pub mod tracing;
pub mod tracker;

use clap::Parser;

/// Parse the command line, run the command, and return the process exit code.
pub fn run() -> i32 {
    // Before anything opens a file: a closed 0/1/2 must not be reused for one.
    stdio::guard_std_fds();
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors and --help/--version, printed without panicking on a closed pipe.
            let _ = e.print();
            return e.exit_code();
        }
    };
    if !matches!(cli.command, args::Command::Check(_)) {
        // Before any event is opened: one fd per thread per CPU adds up fast.
        limits::raise_nofile();
    }
    let result = match cli.command {
        args::Command::Record(a) => record::run(a),
        args::Command::Offcpu(a) => offcpu::command::run(a),
        args::Command::Check(a) => check::run(a),
        args::Command::Diff(a) => diff::run(a),
        args::Command::Report(a) => report::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::errln!("psample: error: {e}");
            e.code
        }
    }
}
