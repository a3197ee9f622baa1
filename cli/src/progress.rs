//! A live sample counter on a terminal (nothing when stderr is not a TTY).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(tty: bool) -> Self {
        let bar = tty.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {pos} samples  (Ctrl-C to stop)")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        });
        Progress { bar }
    }

    pub fn tick(&mut self, count: u64) {
        if let Some(b) = &self.bar {
            b.set_position(count);
            b.tick();
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
