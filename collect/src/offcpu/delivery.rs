//! Wakeup samples the kernel counted but never wrote.
//!
//! A sampled tracepoint with a period of 1 writes one sample per hit, and its counter
//! (read(2) on the event) counts the hits. Some kernels skip the sample in some contexts
//! while still counting the hit: on this project's 6.18 VM, every `sched_wakeup` fired
//! from the idle task on CPU 1 (a timer waking a sleeper there) is counted and never
//! written, with no lost record. Blocked time such a wakeup ends has no waker stack and
//! no runnable part, so the summary says how many wakeups were missing, and on which CPUs,
//! rather than letting the profile look complete.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::session::Summary;

/// Samples that arrived per CPU, and the kernel's counters once recording stopped.
#[derive(Default)]
pub struct Delivery {
    arrived: BTreeMap<u32, u64>,
    counted: Option<Vec<(u32, u64)>>,
}

impl Delivery {
    /// One sample of the event arrived from `cpu`'s ring.
    pub fn arrived(&mut self, cpu: u32) {
        *self.arrived.entry(cpu).or_default() += 1;
    }

    /// The kernel's counters per CPU (None: they cannot be read here).
    pub fn counted(&mut self, counters: Option<Vec<(u32, u64)>>) {
        self.counted = counters;
    }

    /// Hits counted but not delivered, per CPU (only CPUs with some).
    pub fn missing(&self) -> Vec<(u32, u64)> {
        let Some(counted) = &self.counted else {
            return Vec::new();
        };
        counted
            .iter()
            .map(|&(cpu, n)| (cpu, n.saturating_sub(*self.arrived.get(&cpu).unwrap_or(&0))))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// The summary's `undelivered` line and fact, when wakeups are missing. `lost`: the
    /// rings lost records, which the counters include too.
    pub fn summarize(&self, what: &str, lost: bool, s: &mut Summary) {
        let missing = self.missing();
        let total: u64 = missing.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        let arrived: u64 = self.arrived.values().sum();
        let cpus: Vec<String> = missing
            .iter()
            .map(|(cpu, n)| format!("CPU {cpu}: {n}"))
            .collect();
        let cause = if lost {
            "some may be among the lost records"
        } else {
            "no record was reported lost"
        };
        s.line(
            "undelivered",
            format!(
                "{total} of the {} wakeups the kernel counted never arrived as samples ({}); \
                 {cause}. The blocked time they ended has no {what}",
                total + arrived,
                cpus.join(", ")
            ),
        );
        let per_cpu: Map<String, Value> = missing
            .iter()
            .map(|(cpu, n)| (cpu.to_string(), json!(n)))
            .collect();
        s.fact(
            "undelivered_wakeups",
            json!({"total": total, "arrived": arrived, "per_cpu": per_cpu}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_counted_minus_arrived_per_cpu() {
        let mut d = Delivery::default();
        for _ in 0..3 {
            d.arrived(0);
        }
        d.arrived(1);
        assert!(d.missing().is_empty(), "no counters, nothing known missing");
        d.counted(Some(vec![(0, 3), (1, 10), (2, 0)]));
        assert_eq!(d.missing(), vec![(1, 9)]);
    }

    #[test]
    fn more_arrived_than_counted_is_not_negative() {
        let mut d = Delivery::default();
        d.arrived(0);
        d.arrived(0);
        d.counted(Some(vec![(0, 1)]));
        assert!(d.missing().is_empty());
    }
}
