//! # psample (cli) — argument parsing, dispatch and printing
//!
//! The `psample` binary is a thin `main.rs` over this library. The pipeline itself (sessions,
//! stacks, aggregation, off-CPU intervals, output encoders) is the `collect` crate; this one
//! turns the command line into its option structs and shows what it reports:
//!
//! - [`args`]: the command line, one definition per flag;
//! - [`options`]: flags to `collect` option structs;
//! - [`progress`]: the live counter, summaries and notices on stderr;
//! - [`outcome`]: psample's exit status (a launched command's) and `--summary-json`;
//! - [`check`], [`diff`], [`report`]: the commands that need no session;
//! - [`shell`]: shell completions and man pages, generated from [`args`].

pub mod args;
pub mod check;
pub mod diff;
pub mod options;
pub mod outcome;
pub mod progress;
pub mod report;
pub mod shell;

use clap::Parser;
use collect::Error;

/// Parse the command line, run the command, and return the process exit code.
pub fn run() -> i32 {
    // Before anything opens a file: a closed 0/1/2 must not be reused for one.
    collect::stdio::guard_std_fds();
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
        collect::limits::raise_nofile();
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            collect::errln!("psample: error: {e}");
            e.exit_code
        }
    }
}

fn dispatch(command: args::Command) -> Result<i32, Error> {
    let kernel = collect::session::linux_kernel;
    let mut terminal = progress::Terminal::new();
    match command {
        args::Command::Record(a) => {
            let json = outcome::SummaryJson::new("record", a.common.summary_json.as_deref())?;
            let result =
                options::record(&a).and_then(|o| collect::oncpu::run(&o, kernel(), &mut terminal));
            outcome::finish(result, &terminal, json)
        }
        args::Command::Offcpu(a) => {
            let json = outcome::SummaryJson::new("offcpu", a.common.summary_json.as_deref())?;
            let result =
                options::offcpu(&a).and_then(|o| collect::offcpu::run(&o, kernel(), &mut terminal));
            outcome::finish(result, &terminal, json)
        }
        args::Command::Wall(a) => {
            let json = outcome::SummaryJson::new("wall", a.common.summary_json.as_deref())?;
            let result =
                options::wall(&a).and_then(|o| collect::wall::run(&o, kernel(), &mut terminal));
            outcome::finish(result, &terminal, json)
        }
        args::Command::Check(a) => check::run(a),
        args::Command::Completions(a) => shell::completions(&a),
        args::Command::Man(a) => shell::man(&a),
        args::Command::Diff(a) => diff::run(a),
        args::Command::Report(a) => report::run(a),
    }
}
