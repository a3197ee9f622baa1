//! Zero-copy parser for the records the kernel writes into a perf ring.
//!
//! [`parse_record`] takes one record's bytes (as handed out by
//! [`RingBuffer::read_records`](crate::ring::RingBuffer::read_records), or read from a
//! perf.data file) and the [`SampleFormat`] of the event that produced it. Everything is
//! bounds-checked: malformed input yields a [`ParseError`], never a panic. Record types this
//! parser does not decode come back as [`Record::Unknown`]; skip them by the header size.

mod callchain;
mod cursor;
mod sample;

/// The `sample_type`, `read_format` and `branch_sample_type` bits used here, as u64 (the
/// bindings give them the u32 type of their C enums).
mod bits {
    use perf_event_open_sys::bindings as b;
    pub const FORMAT_GROUP: u64 = b::PERF_FORMAT_GROUP as u64;
    pub const FORMAT_ID: u64 = b::PERF_FORMAT_ID as u64;
    pub const FORMAT_LOST: u64 = b::PERF_FORMAT_LOST as u64;
    pub const FORMAT_TOTAL_TIME_ENABLED: u64 = b::PERF_FORMAT_TOTAL_TIME_ENABLED as u64;
    pub const FORMAT_TOTAL_TIME_RUNNING: u64 = b::PERF_FORMAT_TOTAL_TIME_RUNNING as u64;
    pub const ADDR: u64 = b::PERF_SAMPLE_ADDR as u64;
    pub const BRANCH_COUNTERS: u64 = b::PERF_SAMPLE_BRANCH_COUNTERS as u64;
    pub const BRANCH_HW_INDEX: u64 = b::PERF_SAMPLE_BRANCH_HW_INDEX as u64;
    pub const BRANCH_STACK: u64 = b::PERF_SAMPLE_BRANCH_STACK as u64;
    pub const CALLCHAIN: u64 = b::PERF_SAMPLE_CALLCHAIN as u64;
    pub const CPU: u64 = b::PERF_SAMPLE_CPU as u64;
    pub const DATA_SRC: u64 = b::PERF_SAMPLE_DATA_SRC as u64;
    pub const ID: u64 = b::PERF_SAMPLE_ID as u64;
    pub const IDENTIFIER: u64 = b::PERF_SAMPLE_IDENTIFIER as u64;
    pub const IP: u64 = b::PERF_SAMPLE_IP as u64;
    pub const PERIOD: u64 = b::PERF_SAMPLE_PERIOD as u64;
    pub const RAW: u64 = b::PERF_SAMPLE_RAW as u64;
    pub const READ: u64 = b::PERF_SAMPLE_READ as u64;
    pub const REGS_USER: u64 = b::PERF_SAMPLE_REGS_USER as u64;
    pub const STACK_USER: u64 = b::PERF_SAMPLE_STACK_USER as u64;
    pub const STREAM_ID: u64 = b::PERF_SAMPLE_STREAM_ID as u64;
    pub const TID: u64 = b::PERF_SAMPLE_TID as u64;
    pub const TIME: u64 = b::PERF_SAMPLE_TIME as u64;
    pub const TRANSACTION: u64 = b::PERF_SAMPLE_TRANSACTION as u64;
    pub const WEIGHT: u64 = b::PERF_SAMPLE_WEIGHT as u64;
    pub const WEIGHT_STRUCT: u64 = b::PERF_SAMPLE_WEIGHT_STRUCT as u64;
}

use perf_event_open_sys::bindings as b;

pub use callchain::{
    adjust_return_addresses, call_site, context, push_stack, Callchain, CallchainContext,
};
use cursor::{c_string, read_u64, Cursor};
pub use sample::{BranchEntry, BranchStack, ReadValue, ReadValues, Sample, U64Array, UserRegs};

