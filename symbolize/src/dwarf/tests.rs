//! The lazy index must answer exactly what `addr2line::Context::find_frames` answers, on
//! real compiler output: gcc C with forced inlining (DWARF 4 and 5, with and without
//! .debug_aranges), this Rust test binary, and libc's separate debug file when installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use super::*;

type Answer = Vec<(Option<String>, Option<String>, Option<u32>)>;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
static volatile int sink;
static inline __attribute__((always_inline)) void deepest(int x) { sink += x * 7; if (sink & 1) sink ^= x; }
static inline __attribute__((always_inline)) void middle(int x) { sink += 1; deepest(x); sink -= 2; deepest(x + 1); }
static inline __attribute__((always_inline)) void upper(int x) { for (int i = 0; i < x; i++) middle(i); }
__attribute__((noinline)) void work(int x) { upper(x); if (x > 1000) { fprintf(stderr, "big\n"); abort(); } }
__attribute__((noinline, cold)) void rarely(int x) { middle(x); sink = x; }
__attribute__((noinline)) int branchy(int x) {
    if (__builtin_expect(x == 12345, 0)) { rarely(x); upper(x); return 1; }
    middle(x);
    return 0;
}
int main(int argc, char **argv) {
    (void)argv;
    work(argc * 3);
    return branchy(argc);
}
"#;

fn gcc(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join("prog.c");
    std::fs::write(&src, PROGRAM).expect("write source");
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc must be installed for the DWARF tests");
    assert!(status.success(), "gcc {flags:?} failed");
    out
}

fn loader(
    obj: &object::File<'_>,
    data: &FileBytes,
) -> impl Fn(gimli::SectionId) -> Result<Reader, gimli::Error> {
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let sections: Vec<(gimli::SectionId, crate::bytes::SectionBytes)> = [
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugAddr,
        gimli::SectionId::DebugAranges,
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugLine,
        gimli::SectionId::DebugLineStr,
        gimli::SectionId::DebugStr,
        gimli::SectionId::DebugStrOffsets,
        gimli::SectionId::DebugRanges,
        gimli::SectionId::DebugRngLists,
    ]
    .into_iter()
    .map(|id| (id, section(obj, data, id.name())))
    .collect();
    move |id| {
        let bytes = sections
            .iter()
            .find(|(s, _)| *s == id)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(empty_section);
        Ok(gimli::EndianReader::new(bytes, endian))
    }
}

fn reference(ctx: &addr2line::Context<Reader>, addr: u64) -> Answer {
    let mut out = Vec::new();
    let Ok(mut it) = ctx.find_frames(addr).skip_all_loads() else {
        return out;
    };
    while let Ok(Some(f)) = it.next() {
        let name = f
            .function
            .and_then(|n| n.raw_name().ok().map(|c| c.into_owned()));
        let (file, line) = match f.location {
            Some(l) => (l.file.map(str::to_string), l.line),
            None => (None, None),
        };
        out.push((name, file, line));
    }
    out
}

/// Start, middle and last byte of every sized text symbol (every `step`-th one).
fn probe_addresses(obj: &object::File<'_>, step: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let funcs = obj
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && s.address() > 0);
    for sym in funcs.step_by(step.max(1)) {
        let (a, n) = (sym.address(), sym.size());
        out.extend([a, a + n / 2, a + n - 1]);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Compares every probe and returns how many had at least one inline frame (to show that the
/// corpus exercised inlining) and how many answers were non-empty.
fn compare(path: &Path, step: usize) -> (usize, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data = FileBytes::map(&file).expect("map");
    let obj = object::File::parse(&*data).expect("parse ELF");
    let ours = DwarfInfo::load(&obj, &data).expect("DWARF loads");
    let dwarf = gimli::Dwarf::load(loader(&obj, &data)).expect("gimli loads");
    let ctx = addr2line::Context::from_dwarf(dwarf).expect("addr2line loads");
    let addrs = probe_addresses(&obj, step);
    assert!(addrs.len() > 10, "{}: too few functions", path.display());
    let mut mismatches = Vec::new();
    let (mut inlined, mut named) = (0, 0);
    for &a in &addrs {
        let got: Answer = ours
            .frames(a)
            .into_iter()
            .map(|f| (f.name, f.file, f.line))
            .collect();
        let want = reference(&ctx, a);
        if got != want {
            mismatches.push((a, got, want));
        } else {
            inlined += usize::from(got.len() > 1);
            named += usize::from(!got.is_empty());
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}: {} of {} addresses differ from addr2line, first: {:#x?}",
        path.display(),
        mismatches.len(),
        addrs.len(),
        &mismatches[..mismatches.len().min(3)]
    );
    assert!(
        ours.cached_units() <= UNIT_CACHE,
        "unit cache grew past its bound"
    );
    (inlined, named)
}

#[test]
fn matches_addr2line_on_gcc_inlining_dwarf4_and_dwarf5() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, flags) in [
        ("d5", &["-O2", "-g", "-gdwarf-5"][..]),
        ("d4", &["-O2", "-g", "-gdwarf-4"][..]),
        // No .debug_aranges: the index must fall back to the units' own ranges.
        (
            "noaranges",
            &["-O2", "-g", "-gdwarf-5", "-gno-pubnames"][..],
        ),
    ] {
        let bin = gcc(dir.path(), name, flags);
        if name == "noaranges" {
            let status = Command::new("objcopy")
                .arg("--remove-section=.debug_aranges")
                .arg(&bin)
                .status()
                .expect("objcopy (binutils) must be installed");
            assert!(status.success());
        }
        let (inlined, named) = compare(&bin, 1);
        assert!(named > 0, "{name}: DWARF named nothing");
        assert!(inlined > 0, "{name}: no inline chain was exercised");
    }
}

#[test]
fn matches_addr2line_on_this_rust_binary() {
    let exe = std::fs::read_link("/proc/self/exe").expect("exe link");
    // Every 7th function keeps the debug-build test quick while spanning all units.
    let (inlined, named) = compare(&exe, 7);
    assert!(named > 100, "too few functions named: {named}");
    assert!(inlined > 0, "no inline chain in a Rust binary?");
}

/// libc's separate debug file (libc6-dbg), located by the build-id of the libc this test
/// runs against.
fn libc_debug_file() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))?;
    let data = std::fs::read(libc).ok()?;
    let obj = object::File::parse(&*data).ok()?;
    let id = obj.build_id().ok()??;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let path = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        hex.get(..2)?,
        hex.get(2..)?
    ));
    path.exists().then_some(path)
}

#[test]
fn matches_addr2line_on_libc_debug_file() {
    let Some(path) = libc_debug_file() else {
        eprintln!("libc6-dbg not installed: libc comparison not run");
        return;
    };
    let (inlined, named) = compare(&path, 1);
    assert!(named > 1000, "too few libc functions named: {named}");
    assert!(inlined > 0);
}

#[test]
fn debug_sections_stay_compressed_until_needed() {
    // A file whose .debug_aranges is compressed still answers after the inflated copy is
    // dropped, i.e. nothing reads aranges after the index is built.
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = gcc(dir.path(), "z", &["-O2", "-g", "-gz=zlib"]);
    let file = std::fs::File::open(&bin).expect("open");
    let data = FileBytes::map(&file).expect("map");
    let obj = object::File::parse(&*data).expect("parse");
    let sec = obj.section_by_name(".debug_info").expect(".debug_info");
    assert_ne!(
        sec.compressed_data().expect("compressed").format,
        object::CompressionFormat::None,
        "gcc -gz did not compress"
    );
    compare(&bin, 1);
}
