//! One hand-built record per type, checked field by field.

mod support;

use perfring::record::{
    parse_record, record_type, CallchainContext, MmapFileId, ParseError, Record, SampleFormat,
    SampleId,
};
use support::builder::RecordBuilder;

const IP: u64 = 1 << 0;
const TID: u64 = 1 << 1;
const TIME: u64 = 1 << 2;
const ADDR: u64 = 1 << 3;
const READ: u64 = 1 << 4;
const CALLCHAIN: u64 = 1 << 5;
const ID: u64 = 1 << 6;
const CPU: u64 = 1 << 7;
const PERIOD: u64 = 1 << 8;
const STREAM_ID: u64 = 1 << 9;
const RAW: u64 = 1 << 10;
const BRANCH_STACK: u64 = 1 << 11;
const REGS_USER: u64 = 1 << 12;
const STACK_USER: u64 = 1 << 13;
const WEIGHT: u64 = 1 << 14;
const DATA_SRC: u64 = 1 << 15;
const IDENTIFIER: u64 = 1 << 16;
const TRANSACTION: u64 = 1 << 17;

const MISC_USER: u16 = 2;
const MISC_COMM_EXEC: u16 = 1 << 13;
const MISC_SWITCH_OUT: u16 = 1 << 13;
const MISC_SWITCH_OUT_PREEMPT: u16 = 1 << 14;
const MISC_MMAP_BUILD_ID: u16 = 1 << 14;

/// A format whose trailer has every sample_id field.
fn full_trailer_format() -> SampleFormat {
    SampleFormat {
        sample_type: IP | TID | TIME | ID | STREAM_ID | CPU | IDENTIFIER,
        sample_id_all: true,
        ..SampleFormat::default()
    }
}

fn with_full_trailer(b: RecordBuilder) -> Vec<u8> {
    b.u32_pair(7, 8) // pid, tid
        .u64(1_000) // time
        .u64(55) // id
        .u64(66) // stream_id
        .u32_pair(3, 0) // cpu, res
        .u64(77) // identifier
        .finish()
}

fn full_trailer() -> SampleId {
    SampleId {
        pid: Some(7),
        tid: Some(8),
        time: Some(1_000),
        id: Some(55),
        stream_id: Some(66),
        cpu: Some(3),
        identifier: Some(77),
    }
}

#[test]
fn mmap_with_trailer() {
    let rec = with_full_trailer(
        RecordBuilder::new(record_type::MMAP, MISC_USER)
            .u32_pair(100, 101)
            .u64(0x40_0000)
            .u64(0x1000)
            .u64(0x200)
            .c_string(b"/usr/bin/true"),
    );
    let fmt = full_trailer_format();
    let Record::Mmap(m) = parse_record(&rec, &fmt).unwrap() else {
        panic!("not an mmap")
    };
    assert_eq!(
        (m.pid, m.tid, m.addr, m.len, m.pgoff),
        (100, 101, 0x40_0000, 0x1000, 0x200)
    );
    assert_eq!(m.filename, b"/usr/bin/true");
    assert!(!m.is_mmap2() && !m.is_data());
    assert_eq!(m.cpumode(), MISC_USER);
    assert_eq!((m.file_id, m.prot, m.flags), (None, None, None));
    assert_eq!(m.sample_id, full_trailer());
    assert_eq!(fmt.identifier_of(&rec), Some(77));
}

#[test]
fn mmap_without_sample_id_all_ignores_trailer_bits() {
    // Pre-2.6.38 kernels: no trailer even though sample_type has TID/TIME.
    let rec = RecordBuilder::new(record_type::MMAP, 1)
        .u32_pair(1, 1)
        .u64(0xffff_ffff_8100_0000)
        .u64(0x100_0000)
        .u64(0)
        .c_string(b"[kernel.kallsyms]_text")
        .finish();
    let fmt = SampleFormat {
        sample_type: IP | TID | TIME,
        ..SampleFormat::default()
    };
    let Record::Mmap(m) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    assert_eq!(m.filename, b"[kernel.kallsyms]_text");
    assert_eq!(m.sample_id, SampleId::default());
}

