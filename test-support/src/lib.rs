//! # test-support — what the workspace's test suites share
//!
//! Tests that profile real processes need access this machine or user may not give
//! (perf_event_open on other processes, CPU-wide events and tracepoints, bpf(2)). Such a
//! test starts with [`require!`]: where the access is missing it is skipped with a message
//! on stderr saying what is missing and how to get it — unless `PSAMPLE_REQUIRE_PERF=1`
//! (set by `.ci/run`), where a missing access is a failure, so that CI can never pass by
//! skipping.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io::Write;

/// The environment variable that turns a missing access into a test failure.
pub const REQUIRE_VAR: &str = "PSAMPLE_REQUIRE_PERF";

/// What a test needs from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// perf_event_open on processes of this user, kernel stacks included: root, or
    /// `kernel.perf_event_paranoid` ≤ 1.
    Perf,
    /// CPU-wide events and tracepoint samples (RAW data): root, or
    /// `kernel.perf_event_paranoid` ≤ -1.
    SystemWide,
    /// Root: bpf(2), mounting tracefs, reading other users' /proc/PID/mem.
    Root,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn paranoid() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why `need` is not met here (`None` when it is).
pub fn missing(need: Need) -> Option<String> {
    missing_with(need, is_root(), paranoid())
}

/// Why `need` is not met for a user who is (not) root under this paranoid level.
fn missing_with(need: Need, root: bool, level: Option<i64>) -> Option<String> {
    if root {
        return None;
    }
    let shown = level.map_or("unreadable".to_string(), |p| p.to_string());
    match need {
        Need::Perf if level.is_some_and(|p| p <= 1) => None,
        Need::SystemWide if level.is_some_and(|p| p <= -1) => None,
        Need::Perf => Some(format!(
            "needs root or kernel.perf_event_paranoid <= 1 (it is {shown}): \
             `sudo sysctl kernel.perf_event_paranoid=1`"
        )),
        Need::SystemWide => Some(format!(
            "needs root or kernel.perf_event_paranoid = -1 (it is {shown}): \
             `sudo sysctl kernel.perf_event_paranoid=-1`"
        )),
        Need::Root => Some("needs root (bpf(2), tracefs, other processes' memory)".into()),
    }
}

/// Whether missing access must fail the test (`PSAMPLE_REQUIRE_PERF=1`).
pub fn access_required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Whether a test needing `need` can run here. When not: panics with the reason under
/// `PSAMPLE_REQUIRE_PERF=1`, else says on stderr that `test` is skipped and why, and
/// returns false. Use through [`require!`].
pub fn can_run(test: &str, need: Need) -> bool {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(test);
    verdict(test, missing(need), access_required())
}

fn verdict(test: &str, missing: Option<String>, required: bool) -> bool {
    let Some(why) = missing else {
        return true;
    };
    if required {
        panic!("{test}: {why} ({REQUIRE_VAR}=1: missing access is a failure)");
    }
    // Straight to stderr: libtest captures print!/eprint! of passing tests, and a skip
    // must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}: {why} (set {REQUIRE_VAR}=1 to make this a failure)"
    );
    false
}

/// Skip the calling test (return from it) when the host does not give `need`; fail
/// instead under `PSAMPLE_REQUIRE_PERF=1`.
///
/// ```ignore
/// #[test]
/// fn samples_a_real_process() {
///     test_support::require!(test_support::Need::Perf);
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require {
    ($need:expr) => {
        if !$crate::can_run(module_path!(), $need) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_follows_root_and_the_paranoid_level() {
        for need in [Need::Perf, Need::SystemWide, Need::Root] {
            assert_eq!(missing_with(need, true, Some(3)), None);
        }
        assert_eq!(missing_with(Need::Perf, false, Some(1)), None);
        assert_eq!(missing_with(Need::SystemWide, false, Some(-1)), None);
        let why = missing_with(Need::SystemWide, false, Some(2)).unwrap();
        assert!(why.contains("it is 2") && why.contains("sysctl"), "{why}");
        assert!(missing_with(Need::Perf, false, None)
            .unwrap()
            .contains("unreadable"));
        assert!(missing_with(Need::Root, false, Some(-1)).is_some());
    }

    #[test]
    fn missing_access_skips_unless_required() {
        assert!(verdict("t", None, true));
        assert!(!verdict("t", Some("needs root".into()), false));
    }

    #[test]
    #[should_panic(expected = "PSAMPLE_REQUIRE_PERF=1")]
    fn missing_access_fails_when_required() {
        verdict("t", Some("needs root".into()), true);
    }
}
