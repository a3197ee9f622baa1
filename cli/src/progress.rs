//! What the terminal shows of a run: a live sample counter (only when stderr is a TTY), each
//! session's summary, and notices — the command line's [`Observer`].

use std::io::IsTerminal;

use collect::launch::ExitStatus;
use collect::session::{Observer, Summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress and summaries on stderr.
pub struct Terminal {
    tty: bool,
    bar: Option<ProgressBar>,
    /// How the launched command (`-- CMD`) ended, from the last summary that said.
    pub command_status: Option<ExitStatus>,
    /// Every session's summary as JSON, for `--summary-json`.
    pub summaries: Vec<serde_json::Value>,
}

impl Terminal {
    /// A counter only when stderr is a terminal.
    pub fn new() -> Self {
        Terminal {
            tty: std::io::stderr().is_terminal(),
            bar: None,
            command_status: None,
            summaries: Vec::new(),
        }
    }
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer for Terminal {
    fn progress(&mut self, count: u64) {
        if !self.tty {
            return;
        }
        let b = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {pos} samples  (Ctrl-C to stop)")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        });
        b.set_position(count);
        b.tick();
    }

    fn progress_done(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn summary(&mut self, summary: &Summary) {
        collect::errln!("{}", summary.render().trim_end());
        if summary.command_status.is_some() {
            self.command_status = summary.command_status;
        }
        self.summaries.push(summary.to_json());
    }

    fn notice(&mut self, message: &str) {
        collect::errln!("psample: {message}");
    }
}
