//! `psample diff BEFORE AFTER`: a differential flame graph (see [`collect::output::diff`]).
//! Inputs are folded text or pprof, in any mix.

use std::io::{self, BufWriter, Write};

use crate::args::DiffArgs;
use collect::output::diff::{diff_lines, write_svg};
use collect::output::input::load_folded;
use collect::output::AtomicFile;
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
    let result = match &args.output {
        None => {
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            write_svg(&mut out, &lines, &title).and_then(|_| out.flush())
        }
        Some(p) => {
            collect::output::check_writable(p).map_err(CliError::new)?;
            let mut f = AtomicFile::create(p).map_err(|e| CliError::new(e.to_string()))?;
            let r = {
                let mut out = BufWriter::new(f.as_file_mut());
                write_svg(&mut out, &lines, &title).and_then(|_| out.flush())
            };
            r.and_then(|_| f.commit())
        }
    };
    result.map_err(|e| CliError::new(format!("writing the diff failed: {e}")))?;
    Ok(0)
}
