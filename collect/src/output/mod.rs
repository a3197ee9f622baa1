//! Output writers: folded stacks, SVG flame graphs and pprof, and where they go.
//!
//! A regular output file is written to a temporary file in the destination directory and
//! renamed into place, so a crash or a second Ctrl-C never leaves a half-written file under
//! the real name; devices, FIFOs, sockets and stdout are written in place ([`sink`]).
//! Continuous mode's output directory is checked and pruned by [`outdir`].

mod atomic;
pub mod diff;
pub mod fold;
pub mod folded;
pub mod input;
pub mod outdir;
pub mod pprof;
pub mod sample_labels;
pub mod sink;
pub mod speedscope;
pub mod svg;
mod trust;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use sink::{check_writable, OutputFile};

/// What kind of file to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Brendan Gregg's folded stacks (`.folded`, `.txt`, `.collapsed`, or no extension).
    Folded,
    /// An interactive SVG flame graph (`.svg`).
    Svg,
    /// Gzipped profile.proto (`.pb.gz`, `.pprof`, `.pb`).
    Pprof,
    /// speedscope's JSON file format (`.json`, `.speedscope.json`).
    Speedscope,
}

/// The names `-o` understands, for messages.
const KNOWN_EXTENSIONS: &str = ".folded/.txt/.collapsed, .svg, .pb.gz/.pprof/.pb, .json";

impl Format {
    /// What a file name says to write: `.svg` → flame graph; `.pb.gz`/`.pprof`/`.pb` →
    /// pprof; `.json` → speedscope; `.folded`/`.txt`/`.collapsed`, no extension (`out`,
    /// `/dev/stdout`) or stdout → folded stacks. Any other extension is an error: writing
    /// folded text into `prof.json` or `perf.data` would only surprise whoever opens it.
    pub fn from_path(path: Option<&Path>) -> Result<Format, String> {
        let Some(name) = path.and_then(|p| p.file_name()) else {
            return Ok(Format::Folded);
        };
        let name = name.to_string_lossy().to_ascii_lowercase();
        // A leading dot is a hidden file's name, not an extension.
        let Some((_, ext)) = name.trim_start_matches('.').rsplit_once('.') else {
            return Ok(Format::Folded);
        };
        match ext {
            "svg" => Ok(Format::Svg),
            "pprof" | "pb" => Ok(Format::Pprof),
            "gz" if name.ends_with(".pb.gz") => Ok(Format::Pprof),
            "json" => Ok(Format::Speedscope),
            "folded" | "txt" | "collapsed" => Ok(Format::Folded),
            _ => {
                let hint = if name.ends_with("perf.data") || ext == "data" {
                    " (psample does not write perf.data files)"
                } else {
                    ""
                };
                Err(format!(
                    "cannot tell what to write into {name:?} from its extension .{ext}{hint}: \
                     name it {KNOWN_EXTENSIONS}, or say --format folded|svg|pprof|speedscope"
                ))
            }
        }
    }

    /// The format asked for (`--format`) when given, else what the file name says.
    pub fn resolve(explicit: Option<Format>, path: Option<&Path>) -> Result<Format, String> {
        match explicit {
            Some(f) => Ok(f),
            None => Format::from_path(path),
        }
    }

    /// File extension for generated names (continuous mode).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Folded => "folded",
            Format::Svg => "svg",
            Format::Pprof => "pb.gz",
            Format::Speedscope => "json",
        }
    }
}

/// Write a pprof profile (gzipped) to `path`, or to stdout when `None` (see [`OutputFile`]).
pub fn write_pprof(path: Option<&Path>, profile: &pprof::Profile) -> io::Result<()> {
    write_with(path, |out| profile.write_gz(out))
}

/// Write folded lines as folded text or an SVG (`format` must not be pprof).
pub fn write_lines(
    path: Option<&Path>,
    format: Format,
    lines: &[(String, u64)],
    labels: &Labels,
) -> io::Result<()> {
    write_with(path, |out| encode_lines(out, format, lines, labels))
}

fn encode_lines(
    mut out: &mut dyn Write,
    format: Format,
    lines: &[(String, u64)],
    labels: &Labels,
) -> io::Result<()> {
    match format {
        Format::Svg => svg::write(&mut out, lines, labels),
        Format::Speedscope => speedscope::write(&mut out, lines, labels),
        _ => folded::write(&mut out, lines),
    }
}

/// Open `path` (see [`OutputFile::create`]), let `encode` write through a buffer, commit.
pub fn write_with(
    path: Option<&Path>,
    encode: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut file = OutputFile::create(path)?;
    encode_into(&mut file, encode)?;
    file.commit()
}

fn encode_into(
    file: &mut OutputFile,
    encode: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut out = io::BufWriter::new(file);
    encode(&mut out)?;
    out.flush()
}

/// Names in a directory, sorted: tests check what was (and was not) left behind.
#[cfg(test)]
pub(crate) fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// How the counts should be labelled in an SVG.
#[derive(Clone, Debug)]
pub struct Labels {
    /// The flame graph's title.
    pub title: String,
    /// What the counts are (`samples`, `us`).
    pub count_name: String,
    /// `--label KEY=VALUE`s, on every pprof sample.
    pub extra: Vec<(String, String)>,
}

/// Write folded lines (`stack count`, already sorted) to `path`, or stdout when `None`:
/// an SVG when the name ends in `.svg`, folded text otherwise.
pub fn write_profile(
    path: Option<&PathBuf>,
    lines: &[(String, u64)],
    labels: &Labels,
) -> io::Result<()> {
    let path = path.map(PathBuf::as_path);
    let format = match Format::from_path(path) {
        Ok(Format::Svg) => Format::Svg,
        _ => Format::Folded,
    };
    write_lines(path, format, lines, labels)
}

/// A profile ready to be written: folded lines (for folded and SVG) or a pprof message.
pub enum Rendered {
    /// Sorted `stack count` lines (folded and SVG).
    Lines(Vec<(String, u64)>),
    /// A pprof profile.
    Pprof(pprof::Profile),
}

impl Rendered {
    /// Write in `format` to `path` (stdout when `None`; see [`OutputFile`]).
    pub fn write(&self, path: Option<&Path>, format: Format, labels: &Labels) -> io::Result<()> {
        write_with(path, |out| self.encode(out, format, labels))
    }

    /// Write in `format` into an open [`OutputFile`] (not committed).
    pub fn write_into(
        &self,
        file: &mut OutputFile,
        format: Format,
        labels: &Labels,
    ) -> io::Result<()> {
        encode_into(file, |out| self.encode(out, format, labels))
    }

    fn encode(&self, out: &mut dyn Write, format: Format, labels: &Labels) -> io::Result<()> {
        match self {
            Rendered::Lines(lines) => encode_lines(out, format, lines, labels),
            Rendered::Pprof(p) => p.write_gz(out),
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
