//! Output writers: folded stacks and SVG flame graphs, written atomically.
//!
//! A profile is written to a temporary file in the destination directory and renamed into
//! place, so a crash or a second Ctrl-C never leaves a half-written file under the real name.

mod atomic;
pub mod diff;
pub mod fold;
pub mod folded;
pub mod input;
pub mod pprof;
pub mod svg;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use atomic::{check_writable, AtomicFile};

/// What kind of file to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Brendan Gregg's folded stacks (`.folded`, or any other name).
    Folded,
    /// An interactive SVG flame graph (`.svg`).
    Svg,
    /// Gzipped profile.proto (`.pb.gz`, `.pprof`, `.pb`).
    Pprof,
}

impl Format {
    /// `.svg` → flame graph; `.pb.gz`/`.pprof`/`.pb` → pprof; anything else → folded stacks.
    pub fn from_path(path: Option<&Path>) -> Format {
        let name = path
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".svg") {
            Format::Svg
        } else if name.ends_with(".pb.gz") || name.ends_with(".pprof") || name.ends_with(".pb") {
            Format::Pprof
        } else {
            Format::Folded
        }
    }

    /// The format asked for (`--format`) when given, else what the file name says.
    pub fn resolve(explicit: Option<Format>, path: Option<&Path>) -> Format {
        explicit.unwrap_or_else(|| Format::from_path(path))
    }

    /// File extension for generated names (continuous mode).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Folded => "folded",
            Format::Svg => "svg",
            Format::Pprof => "pb.gz",
        }
    }
}

/// Write a pprof profile (gzipped) to `path`, atomically, or to stdout when `None`.
pub fn write_pprof(path: Option<&Path>, profile: &pprof::Profile) -> io::Result<()> {
    match path {
        None => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            profile.write_gz(&mut out)?;
            out.flush()
        }
        Some(p) => {
            let mut file = AtomicFile::create(p)?;
            {
                let mut out = io::BufWriter::new(file.as_file_mut());
                profile.write_gz(&mut out)?;
                out.flush()?;
            }
            file.commit()
        }
    }
}

/// Write folded lines as folded text or an SVG (`format` must not be pprof), atomically.
pub fn write_lines(
    path: Option<&Path>,
    format: Format,
    lines: &[(String, u64)],
    labels: &Labels,
) -> io::Result<()> {
    match path {
        None => {
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            match format {
                Format::Svg => svg::write(&mut out, lines, labels)?,
                _ => folded::write(&mut out, lines)?,
            }
            out.flush()
        }
        Some(p) => {
            let mut file = AtomicFile::create(p)?;
            {
                let mut out = io::BufWriter::new(file.as_file_mut());
                match format {
                    Format::Svg => svg::write(&mut out, lines, labels)?,
                    _ => folded::write(&mut out, lines)?,
                }
                out.flush()?;
            }
            file.commit()
        }
    }
}

/// How the counts should be labelled in an SVG.
#[derive(Clone, Debug)]
pub struct Labels {
    /// The flame graph's title.
    pub title: String,
    /// What the counts are (`samples`, `us`).
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
                    Format::Svg => svg::write(&mut out, lines, labels)?,
                    Format::Folded | Format::Pprof => folded::write(&mut out, lines)?,
                }
                out.flush()?;
            }
            file.commit()
        }
    }
}

/// A profile ready to be written: folded lines (for folded and SVG) or a pprof message.
pub enum Rendered {
    /// Sorted `stack count` lines (folded and SVG).
    Lines(Vec<(String, u64)>),
    /// A pprof profile.
    Pprof(pprof::Profile),
}

impl Rendered {
    /// Write in `format` to `path` (stdout when `None`), atomically.
    pub fn write(&self, path: Option<&Path>, format: Format, labels: &Labels) -> io::Result<()> {
        match self {
            Rendered::Lines(lines) => write_lines(path, format, lines, labels),
            Rendered::Pprof(p) => write_pprof(path, p),
        }
    }

    /// The file's bytes (for uploading): folded text or gzipped pprof.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        match self {
            Rendered::Lines(lines) => folded::write(&mut v, lines)?,
            Rendered::Pprof(p) => p.write_gz(&mut v)?,
        }
        Ok(v)
    }

    /// Folded lines or pprof samples.
    pub fn len(&self) -> usize {
        match self {
            Rendered::Lines(l) => l.len(),
            Rendered::Pprof(p) => p.sample.len(),
        }
    }

    /// Whether nothing would be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
