//! Running a command's sessions: once on fixed targets, or over and over on targets
//! looked up by name or pid file, with one continuous interval clock across them.

use std::time::Duration;

use super::{signals, Observer, SessionOptions, StopCause};
use crate::continuous::Intervals;
use crate::follow::Follow;
use crate::output::Labels;
use crate::target::{Lookup, Target, TargetSpec};
use crate::Error;

/// Run a command's sessions on its targets: once, or (with `continuous`) interval by
/// interval, re-attaching after target restarts. Shared by `record` and `offcpu`.
pub fn run_command(
    opts: &SessionOptions,
    command: &str,
    labels: Labels,
    observer: &mut dyn Observer,
    mut session: impl FnMut(
        Target,
        Option<&mut Intervals>,
        &mut dyn Observer,
    ) -> Result<StopCause, Error>,
) -> Result<(), Error> {
    let mut intervals = match &opts.continuous {
        Some(c) => Some(Intervals::start(
            c,
            opts.format,
            &opts.symbols,
            &opts.target,
            command,
            labels,
        )?),
        None => None,
    };
    match &opts.target {
        TargetSpec::Fixed(t) => {
            session(t.clone(), intervals.as_mut(), observer)?;
            Ok(())
        }
        TargetSpec::Lookup(lookup) => {
            run_restartable(lookup, observer, |t, o| session(t, intervals.as_mut(), o))
        }
    }
}

/// Run `session` over and over: each time the targets `lookup` names exit, wait for them to
/// come back and attach again.
pub fn run_restartable(
    lookup: &Lookup,
    observer: &mut dyn Observer,
    mut session: impl FnMut(Target, &mut dyn Observer) -> Result<StopCause, Error>,
) -> Result<(), Error> {
    let mut follow = Follow::new(lookup)?;
    signals::install();
    let mut attached_once = false;
    let mut waiting_said = false;
    loop {
        if signals::stop_requested() {
            return Ok(());
        }
        let pids = follow.lookup()?;
        let what = follow.describe();
        if pids.is_empty() {
            if !waiting_said {
                observer.notice(&format!("waiting for {what}"));
                waiting_said = true;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        waiting_said = false;
        match session(Target::Pids(pids), observer) {
            Ok(StopCause::TargetsExited) => {
                attached_once = true;
                observer.notice(&format!("targets exited; re-attaching when {what} is back"));
            }
            Ok(_) => return Ok(()),
            // The process may exit while we attach; after a first success keep trying.
            Err(e) if attached_once || e.to_string().contains("exited") => {
                observer.notice(&format!("attaching failed ({e}); retrying"));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}
