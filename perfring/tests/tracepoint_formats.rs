//! Format files from several kernel generations (tests/data/formats, sources in its README):
//! parse them, decode hand-built RAW payloads the way each kernel lays them out, and make sure
//! hostile text and bytes produce errors, never panics.

use perfring::tracepoint::{
    DecodeError, SchedSwitchDecoder, SchedWakeupDecoder, StateTableSource, TaskState,
    TracepointFormat,
};
use proptest::prelude::*;

const VERSIONS: [&str; 7] = ["2.6.32", "3.10-rhel7", "4.9", "4.19", "5.4", "5.15", "6.18"];

fn fixture(version: &str, event: &str) -> String {
    let path = format!(
        "{}/tests/data/formats/{version}/{event}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parsed(version: &str, event: &str) -> TracepointFormat {
    TracepointFormat::parse(&fixture(version, event))
        .unwrap_or_else(|e| panic!("{version}/{event}: {e}"))
}

/// Lays out a payload as the kernel would: each named field at its format offset, in native
/// byte order, zero elsewhere (including `common_*`).
fn payload(format: &TracepointFormat, values: &[(&str, i64)], comms: &[(&str, &[u8])]) -> Vec<u8> {
    let len = format
        .fields
        .iter()
        .map(|f| f.offset + f.size)
        .max()
        .unwrap();
    let mut data = vec![0u8; len];
    for (name, value) in values {
        let f = format.field(name).unwrap_or_else(|| panic!("no {name}"));
        let bytes = value.to_ne_bytes();
        data[f.offset..f.offset + f.size].copy_from_slice(&bytes[..f.size]);
    }
    for (name, comm) in comms {
        let f = format.field(name).unwrap();
        data[f.offset..f.offset + comm.len()].copy_from_slice(comm);
    }
    data
}

fn switch_payload(format: &TracepointFormat, prev_state: i64) -> Vec<u8> {
    payload(
        format,
        &[
            ("prev_pid", 4242),
            ("prev_prio", 120),
            ("prev_state", prev_state),
            ("next_pid", 0),
            ("next_prio", 120),
        ],
        &[("prev_comm", b"fsync-server"), ("next_comm", b"swapper/1")],
    )
}

#[test]
fn every_fixture_parses_with_the_fields_offcpu_needs() {
    for v in VERSIONS {
        let switch = parsed(v, "sched_switch");
        assert_eq!(switch.name, "sched_switch");
        assert!(switch.id.is_some(), "{v}");
        for name in [
            "prev_comm",
            "prev_pid",
            "prev_state",
            "next_comm",
            "next_pid",
        ] {
            assert!(switch.field(name).is_some(), "{v}: {name}");
        }
        assert_eq!(switch.field("prev_comm").unwrap().array_len, Some(16));
        assert_eq!(switch.field("prev_state").unwrap().size, 8, "{v}");
        let wakeup = parsed(v, "sched_wakeup");
        assert!(wakeup.field("pid").is_some(), "{v}");
        assert!(!wakeup.print_fmt.is_empty(), "{v}");
    }
}

#[test]
fn layouts_differ_across_versions_and_are_read_from_the_file() {
    // 2.6.32's common_lock_depth shifts every event field by 4 (and prev_state by 8).
    let old = parsed("2.6.32", "sched_switch");
    assert_eq!(old.field("common_lock_depth").unwrap().offset, 8);
    assert_eq!(old.field("prev_pid").unwrap().offset, 28);
    assert_eq!(old.field("prev_state").unwrap().offset, 40);
    assert_eq!(
        parsed("6.18", "sched_switch")
            .field("prev_state")
            .unwrap()
            .offset,
        32
    );
    // sched_wakeup lost `success` in 5.14, moving target_cpu from 36 to 32.
    assert_eq!(
        parsed("5.4", "sched_wakeup")
            .field("target_cpu")
            .unwrap()
            .offset,
        36
    );
    assert_eq!(
        parsed("5.15", "sched_wakeup")
            .field("target_cpu")
            .unwrap()
            .offset,
        32
    );
    assert!(parsed("5.15", "sched_wakeup").field("success").is_none());
    // char arrays are signed before 6.2 (x86 char), unsigned after -funsigned-char.
    assert!(
        parsed("5.15", "sched_switch")
            .field("prev_comm")
            .unwrap()
            .signed
    );
    assert!(
        !parsed("6.18", "sched_switch")
            .field("prev_comm")
            .unwrap()
            .signed
    );
}

/// (version, raw prev_state, expected) as each kernel records it.
const STATES: &[(&str, i64, TaskState)] = &[
    ("2.6.32", 0, TaskState::Runnable),
    ("2.6.32", 1, TaskState::Interruptible),
    ("2.6.32", 2, TaskState::Uninterruptible),
    ("2.6.32", 64, TaskState::Dead),
    ("3.10-rhel7", 0, TaskState::Runnable),
    ("3.10-rhel7", 1024, TaskState::Runnable), // TASK_RUNNING | TASK_STATE_MAX: preempted
    ("3.10-rhel7", 1, TaskState::Interruptible),
    ("3.10-rhel7", 2, TaskState::Uninterruptible),
    ("3.10-rhel7", 130, TaskState::Uninterruptible), // TASK_KILLABLE = D|K
    ("3.10-rhel7", 64, TaskState::Dead),             // TASK_DEAD "x"
    ("3.10-rhel7", 4, TaskState::Stopped),
    ("4.9", 2048, TaskState::Runnable),
    ("4.9", 1, TaskState::Interruptible),
    ("4.9", 2, TaskState::Uninterruptible),
    ("4.9", 1026, TaskState::Idle), // TASK_IDLE = D|N
    ("4.19", 0x100, TaskState::Runnable),
    ("4.19", 0x1, TaskState::Interruptible),
    ("4.19", 0x2, TaskState::Uninterruptible),
    ("4.19", 0x80, TaskState::Idle),
    ("4.19", 0x20, TaskState::Dead),
    ("5.4", 0x100, TaskState::Runnable),
    ("5.4", 0x1, TaskState::Interruptible),
    ("5.4", 0x2, TaskState::Uninterruptible),
    ("5.15", 0x100, TaskState::Runnable),
    ("5.15", 0x1, TaskState::Interruptible),
    ("5.15", 0x2, TaskState::Uninterruptible),
    ("5.15", 0x8, TaskState::Traced),
    ("6.18", 0, TaskState::Runnable),
    ("6.18", 0x100, TaskState::Runnable),
    ("6.18", 0x1, TaskState::Interruptible),
    ("6.18", 0x2, TaskState::Uninterruptible),
    ("6.18", 0x10, TaskState::Dead),
    ("6.18", 0x40, TaskState::Parked),
];

#[test]
fn prev_state_decodes_per_kernel_table() {
    for &(v, raw, expected) in STATES {
        let format = parsed(v, "sched_switch");
        let decoder = SchedSwitchDecoder::new(&format).unwrap();
        assert_eq!(
            decoder.state_table().source(),
            StateTableSource::PrintFmt,
            "{v}"
        );
        let event = decoder.decode(&switch_payload(&format, raw)).unwrap();
        assert_eq!(event.prev_state, expected, "{v} prev_state={raw:#x}");
        assert_eq!(event.prev_state_raw, raw as u64);
        assert_eq!(event.prev_pid, 4242);
        assert_eq!(event.next_pid, 0);
        assert_eq!(event.prev_prio, Some(120));
        assert_eq!(event.prev_comm.as_bytes(), b"fsync-server");
        assert_eq!(event.next_comm.to_string(), "swapper/1");
    }
}

#[test]
fn the_same_bit_means_different_things_on_different_kernels() {
    // 16 is Z (dead) on 3.10 but X on 6.x — both Dead; 1024 is preemption on 3.10 but
    // N (no-load) on 4.9, where it only matters together with D.
    let decode = |v: &str, raw| {
        let format = parsed(v, "sched_switch");
        let decoder = SchedSwitchDecoder::new(&format).unwrap();
        decoder
            .decode(&switch_payload(&format, raw))
            .unwrap()
            .prev_state
    };
    assert_eq!(decode("3.10-rhel7", 1024 | 1), TaskState::Runnable);
    assert_eq!(decode("4.9", 1024 | 1), TaskState::Interruptible);
    assert_eq!(decode("4.9", 1024 | 2), TaskState::Idle);
    assert_eq!(decode("6.18", 0x80), TaskState::Idle);
    assert_eq!(decode("3.10-rhel7", 0x80), TaskState::Other(0x80)); // K alone names no wait
}

#[test]
fn wakeups_decode_on_every_version() {
    for v in VERSIONS {
        let format = parsed(v, "sched_wakeup");
        let decoder = SchedWakeupDecoder::new(&format).unwrap();
        let mut values = vec![("pid", 777), ("prio", 120), ("target_cpu", 1)];
        if format.field("success").is_some() {
            values.push(("success", 1));
        }
        let event = decoder
            .decode(&payload(&format, &values, &[("comm", b"fsync-server")]))
            .unwrap();
        assert_eq!(event.pid, 777, "{v}");
        assert_eq!(event.target_cpu, Some(1), "{v}");
        assert_eq!(event.comm.as_bytes(), b"fsync-server");
        let expect_success = format.field("success").map(|_| true);
        assert_eq!(event.success, expect_success, "{v}");
    }
    // A pre-4.3 failed wakeup (task already running) is visible as success == false.
    let format = parsed("3.10-rhel7", "sched_wakeup");
    let decoder = SchedWakeupDecoder::new(&format).unwrap();
    let event = decoder
        .decode(&payload(&format, &[("pid", 5), ("success", 0)], &[]))
        .unwrap();
    assert_eq!(event.success, Some(false));
}

#[test]
fn truncated_payloads_are_errors() {
    for v in VERSIONS {
        let format = parsed(v, "sched_switch");
        let decoder = SchedSwitchDecoder::new(&format).unwrap();
        let data = switch_payload(&format, 1);
        let next_pid = format.field("next_pid").unwrap();
        let cut = &data[..next_pid.offset + 2];
        assert!(
            matches!(decoder.decode(cut), Err(DecodeError::Truncated { .. })),
            "{v}"
        );
        assert!(decoder.decode(&[]).is_err());

        let format = parsed(v, "sched_wakeup");
        let decoder = SchedWakeupDecoder::new(&format).unwrap();
        let pid = format.field("pid").unwrap();
        assert!(matches!(
            decoder.decode(&vec![0u8; pid.offset + 3]),
            Err(DecodeError::Truncated { .. })
        ));
        // Optional fields beyond a short payload are simply absent.
        let event = decoder.decode(&vec![0u8; pid.offset + 4]).unwrap();
        assert_eq!(event.target_cpu, None);
    }
}

#[test]
fn decoders_refuse_formats_without_their_fields() {
    let text = fixture("6.18", "sched_switch").replace("prev_state", "prev_status");
    let format = TracepointFormat::parse(&text).unwrap();
    assert_eq!(
        SchedSwitchDecoder::new(&format).unwrap_err(),
        DecodeError::MissingField("prev_state")
    );
    let text = fixture("6.18", "sched_switch").replace("size:4;\tsigned:1;", "size:3;\tsigned:1;");
    let format = TracepointFormat::parse(&text).unwrap();
    assert!(matches!(
        SchedSwitchDecoder::new(&format),
        Err(DecodeError::UnexpectedSize { .. })
    ));
    let wakeup = TracepointFormat::parse(&fixture("6.18", "sched_switch")).unwrap();
    assert_eq!(
        SchedWakeupDecoder::new(&wakeup).unwrap_err(),
        DecodeError::MissingField("pid")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_format_text_never_panics(text in "(?s).{0,600}") {
        let _ = TracepointFormat::parse(&text);
    }

    #[test]
    fn field_like_lines_never_panic(
        decl in "[a-z_ \\*\\[\\]0-9]{0,30}",
        offset in any::<u64>(),
        size in any::<u64>(),
        signed in 0u8..3,
    ) {
        let text = format!(
            "name: x\nID: 1\nformat:\n\tfield:{decl};\toffset:{offset};\tsize:{size};\tsigned:{signed};\n"
        );
        if let Ok(format) = TracepointFormat::parse(&text) {
            for field in &format.fields {
                let _ = field.read_i64(&[0u8; 64]);
                let _ = field.bytes(&[0u8; 64]);
            }
        }
    }

    #[test]
    fn corrupted_fixtures_never_panic(
        version in proptest::sample::select(VERSIONS.to_vec()),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        payload_bytes in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        for event in ["sched_switch", "sched_wakeup"] {
            let mut bytes = fixture(version, event).into_bytes();
            for (index, byte) in &flips {
                let i = index.index(bytes.len());
                bytes[i] = *byte;
            }
            let Ok(format) = TracepointFormat::parse(&String::from_utf8_lossy(&bytes)) else {
                continue;
            };
            if let Ok(d) = SchedSwitchDecoder::new(&format) {
                let _ = d.decode(&payload_bytes);
            }
            if let Ok(d) = SchedWakeupDecoder::new(&format) {
                let _ = d.decode(&payload_bytes);
            }
        }
    }

    #[test]
    fn arbitrary_payloads_decode_or_error(
        version in proptest::sample::select(VERSIONS.to_vec()),
        payload_bytes in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        let format = parsed(version, "sched_switch");
        let decoder = SchedSwitchDecoder::new(&format).unwrap();
        let need = format.field("next_pid").unwrap().offset + 4;
        match decoder.decode(&payload_bytes) {
            Ok(event) => prop_assert!(payload_bytes.len() >= need && event.prev_comm.as_bytes().len() <= 16),
            Err(_) => prop_assert!(payload_bytes.len() < need),
        }
    }

    #[test]
    fn arbitrary_print_fmts_never_panic(tail in "[(){}|&<>+\\-~0-9xa-fA-F ,\"SDR?:]{0,200}") {
        let fmt = format!("\"%s\", REC->prev_state & {tail}");
        let _ = perfring::tracepoint::StateTable::from_print_fmt(&fmt).decode(3);
        let fmt = format!("\"%s\", __print_flags(REC->prev_state & {tail}");
        let _ = perfring::tracepoint::StateTable::from_print_fmt(&fmt).decode(3);
    }
}
