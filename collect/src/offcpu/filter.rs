//! Kernel-side filters that pass only the targets' threads: the CPU-wide tracepoints
//! `offcpu` opens see every task, and most of their events are not the targets'. The filter
//! is an optimization; the collector checks every event against the targets itself.

use crate::session::Attached;
use crate::target;

/// Tids per ftrace filter: longer filters are refused by some kernels.
const MAX_FILTER_TIDS: usize = 64;

/// Ask the kernel to pass only events of `spec` whose `field` is one of the targets'
/// threads (up to [`MAX_FILTER_TIDS`] of them); whether it accepted.
pub fn to_targets(a: &Attached<'_>, spec: usize, field: &str) -> bool {
    let tids: Vec<u32> = a
        .pids
        .iter()
        .flat_map(|p| target::threads_of(*p).unwrap_or_default())
        .collect();
    !tids.is_empty()
        && tids.len() <= MAX_FILTER_TIDS
        && a.session
            .set_filter(spec, &field_filter(field, &tids))
            .is_ok()
}

/// An ftrace filter matching any of `tids` in `field`.
fn field_filter(field: &str, tids: &[u32]) -> String {
    tids.iter()
        .map(|t| format!("{field} == {t}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_names_every_thread() {
        assert_eq!(
            field_filter("next_pid", &[7, 9]),
            "next_pid == 7 || next_pid == 9"
        );
    }
}
