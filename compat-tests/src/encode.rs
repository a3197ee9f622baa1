//! Writing records in the layouts the kernel uses (`perf_output_sample`,
//! `perf_event_mmap_output`, …), driven by the attr the event was opened with: the
//! sample body and the `sample_id` trailer contain exactly the fields its bits select.

use perfring::attr::{flag, sample, RawAttr};
use perfring::record::record_type;

/// `PERF_RECORD_MISC_*` values the emulator writes.
pub mod misc {
    pub const KERNEL: u16 = 1;
    pub const USER: u16 = 2;
    pub const MMAP_DATA: u16 = 1 << 13;
    pub const COMM_EXEC: u16 = 1 << 13;
    pub const SWITCH_OUT: u16 = 1 << 13;
    pub const SWITCH_OUT_PREEMPT: u16 = 1 << 14;
}

/// perf's callchain context markers.
pub const CONTEXT_KERNEL: u64 = -128i64 as u64;
pub const CONTEXT_USER: u64 = -512i64 as u64;

/// `read_format` bits.
mod read_format {
    pub const TOTAL_TIME_ENABLED: u64 = 1 << 0;
    pub const TOTAL_TIME_RUNNING: u64 = 1 << 1;
    pub const ID: u64 = 1 << 2;
    pub const GROUP: u64 = 1 << 3;
    pub const LOST: u64 = 1 << 4;
}

/// Who and where a record is about, for sample bodies and `sample_id` trailers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    pub pid: u32,
    pub tid: u32,
    pub time: u64,
    pub cpu: u32,
    /// The id of the event the record is written for.
    pub id: u64,
}

/// What one sample carries beyond [`Origin`].
#[derive(Debug, Clone, Default)]
pub struct SampleBody<'a> {
    pub ip: u64,
    pub period: u64,
    /// Kernel frames, leaf first (without context markers).
    pub kernel: &'a [u64],
    /// User frames, leaf first.
    pub user: &'a [u64],
    /// The tracepoint payload, starting at `common_type`.
    pub raw: Option<&'a [u8]>,
    /// The event's count for PERF_SAMPLE_READ.
    pub count: u64,
    pub max_stack: Option<u16>,
    /// User (ip, sp, bp) for REGS_USER; `None` writes ABI 0 (no user context).
    pub user_regs: Option<[u64; 3]>,
    /// User stack bytes from sp, for STACK_USER.
    pub user_stack: &'a [u8],
}

struct Out(Vec<u8>);