/// Record type numbers (`enum perf_event_type`) for the records this parser decodes.
pub mod record_type {
    use perf_event_open_sys::bindings as b;
    /// `PERF_RECORD_MMAP`.
    pub const MMAP: u32 = b::PERF_RECORD_MMAP;
    /// `PERF_RECORD_LOST`.
    pub const LOST: u32 = b::PERF_RECORD_LOST;
    /// `PERF_RECORD_COMM`.
    pub const COMM: u32 = b::PERF_RECORD_COMM;
    /// `PERF_RECORD_EXIT`.
    pub const EXIT: u32 = b::PERF_RECORD_EXIT;
    /// `PERF_RECORD_THROTTLE`.
    pub const THROTTLE: u32 = b::PERF_RECORD_THROTTLE;
    /// `PERF_RECORD_UNTHROTTLE`.
    pub const UNTHROTTLE: u32 = b::PERF_RECORD_UNTHROTTLE;
    /// `PERF_RECORD_FORK`.
    pub const FORK: u32 = b::PERF_RECORD_FORK;
    /// `PERF_RECORD_READ`.
    pub const READ: u32 = b::PERF_RECORD_READ;
    /// `PERF_RECORD_SAMPLE`.
    pub const SAMPLE: u32 = b::PERF_RECORD_SAMPLE;
    /// `PERF_RECORD_MMAP2`.
    pub const MMAP2: u32 = b::PERF_RECORD_MMAP2;
    /// `PERF_RECORD_LOST_SAMPLES`.
    pub const LOST_SAMPLES: u32 = b::PERF_RECORD_LOST_SAMPLES;
    /// `PERF_RECORD_SWITCH`.
    pub const SWITCH: u32 = b::PERF_RECORD_SWITCH;
    /// `PERF_RECORD_SWITCH_CPU_WIDE`.
    pub const SWITCH_CPU_WIDE: u32 = b::PERF_RECORD_SWITCH_CPU_WIDE;
    /// Types from here on are never written by the kernel (perf tool's synthesized records).
    pub const USER_TYPE_START: u32 = 64;
}

/// What the parser must know about the event that wrote a record: the attr fields that
/// shape sample bodies and `sample_id` trailers. Built by `attr::Attr::sample_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleFormat {
    /// PERF_SAMPLE_* bits of the events.
    pub sample_type: u64,
    /// PERF_FORMAT_* bits (layout of PERF_SAMPLE_READ).
    pub read_format: u64,
    /// The `sample_regs_user` mask (how many registers a sample carries).
    pub regs_user_mask: u64,
    /// Whether non-sample records end in a `sample_id` trailer.
    pub sample_id_all: bool,
    /// PERF_SAMPLE_BRANCH_* bits (layout of the branch stack).
    pub branch_sample_type: u64,
}

/// The sample_type bits that also appear in the `sample_id` trailer of non-sample records.
const SAMPLE_ID_BITS: u64 =
    bits::TID | bits::TIME | bits::ID | bits::STREAM_ID | bits::CPU | bits::IDENTIFIER;

impl SampleFormat {
    /// Bytes of the `sample_id` trailer on every non-sample record (0 without sample_id_all).
    pub fn sample_id_size(&self) -> usize {
        if self.sample_id_all {
            8 * (self.sample_type & SAMPLE_ID_BITS).count_ones() as usize
        } else {
            0
        }
    }

    /// The event id of a record without parsing it, for rings shared by several events
    /// (PERF_EVENT_IOC_SET_OUTPUT): PERF_SAMPLE_IDENTIFIER puts it first in samples and last
    /// in trailers, at positions that do not depend on the rest of the format.
    pub fn identifier_of(&self, record: &[u8]) -> Option<u64> {
        if self.sample_type & bits::IDENTIFIER == 0 {
            return None;
        }
        let header = RecordHeader::parse(record).ok()?;
        let size = usize::from(header.size);
        if size < 16 || record.len() < size {
            return None;
        }
        if header.record_type == record_type::SAMPLE {
            Some(read_u64(record, 8))
        } else if self.sample_id_all && header.record_type < record_type::USER_TYPE_START {
            Some(read_u64(record, size - 8))
        } else {
            None
        }
    }
}

