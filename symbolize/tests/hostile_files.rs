//! Untrusted file content must never panic the symbolizer: corrupted and truncated ELF files,
//! garbage DWARF, and bogus MiniDebugInfo all degrade to `module+0xOFFSET` frames.

mod common;

use std::process::Command;

use symbolize::{FrameKind, ModuleKind, ModuleSpec, SymbolizeOptions, Symbolizer};

fn spec(path: &std::path::Path) -> ModuleSpec {
    ModuleSpec {
        kind: ModuleKind::File,
        path: path.to_string_lossy().into_owned(),
        pid: std::process::id(),
        pid_start: None,
        // Not a real mapping of this process, so the file is opened by path.
        start: 0x1000,
        end: 0x100_0000,
        pgoff: 0,
        build_id: None,
        inode: None,
    }
}

fn secret_function_file_offset(elf: &[u8]) -> u64 {
    symbol_file_offset(elf, "secret_function")
}

/// Small deterministic generator so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupted_and_truncated_elf_files_do_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = common::compile(dir.path(), "victim", common::SECRET_PROGRAM, &["-O2", "-g"]);
    let good = std::fs::read(&bin).expect("read");
    // Control: the intact file names the function, so the corrupted rounds do exercise parsing.
    let offset = secret_function_file_offset(&good);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec(&bin));
    assert_eq!(s.symbolize(h, 0x1000 + offset)[0].name, "secret_function");
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    for round in 0..120 {
        let mut bytes = good.clone();
        if round % 3 == 0 {
            bytes.truncate((rng.next() as usize) % good.len());
        }
        let flips = 1 + (rng.next() % 64) as usize;
        for _ in 0..flips {
            if bytes.is_empty() {
                break;
            }
            let i = (rng.next() as usize) % bytes.len();
            bytes[i] = rng.next() as u8;
        }
        let path = dir.path().join(format!("corrupt{round}"));
        std::fs::write(&path, &bytes).expect("write");
        let mut s = Symbolizer::new(SymbolizeOptions::default());
        let h = s.add_module(spec(&path));
        for k in 0..50u64 {
            let probe = if k == 0 {
                0x1000 + offset
            } else {
                0x1000 + (rng.next() % 0x4000)
            };
            let frames = s.symbolize(h, probe);
            assert!(!frames.is_empty());
        }
        std::fs::remove_file(&path).expect("rm");
    }
}

#[test]
fn bogus_minidebuginfo_is_reported_not_fatal() {
    common::require_tool("objcopy");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = common::compile(dir.path(), "bogus", common::SECRET_PROGRAM, &["-O0"]);
    let junk = dir.path().join("junk.xz");
    let mut data = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 0, 1, 0, 0, 0, 0];
    data.extend(std::iter::repeat_n(0x5a, 4096));
    std::fs::write(&junk, data).expect("write");
    common::run(Command::new("strip").arg("--strip-all").arg(&bin));
    common::run(
        Command::new("objcopy")
            .arg(format!("--add-section=.gnu_debugdata={}", junk.display()))
            .arg(&bin),
    );
    let mut t = common::Target::spawn(&mut Command::new(&bin));
    let addr = t.read_addrs()[0] + 2;
    let m = common::mapping_containing(t.pid(), addr);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(common::spec_for(t.pid(), &m, true));
    let frames = s.symbolize(h, addr);
    assert_eq!(frames[0].kind, FrameKind::User);
    assert!(frames[0].name.starts_with("bogus+0x"), "{frames:?}");
    assert!(
        s.warnings().iter().any(|w| w.contains("MiniDebugInfo")),
        "{:?}",
        s.warnings()
    );
}

/// Two compilation units: looking up `in_b` after `in_a` parses a unit not read before.
const TWO_UNITS_A: &str = r#"
int in_b(int);
__attribute__((noinline)) int in_a(int x) { return x * 3 + 1; }
int main(int argc, char **argv) { (void)argv; return in_a(argc) + in_b(argc); }
"#;
const TWO_UNITS_B: &str = r#"
__attribute__((noinline)) int in_b(int x) { return x * 5 + 2; }
"#;

