//! `symbolize_detailed`: source file and line for every (inlined) frame, checked against the
//! lines of a program compiled at test time.

mod common;

use std::process::Command;

use common::*;
use symbolize::{FrameKind, SymbolizeOptions, Symbolizer};

const PROGRAM: &str = r#"
#include <stdio.h>
#include <unistd.h>
static volatile int sink;
static void *volatile ret;
__attribute__((noinline)) void leaf_call(void) {
    ret = __builtin_return_address(0);
    __asm__ volatile("" ::: "memory");
}
static inline __attribute__((always_inline)) void hot_inline(int x) {
    sink += x;
    leaf_call(); /* CALL_IN_INLINE */
    sink += x * 3;
}
__attribute__((noinline)) void outer_fn(int x) {
    hot_inline(x); /* CALL_OF_INLINE */
    sink++;
}
int main(void) {
    outer_fn(1);
    printf("%p %p\n", ret, (void *)&outer_fn);
    fflush(stdout);
    for (;;) pause();
}
"#;

fn line_of(marker: &str) -> u32 {
    PROGRAM
        .lines()
        .position(|l| l.contains(marker))
        .map(|i| i as u32 + 1)
        .expect("marker in program")
}

#[test]
fn inline_chain_has_call_site_lines_innermost_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(dir.path(), "lines", PROGRAM, &["-O2", "-g"]);
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addrs = t.read_addrs();
    let call_site = addrs[0] - 1;
    let m = mapping_containing(t.pid(), call_site);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec_for(t.pid(), &m, true));

    let detailed = s.symbolize_detailed(h, call_site);
    let got: Vec<(&str, FrameKind, Option<u32>)> = detailed
        .iter()
        .map(|f| (f.name.as_str(), f.kind, f.line))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "hot_inline",
                FrameKind::Inline,
                Some(line_of("CALL_IN_INLINE"))
            ),
            ("outer_fn", FrameKind::User, Some(line_of("CALL_OF_INLINE"))),
        ]
    );
    for f in &detailed {
        let file = f.file.as_deref().expect("DWARF names the source file");
        assert!(file.ends_with(".c"), "unexpected source file {file}");
    }
    // The plain API answers the same names.
    let plain: Vec<String> = s
        .symbolize(h, call_site)
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(plain, vec!["hot_inline", "outer_fn"]);
}

#[test]
fn symbol_table_only_frames_have_no_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No -g: names come from .symtab alone.
    let bin = compile(dir.path(), "nolines", PROGRAM, &["-O2"]);
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addrs = t.read_addrs();
    let call_site = addrs[0] - 1;
    let m = mapping_containing(t.pid(), call_site);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec_for(t.pid(), &m, true));
    let detailed = s.symbolize_detailed(h, call_site);
    assert_eq!(detailed.len(), 1);
    assert_eq!(detailed[0].name, "outer_fn");
    assert_eq!(
        (detailed[0].file.as_deref(), detailed[0].line),
        (None, None)
    );
    assert_eq!(s.module_count(), 1);
    assert_eq!(s.build_id(h), Some(build_id_of(&bin)));
    assert_eq!(s.object_count(), 1);
}
