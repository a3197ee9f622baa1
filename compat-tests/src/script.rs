//! The scripted workload: a timeline of what the emulated machine's tasks do — run on a CPU
//! (a sample), map a file, rename, block, get woken, resume. The emulated kernel turns each
//! step into the records its open events would receive on the kernel it emulates.

use crate::encode::MapInfo;

/// A task as the scheduler names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

impl Task {
    /// The idle task of a CPU (pid 0), the "next" of every switch-out in the script.
    pub fn idle(cpu: u32) -> Task {
        Task {
            pid: 0,
            tid: 0,
            comm: format!("swapper/{cpu}"),
        }
    }
}

/// Why a task left the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// TASK_INTERRUPTIBLE (`S`).
    Sleeping,
    /// TASK_UNINTERRUPTIBLE (`D`).
    DiskWait,
    /// Preempted while runnable (`R+`).
    Preempted,
}

/// A stack: kernel and user frames, leaf first (`user` is what the kernel's frame-pointer
/// walk reports), and optionally the user registers and stack bytes the task had, for
/// PERF_SAMPLE_REGS_USER / STACK_USER (without them a sample carries ABI 0 and no stack, as
/// for a kernel thread).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stack {
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
    /// User (ip, sp, bp).
    pub user_regs: Option<[u64; 3]>,
    /// User stack bytes from sp up (as much as the task's stack holds).
    pub user_stack: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// A sampling-clock tick while the task runs this stack.
    OnCpu {
        task: Task,
        stack: Stack,
    },
    Mmap {
        task: Task,
        map: MapInfo,
    },
    Comm {
        task: Task,
        exec: bool,
    },
    /// The task leaves the CPU (the idle task follows).
    SwitchOut {
        task: Task,
        state: BlockState,
        stack: Stack,
    },
    /// `waker` (running on this step's CPU, with `stack`) wakes `wakee`.
    Wakeup {
        waker: Task,
        stack: Stack,
        wakee: Task,
        target_cpu: u32,
    },
    /// The task comes back on the CPU after the idle task.
    SwitchIn {
        task: Task,
    },
}

#[derive(Debug, Clone)]
pub struct Step {
    /// Nanoseconds after the first event was enabled.
    pub at_ns: u64,
    pub cpu: u32,
    pub action: Action,
}

/// Steps in time order (ties keep insertion order).
#[derive(Debug, Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    pub fn push(&mut self, at_ns: u64, cpu: u32, action: Action) -> &mut Script {
        let pos = self.steps.partition_point(|s| s.at_ns <= at_ns);
        self.steps.insert(pos, Step { at_ns, cpu, action });
        self
    }

    /// `count` samples of `stack` for `task` on `cpu`, every `every_ns` from `start_ns`.
    pub fn on_cpu(
        &mut self,
        task: &Task,
        stack: &Stack,
        cpu: u32,
        start_ns: u64,
        every_ns: u64,
        count: u64,
    ) -> &mut Script {
        for i in 0..count {
            self.push(
                start_ns + i * every_ns,
                cpu,
                Action::OnCpu {
                    task: task.clone(),
                    stack: stack.clone(),
                },
            );
        }
        self
    }

    /// `task` blocks on `cpu` at `at_ns` for `blocked_ns` with `stack`; `waker` (task, its
    /// stack, its CPU) wakes it, and it resumes on `cpu` one microsecond later.
    #[allow(clippy::too_many_arguments)]
    pub fn block(
        &mut self,
        task: &Task,
        state: BlockState,
        stack: &Stack,
        cpu: u32,
        at_ns: u64,
        blocked_ns: u64,
        waker: (&Task, &Stack, u32),
    ) -> &mut Script {
        self.push(
            at_ns,
            cpu,
            Action::SwitchOut {
                task: task.clone(),
                state,
                stack: stack.clone(),
            },
        );
        self.push(
            at_ns + blocked_ns,
            waker.2,
            Action::Wakeup {
                waker: waker.0.clone(),
                stack: waker.1.clone(),
                wakee: task.clone(),
                target_cpu: cpu,
            },
        );
        self.push(
            at_ns + blocked_ns + 1_000,
            cpu,
            Action::SwitchIn { task: task.clone() },
        );
        self
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// When the last step happens.
    pub fn end_ns(&self) -> u64 {
        self.steps.last().map_or(0, |s| s.at_ns)
    }
}
