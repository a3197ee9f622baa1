//! Parses every record of real perf.data files written by old kernels (3.2 … 6.10),
//! copied from shared/fixtures/perf-data into tests/data (BSD-3-Clause, see LICENSE there).

mod support;

use std::collections::BTreeMap;

use perfring::record::{parse_record, record_type, Record, RecordHeader, SampleFormat};
use support::perf_data::{parse_attr_record, FileAttr, PerfData, HEADER_ATTR};

/// perf's names for the record types, as printed in its "Aggregated stats".
fn perf_name(rt: u32, rec: Option<&Record<'_>>) -> String {
    let name = match rt {
        record_type::MMAP => "MMAP",
        record_type::LOST => "LOST",
        record_type::COMM => "COMM",
        record_type::EXIT => "EXIT",
        record_type::THROTTLE => "THROTTLE",
        record_type::UNTHROTTLE => "UNTHROTTLE",
        record_type::FORK => "FORK",
        record_type::SAMPLE => "SAMPLE",
        record_type::MMAP2 => "MMAP2",
        record_type::LOST_SAMPLES => "LOST_SAMPLES",
        record_type::SWITCH => "SWITCH",
        record_type::SWITCH_CPU_WIDE => "SWITCH_CPU_WIDE",
        16 => "NAMESPACES",
        64 => "ATTR",
        65 => "EVENT_TYPE",
        68 => "FINISHED_ROUND",
        69 => "ID_INDEX",
        73 => "THREAD_MAP",
        74 => "CPU_MAP",
        78 => "EVENT_UPDATE",
        79 => "TIME_CONV",
        80 => "FEATURE",
        82 => "FINISHED_INIT",
        _ => return format!("TYPE_{rt}"),
    };
    // The parser must agree with the header about what kind of record this is.
    if let Some(rec) = rec {
        let ok = match (rt, rec) {
            (record_type::MMAP, Record::Mmap(m)) => !m.is_mmap2(),
            (record_type::MMAP2, Record::Mmap(m)) => m.is_mmap2(),
            (record_type::COMM, Record::Comm(_))
            | (record_type::EXIT, Record::Exit(_))
            | (record_type::FORK, Record::Fork(_))
            | (record_type::THROTTLE, Record::Throttle(_))
            | (record_type::UNTHROTTLE, Record::Unthrottle(_))
            | (record_type::SAMPLE, Record::Sample(_))
            | (record_type::LOST, Record::Lost(_))
            | (record_type::LOST_SAMPLES, Record::LostSamples(_))
            | (record_type::SWITCH, Record::Switch(_))
            | (record_type::SWITCH_CPU_WIDE, Record::SwitchCpuWide(_)) => true,
            (_, Record::Unknown { record_type, .. }) => *record_type == rt,
            _ => false,
        };
        assert!(ok, "record type {rt} parsed as {rec:?}");
    }
    name.to_string()
}

/// A parsed record's time as the parser reports it; `None` for types it does not decode.
fn time_of_parsed(r: &Record<'_>) -> Option<Option<u64>> {
    Some(match r {
        Record::Sample(s) => s.time,
        Record::Mmap(m) => m.sample_id.time,
        Record::Comm(c) => c.sample_id.time,
        Record::Fork(f) | Record::Exit(f) => Some(f.time),
        Record::Lost(l) => l.sample_id.time,
        Record::LostSamples(l) => l.sample_id.time,
        Record::Throttle(t) | Record::Unthrottle(t) => Some(t.time),
        Record::Switch(s) => s.sample_id.time,
        Record::SwitchCpuWide(s) => s.sample_id.time,
        Record::Unknown { .. } => return None,
    })
}

