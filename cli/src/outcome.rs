//! How a profiling run ends: psample's exit status and the `--summary-json` file.
//!
//! With `-- CMD`, psample exits with the command's status as a shell reports it (its code,
//! 128+N when signal N killed it; 127/126 when it could not be found or run, from
//! [`collect::launch`]), so CI jobs and Kubernetes Jobs wrapped in psample keep their
//! result. psample's own failures exit 1.

use std::path::{Path, PathBuf};

use collect::Error;
use serde_json::json;

use crate::progress::Terminal;

/// Where `--summary-json` goes, checked before the run starts.
pub struct SummaryJson {
    command: &'static str,
    path: Option<PathBuf>,
}

impl SummaryJson {
    /// Check that `path` can be written (before anything is collected).
    pub fn new(command: &'static str, path: Option<&Path>) -> Result<SummaryJson, Error> {
        if let Some(p) = path {
            collect::output::check_writable(p)
                .map_err(|e| Error::new(format!("--summary-json: {e}")))?;
        }
        Ok(SummaryJson {
            command,
            path: path.map(Path::to_path_buf),
        })
    }

    /// Write the document: psample's version, the command, the exit status psample ends
    /// with, the error if there was one, and every session's summary (one, unless targets
    /// were followed across restarts).
    fn write(&self, terminal: &Terminal, exit: i32, error: Option<&str>) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let doc = json!({
            "psample": env!("CARGO_PKG_VERSION"),
            "command": self.command,
            "exit_status": exit,
            "error": error,
            "sessions": terminal.summaries,
        });
        collect::output::write_with(Some(path), |out| {
            serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        })
        .map_err(|e| Error::new(format!("writing --summary-json {}: {e}", path.display())))
    }
}

/// The exit status of a run that returned `result`: the launched command's when it ended,
/// else 0, or the error's. Writes `--summary-json` (also after an error).
pub fn finish(
    result: Result<(), Error>,
    terminal: &Terminal,
    json: SummaryJson,
) -> Result<i32, Error> {
    match result {
        Ok(()) => {
            let code = match terminal.command_status {
                Some(s) => s.shell_code().unwrap_or(1),
                None => 0,
            };
            json.write(terminal, code, None)?;
            Ok(code)
        }
        Err(e) => {
            if let Err(w) = json.write(terminal, e.exit_code, Some(&e.message)) {
                collect::errln!("psample: error: {w}");
            }
            Err(e)
        }
    }
}
