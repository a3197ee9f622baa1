//! When a session's read loop stops: a signal, the duration, or the targets' exit.

use std::time::{Duration, Instant};

use symbolize::identity::ProcessIdentity;

use super::{signals, StopCause};
use crate::target::{self, Launched, Target};

/// Stop conditions for the read loop.
///
/// Targets are followed by identity (pid and start time, [`ProcessIdentity`]): a PID reused by
/// another process right after the target exited is not the target, however quickly it came.
/// When every event reports POLLHUP (their tasks exited) the liveness check runs at once
/// instead of at the next 200 ms tick.
pub struct Stopper {
    start: Instant,
    duration: Option<Duration>,
    targets: Vec<Followed>,
    last_check: Instant,
    system_wide: bool,
    /// Every event reported POLLHUP at the last wait.
    hung_up: bool,
    /// Check the targets at the next [`Self::check`], whatever the time.
    check_now: bool,
}

/// A process or thread being profiled: its identity when /proc gave one.
struct Followed {
    id: u32,
    identity: Option<ProcessIdentity>,
}

impl Followed {
    fn new(id: u32) -> Followed {
        Followed {
            id,
            identity: ProcessIdentity::of(id),
        }
    }

    fn running(&self) -> bool {
        match self.identity {
            Some(i) => i.is_running(),
            None => target::process_alive(self.id),
        }
    }
}

impl Stopper {
    /// Stop after `duration`, or when the targets (`pids` of `target`) are gone.
    pub fn new(duration: Option<Duration>, target: &Target, pids: &[u32]) -> Self {
        let ids: Vec<u32> = match target {
            Target::Tids(t) => t.clone(),
            Target::AllCpus | Target::Cgroup(_) => Vec::new(),
            _ => pids.to_vec(),
        };
        Stopper {
            start: Instant::now(),
            duration,
            targets: ids.into_iter().map(Followed::new).collect(),
            last_check: Instant::now(),
            system_wide: target.cpu_wide(),
            hung_up: false,
            check_now: false,
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

    /// What the session's wait said about POLLHUP. Every event hung up means its task
    /// exited; but only ring owners are polled, so the targets are checked before stopping,
    /// and a poll that keeps returning at once (an owner thread exited, others run on) is
    /// paced.
    pub fn after_wait(&mut self, all_hung_up: bool) {
        if all_hung_up && self.hung_up {
            std::thread::sleep(Duration::from_millis(self.poll_timeout_ms() as u64));
        } else if all_hung_up {
            self.check_now = true;
        }
        self.hung_up = all_hung_up;
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
        let now = std::mem::take(&mut self.check_now);
        if self.system_wide || (!now && self.last_check.elapsed() < Duration::from_millis(200)) {
            return None;
        }
        self.last_check = Instant::now();
        let any_alive = self.targets.iter().any(Followed::running);
        (!any_alive).then_some(StopCause::TargetsExited)
    }
}