impl Out {
    fn header(kind: u32, misc: u16) -> Out {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&misc.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        Out(v)
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    /// A NUL-terminated string padded to 8 bytes, as the kernel writes file names and comms.
    fn padded_str(&mut self, s: &[u8]) {
        let len = (s.len() + 1).next_multiple_of(8);
        self.0.extend_from_slice(s);
        self.0.resize(self.0.len() + len - s.len(), 0);
    }
    /// Sets the header's size. Records above 64 KiB cannot exist; the callers' inputs are
    /// bounded well below that, and an oversized one is cut to an empty record type 0
    /// rather than written with a wrapped size.
    fn finish(mut self) -> Vec<u8> {
        match u16::try_from(self.0.len()) {
            Ok(n) => {
                self.0[6..8].copy_from_slice(&n.to_ne_bytes());
                self.0
            }
            Err(_) => {
                let mut v = vec![0u8; 8];
                v[6..8].copy_from_slice(&8u16.to_ne_bytes());
                v
            }
        }
    }
}

/// The `sample_id` trailer for non-sample records (empty without sample_id_all).
pub fn sample_id_trailer(attr: &RawAttr, o: &Origin) -> Vec<u8> {
    let mut out = Out(Vec::new());
    if attr.has(flag::SAMPLE_ID_ALL) {
        write_sample_id(&mut out, attr.sample_type, o);
    }
    out.0
}

fn write_sample_id(out: &mut Out, st: u64, o: &Origin) {
    if st & sample::TID != 0 {
        out.u32(o.pid);
        out.u32(o.tid);
    }
    if st & sample::TIME != 0 {
        out.u64(o.time);
    }
    if st & sample::ID != 0 {
        out.u64(o.id);
    }
    if st & sample::STREAM_ID != 0 {
        out.u64(o.id);
    }
    if st & sample::CPU != 0 {
        out.u32(o.cpu);
        out.u32(0);
    }
    if st & sample::IDENTIFIER != 0 {
        out.u64(o.id);
    }
}

fn trailer(out: &mut Out, attr: &RawAttr, o: &Origin) {
    if attr.has(flag::SAMPLE_ID_ALL) {
        write_sample_id(out, attr.sample_type, o);
    }
}

/// The value read() returns and PERF_SAMPLE_READ embeds, for a non-group event.
pub fn read_value(attr: &RawAttr, count: u64, enabled_ns: u64, id: u64) -> Vec<u8> {
    let mut out = Out(Vec::new());
    let rf = attr.read_format;
    if rf & read_format::GROUP != 0 {
        out.u64(1);
    }
    if rf & read_format::GROUP == 0 {
        out.u64(count);
    }
    if rf & read_format::TOTAL_TIME_ENABLED != 0 {
        out.u64(enabled_ns);
    }
    if rf & read_format::TOTAL_TIME_RUNNING != 0 {
        out.u64(enabled_ns);
    }
    if rf & read_format::GROUP != 0 {
        out.u64(count);
    }
    if rf & read_format::ID != 0 {
        out.u64(id);
    }
    if rf & read_format::LOST != 0 {
        out.u64(0);
    }
    out.0
}

/// A PERF_RECORD_SAMPLE with the fields `attr.sample_type` selects, in kernel order.
pub fn sample(attr: &RawAttr, o: &Origin, body: &SampleBody<'_>) -> Vec<u8> {
    let st = attr.sample_type;
    let cpumode = if body.user.is_empty() && !body.kernel.is_empty() || body.raw.is_some() {
        misc::KERNEL
    } else {
        misc::USER
    };
    let mut out = Out::header(record_type::SAMPLE, cpumode);
    if st & sample::IDENTIFIER != 0 {
        out.u64(o.id);
    }
    if st & sample::IP != 0 {
        out.u64(body.ip);
    }
    if st & sample::TID != 0 {
        out.u32(o.pid);
        out.u32(o.tid);
    }
    if st & sample::TIME != 0 {
        out.u64(o.time);
    }
    if st & sample::ADDR != 0 {
        out.u64(0);
    }
    if st & sample::ID != 0 {
        out.u64(o.id);
    }
    if st & sample::STREAM_ID != 0 {
        out.u64(o.id);
    }
    if st & sample::CPU != 0 {
        out.u32(o.cpu);
        out.u32(0);
    }
    if st & sample::PERIOD != 0 {
        out.u64(body.period);
    }
    if st & sample::READ != 0 {
        out.0
            .extend_from_slice(&read_value(attr, body.count, 0, o.id));
    }
    if st & sample::CALLCHAIN != 0 {
        let chain = callchain(attr, body);
        out.u64(chain.len() as u64);
        for v in chain {
            out.u64(v);
        }
    }
    if st & sample::RAW != 0 {
        let raw = body.raw.unwrap_or(&[]);
        // The u32 size and the data together are padded to 8 bytes; size counts the padding.
        let padded = (raw.len() + 4).next_multiple_of(8) - 4;
        out.u32(padded as u32);
        out.0.extend_from_slice(raw);
        out.0.resize(out.0.len() + padded - raw.len(), 0);
    }
    if st & sample::BRANCH_STACK != 0 {
        out.u64(0);
    }
    if st & sample::REGS_USER != 0 {
        user_regs(&mut out, attr, body.user_regs);
    }
    if st & sample::STACK_USER != 0 {
        user_stack(&mut out, attr, body);
    }
    // WEIGHT, DATA_SRC, TRANSACTION: one u64 each.
    for bit in [sample::WEIGHT, sample::DATA_SRC, sample::TRANSACTION] {
        if st & bit != 0 {
            out.u64(0);
        }
    }
    if st & sample::REGS_INTR != 0 {
        out.u64(0);
    }
    if st & sample::PHYS_ADDR != 0 {
        out.u64(0);
    }
    // AUX (20) is a size then data, CGROUP (21), DATA_PAGE_SIZE (22), CODE_PAGE_SIZE (23)
    // and WEIGHT_STRUCT (24, in place of WEIGHT) are one u64 each; in kernel order that is
    // CGROUP, DATA_PAGE_SIZE, CODE_PAGE_SIZE, AUX.
    for bit in [1u64 << 21, 1 << 22, 1 << 23, 1 << 20] {
        if st & bit != 0 {
            out.u64(0);
        }
    }
    if st & (1 << 24) != 0 && st & sample::WEIGHT == 0 {
        out.u64(0);
    }
    out.finish()
}

/// Context markers and frames, honouring exclude_callchain_* and sample_max_stack as the
/// kernel does (the limit counts frames, not markers).
/// perf_regs indices of the registers a scripted stack carries (x86_64 uapi perf_regs.h).
const PERF_REG_BP: u32 = 6;
const PERF_REG_SP: u32 = 7;
const PERF_REG_IP: u32 = 8;
/// PERF_SAMPLE_REGS_ABI_64.
const REGS_ABI_64: u64 = 2;

/// REGS_USER: the ABI, then one u64 per bit of `sample_regs_user` in bit order (registers a
/// script does not model read as 0); ABI 0 and nothing else without a user context, exactly
/// what the kernel writes for kernel threads.
fn user_regs(out: &mut Out, attr: &RawAttr, regs: Option<[u64; 3]>) {
    let Some([ip, sp, bp]) = regs else {
        out.u64(0);
        return;
    };
    out.u64(REGS_ABI_64);
    for bit in (0..64).filter(|b| attr.sample_regs_user & (1u64 << b) != 0) {
        out.u64(match bit {
            PERF_REG_IP => ip,
            PERF_REG_SP => sp,
            PERF_REG_BP => bp,
            _ => 0,
        });
    }
}

/// STACK_USER: size 0 without a user context; else the requested size, that many bytes
/// (what the stack holds, zero padded, as the kernel's partial copy leaves it) and the
/// dyn_size actually copied.
fn user_stack(out: &mut Out, attr: &RawAttr, body: &SampleBody<'_>) {
    let size = attr.sample_stack_user as usize;
    if body.user_regs.is_none() || size == 0 {
        out.u64(0);
        return;
    }
    let copied = body.user_stack.len().min(size);
    out.u64(size as u64);
    out.0.extend_from_slice(&body.user_stack[..copied]);
    out.0.resize(out.0.len() + size - copied, 0);
    out.u64(copied as u64);
}

fn callchain(attr: &RawAttr, body: &SampleBody<'_>) -> Vec<u64> {
    let mut left = body.max_stack.map_or(usize::MAX, usize::from);
    let mut chain = Vec::new();
    let parts = [
        (CONTEXT_KERNEL, body.kernel, flag::EXCLUDE_CALLCHAIN_KERNEL),
        (CONTEXT_USER, body.user, flag::EXCLUDE_CALLCHAIN_USER),
    ];
    for (marker, frames, excluded) in parts {
        if attr.has(excluded) || frames.is_empty() || left == 0 {
            continue;
        }
        let n = frames.len().min(left);
        chain.push(marker);
        chain.extend_from_slice(&frames[..n]);
        left -= n;
    }
    chain
}

/// A mapping as MMAP/MMAP2 describe it.
#[derive(Debug, Clone, Default)]
pub struct MapInfo {
    pub addr: u64,
    pub len: u64,
    pub pgoff: u64,
    pub maj: u32,
    pub min: u32,
    pub ino: u64,
    pub prot: u32,
    pub flags: u32,
    pub path: String,
    pub exec: bool,
}

/// PERF_RECORD_MMAP2 when the event asked for mmap2, else PERF_RECORD_MMAP.
pub fn mmap(attr: &RawAttr, o: &Origin, m: &MapInfo) -> Vec<u8> {
    let data = if m.exec { 0 } else { misc::MMAP_DATA };
    let mmap2 = attr.has(flag::MMAP2);
    let kind = if mmap2 {
        record_type::MMAP2
    } else {
        record_type::MMAP
    };
    let mut out = Out::header(kind, misc::USER | data);
    out.u32(o.pid);
    out.u32(o.tid);
    out.u64(m.addr);
    out.u64(m.len);
    out.u64(m.pgoff);
    if mmap2 {
        out.u32(m.maj);
        out.u32(m.min);
        out.u64(m.ino);
        out.u64(0);
        out.u32(m.prot);
        out.u32(m.flags);
    }
    out.padded_str(m.path.as_bytes());
    trailer(&mut out, attr, o);
    out.finish()
}

/// PERF_RECORD_COMM; the exec flag only where the event asked for comm_exec.
pub fn comm(attr: &RawAttr, o: &Origin, name: &str, exec: bool) -> Vec<u8> {
    let m = if exec && attr.has(flag::COMM_EXEC) {
        misc::COMM_EXEC
    } else {
        0
    };
    let mut out = Out::header(record_type::COMM, m);
    out.u32(o.pid);
    out.u32(o.tid);
    let bytes = name.as_bytes();
    out.padded_str(&bytes[..bytes.len().min(15)]);
    trailer(&mut out, attr, o);
    out.finish()
}

/// PERF_RECORD_SWITCH for per-task events.
pub fn switch(attr: &RawAttr, o: &Origin, out_misc: u16) -> Vec<u8> {
    let mut out = Out::header(record_type::SWITCH, out_misc);
    trailer(&mut out, attr, o);
    out.finish()
}

/// PERF_RECORD_SWITCH_CPU_WIDE: `next_prev` is the next task on a switch-out, the previous
/// one on a switch-in.
pub fn switch_cpu_wide(
    attr: &RawAttr,
    o: &Origin,
    out_misc: u16,
    next_prev: (u32, u32),
) -> Vec<u8> {
    let mut out = Out::header(record_type::SWITCH_CPU_WIDE, out_misc);
    out.u32(next_prev.0);
    out.u32(next_prev.1);
    trailer(&mut out, attr, o);
    out.finish()
}

/// PERF_RECORD_EXIT / PERF_RECORD_FORK.
pub fn task(attr: &RawAttr, o: &Origin, exit: bool, parent: (u32, u32)) -> Vec<u8> {
    let kind = if exit {
        record_type::EXIT
    } else {
        record_type::FORK
    };
    let mut out = Out::header(kind, 0);
    out.u32(o.pid);
    out.u32(parent.0);
    out.u32(o.tid);
    out.u32(parent.1);
    out.u64(o.time);
    trailer(&mut out, attr, o);
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use perfring::attr::{AttrBuilder, EventKind};
    use perfring::record::{parse_record, Record};

    fn attr(st: u64, id_all: bool) -> RawAttr {
        AttrBuilder::new(EventKind::CpuClock)
            .sample_type(st)
            .sample_id_all(id_all)
            .mmap(true)
            .comm(true)
            .read_format(read_format::ID)
            .build()
    }

    const O: Origin = Origin {
        pid: 10,
        tid: 11,
        time: 12345,
        cpu: 1,
        id: 77,
    };

    #[test]
    fn samples_parse_back_with_every_field() {
        let st = sample::IDENTIFIER
            | sample::IP
            | sample::TID
            | sample::TIME
            | sample::ID
            | sample::CPU
            | sample::PERIOD
            | sample::READ
            | sample::CALLCHAIN
            | sample::RAW;
        let a = attr(st, true);
        let raw = [1u8, 2, 3, 4, 5];
        let bytes = sample(
            &a,
            &O,
            &SampleBody {
                ip: 0x1000,
                period: 5,
                kernel: &[0xffff_ffff_8100_0000],
                user: &[0x1000, 0x2000],
                raw: Some(&raw),
                count: 9,
                max_stack: None,
                ..Default::default()
            },
        );
        let Record::Sample(s) = parse_record(&bytes, &a.sample_format()).unwrap() else {
            panic!("not a sample");
        };
        assert_eq!(
            (s.pid, s.tid, s.time, s.cpu),
            (Some(10), Some(11), Some(12345), Some(1))
        );
        assert_eq!(
            (s.id, s.identifier, s.period),
            (Some(77), Some(77), Some(5))
        );
        let chain: Vec<u64> = s.callchain.unwrap().iter().collect();
        assert_eq!(
            chain,
            vec![
                CONTEXT_KERNEL,
                0xffff_ffff_8100_0000,
                CONTEXT_USER,
                0x1000,
                0x2000
            ]
        );
        let raw_back = s.raw.unwrap();
        assert_eq!(&raw_back[..5], &raw);
        assert_eq!(bytes.len() % 8, 0);
    }

    #[test]
    fn user_registers_and_stack_parse_back_in_the_kernel_layout() {
        let mut a = attr(sample::TID | sample::REGS_USER | sample::STACK_USER, false);
        // IP, SP, BP and one register the script does not model (AX).
        a.sample_regs_user = (1 << 8) | (1 << 7) | (1 << 6) | 1;
        a.sample_stack_user = 32;
        let stack = [7u8; 20];
        let body = SampleBody {
            user_regs: Some([0x401000, 0x7ffd_0000, 0x7ffd_0040]),
            user_stack: &stack,
            ..Default::default()
        };
        let bytes = sample(&a, &O, &body);
        let Record::Sample(s) = parse_record(&bytes, &a.sample_format()).unwrap() else {
            panic!("not a sample");
        };
        let regs = s.regs_user.unwrap();
        assert_eq!(regs.abi(), REGS_ABI_64);
        assert_eq!(
            (regs.get(8), regs.get(7), regs.get(6), regs.get(0)),
            (
                Some(0x401000),
                Some(0x7ffd_0000),
                Some(0x7ffd_0040),
                Some(0)
            )
        );
        // 32 bytes reserved, 20 copied: the parser cuts at dyn_size.
        assert_eq!(s.stack_user.unwrap(), &stack[..]);
        // Without a user context: ABI 0, no registers, no stack.
        let bytes = sample(&a, &O, &SampleBody::default());
        let Record::Sample(s) = parse_record(&bytes, &a.sample_format()).unwrap() else {
            panic!("not a sample");
        };
        assert_eq!(s.regs_user.unwrap().abi(), 0);
        assert_eq!(s.stack_user.unwrap_or(&[]), &[] as &[u8]);
    }

    #[test]
    fn max_stack_and_excluded_user_chains() {
        let mut a = attr(sample::CALLCHAIN, false);
        let body = SampleBody {
            kernel: &[1, 2],
            user: &[3, 4, 5],
            max_stack: Some(3),
            ..Default::default()
        };
        assert_eq!(
            callchain(&a, &body),
            vec![CONTEXT_KERNEL, 1, 2, CONTEXT_USER, 3]
        );
        a.set(flag::EXCLUDE_CALLCHAIN_USER, true);
        let body = SampleBody {
            max_stack: None,
            ..body
        };
        assert_eq!(callchain(&a, &body), vec![CONTEXT_KERNEL, 1, 2]);
    }

    #[test]
    fn side_band_records_carry_the_trailer_only_with_sample_id_all() {
        let m = MapInfo {
            addr: 0x5000,
            len: 0x1000,
            path: "/bin/x".into(),
            exec: true,
            ..Default::default()
        };
        for id_all in [false, true] {
            let a = attr(sample::TID | sample::TIME | sample::ID, id_all);
            let bytes = mmap(&a, &O, &m);
            match parse_record(&bytes, &a.sample_format()).unwrap() {
                Record::Mmap(r) => {
                    assert_eq!(r.filename, b"/bin/x");
                    assert!(!r.is_mmap2());
                    assert_eq!(r.sample_id.time, id_all.then_some(12345));
                }
                other => panic!("{other:?}"),
            }
            let bytes = comm(&a, &O, "a-very-long-thread-name", true);
            match parse_record(&bytes, &a.sample_format()).unwrap() {
                Record::Comm(c) => {
                    assert_eq!(c.comm, b"a-very-long-thr");
                    assert!(!c.exec, "no comm_exec asked, so no exec flag");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