#[test]
fn mmap2_inode_and_build_id_variants() {
    let fmt = SampleFormat {
        sample_type: TID | TIME,
        sample_id_all: true,
        ..SampleFormat::default()
    };
    let base = |misc| {
        RecordBuilder::new(record_type::MMAP2, misc)
            .u32_pair(10, 11)
            .u64(0x7f00_0000_0000)
            .u64(0x2_1000)
            .u64(0x1000)
    };
    let inode = base(MISC_USER)
        .u32_pair(8, 1) // maj, min
        .u64(123_456) // ino
        .u64(9) // ino_generation
        .u32_pair(5, 2) // prot, flags
        .c_string(b"/lib/libc.so.6")
        .u32_pair(10, 11)
        .u64(42)
        .finish();
    let Record::Mmap(m) = parse_record(&inode, &fmt).unwrap() else {
        panic!()
    };
    assert!(m.is_mmap2());
    assert_eq!(
        m.file_id,
        Some(MmapFileId::Inode {
            maj: 8,
            min: 1,
            ino: 123_456,
            ino_generation: 9
        })
    );
    assert_eq!((m.prot, m.flags), (Some(5), Some(2)));
    assert_eq!(m.filename, b"/lib/libc.so.6");
    assert_eq!(m.sample_id.time, Some(42));

    let mut id_area = [0u8; 24];
    id_area[0] = 20;
    for (i, b) in id_area[4..].iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    let with_build_id = base(MISC_USER | MISC_MMAP_BUILD_ID)
        .bytes(&id_area)
        .u32_pair(5, 2)
        .c_string(b"/lib/libc.so.6")
        .u32_pair(10, 11)
        .u64(43)
        .finish();
    let Record::Mmap(m) = parse_record(&with_build_id, &fmt).unwrap() else {
        panic!()
    };
    assert_eq!(m.file_id, Some(MmapFileId::BuildId(&id_area[4..24])));

    // A build id size beyond the 20-byte array is clamped, not trusted.
    id_area[0] = 200;
    let oversize = base(MISC_USER | MISC_MMAP_BUILD_ID)
        .bytes(&id_area)
        .u32_pair(5, 2)
        .c_string(b"x")
        .u32_pair(10, 11)
        .u64(43)
        .finish();
    let Record::Mmap(m) = parse_record(&oversize, &fmt).unwrap() else {
        panic!()
    };
    assert_eq!(m.file_id, Some(MmapFileId::BuildId(&id_area[4..24])));
}

#[test]
fn comm_exec_flag() {
    let fmt = full_trailer_format();
    for (misc, exec) in [(0, false), (MISC_COMM_EXEC, true)] {
        let rec = with_full_trailer(
            RecordBuilder::new(record_type::COMM, misc)
                .u32_pair(300, 301)
                .c_string(b"worker-thread"),
        );
        let Record::Comm(c) = parse_record(&rec, &fmt).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.pid, c.tid, c.comm, c.exec),
            (300, 301, &b"worker-thread"[..], exec)
        );
        assert_eq!(c.sample_id, full_trailer());
    }
}

#[test]
fn fork_and_exit() {
    let fmt = full_trailer_format();
    for rt in [record_type::FORK, record_type::EXIT] {
        let rec = with_full_trailer(
            RecordBuilder::new(rt, 0)
                .u32_pair(20, 1) // pid, ppid
                .u32_pair(21, 1) // tid, ptid
                .u64(999),
        );
        let (Record::Fork(t) | Record::Exit(t)) = parse_record(&rec, &fmt).unwrap() else {
            panic!()
        };
        assert_eq!((t.pid, t.ppid, t.tid, t.ptid, t.time), (20, 1, 21, 1, 999));
        assert_eq!(t.sample_id, full_trailer());
        let is_fork = matches!(parse_record(&rec, &fmt), Ok(Record::Fork(_)));
        assert_eq!(is_fork, rt == record_type::FORK);
    }
}