impl SampleFormat {
    /// The time of a record without parsing it: read at the position the format implies
    /// (after IDENTIFIER, IP and TID in a sample; in the `sample_id` trailer of other kernel
    /// records; in the body of FORK, EXIT and THROTTLE). `None` when the record carries no
    /// time (TIME not sampled, no sample_id_all, a perf-tool type) or is too short for it.
    /// For a well-formed record this is the time [`parse_record`] reports.
    pub fn time_of(&self, record: &[u8]) -> Option<u64> {
        if self.sample_type & bits::TIME == 0 {
            return None;
        }
        let header = RecordHeader::parse(record).ok()?;
        let size = usize::from(header.size);
        if size < RecordHeader::SIZE || record.len() < size {
            return None;
        }
        let before = |bits_before: u64| 8 * (self.sample_type & bits_before).count_ones() as usize;
        let at = match header.record_type {
            record_type::SAMPLE => {
                RecordHeader::SIZE + before(bits::IDENTIFIER | bits::IP | bits::TID)
            }
            // pid, ppid, tid, ptid, then the time.
            record_type::FORK | record_type::EXIT => RecordHeader::SIZE + 16,
            record_type::THROTTLE | record_type::UNTHROTTLE => RecordHeader::SIZE,
            t if t < record_type::USER_TYPE_START && self.sample_id_all => {
                let trailer = size.checked_sub(self.sample_id_size())?;
                if trailer < RecordHeader::SIZE {
                    return None;
                }
                trailer + before(bits::TID)
            }
            _ => return None,
        };
        record
            .get(at..at.checked_add(8)?)
            .filter(|_| at + 8 <= size)
            .map(|b| read_u64(b, 0))
    }
}

/// The 8-byte `struct perf_event_header` that starts every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `PERF_RECORD_*`.
    pub record_type: u32,
    /// Flags: cpumode and per-type bits (PERF_RECORD_MISC_*).
    pub misc: u16,
    /// Size of the whole record, header included.
    pub size: u16,
}

impl RecordHeader {
    /// Bytes in a header.
    pub const SIZE: usize = 8;

    /// Decodes the header at the start of `bytes` (no check of `size` against `bytes`).
    pub fn parse(bytes: &[u8]) -> Result<RecordHeader, ParseError> {
        let h = bytes.get(..8).ok_or(ParseError::ShortHeader(bytes.len()))?;
        Ok(RecordHeader {
            record_type: u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
            misc: u16::from_ne_bytes([h[4], h[5]]),
            size: u16::from_ne_bytes([h[6], h[7]]),
        })
    }
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer than 8 bytes.
    #[error("record needs an 8-byte header, got {0} bytes")]
    ShortHeader(usize),
    /// A size below 8 or beyond the bytes given.
    #[error("record header says {size} bytes, but {available} bytes are available (minimum 8)")]
    BadSize {
        /// The header's size field.
        size: u16,
        /// Bytes given.
        available: usize,
    },
    /// A field runs past the end of the record.
    #[error("record type {record_type}: truncated at offset {offset} reading {field}")]
    Truncated {
        /// The record type.
        record_type: u32,
        /// The field being read.
        field: &'static str,
        /// Where.
        offset: usize,
    },
    /// A count field promises more entries than the record holds.
    #[error("record type {record_type}: {field} count {count} exceeds the {available} bytes left")]
    CountTooLarge {
        /// The record type.
        record_type: u32,
        /// The field.
        field: &'static str,
        /// The count read.
        count: u64,
        /// Bytes left.
        available: usize,
    },
    /// The record is smaller than its own trailer.
    #[error("record type {record_type} of {size} bytes is too small for its sample_id trailer of {trailer} bytes")]
    NoRoomForSampleId {
        /// The record type.
        record_type: u32,
        /// Its size.
        size: usize,
        /// The trailer size the format implies.
        trailer: usize,
    },
}

/// The `sample_id` trailer of a non-sample record (`sample_id_all`): the fields of
/// TID, TIME, ID, STREAM_ID, CPU and IDENTIFIER that `sample_type` selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleId {
    /// Process id (TID).
    pub pid: Option<u32>,
    /// Thread id (TID).
    pub tid: Option<u32>,
    /// Timestamp (TIME).
    pub time: Option<u64>,
    /// Event id of the group leader (ID).
    pub id: Option<u64>,
    /// Event id (STREAM_ID).
    pub stream_id: Option<u64>,
    /// CPU (CPU).
    pub cpu: Option<u32>,
    /// Event id (IDENTIFIER).
    pub identifier: Option<u64>,
}

