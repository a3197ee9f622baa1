//! `record --bpf`: in-kernel stack aggregation where it gives the same information as the
//! ring-buffer path (frame-pointer stacks), with a clean fallback in `auto` mode.
//!
//! The sampling events are opened exactly as for the ring path; a BPF program attached to
//! them counts (pid, tid, user stack, kernel stack) in kernel maps and returns 0, so no
//! sample reaches the ring — only side-band records (mmap, comm, fork) still do, which keep
//! address spaces and names up to date. Userspace drains the maps periodically.

use std::os::fd::AsFd;

use perfring::bpf::{PidNamespace, StackCounter, StackCounterOptions};
use perfring::event::Session;
use perfring::record::push_stack;
use perfring::sys::Ioctl;

use crate::container::Containers;
use crate::frame::Frame;
use crate::pipeline::Pipeline;
use crate::profile::Profile;
use crate::stack::StackMode;
use crate::Error;

/// Whether to aggregate stacks in the kernel (`--bpf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfMode {
    /// Where it gives the same result (frame-pointer stacks) and the kernel allows it.
    Auto,
    /// Never: always the ring buffer.
    Never,
    /// Always, or fail.
    Always,
}

/// A loaded and attached counter.
pub struct BpfAggregation {
    counter: StackCounter,
    /// Samples counted in the kernel and drained so far.
    pub samples: u64,
    /// Distinct (pid, tid, stacks) keys drained.
    pub keys: u64,
    frames: Vec<Frame>,
    addrs: Vec<u64>,
}

/// Whether BPF aggregation is used for this run, and why not when it isn't.
pub enum Decision {
    /// Aggregate in the kernel with this counter.
    Use(Box<BpfAggregation>),
    /// Use the ring buffer; why.
    NotUsed(String),
}

/// Why a call-graph mode needs the ring, if it does. The in-kernel aggregation keys stacks by
/// the kernel's frame-pointer chain only; it must never give worse stacks than the ring, so
/// until the BPF programs also capture what the hybrid leaf fix needs (the user registers
/// and the words at the stack pointer), `auto` samples go through the ring too.
pub fn ring_only(call_graph: StackMode) -> Option<&'static str> {
    match call_graph {
        StackMode::Fp => None,
        StackMode::Auto(_) => Some(
            "--call-graph auto completes leaf frames from a stack copy the in-kernel \
             aggregation does not keep; using the ring (--call-graph fp for BPF)",
        ),
        StackMode::Dwarf(_) => {
            Some("BPF stack maps cannot unwind DWARF; DWARF mode uses the ring buffer")
        }
    }
}

fn refuse(mode: BpfMode, why: String) -> Result<Decision, Error> {
    match mode {
        BpfMode::Always => Err(Error::new(format!("--bpf always: {why}"))),
        _ => Ok(Decision::NotUsed(why)),
    }
}

/// Load the counter and attach it to every event of `spec`, or explain why not.
pub fn setup(
    mode: BpfMode,
    call_graph: StackMode,
    session: &Session,
    spec: usize,
    verbose: bool,
) -> Result<Decision, Error> {
    if mode == BpfMode::Never {
        return Ok(Decision::NotUsed("--bpf never".into()));
    }
    if let Some(why) = ring_only(call_graph) {
        return refuse(mode, why.into());
    }
    let opts = StackCounterOptions {
        log_verifier: verbose,
        // In a container's pid namespace the program must name threads as psample and its
        // /proc do: a kernel without bpf_get_ns_current_pid_tgid (before 5.7) refuses the
        // program, and `auto` uses the ring, whose pids the kernel already translates.
        pid_namespace: PidNamespace::own_if_nested(),
        ..Default::default()
    };
    let counter = match StackCounter::load(&opts) {
        Ok(c) => c,
        Err(e) => return refuse(mode, format!("cannot load the BPF program: {e}")),
    };
    if verbose && !counter.verifier_log().is_empty() {
        crate::errln!("psample: BPF verifier log:\n{}", counter.verifier_log());
    }
    let kernel = session.kernel().clone();
    let fds: Vec<_> = session.fds_of(spec).collect();
    for (i, fd) in fds.iter().enumerate() {
        if let Err(errno) = kernel.ioctl(fd.as_fd(), Ioctl::SetBpf(counter.prog_fd())) {
            if i == 0 {
                // Nothing attached yet: the ring path is untouched.
                return refuse(
                    mode,
                    format!(
                        "the kernel refused PERF_EVENT_IOC_SET_BPF: {}",
                        errno.desc()
                    ),
                );
            }
            return Err(Error::new(format!(
                "attaching the BPF program to event {i} failed after others succeeded: {}; \
                 rerun with --bpf never",
                errno.desc()
            )));
        }
    }
    Ok(Decision::Use(Box::new(BpfAggregation {
        counter,
        samples: 0,
        keys: 0,
        frames: Vec::new(),
        addrs: Vec::new(),
    })))
}

impl BpfAggregation {
    /// Move the kernel's counts into `profile`. Errors are reported, not fatal: counts
    /// collected so far stay in the profile.
    pub fn drain(
        &mut self,
        p: &mut Pipeline,
        profile: &mut Profile,
        containers: &mut Containers,
    ) -> Result<(), String> {
        let counts = self.counter.drain().map_err(|e| e.to_string())?;
        for c in counts {
            if c.pid == p.own_pid {
                continue;
            }
            self.keys += 1;
            self.samples += c.count;
            self.frames.clear();
            // Same convention as PERF_SAMPLE_CALLCHAIN (perfring's push_stack).
            self.addrs.clear();
            push_stack(c.kernel_stack.iter().copied(), &mut self.addrs);
            self.frames
                .extend(self.addrs.iter().map(|a| Frame::Kernel(*a)));
            self.addrs.clear();
            push_stack(c.user_stack.iter().copied(), &mut self.addrs);
            if !self.addrs.is_empty() {
                p.tracker.ensure_known(c.pid);
            }
            for &a in &self.addrs {
                self.frames.push(p.tracker.user_frame(c.pid, a));
            }
            // Both stack ids failed (map collision or full): keep the samples, visibly.
            if self.frames.is_empty() {
                self.frames.push(Frame::Label("[stack lost]"));
            }
            p.tracker.saw_thread(c.tid);
            let stack = p.intern_stack(&self.frames);
            let name = p.thread_name(c.pid, c.tid);
            super::collector::add_sample(profile, containers, name, stack, (c.pid, c.tid), c.count);
        }
        Ok(())
    }

    /// (samples spilled to the ring, stacks lost) in the kernel.
    pub fn missing_counts(&self) -> (u64, u64) {
        let m = self.counter.missing();
        (m.spilled_samples(), m.lost_stacks())
    }

    /// Stacks the kernel could not record (reported like lost records).
    pub fn missing(&self) -> String {
        let m = self.counter.missing();
        format!(
            "{} samples spilled to the ring (stack map collisions/full, count map full), {} stacks lost",
            m.spilled_samples(),
            m.lost_stacks()
        )
    }
}