fn symbol_file_offset(elf: &[u8], name: &str) -> u64 {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let obj = object::File::parse(elf).expect("parse");
    let sym = obj
        .symbols()
        .find(|s| s.name() == Ok(name))
        .expect("symbol");
    let seg = obj
        .segments()
        .find(|s| sym.address() >= s.address() && sym.address() - s.address() < s.size())
        .expect("segment");
    sym.address() - seg.address() + seg.file_range().0 + 1
}

#[test]
fn file_truncated_while_mapped_degrades_instead_of_killing_the_symbolizer() {
    common::require_tool("gcc");
    let dir = tempfile::tempdir().expect("tempdir");
    let b = dir.path().join("b.c");
    std::fs::write(&b, TWO_UNITS_B).expect("write");
    let a = dir.path().join("a.c");
    std::fs::write(&a, TWO_UNITS_A).expect("write");
    let bin = dir.path().join("two");
    common::run(
        Command::new("gcc")
            .args(["-g", "-O1", "-o"])
            .arg(&bin)
            .arg(&a)
            .arg(&b),
    );
    let elf = std::fs::read(&bin).expect("read");
    let (off_a, off_b) = (
        symbol_file_offset(&elf, "in_a"),
        symbol_file_offset(&elf, "in_b"),
    );
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec(&bin));
    assert_eq!(s.symbolize(h, 0x1000 + off_a)[0].name, "in_a");
    // What a target can do to its own file while psample holds it mapped: every page of
    // the mapping now raises SIGBUS when read.
    std::fs::File::options()
        .write(true)
        .open(&bin)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    let frames = s.symbolize(h, 0x1000 + off_b);
    // The symbol table was copied out while the file was intact and still names it.
    assert_eq!(frames[0].name, "in_b", "{frames:?}");
    assert!(
        s.warnings().iter().any(|w| w.contains("shrank")),
        "{:?}",
        s.warnings()
    );
}

/// A section header claiming `size` inflated bytes, GNU `.zdebug` style, over real zlib data.
fn zdebug_bomb(size: u64) -> Vec<u8> {
    use std::io::Write;
    let mut out = b"ZLIB".to_vec();
    out.extend_from_slice(&size.to_be_bytes());
    let mut z = flate2::write::ZlibEncoder::new(out, flate2::Compression::fast());
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        z.write_all(&chunk[..n]).expect("deflate");
        left -= n as u64;
    }
    z.finish().expect("deflate")
}

#[test]
fn compressed_sections_over_budget_are_not_inflated() {
    common::require_tool("objcopy");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = common::compile(dir.path(), "bomb", common::SECRET_PROGRAM, &["-O0"]);
    // Twice the per-section budget (the end-to-end test in cli/tests/hostile_targets.rs uses
    // the 2 GiB a 2 MiB section can declare).
    let over = 2 * symbolize::budget::SECTION_INFLATED_MAX;
    let bomb = dir.path().join("bomb.z");
    std::fs::write(&bomb, zdebug_bomb(over)).expect("write");
    common::run(
        Command::new("objcopy")
            .arg(format!("--add-section=.zdebug_info={}", bomb.display()))
            .arg(format!("--add-section=.zdebug_abbrev={}", bomb.display()))
            .arg(&bin),
    );
    let elf = std::fs::read(&bin).expect("read");
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec(&bin));
    let frames = s.symbolize(h, 0x1000 + secret_function_file_offset(&elf));
    // Still named, from .symtab; the DWARF over budget is left out.
    assert_eq!(frames[0].name, "secret_function", "{frames:?}");
    assert!(
        symbolize::budget::report()
            .iter()
            .any(|l| l.contains("compressed section(s)")),
        "{:?}",
        symbolize::budget::report()
    );
}