/// Where a mapped file came from: MMAP2 carries either the inode identity or, with
/// PERF_RECORD_MISC_MMAP_BUILD_ID (5.12+), the build id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmapFileId<'a> {
    /// The inode identity of the file.
    Inode {
        /// Device major number.
        maj: u32,
        /// Device minor number.
        min: u32,
        /// Inode number.
        ino: u64,
        /// Inode generation.
        ino_generation: u64,
    },
    /// The build-id (5.12+, PERF_RECORD_MISC_MMAP_BUILD_ID).
    BuildId(&'a [u8]),
}

/// PERF_RECORD_MMAP and PERF_RECORD_MMAP2 (the latter fills the `Option` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmap<'a> {
    /// Flags (cpumode, MMAP_DATA, MMAP_BUILD_ID).
    pub misc: u16,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Start address.
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// File offset.
    pub pgoff: u64,
    /// MMAP2: the file identity.
    pub file_id: Option<MmapFileId<'a>>,
    /// MMAP2: PROT_* bits.
    pub prot: Option<u32>,
    /// MMAP2: MAP_* bits.
    pub flags: Option<u32>,
    /// Path bytes up to the NUL (not necessarily UTF-8), or a name such as `[vdso]`.
    pub filename: &'a [u8],
    /// The trailer.
    pub sample_id: SampleId,
}

impl Mmap<'_> {
    /// Whether this was an MMAP2 record.
    pub fn is_mmap2(&self) -> bool {
        self.prot.is_some()
    }
    /// A data (non-executable) mapping, only reported with attr.mmap_data.
    pub fn is_data(&self) -> bool {
        self.misc & b::PERF_RECORD_MISC_MMAP_DATA as u16 != 0
    }
    /// PERF_RECORD_MISC_CPUMODE_MASK bits of `misc`.
    pub fn cpumode(&self) -> u16 {
        self.misc & b::PERF_RECORD_MISC_CPUMODE_MASK as u16
    }
}

/// PERF_RECORD_COMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comm<'a> {
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// The name bytes up to the NUL (at most 16).
    pub comm: &'a [u8],
    /// The name changed because of exec (PERF_RECORD_MISC_COMM_EXEC, 3.16+ with comm_exec),
    /// as opposed to prctl(PR_SET_NAME).
    pub exec: bool,
    /// The trailer.
    pub sample_id: SampleId,
}

/// PERF_RECORD_FORK and PERF_RECORD_EXIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// Process.
    pub pid: u32,
    /// Parent process.
    pub ppid: u32,
    /// Thread.
    pub tid: u32,
    /// Parent thread.
    pub ptid: u32,
    /// Timestamp.
    pub time: u64,
    /// The trailer.
    pub sample_id: SampleId,
}

/// PERF_RECORD_LOST: the kernel dropped `lost` records for event `id` (ring full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// Event id.
    pub id: u64,
    /// Records lost.
    pub lost: u64,
    /// The trailer.
    pub sample_id: SampleId,
}

/// PERF_RECORD_LOST_SAMPLES (4.2+): samples dropped before reaching the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostSamples {
    /// Samples lost.
    pub lost: u64,
    /// The trailer.
    pub sample_id: SampleId,
}

/// PERF_RECORD_THROTTLE / UNTHROTTLE: sampling paused/resumed by the rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttle {
    /// Timestamp.
    pub time: u64,
    /// Event id.
    pub id: u64,
    /// Event id (stream).
    pub stream_id: u64,
    /// The trailer.
    pub sample_id: SampleId,
}

/// PERF_RECORD_SWITCH (4.3+): the task of a per-task event switched in or out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// A switch-out (else a switch-in).
    pub out: bool,
    /// Switched out while runnable (PERF_RECORD_MISC_SWITCH_OUT_PREEMPT, 4.17+).
    pub preempt: bool,
    /// The trailer (its tid is the task).
    pub sample_id: SampleId,
}

/// PERF_RECORD_SWITCH_CPU_WIDE (4.3+): a CPU-wide event's context switch, with the other
/// side's pid/tid (the next task on switch-out, the previous one on switch-in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchCpuWide {
    /// A switch-out (else a switch-in).
    pub out: bool,
    /// Switched out while runnable.
    pub preempt: bool,
    /// The other task's process (next on switch-out, previous on switch-in).
    pub next_prev_pid: u32,
    /// The other task's thread.
    pub next_prev_tid: u32,
    /// The trailer (the task on this CPU).
    pub sample_id: SampleId,
}

