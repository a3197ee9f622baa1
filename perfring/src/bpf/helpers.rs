//! Helper function ids (stable ABI, `enum bpf_func_id` in include/uapi/linux/bpf.h) and
//! the flags psample passes to them, shared by every program psample builds.

/// `bpf_map_lookup_elem(map, key)` → value pointer or NULL.
pub const MAP_LOOKUP_ELEM: i32 = 1;
/// `bpf_map_update_elem(map, key, value, flags)`.
pub const MAP_UPDATE_ELEM: i32 = 2;
/// `bpf_map_delete_elem(map, key)`.
pub const MAP_DELETE_ELEM: i32 = 3;
/// `bpf_probe_read(dst, size, unsafe_ptr)` (4.1; x86_64 keeps it for kernel pointers).
pub const PROBE_READ: i32 = 4;
/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in ns (4.1).
pub const KTIME_GET_NS: i32 = 5;
/// `bpf_get_smp_processor_id()`.
pub const GET_SMP_PROCESSOR_ID: i32 = 8;
/// `bpf_get_current_pid_tgid()`: tgid << 32 | tid.
pub const GET_CURRENT_PID_TGID: i32 = 14;
/// `bpf_get_ns_current_pid_tgid(dev, ino, nsdata, size)`: ids in a pid namespace (5.7).
pub const GET_NS_CURRENT_PID_TGID: i32 = 120;
/// `bpf_get_current_comm(buf, size)` (4.2).
pub const GET_CURRENT_COMM: i32 = 16;
/// `bpf_get_current_task()`: the current `task_struct` as a plain address (4.8).
pub const GET_CURRENT_TASK: i32 = 35;
/// `bpf_perf_event_output(ctx, map, flags, data, size)` (4.4 for tracing programs).
pub const PERF_EVENT_OUTPUT: i32 = 25;
/// `bpf_get_stackid(ctx, map, flags)` (4.6).
pub const GET_STACKID: i32 = 27;
/// `bpf_get_stack(ctx, buf, size, flags)`: the stack copied into a buffer (4.18).
pub const GET_STACK: i32 = 67;
/// `bpf_probe_read_user(dst, size, unsafe_ptr)` (5.5).
pub const PROBE_READ_USER: i32 = 112;
/// `bpf_get_current_task_btf()` (5.11).
pub const GET_CURRENT_TASK_BTF: i32 = 158;
/// `bpf_task_pt_regs(task)`: the task's user-mode registers (5.15).
pub const TASK_PT_REGS: i32 = 175;

/// `bpf_get_stackid`/`bpf_get_stack` flag selecting the user stack.
pub const F_USER_STACK: i32 = 1 << 8;
/// `bpf_perf_event_output` flag: the event of the current CPU (BPF_F_CURRENT_CPU). Load it
/// with `ld_imm64`: a 32-bit immediate would be sign-extended to all ones, which the kernel
/// refuses as unknown flags.
pub const F_CURRENT_CPU: u64 = 0xffff_ffff;
