//! Output writers: folded stacks and SVG flame graphs, written atomically.
//!
//! A profile is written to a temporary file in the destination directory and renamed into
//! place, so a crash or a second Ctrl-C never leaves a half-written file under the real name.

mod atomic;
pub mod folded;
pub mod pprof;
pub mod svg;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use atomic::{check_writable, AtomicFile};

/// What kind of file to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Folded,
    Svg,
}

impl Format {
    /// `.svg` → flame graph; anything else → folded stacks.
    pub fn from_path(path: Option<&Path>) -> Format {
        match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("svg") => Format::Svg,
            _ => Format::Folded,
        }
    }
}

/// How the counts should be labelled in an SVG.
#[derive(Clone, Debug)]
pub struct Labels {
    pub title: String,
    pub count_name: String,
}

/// Write folded lines (`stack count`, already sorted) to `path`, or stdout when `None`.
pub fn write_profile(
    path: Option<&PathBuf>,
    lines: &[(String, u64)],
    labels: &Labels,
) -> io::Result<()> {
    let format = Format::from_path(path.map(PathBuf::as_path));
    match path {
        None => {
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            folded::write(&mut out, lines)?;
            out.flush()
        }
        Some(p) => {
            let mut file = AtomicFile::create(p)?;
            {
                let mut out = io::BufWriter::new(file.as_file_mut());
                match format {
                    Format::Folded => folded::write(&mut out, lines)?,
                    Format::Svg => svg::write(&mut out, lines, labels)?,
                }
                out.flush()?;
            }
            file.commit()
        }
    }
}