/// A decoded record borrowing from the bytes it was parsed from.
// Samples dominate the stream and records live briefly on the stack; boxing the large
// variant would cost an allocation per sample.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// PERF_RECORD_SAMPLE.
    Sample(Sample<'a>),
    /// PERF_RECORD_MMAP or MMAP2.
    Mmap(Mmap<'a>),
    /// PERF_RECORD_COMM.
    Comm(Comm<'a>),
    /// PERF_RECORD_FORK.
    Fork(TaskEvent),
    /// PERF_RECORD_EXIT.
    Exit(TaskEvent),
    /// PERF_RECORD_LOST.
    Lost(Lost),
    /// PERF_RECORD_LOST_SAMPLES.
    LostSamples(LostSamples),
    /// PERF_RECORD_THROTTLE.
    Throttle(Throttle),
    /// PERF_RECORD_UNTHROTTLE.
    Unthrottle(Throttle),
    /// PERF_RECORD_SWITCH.
    Switch(Switch),
    /// PERF_RECORD_SWITCH_CPU_WIDE.
    SwitchCpuWide(SwitchCpuWide),
    /// A type this parser does not decode (READ, AUX, NAMESPACES, KSYMBOL, …, or a
    /// perf-tool type ≥ 64); the caller skips it by the header size.
    Unknown {
        /// Its type.
        record_type: u32,
        /// Its misc flags.
        misc: u16,
    },
}

/// Decodes the record at the start of `bytes`. Bytes past the header's `size` are ignored,
/// so a caller may pass the rest of a buffer; fewer bytes than `size` is an error.
pub fn parse_record<'a>(bytes: &'a [u8], fmt: &SampleFormat) -> Result<Record<'a>, ParseError> {
    let header = RecordHeader::parse(bytes)?;
    let size = usize::from(header.size);
    let record = bytes
        .get(..size)
        .filter(|_| size >= RecordHeader::SIZE)
        .ok_or(ParseError::BadSize {
            size: header.size,
            available: bytes.len(),
        })?;
    let misc = header.misc;
    let rt = header.record_type;
    if rt == record_type::SAMPLE {
        return sample::parse_sample(record, misc, fmt).map(Record::Sample);
    }
    if !is_known(rt) {
        return Ok(Record::Unknown {
            record_type: rt,
            misc,
        });
    }
    let trailer = fmt.sample_id_size();
    let body_end = size
        .checked_sub(trailer)
        .filter(|&end| end >= RecordHeader::SIZE)
        .ok_or(ParseError::NoRoomForSampleId {
            record_type: rt,
            size,
            trailer,
        })?;
    let sample_id = parse_sample_id(record.get(body_end..).unwrap_or(&[]), fmt, rt)?;
    let body = record.get(..body_end).unwrap_or(&[]);
    let mut c = Cursor::new(body, RecordHeader::SIZE, rt);
    let flag = |bit: u32| misc & bit as u16 != 0;
    Ok(match rt {
        record_type::MMAP | record_type::MMAP2 => {
            let (pid, tid) = c.u32_pair("pid/tid")?;
            let addr = c.u64("addr")?;
            let len = c.u64("len")?;
            let pgoff = c.u64("pgoff")?;
            let (mut file_id, mut prot, mut flags) = (None, None, None);
            if rt == record_type::MMAP2 {
                let id = c.bytes(24, "mmap2 file id")?;
                let mut idc = Cursor::new(id, 0, rt);
                file_id = Some(if flag(b::PERF_RECORD_MISC_MMAP_BUILD_ID) {
                    // u8 build_id_size, u8 + u16 reserved, u8 build_id[20]
                    let n = id.first().map_or(0, |&n| usize::from(n).min(20));
                    MmapFileId::BuildId(id.get(4..4 + n).unwrap_or(&[]))
                } else {
                    let (maj, min) = idc.u32_pair("maj/min")?;
                    MmapFileId::Inode {
                        maj,
                        min,
                        ino: idc.u64("ino")?,
                        ino_generation: idc.u64("ino_generation")?,
                    }
                });
                let (p, f) = c.u32_pair("prot/flags")?;
                prot = Some(p);
                flags = Some(f);
            }
            Record::Mmap(Mmap {
                misc,
                pid,
                tid,
                addr,
                len,
                pgoff,
                file_id,
                prot,
                flags,
                filename: c_string(c.rest()),
                sample_id,
            })
        }
        record_type::COMM => {
            let (pid, tid) = c.u32_pair("pid/tid")?;
            Record::Comm(Comm {
                pid,
                tid,
                comm: c_string(c.rest()),
                exec: flag(b::PERF_RECORD_MISC_COMM_EXEC),
                sample_id,
            })
        }
        record_type::FORK | record_type::EXIT => {
            let (pid, ppid) = c.u32_pair("pid/ppid")?;
            let (tid, ptid) = c.u32_pair("tid/ptid")?;
            let event = TaskEvent {
                pid,
                ppid,
                tid,
                ptid,
                time: c.u64("time")?,
                sample_id,
            };
            if rt == record_type::FORK {
                Record::Fork(event)
            } else {
                Record::Exit(event)
            }
        }
        record_type::LOST => Record::Lost(Lost {
            id: c.u64("id")?,
            lost: c.u64("lost")?,
            sample_id,
        }),
        record_type::LOST_SAMPLES => Record::LostSamples(LostSamples {
            lost: c.u64("lost")?,
            sample_id,
        }),
        record_type::THROTTLE | record_type::UNTHROTTLE => {
            let t = Throttle {
                time: c.u64("time")?,
                id: c.u64("id")?,
                stream_id: c.u64("stream_id")?,
                sample_id,
            };
            if rt == record_type::THROTTLE {
                Record::Throttle(t)
            } else {
                Record::Unthrottle(t)
            }
        }
        record_type::SWITCH => Record::Switch(Switch {
            out: flag(b::PERF_RECORD_MISC_SWITCH_OUT),
            preempt: flag(b::PERF_RECORD_MISC_SWITCH_OUT_PREEMPT),
            sample_id,
        }),
        record_type::SWITCH_CPU_WIDE => {
            let (next_prev_pid, next_prev_tid) = c.u32_pair("next_prev_pid/tid")?;
            Record::SwitchCpuWide(SwitchCpuWide {
                out: flag(b::PERF_RECORD_MISC_SWITCH_OUT),
                preempt: flag(b::PERF_RECORD_MISC_SWITCH_OUT_PREEMPT),
                next_prev_pid,
                next_prev_tid,
                sample_id,
            })
        }
        _ => Record::Unknown {
            record_type: rt,
            misc,
        },
    })
}

