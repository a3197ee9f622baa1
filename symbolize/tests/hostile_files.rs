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
        // Not a real mapping of this process, so the file is opened by path.
        start: 0x1000,
        end: 0x100_0000,
        pgoff: 0,
        build_id: None,
        inode: None,
    }
}

fn secret_function_file_offset(elf: &[u8]) -> u64 {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let obj = object::File::parse(elf).expect("parse");
    let sym = obj
        .symbols()
        .find(|s| s.name() == Ok("secret_function"))
        .expect("symbol");
    let seg = obj
        .segments()
        .find(|s| sym.address() >= s.address() && sym.address() - s.address() < s.size())
        .expect("segment");
    sym.address() - seg.address() + seg.file_range().0 + 1
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