#[test]
fn lost_and_lost_samples() {
    let fmt = full_trailer_format();
    let rec = with_full_trailer(RecordBuilder::new(record_type::LOST, 0).u64(55).u64(1234));
    let Record::Lost(l) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    assert_eq!((l.id, l.lost), (55, 1234));
    assert_eq!(l.sample_id, full_trailer());

    let rec = with_full_trailer(RecordBuilder::new(record_type::LOST_SAMPLES, 0).u64(17));
    let Record::LostSamples(l) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    assert_eq!(l.lost, 17);
    assert_eq!(l.sample_id, full_trailer());
}

#[test]
fn throttle_and_unthrottle() {
    let fmt = full_trailer_format();
    for rt in [record_type::THROTTLE, record_type::UNTHROTTLE] {
        let rec = with_full_trailer(RecordBuilder::new(rt, 0).u64(5000).u64(55).u64(66));
        let rec = parse_record(&rec, &fmt).unwrap();
        let t = match rec {
            Record::Throttle(t) if rt == record_type::THROTTLE => t,
            Record::Unthrottle(t) if rt == record_type::UNTHROTTLE => t,
            other => panic!("{other:?}"),
        };
        assert_eq!((t.time, t.id, t.stream_id), (5000, 55, 66));
        assert_eq!(t.sample_id, full_trailer());
    }
}

#[test]
fn switch_records() {
    let fmt = full_trailer_format();
    for (misc, out, preempt) in [
        (0, false, false),
        (MISC_SWITCH_OUT, true, false),
        (MISC_SWITCH_OUT | MISC_SWITCH_OUT_PREEMPT, true, true),
    ] {
        let rec = with_full_trailer(RecordBuilder::new(record_type::SWITCH, misc));
        let Record::Switch(s) = parse_record(&rec, &fmt).unwrap() else {
            panic!()
        };
        assert_eq!((s.out, s.preempt), (out, preempt));
        assert_eq!(s.sample_id, full_trailer());

        let rec = with_full_trailer(
            RecordBuilder::new(record_type::SWITCH_CPU_WIDE, misc).u32_pair(4242, 4243),
        );
        let Record::SwitchCpuWide(s) = parse_record(&rec, &fmt).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.out, s.preempt, s.next_prev_pid, s.next_prev_tid),
            (out, preempt, 4242, 4243)
        );
        assert_eq!(s.sample_id, full_trailer());
    }
}

#[test]
fn unknown_types_are_reported_not_parsed() {
    let fmt = full_trailer_format();
    // NAMESPACES (16), KSYMBOL (17), a future kernel type, a perf-tool type.
    for rt in [16, 17, 40, 68] {
        let rec = RecordBuilder::new(rt, 3).u64(1).u64(2).finish();
        assert_eq!(
            parse_record(&rec, &fmt),
            Ok(Record::Unknown {
                record_type: rt,
                misc: 3
            })
        );
    }
}

