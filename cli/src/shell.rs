//! `psample completions SHELL` and `psample man [COMMAND]`: generated from the clap
//! definitions in [`crate::args`], so they list exactly the flags the parser takes.

use std::io::Write;

use clap::CommandFactory;
use collect::Error;

use crate::args::{Cli, CompletionsArgs, ManArgs};

/// Write the completion script for the shell to stdout.
pub fn completions(a: &CompletionsArgs) -> Result<i32, Error> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "psample", &mut out);
    write_stdout(&out)
}

/// Write psample(1), or psample-COMMAND(1), as roff to stdout.
pub fn man(a: &ManArgs) -> Result<i32, Error> {
    let root = Cli::command();
    let page = match &a.command {
        None => root,
        Some(name) => {
            let names: Vec<String> = root
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            let sub = root
                .find_subcommand(name)
                .ok_or_else(|| {
                    Error::new(format!(
                        "no command {name:?} (one of: {})",
                        names.join(", ")
                    ))
                })?
                .clone();
            // The page is named and titled as man expects: psample-record(1).
            let title = format!("psample-{}", sub.get_name());
            sub.name(title.clone())
                .bin_name(title.replace('-', " "))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .map_err(|e| Error::new(format!("rendering the man page: {e}")))?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<i32, Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::new(format!("writing to stdout: {e}")))?;
    Ok(0)
}