fn is_known(rt: u32) -> bool {
    matches!(
        rt,
        record_type::MMAP
            | record_type::MMAP2
            | record_type::COMM
            | record_type::FORK
            | record_type::EXIT
            | record_type::LOST
            | record_type::LOST_SAMPLES
            | record_type::THROTTLE
            | record_type::UNTHROTTLE
            | record_type::SWITCH
            | record_type::SWITCH_CPU_WIDE
    )
}

/// Parses a `sample_id` trailer (exactly `fmt.sample_id_size()` bytes).
pub fn parse_sample_id(
    trailer: &[u8],
    fmt: &SampleFormat,
    record_type: u32,
) -> Result<SampleId, ParseError> {
    let mut id = SampleId::default();
    if !fmt.sample_id_all {
        return Ok(id);
    }
    let has = |bit: u64| fmt.sample_type & bit != 0;
    let mut c = Cursor::new(trailer, 0, record_type);
    if has(bits::TID) {
        let (pid, tid) = c.u32_pair("sample_id.pid/tid")?;
        id.pid = Some(pid);
        id.tid = Some(tid);
    }
    if has(bits::TIME) {
        id.time = Some(c.u64("sample_id.time")?);
    }
    if has(bits::ID) {
        id.id = Some(c.u64("sample_id.id")?);
    }
    if has(bits::STREAM_ID) {
        id.stream_id = Some(c.u64("sample_id.stream_id")?);
    }
    if has(bits::CPU) {
        id.cpu = Some(c.u32_pair("sample_id.cpu")?.0);
    }
    if has(bits::IDENTIFIER) {
        id.identifier = Some(c.u64("sample_id.identifier")?);
    }
    Ok(id)
}