#[test]
fn sample_every_field_up_to_stack_user() {
    let fmt = SampleFormat {
        sample_type: IDENTIFIER
            | IP
            | TID
            | TIME
            | ADDR
            | ID
            | STREAM_ID
            | CPU
            | PERIOD
            | READ
            | CALLCHAIN
            | RAW
            | BRANCH_STACK
            | REGS_USER
            | STACK_USER
            | WEIGHT
            | DATA_SRC
            | TRANSACTION,
        read_format: 1 | 2 | 4, // TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING | ID
        regs_user_mask: (1 << 6) | (1 << 7) | (1 << 8), // BP, SP, IP
        sample_id_all: true,
        branch_sample_type: 0,
    };
    let stack: Vec<u8> = (0..64u8).collect();
    let rec = RecordBuilder::new(record_type::SAMPLE, MISC_USER | 0x4000)
        .u64(77) // identifier
        .u64(0x40_1234) // ip
        .u32_pair(500, 501)
        .u64(10_000) // time
        .u64(0xdead_beef) // addr
        .u64(55) // id
        .u64(66) // stream_id
        .u32_pair(1, 0) // cpu
        .u64(4000) // period
        .u64(42) // read.value
        .u64(900) // time_enabled
        .u64(800) // time_running
        .u64(55) // read.id
        .u64(4) // callchain.nr
        .u64(u64::MAX - 511) // PERF_CONTEXT_USER
        .u64(0x40_1234)
        .u64(0x40_2000)
        .u64(0x40_3000)
        .u32(5) // raw.size
        .bytes(b"abcde")
        .bytes(&[0; 7]) // pad 4 + 5 to 16
        .u64(1) // branch nr
        .u64(0x10)
        .u64(0x20)
        .u64(0x3)
        .u64(2) // abi 64
        .u64(0x7ffd_0000) // BP
        .u64(0x7ffc_0000) // SP
        .u64(0x40_1234) // IP
        .u64(128) // stack size
        .bytes(&stack)
        .bytes(&[0xee; 64])
        .u64(64) // dyn_size
        .u64(11) // weight
        .u64(12) // data_src
        .u64(13) // transaction
        .finish();
    let Record::Sample(s) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    assert_eq!(s.identifier, Some(77));
    assert_eq!(s.ip, Some(0x40_1234));
    assert_eq!((s.pid, s.tid), (Some(500), Some(501)));
    assert_eq!(s.time, Some(10_000));
    assert_eq!(s.addr, Some(0xdead_beef));
    assert_eq!((s.id, s.stream_id, s.cpu), (Some(55), Some(66), Some(1)));
    assert_eq!(s.period, Some(4000));
    assert!(s.exact_ip());
    assert_eq!(s.cpumode(), MISC_USER);
    let read = s.read.unwrap();
    assert!(!read.is_group());
    assert_eq!(
        (read.time_enabled, read.time_running),
        (Some(900), Some(800))
    );
    let values: Vec<_> = read.iter().map(|v| (v.value, v.id, v.lost)).collect();
    assert_eq!(values, [(42, Some(55), None)]);
    let chain = s.callchain.unwrap();
    assert_eq!(chain.len(), 4);
    assert_eq!(chain.iter().nth(1), Some(0x40_1234));
    let frames: Vec<_> = chain.frames().collect();
    assert_eq!(
        frames,
        [
            (Some(CallchainContext::User), 0x40_1234),
            (Some(CallchainContext::User), 0x40_2000),
            (Some(CallchainContext::User), 0x40_3000)
        ]
    );
    assert_eq!(s.raw, Some(&b"abcde"[..]));
    let branches: Vec<_> = s.branch_stack.unwrap().iter().collect();
    assert_eq!(
        (branches[0].from, branches[0].to, branches[0].flags),
        (0x10, 0x20, 3)
    );
    let regs = s.regs_user.unwrap();
    assert_eq!(regs.abi(), 2);
    assert_eq!(regs.get(6), Some(0x7ffd_0000));
    assert_eq!(regs.get(7), Some(0x7ffc_0000));
    assert_eq!(regs.get(8), Some(0x40_1234));
    assert_eq!(regs.get(0), None, "AX not in the mask");
    assert_eq!(regs.get(64), None);
    assert_eq!(s.stack_user, Some(&stack[..]), "cut to dyn_size");
    assert_eq!(
        (s.weight, s.data_src, s.transaction),
        (Some(11), Some(12), Some(13))
    );
    assert_eq!(fmt.identifier_of(&rec), Some(77));
}

#[test]
fn sample_group_read_and_branch_extras() {
    let fmt = SampleFormat {
        sample_type: TID | READ | BRANCH_STACK,
        read_format: 8 | 4 | 16 | 1, // GROUP | ID | LOST | TOTAL_TIME_ENABLED
        branch_sample_type: (1 << 17) | (1 << 19), // HW_INDEX | COUNTERS
        ..SampleFormat::default()
    };
    let rec = RecordBuilder::new(record_type::SAMPLE, 0)
        .u32_pair(1, 2)
        .u64(2) // nr
        .u64(1000) // time_enabled
        .u64(10) // value, id, lost ×2
        .u64(100)
        .u64(0)
        .u64(20)
        .u64(101)
        .u64(3)
        .u64(2) // branch nr
        .u64(7) // hw_idx
        .u64(1)
        .u64(2)
        .u64(0)
        .u64(3)
        .u64(4)
        .u64(0)
        .u64(9) // counters
        .u64(8)
        .finish();
    let Record::Sample(s) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    let read = s.read.unwrap();
    assert!(read.is_group());
    assert_eq!((read.time_enabled, read.time_running), (Some(1000), None));
    let values: Vec<_> = read.iter().map(|v| (v.value, v.id, v.lost)).collect();
    assert_eq!(values, [(10, Some(100), Some(0)), (20, Some(101), Some(3))]);
    let bs = s.branch_stack.unwrap();
    assert_eq!(bs.hw_index, Some(7));
    assert_eq!(bs.len(), 2);
    assert_eq!(bs.iter().nth(1).map(|e| (e.from, e.to)), Some((3, 4)));
    assert_eq!(bs.counters.unwrap().iter().collect::<Vec<_>>(), [9, 8]);
}

