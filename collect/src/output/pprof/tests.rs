use super::*;
use crate::output::fold::Folder;
use crate::profile::Profile as RawProfile;
use crate::tables::Tables;
use proptest::prelude::*;
use symbolize::SymbolizeOptions;

fn meta() -> Meta {
    Meta {
        sample_types: vec![
            ("samples".into(), "count".into()),
            ("cpu".into(), "nanoseconds".into()),
        ],
        period_type: ("cpu".into(), "nanoseconds".into()),
        period: 10_101_010,
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 5_000_000_000,
    }
}

/// A raw profile of named and unmapped frames (no files or kallsyms needed), and the same
/// stacks through the folder and through pprof: the folded lines must be identical.
#[test]
fn pprof_folds_back_to_the_folded_output() {
    let mut t = Tables::default();
    let named = &mut t.frame_names;
    let (main, work, read) = (
        named.intern("main"),
        named.intern("work;odd\nname"),
        named.intern("read_[k]"),
    );
    let mut raw = RawProfile::new();
    let a = t.names.intern("app");
    let b = t.names.intern("other thread");
    let mut add = |name, frames: &[Frame], count| {
        let stack = t.stacks.intern(frames);
        raw.add(name, stack, count);
    };
    add(a, &[Frame::Named(work), Frame::Named(main)], 3);
    add(a, &[Frame::Unmapped(0x1234), Frame::Named(main)], 2);
    add(a, &[Frame::Named(work), Frame::Named(main)], 4);
    add(
        b,
        &[Frame::Named(read), Frame::Label("[blocked at start]")],
        1,
    );
    let procs = Processes::new();
    let mut sym = Symbolizer::new(SymbolizeOptions::default());
    let folded = Folder::new(&mut sym, &procs, &t.frame_names).fold(&raw, &t);

    let mut b = Builder::new(&mut sym, &procs, &t.frame_names);
    for (name, stack, count) in raw.iter() {
        let comm = crate::output::folded::escape_comm(t.names.get(name));
        let frames = t.stacks.get(stack);
        let mut nodes: Vec<Node<'_>> = frames.iter().map(|f| Node::Frame(*f)).collect();
        nodes.push(Node::Text(&comm));
        b.add(&nodes, &[count as i64, count as i64 * 10_101_010]);
    }
    let p = b.finish(&meta());
    let mut gz = Vec::new();
    p.write_gz(&mut gz).unwrap();
    let back = Profile::read(&gz, MAX_DECODED_BYTES).unwrap();
    assert_eq!(back, p);
    assert_eq!(to_folded(&back, 0).unwrap(), folded);
    let cpu: u64 = to_folded(&back, 1).unwrap().iter().map(|l| l.1).sum();
    assert_eq!(cpu, 10 * 10_101_010);
    assert_eq!(back.string(back.sample_type[1].unit), "nanoseconds");
    assert_eq!(back.period, 10_101_010);
    assert_eq!(back.duration_nanos, 5_000_000_000);
    // Identical stacks are one sample; every location is referenced once per distinct frame.
    assert_eq!(back.sample.len(), 3);
    assert_eq!(back.location.len(), 7);
}

#[test]
fn waker_stacks_render_like_offwaketime() {
    let mut named = Names::default();
    let (sleep, main, wake, w_main) = (
        named.intern("schedule_[k]"),
        named.intern("main"),
        named.intern("do_wake"),
        named.intern("waker_main"),
    );
    let procs = Processes::new();
    let mut sym = Symbolizer::new(SymbolizeOptions::default());
    let blocked = [Frame::Named(sleep), Frame::Named(main)];
    let waker = [Frame::Named(wake), Frame::Named(w_main)];
    let mut folder = Folder::new(&mut sym, &procs, &named);
    let mut line = folder.render("app", &blocked);
    line.push_str(";--;");
    line.push_str(&folder.render_reversed(&waker, "_[w]"));
    line.push_str(";wk");

    let mut b = Builder::new(&mut sym, &procs, &named);
    let mut nodes = vec![Node::Text("wk")];
    nodes.extend(waker.iter().rev().map(|f| Node::Waker(*f)));
    nodes.push(Node::Text("--"));
    nodes.extend(blocked.iter().map(|f| Node::Frame(*f)));
    nodes.push(Node::Text("app"));
    b.add(&nodes, &[7]);
    let p = b.finish(&Meta {
        sample_types: vec![("off-cpu".into(), "microseconds".into())],
        period_type: ("off-cpu".into(), "microseconds".into()),
        period: 1,
        time_nanos: 0,
        duration_nanos: 0,
    });
    assert_eq!(to_folded(&p, 0).unwrap(), vec![(line, 7)]);
}

