//! When a session's read loop stops: a signal, the duration, or the targets' exit.

use std::time::{Duration, Instant};

use super::{signals, StopCause};
use crate::target::{self, Launched, Target};

/// Stop conditions for the read loop.
pub struct Stopper {
    start: Instant,
    duration: Option<Duration>,
    pids: Vec<u32>,
    tids: Vec<u32>,
    last_check: Instant,
    system_wide: bool,
}

impl Stopper {
    /// Stop after `duration`, or when the targets (`pids` of `target`) are gone.
    pub fn new(duration: Option<Duration>, target: &Target, pids: &[u32]) -> Self {
        let (pids, tids) = match target {
            Target::Tids(t) => (Vec::new(), t.clone()),
            Target::AllCpus => (Vec::new(), Vec::new()),
            _ => (pids.to_vec(), Vec::new()),
        };
        Stopper {
            start: Instant::now(),
            duration,
            pids,
            tids,
            last_check: Instant::now(),
            system_wide: matches!(target, Target::AllCpus),
        }
    }

    /// Time since the stopper was created (the sampling start).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Milliseconds to wait in poll before the next check.
    pub fn poll_timeout_ms(&self) -> i32 {
        match self.duration {
            Some(d) => {
                let left = d.saturating_sub(self.start.elapsed());
                left.as_millis().clamp(1, 100) as i32
            }
            None => 100,
        }
    }

    /// Why to stop now, if it is time: a signal, the duration, or the targets' exit
    /// (the launched command's, or — checked every 200 ms — every target process's).
    pub fn check(&mut self, launched: Option<&Launched>) -> Option<StopCause> {
        if signals::stop_requested() {
            return Some(StopCause::Signal);
        }
        if self.duration.is_some_and(|d| self.start.elapsed() >= d) {
            return Some(StopCause::Duration);
        }
        if let Some(l) = launched {
            if l.try_wait().is_some() {
                return Some(StopCause::TargetsExited);
            }
            return None;
        }
        if self.system_wide || self.last_check.elapsed() < Duration::from_millis(200) {
            return None;
        }
        self.last_check = Instant::now();
        let any_alive = self.pids.iter().any(|p| target::process_alive(*p))
            || self.tids.iter().any(|t| target::thread_alive(*t));
        (!any_alive).then_some(StopCause::TargetsExited)
    }
}