#[test]
fn sample_edge_cases_abi_none_and_empty_stack() {
    let fmt = SampleFormat {
        sample_type: IP | REGS_USER | STACK_USER,
        regs_user_mask: 0xff0fff,
        ..SampleFormat::default()
    };
    // A kernel thread: ABI_NONE means no register values follow; stack size 0 means no
    // bytes and no dyn_size word.
    let rec = RecordBuilder::new(record_type::SAMPLE, 1)
        .u64(0xffff_ffff_8100_0000)
        .u64(0)
        .u64(0)
        .finish();
    let Record::Sample(s) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    let regs = s.regs_user.unwrap();
    assert_eq!(regs.abi(), 0);
    assert_eq!(regs.get(8), None);
    assert_eq!(s.stack_user, Some(&[][..]));
}

#[test]
fn callchain_context_markers() {
    let kernel_then_user = [
        u64::MAX - 127, // PERF_CONTEXT_KERNEL
        0xffff_ffff_8100_0010,
        u64::MAX - 511, // PERF_CONTEXT_USER
        0x40_0000,
        u64::MAX - 2, // unknown marker in the reserved range
        0x40_0010,
    ];
    let rec = support::builder::callchain_sample(&kernel_then_user);
    let fmt = SampleFormat {
        sample_type: IP | TID | TIME | CPU | PERIOD | CALLCHAIN,
        ..SampleFormat::default()
    };
    let Record::Sample(s) = parse_record(&rec, &fmt).unwrap() else {
        panic!()
    };
    let frames: Vec<_> = s.callchain.unwrap().frames().collect();
    assert_eq!(
        frames,
        [
            (Some(CallchainContext::Kernel), 0xffff_ffff_8100_0010),
            (Some(CallchainContext::User), 0x40_0000),
            (None, 0x40_0010),
        ]
    );
    // PERF_CONTEXT_MAX is (u64)-4095: markers are -4095 ..= -1.
    assert!(CallchainContext::is_marker(4095u64.wrapping_neg()));
    assert!(!CallchainContext::is_marker(4096u64.wrapping_neg()));
}

#[test]
fn records_from_unaligned_buffers() {
    // Wrapped records are reassembled in a Vec at arbitrary alignment.
    let rec = support::builder::callchain_sample(&[1, 2, 3]);
    let fmt = SampleFormat {
        sample_type: IP | TID | TIME | CPU | PERIOD | CALLCHAIN,
        ..SampleFormat::default()
    };
    let mut shifted = vec![0u8; 3];
    shifted.extend_from_slice(&rec);
    let Record::Sample(s) = parse_record(&shifted[3..], &fmt).unwrap() else {
        panic!()
    };
    assert_eq!(s.callchain.unwrap().iter().collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn extra_bytes_after_size_are_ignored() {
    let mut rec = RecordBuilder::new(record_type::LOST_SAMPLES, 0)
        .u64(5)
        .finish();
    rec.extend_from_slice(&[0xff; 16]);
    assert!(matches!(
        parse_record(&rec, &SampleFormat::default()),
        Ok(Record::LostSamples(l)) if l.lost == 5
    ));
    // …but fewer bytes than size is an error.
    assert!(matches!(
        parse_record(&rec[..12], &SampleFormat::default()),
        Err(ParseError::BadSize { size: 16, .. })
    ));
}