/// Real user frames: this test binary's own code, with mapping, build-id and lines.
#[test]
fn user_frames_get_mappings_build_ids_and_lines() {
    let me = std::process::id();
    let mut procs = Processes::new();
    procs.load_proc_maps(me).unwrap();
    let addr = to_folded as *const () as u64;
    let mapping = procs.find(me, addr).expect("own code is mapped");
    let named = Names::default();
    let mut sym = Symbolizer::new(SymbolizeOptions::default());
    let mut b = Builder::new(&mut sym, &procs, &named);
    b.add(
        &[Node::Frame(Frame::User { mapping, addr }), Node::Text("t")],
        &[1],
    );
    let p = b.finish(&meta());
    let m = &p.mapping[0];
    assert!(m.memory_start <= addr && addr < m.memory_limit);
    assert!(p.string(m.filename).contains("collect"));
    assert!(
        p.string(m.build_id).len() >= 16,
        "build-id hex: {:?}",
        p.string(m.build_id)
    );
    let loc = p.location.iter().find(|l| l.mapping_id == m.id).unwrap();
    assert_eq!(loc.address, addr);
    let func = &p.function[loc.line.last().unwrap().function_id as usize - 1];
    assert!(p.string(func.name).contains("to_folded"));
    assert!(p.string(func.filename).ends_with("mod.rs"));
    assert!(loc.line.last().unwrap().line > 0);
}

#[test]
fn foreign_profiles_fold_with_their_own_names() {
    // A profile as Go writes it: two lines in a location (inlined), no thread-name root.
    let p = Profile {
        sample_type: vec![proto::ValueType { ty: 1, unit: 2 }],
        string_table: vec![
            "".into(),
            "cpu".into(),
            "nanoseconds".into(),
            "a".into(),
            "b".into(),
        ],
        function: vec![
            Function {
                id: 1,
                name: 3,
                ..Default::default()
            },
            Function {
                id: 2,
                name: 4,
                ..Default::default()
            },
        ],
        location: vec![Location {
            id: 9,
            line: vec![
                Line {
                    function_id: 2,
                    line: 3,
                },
                Line {
                    function_id: 1,
                    line: 1,
                },
            ],
            ..Default::default()
        }],
        sample: vec![Sample {
            location_id: vec![9],
            value: vec![5],
            label: vec![],
        }],
        ..Default::default()
    };
    assert_eq!(to_folded(&p, 0).unwrap(), vec![("a;b_[i]".into(), 5)]);
    let mut bad = p.clone();
    bad.sample[0].location_id = vec![10];
    assert!(to_folded(&bad, 0).is_err());
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Profile::decode(&bytes);
        let _ = Profile::read(&bytes, 1 << 20);
    }
}

#[test]
fn gzip_bombs_are_capped() {
    let big = Profile {
        string_table: vec![String::new(), "x".repeat(1 << 20)],
        ..Default::default()
    };
    let mut gz = Vec::new();
    big.write_gz(&mut gz).unwrap();
    assert!(Profile::read(&gz, 1 << 16).unwrap_err().contains("larger"));
    assert!(Profile::read(&gz, 1 << 21).is_ok());
}
