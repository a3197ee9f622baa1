//! Off-CPU profiling: blocked time by stack, and who woke it, from perf_event tracepoints
//! alone (no eBPF, so it works on 3.10 kernels).
//!
//! - [`reorder`]: merges the per-CPU rings into one time-ordered stream;
//! - [`intervals`]: the engine that turns switch-out / switch-in / wakeup / lost / exit
//!   events into blocked intervals, aggregated per stack (and waker stack);
//! - [`legacy`]: where switch-ins come from on kernels without context-switch records.
//!
//! Both are pure logic with no syscalls, so they are tested on synthetic event streams.

pub mod command;
pub mod intervals;
pub mod legacy;
pub mod reorder;

pub use intervals::{
    Engine, OffcpuEvent, Options, Report, StackId, StackKey, StateFilter, ThreadTotals, WakerKey,
};
pub use reorder::Reorder;

#[cfg(test)]
mod tests {
    use super::*;
    use perfring::tracepoint::TaskState;

    /// Two CPUs whose rings are read one after the other: the switch-in on CPU 1 is read
    /// before the switch-out on CPU 0 that precedes it. The merged stream must still pair them.
    #[test]
    fn out_of_order_cpus_are_merged_before_the_engine() {
        let switch_out = OffcpuEvent::SwitchOut {
            time: 100,
            cpu: 0,
            tid: 11,
            who: 10,
            state: TaskState::Uninterruptible,
            stack: 3,
        };
        let switch_in = OffcpuEvent::SwitchIn {
            time: 130,
            cpu: 1,
            tid: 11,
        };
        let mut reorder = Reorder::new(2);
        let mut engine = Engine::new(Options::default(), 0);
        reorder.push(1, 130, switch_in);
        reorder.push(0, 100, switch_out);
        reorder.end_round(|_, e| engine.push(e));
        reorder.drain_all(|_, e| engine.push(e));
        let report = engine.finish(1000);
        let key = StackKey {
            who: 10,
            stack: 3,
            waker: None,
        };
        assert_eq!(report.by_stack.get(&key), Some(&30));

        // Fed unmerged, the same records lose the interval: the reorder is what makes it right.
        let mut engine = Engine::new(Options::default(), 0);
        engine.push(switch_in);
        engine.push(switch_out);
        let report = engine.finish(1000);
        assert_ne!(report.by_stack.get(&key), Some(&30));
    }
}
