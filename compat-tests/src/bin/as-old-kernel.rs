//! `as-old-kernel PROFILE COMMAND [ARGS...]`: run COMMAND on this machine's kernel with its
//! perf_event_open, perf ioctls and bpf answered as PROFILE's kernel would (see
//! `compat_tests::interpose`). Prints what the interposer refused or changed on stderr and
//! exits with COMMAND's status. Needs root (it reads the command's memory).
//!
//! Example: `as-old-kernel 3.10 target/release/psample offcpu -d 2 -- sleep 1`

use std::process::{Command, ExitCode};

use compat_tests::{interpose, profile};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = profile::all().iter().map(|p| p.name).collect();
    let usage = || {
        eprintln!(
            "usage: as-old-kernel PROFILE COMMAND [ARGS...]\n  PROFILE: {}",
            names.join(", ")
        );
        ExitCode::from(2)
    };
    let [name, command, rest @ ..] = args.as_slice() else {
        return usage();
    };
    let Some(p) = profile::all().into_iter().find(|p| p.name == name) else {
        eprintln!("as-old-kernel: unknown profile {name:?}");
        return usage();
    };
    let mut cmd = Command::new(command);
    cmd.args(rest);
    let running = match interpose::spawn(p, &mut cmd) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("as-old-kernel: cannot start {command:?} under the interposer: {e}");
            return ExitCode::from(1);
        }
    };
    match running.wait() {
        Ok((status, tally)) => {
            eprint!("as-old-kernel {name}: {tally}");
            ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
        }
        Err(e) => {
            eprintln!("as-old-kernel: waiting for {command:?}: {e}");
            ExitCode::from(1)
        }
    }
}
