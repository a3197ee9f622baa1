//! `psample diff BEFORE AFTER`: a differential flame graph (see [`collect::output::diff`]).
//! Inputs are folded text or pprof, in any mix.

use crate::args::DiffArgs;
use collect::output::diff::{diff_lines, write_svg};
use collect::output::input::load_folded;
use collect::Error as CliError;

pub fn run(args: DiffArgs) -> Result<i32, CliError> {
    let before = load_folded(&args.before).map_err(CliError::new)?;
    let after = load_folded(&args.after).map_err(CliError::new)?;
    let lines = diff_lines(&before, &after, args.normalize);
    let title = format!(
        "psample diff: {} → {}",
        args.before.display(),
        args.after.display()
    );
    if let Some(p) = &args.output {
        collect::output::check_writable(p).map_err(CliError::new)?;
    }
    let result = collect::output::write_with(args.output.as_deref(), |mut out| {
        write_svg(&mut out, &lines, &title)
    });
    result.map_err(|e| CliError::new(format!("writing the diff failed: {e}")))?;
    Ok(0)
}