struct Outcome {
    counts: BTreeMap<String, u64>,
    /// Samples per attr index, found through sample.id and the attrs' id lists.
    samples_per_attr: Vec<u64>,
    errors: Vec<String>,
    lost_samples: u64,
    callchain_frames: u64,
    raw_bytes: u64,
}

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every attr of a session must share one record layout (true of all fixtures; perf
/// itself requires the sample_id position to agree).
fn common_format(attrs: &[FileAttr]) -> SampleFormat {
    let first = attrs.first().expect("no attrs").format;
    for a in attrs {
        assert_eq!(a.format, first, "attrs disagree on sample format");
    }
    first
}

fn parse_fixture(name: &str) -> Outcome {
    let file = load(name);
    let data = PerfData::open(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut attrs = data.attrs.clone();
    let mut out = Outcome {
        counts: BTreeMap::new(),
        samples_per_attr: vec![0; attrs.len()],
        errors: Vec::new(),
        lost_samples: 0,
        callchain_frames: 0,
        raw_bytes: 0,
    };
    for rec in data.records() {
        let bytes = match rec {
            Ok(b) => b,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        let header = RecordHeader::parse(bytes).expect("walker yields whole headers");
        let rt = header.record_type;
        if rt >= record_type::USER_TYPE_START {
            if rt == HEADER_ATTR {
                attrs.push(parse_attr_record(bytes).expect("ATTR record"));
                out.samples_per_attr.push(0);
            }
            *out.counts.entry(perf_name(rt, None)).or_default() += 1;
            continue;
        }
        let fmt = common_format(&attrs);
        match parse_record(bytes, &fmt) {
            Ok(rec) => {
                // The ordered reader reads times without parsing: it must agree.
                if let Some(parsed) = time_of_parsed(&rec) {
                    assert_eq!(fmt.time_of(bytes), parsed, "{name}: {rec:?}");
                }
                if let Record::Sample(s) = &rec {
                    if let Some(id) = s.id {
                        let idx = attrs
                            .iter()
                            .position(|a| a.ids.contains(&id))
                            .unwrap_or_else(|| panic!("{name}: sample id {id} in no attr"));
                        out.samples_per_attr[idx] += 1;
                    } else if attrs.len() == 1 {
                        out.samples_per_attr[0] += 1;
                    }
                    assert!(s.ip.is_some() && s.tid.is_some() && s.time.is_some());
                    out.callchain_frames += s.callchain.map_or(0, |c| c.len() as u64);
                    out.raw_bytes += s.raw.map_or(0, |r| r.len() as u64);
                }
                if let Record::LostSamples(l) = &rec {
                    out.lost_samples += l.lost;
                }
                *out.counts.entry(perf_name(rt, Some(&rec))).or_default() += 1;
            }
            Err(e) => out.errors.push(format!("{e}")),
        }
    }
    out
}

/// Expected per-type record counts, copied from the "Aggregated stats" that
/// `perf report -D -i tests/data/<file>` (perf 6.1) prints; TOTAL is their sum.
const EXPECTED: &[(&str, &[(&str, u64)])] = &[
    (
        "perf.data.callgraph-3.4",
        &[
            ("MMAP", 2061),
            ("COMM", 249),
            ("EXIT", 126),
            ("FORK", 62),
            ("SAMPLE", 1548),
        ],
    ),
    (
        "perf.data.callgraph-3.8",
        &[
            ("MMAP", 1793),
            ("COMM", 229),
            ("EXIT", 6),
            ("FORK", 2),
            ("SAMPLE", 1768),
        ],
    ),
    (
        "perf.data.ctx_switch_namespaces-4.14",
        &[
            ("MMAP", 21),
            ("COMM", 3),
            ("EXIT", 1),
            ("SAMPLE", 2),
            ("MMAP2", 10),
            ("SWITCH", 2),
            ("NAMESPACES", 1),
            ("FINISHED_ROUND", 1),
            ("TIME_CONV", 1),
        ],
    ),
    (
        "perf.data.forkexit-3.8",
        &[
            ("MMAP", 3877),
            ("COMM", 488),
            ("EXIT", 510),
            ("FORK", 254),
            ("SAMPLE", 10335),
        ],
    ),
    (
        "perf.data.lost_samples-4.4",
        &[
            ("MMAP", 39),
            ("COMM", 3),
            ("EXIT", 1),
            ("SAMPLE", 191),
            ("MMAP2", 6),
            ("LOST_SAMPLES", 2),
            ("FINISHED_ROUND", 1),
        ],
    ),
    (
        "perf.data.piped.header_features_aligned-6.12",
        &[
            ("COMM", 2),
            ("EXIT", 1),
            ("SAMPLE", 9),
            ("MMAP2", 4),
            ("ATTR", 1),
            ("FINISHED_ROUND", 1),
            ("ID_INDEX", 1),
            ("THREAD_MAP", 1),
            ("CPU_MAP", 1),
            ("EVENT_UPDATE", 2),
            ("TIME_CONV", 1),
            ("FEATURE", 20),
            ("FINISHED_INIT", 1),
        ],
    ),
    (
        "perf.data.proc.map.timeout-3.18",
        &[
            ("MMAP", 49),
            ("COMM", 13),
            ("SAMPLE", 8),
            ("MMAP2", 624),
            ("FINISHED_ROUND", 1),
            ("TIME_CONV", 1),
        ],
    ),
    (
        "perf.data.raw-3.4",
        &[
            ("MMAP", 1645),
            ("COMM", 225),
            ("EXIT", 4),
            ("FORK", 2),
            ("SAMPLE", 441),
        ],
    ),
    (
        "perf.data.remmap-3.2",
        &[
            ("MMAP", 138),
            ("COMM", 2),
            ("EXIT", 4),
            ("FORK", 1),
            ("SAMPLE", 198),
        ],
    ),
    (
        "perf.data.singleprocess-3.8",
        &[("MMAP", 100), ("COMM", 2), ("EXIT", 4), ("SAMPLE", 13)],
    ),
    (
        "perf.data.systemwide.0-3.8",
        &[("MMAP", 1793), ("COMM", 230), ("EXIT", 2), ("SAMPLE", 28)],
    ),
    (
        "perf.data.throttle-3.8",
        &[
            ("MMAP", 1653),
            ("COMM", 230),
            ("EXIT", 4),
            ("THROTTLE", 68),
            ("UNTHROTTLE", 64),
            ("FORK", 2),
            ("SAMPLE", 14980),
        ],
    ),
];

/// perf's TOTAL line for each file, checked against the sum of the table above so a typo
/// in one count cannot go unnoticed.
const EXPECTED_TOTAL: &[(&str, u64)] = &[
    ("perf.data.callgraph-3.4", 4046),
    ("perf.data.callgraph-3.8", 3798),
    ("perf.data.ctx_switch_namespaces-4.14", 42),
    ("perf.data.forkexit-3.8", 15464),
    ("perf.data.lost_samples-4.4", 243),
    ("perf.data.piped.header_features_aligned-6.12", 45),
    ("perf.data.proc.map.timeout-3.18", 696),
    ("perf.data.raw-3.4", 2317),
    ("perf.data.remmap-3.2", 343),
    ("perf.data.singleprocess-3.8", 119),
    ("perf.data.systemwide.0-3.8", 2053),
    ("perf.data.throttle-3.8", 17001),
];

#[test]
fn every_fixture_matches_perf_record_counts() {
    for (name, expected) in EXPECTED {
        let out = parse_fixture(name);
        assert!(out.errors.is_empty(), "{name}: {:?}", out.errors);
        let expected: BTreeMap<String, u64> =
            expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(out.counts, expected, "{name}");
        let total = EXPECTED_TOTAL.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(out.counts.values().sum::<u64>(), total, "{name}");
    }
}

#[test]
fn per_event_sample_counts_follow_sample_id() {
    // From the "<event> stats" blocks of `perf report -D`.
    assert_eq!(
        parse_fixture("perf.data.throttle-3.8").samples_per_attr,
        [9036, 5944]
    );
    assert_eq!(
        parse_fixture("perf.data.lost_samples-4.4").samples_per_attr,
        [97, 80, 14]
    );
}

#[test]
fn callchains_and_raw_payloads_are_decoded() {
    // Sums of the "... FP chain: nr:N" lines of `perf report -D` (markers included).
    assert_eq!(
        parse_fixture("perf.data.callgraph-3.8").callchain_frames,
        15470
    );
    assert_eq!(
        parse_fixture("perf.data.callgraph-3.4").callchain_frames,
        11376
    );
    // `perf record -R` on a cycles event: the kernel has no raw payload for a hardware
    // event and emits its placeholder, a 4-byte zero, in every one of the 441 samples.
    let raw = parse_fixture("perf.data.raw-3.4");
    assert_eq!(raw.raw_bytes, 441 * 4);
}

#[test]
fn corrupted_pipe_file_yields_errors_not_panics() {
    let out = parse_fixture("perf.data.piped.corrupted.zero_size_sample-3.2");
    assert!(!out.errors.is_empty(), "corruption went unnoticed");
    // perf report -D prints no stats for this file; it fails with "bad event header size"
    // after these records (counted from its "event: N" lines: 1 is MMAP, 3 is COMM).
    let expected: BTreeMap<String, u64> =
        [("ATTR", 1), ("EVENT_TYPE", 1), ("MMAP", 468), ("COMM", 100)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
    assert_eq!(out.counts, expected);
}

#[test]
fn corrupted_pipe_file_records_fail_parse_record_directly() {
    // The ring reader drops a zero-size header; parse_record must refuse it on its own too.
    let file = load("perf.data.piped.corrupted.zero_size_sample-3.2");
    let data = &file[16..];
    let mut pos = 0;
    let fmt = SampleFormat::default();
    while pos < data.len() {
        match parse_record(&data[pos..], &fmt) {
            Ok(_) => {
                let size = RecordHeader::parse(&data[pos..]).unwrap().size as usize;
                pos += size;
            }
            Err(e) => {
                // perf reports its zero-size sample at pipe offset 0xbfc0, right after
                // the last good record (an MMAP at 0xbf70, 0x50 bytes).
                assert_eq!(pos, 0xbfc0, "first failure at an unexpected offset: {e}");
                return;
            }
        }
    }
    panic!("no record failed to parse");
}
