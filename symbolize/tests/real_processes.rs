//! End-to-end symbolization of real processes on this machine: programs built with gcc at test
//! time, run, inspected through /proc, then killed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use symbolize::{Frame, FrameKind, ModuleKind, ModuleSpec, SymbolizeOptions, Symbolizer};

fn names(frames: &[Frame]) -> Vec<(&str, FrameKind)> {
    frames.iter().map(|f| (f.name.as_str(), f.kind)).collect()
}

fn symbolize_in(pid: u32, addr: u64, opts: SymbolizeOptions) -> (Vec<Frame>, Vec<String>) {
    let m = mapping_containing(pid, addr);
    let mut s = Symbolizer::new(opts);
    let h = s.add_module(spec_for(pid, &m, true));
    (s.symbolize(h, addr), s.warnings())
}

const INLINE_PROGRAM: &str = r#"
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
    leaf_call();
    sink += x * 3;
}
__attribute__((noinline)) void outer_fn(int x) {
    hot_inline(x);
    sink++;
}
int main(void) {
    outer_fn(1);
    printf("%p %p\n", ret, (void *)&outer_fn);
    fflush(stdout);
    for (;;) pause();
}
"#;

#[test]
fn inline_frames_of_always_inline_function() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(dir.path(), "inl", INLINE_PROGRAM, &["-O2", "-g"]);
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addrs = t.read_addrs();
    // What a profiler holds for a return address: the call instruction, inside the inlined body.
    let call_site = addrs[0] - 1;

    let (frames, _) = symbolize_in(t.pid(), call_site, SymbolizeOptions::default());
    assert_eq!(
        names(&frames),
        vec![
            ("hot_inline", FrameKind::Inline),
            ("outer_fn", FrameKind::User)
        ]
    );

    let no_inline = SymbolizeOptions {
        inline: false,
        ..SymbolizeOptions::default()
    };
    let (frames, _) = symbolize_in(t.pid(), call_site, no_inline);
    assert_eq!(names(&frames), vec![("outer_fn", FrameKind::User)]);
}

const DLOPEN_LIB: &str = r#"
static volatile int sink;
__attribute__((noinline)) int plugin_entry_point(int n) {
    for (int i = 0; i < n; i++) sink += i;
    return sink;
}
"#;

const DLOPEN_PROGRAM: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[16];
    printf("0\n");
    fflush(stdout);
    if (!fgets(buf, sizeof buf, stdin)) return 1;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    printf("%p\n", dlsym(h, "plugin_entry_point"));
    fflush(stdout);
    for (;;) pause();
}
"#;

#[test]
fn library_dlopened_after_attach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = compile(
        dir.path(),
        "libplugin.so",
        DLOPEN_LIB,
        &["-O1", "-g", "-shared", "-fPIC"],
    );
    let bin = compile(dir.path(), "host", DLOPEN_PROGRAM, &["-O1", "-g", "-ldl"]);
    let mut t = Target::spawn(Command::new(&bin).arg(&lib));
    t.read_addrs();
    // "Attach": the profiler learns the process's mappings and starts symbolizing.
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    for m in read_maps(t.pid()) {
        s.add_module(spec_for(t.pid(), &m, true));
    }
    assert!(!read_maps(t.pid())
        .iter()
        .any(|m| m.path.ends_with("libplugin.so")));
    t.send_line("go");
    let addr = t.read_addrs()[0];
    let m = mapping_containing(t.pid(), addr);
    assert!(m.path.ends_with("libplugin.so"), "{m:?}");
    let h = s.add_module(spec_for(t.pid(), &m, true));
    assert_eq!(
        names(&s.symbolize(h, addr + 2)),
        vec![("plugin_entry_point", FrameKind::User)]
    );
}

/// File offset of a runtime address, for checking `module+0xOFFSET` fallbacks.
fn file_offset(pid: u32, addr: u64) -> u64 {
    let m = mapping_containing(pid, addr);
    addr - m.start + m.pgoff
}

#[test]
fn stripped_binary_with_debug_file_under_build_id_dir() {
    require_tool("objcopy");
    require_tool("strip");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(
        dir.path(),
        "stripped",
        SECRET_PROGRAM,
        &["-O0", "-g", "-Wl,--build-id"],
    );
    let id = build_id_of(&bin);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let debug_root = dir.path().join("debugroot");
    let debug_dir = debug_root.join(".build-id").join(&hex[..2]);
    std::fs::create_dir_all(&debug_dir).expect("mkdir");
    let debug_file = debug_dir.join(format!("{}.debug", &hex[2..]));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&bin)
        .arg(&debug_file));
    run(Command::new("strip").arg("--strip-all").arg(&bin));
    let out = Command::new("nm").arg(&bin).output().expect("nm");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no symbols"),
        "binary must be fully stripped"
    );

    let mut t = Target::spawn(&mut Command::new(&bin));
    let function = t.read_addrs()[0];
    let addr = function + 2;

    // Without the debug directory no symbol names it: the start of its function (from its
    // FDE) does, as a file offset.
    let (frames, _) = symbolize_in(t.pid(), addr, SymbolizeOptions::default());
    assert_eq!(
        names(&frames),
        vec![(
            format!("stripped+0x{:x}", file_offset(t.pid(), function)).as_str(),
            FrameKind::User
        )]
    );

    let opts = SymbolizeOptions {
        debug_dirs: vec![debug_root],
        ..SymbolizeOptions::default()
    };
    let (frames, _) = symbolize_in(t.pid(), addr, opts);
    assert_eq!(names(&frames), vec![("secret_function", FrameKind::User)]);
}

#[test]
fn debuglink_with_crc_next_to_binary() {
    require_tool("objcopy");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(
        dir.path(),
        "linked",
        SECRET_PROGRAM,
        &["-O0", "-g", "-Wl,--build-id=none"],
    );
    let dbg = dir.path().join("linked.dbg");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&bin)
        .arg(&dbg));
    run(Command::new("strip").arg("--strip-all").arg(&bin));
    run(Command::new("objcopy")
        .current_dir(dir.path())
        .arg("--add-gnu-debuglink=linked.dbg")
        .arg(&bin));
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addr = t.read_addrs()[0] + 2;
    let (frames, _) = symbolize_in(t.pid(), addr, SymbolizeOptions::default());
    assert_eq!(names(&frames), vec![("secret_function", FrameKind::User)]);

    // A debug file whose CRC no longer matches is not trusted.
    let mut bytes = std::fs::read(&dbg).expect("read dbg");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&dbg, bytes).expect("write dbg");
    let (frames, _) = symbolize_in(t.pid(), addr, SymbolizeOptions::default());
    assert!(frames[0].name.starts_with("linked+0x"), "{frames:?}");
}

#[test]
fn stripped_binary_with_minidebuginfo_only() {
    require_tool("objcopy");
    require_tool("xz");
    require_tool("nm");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let bin = compile(d, "mini", SECRET_PROGRAM, &["-O0", "-g"]);
    // Fedora's recipe (find-debuginfo.sh): a symtab-only ELF of the functions .dynsym lacks.
    let script = r#"
        set -e
        nm -D mini --format=posix --defined-only | awk '{ print $1 }' | sort > dynsyms
        nm mini --format=posix --defined-only | awk '{ if ($2 == "T" || $2 == "t" || $2 == "D") print $1 }' | sort > funcsyms
        comm -13 dynsyms funcsyms > keep_symbols
        objcopy --only-keep-debug mini mini.debug
        objcopy -S --remove-section .gdb_index --remove-section .comment --keep-symbols=keep_symbols mini.debug mini_debuginfo
        xz -f mini_debuginfo
        strip --strip-all mini
        objcopy --add-section .gnu_debugdata=mini_debuginfo.xz mini
        rm mini.debug
    "#;
    run(Command::new("sh").current_dir(d).arg("-c").arg(script));
    let out = Command::new("nm").arg(&bin).output().expect("nm");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no symbols"));

    let mut t = Target::spawn(&mut Command::new(&bin));
    let addr = t.read_addrs()[0] + 2;
    let (frames, warnings) = symbolize_in(t.pid(), addr, SymbolizeOptions::default());
    assert_eq!(
        names(&frames),
        vec![("secret_function", FrameKind::User)],
        "{warnings:?}"
    );
}

#[test]
fn binary_deleted_after_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(dir.path(), "doomed", SECRET_PROGRAM, &["-O0", "-g"]);
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addr = t.read_addrs()[0] + 2;
    std::fs::remove_file(&bin).expect("delete binary");
    let m = mapping_containing(t.pid(), addr);
    assert!(m.path.ends_with(" (deleted)"), "{m:?}");
    let (frames, warnings) = symbolize_in(t.pid(), addr, SymbolizeOptions::default());
    assert_eq!(
        names(&frames),
        vec![("secret_function", FrameKind::User)],
        "{warnings:?}"
    );
}

#[test]
fn replaced_binary_is_not_trusted_by_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(dir.path(), "replaced", SECRET_PROGRAM, &["-O0", "-g"]);
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addr = t.read_addrs()[0] + 2;
    let m = mapping_containing(t.pid(), addr);
    // A different program now sits at the same path (an upgrade while the process runs).
    std::fs::remove_file(&bin).expect("remove");
    compile(
        dir.path(),
        "replaced",
        "int other_function(void){return 1;} int main(void){return other_function();}",
        &["-O0", "-g"],
    );
    // The MMAP record carried the original path, without " (deleted)".
    let mut spec = spec_for(t.pid(), &m, true);
    spec.path = bin.to_string_lossy().into_owned();
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec);
    assert_eq!(
        names(&s.symbolize(h, addr)),
        vec![("secret_function", FrameKind::User)]
    );
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.contains("not the mapped file")),
        "{:?}",
        s.warnings()
    );
}

#[test]
fn binary_only_inside_another_mount_namespace() {
    require_tool("unshare");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(dir.path(), "nsprog", SECRET_PROGRAM, &["-O0", "-g"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut t = Target::spawn(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs tmpfs "$1" && cp "$2" "$1/nsprog" && exec "$1/nsprog""#)
            .arg("sh")
            .arg(&mnt)
            .arg(&bin),
    );
    let addr = t.read_addrs()[0] + 2;
    let inner = mnt.join("nsprog");
    let m = mapping_containing(t.pid(), addr);
    assert_eq!(Path::new(&m.path), inner);
    assert!(
        !inner.exists(),
        "the binary must not be visible on the host"
    );
    // The original binary remains on the host at another path: the namespace copy is the one
    // mapped, and only /proc/PID/root reaches it.
    let (frames, warnings) = symbolize_in(t.pid(), addr, SymbolizeOptions::default());
    assert_eq!(
        names(&frames),
        vec![("secret_function", FrameKind::User)],
        "{warnings:?}"
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn vdso_symbols_from_the_process() {
    use object::{Object, ObjectSegment, ObjectSymbol};
    let pid = std::process::id();
    let m = read_maps(pid)
        .into_iter()
        .find(|m| m.path == "[vdso]")
        .expect("vdso mapped");
    let image = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open("/proc/self/mem").expect("mem");
        f.seek(SeekFrom::Start(m.start)).expect("seek");
        let mut b = vec![0; (m.end - m.start) as usize];
        f.read_exact(&mut b).expect("read vdso");
        b
    };
    let obj = object::File::parse(&*image).expect("vdso elf");
    let sym = obj
        .dynamic_symbols()
        .find(|s| s.name() == Ok("__vdso_clock_gettime"))
        .expect("__vdso_clock_gettime in vDSO");
    let seg = obj
        .segments()
        .find(|s| sym.address() >= s.address() && sym.address() - s.address() < s.size())
        .expect("segment");
    let addr = m.start + (sym.address() - seg.address() + seg.file_range().0) + 1;
    let (frames, _) = symbolize_in(pid, addr, SymbolizeOptions::default());
    assert_eq!(frames.len(), 1);
    assert!(frames[0].name.ends_with("clock_gettime"), "{frames:?}");
}

#[test]
fn kallsyms_lookup_of_schedule() {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
    let addr = text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "schedule" && (f[1] == "T" || f[1] == "t"))
                .then(|| u64::from_str_radix(f[0], 16).expect("hex"))
        })
        .expect("schedule in kallsyms");
    assert_ne!(
        addr, 0,
        "kallsyms addresses are hidden (kptr_restrict); this test needs root"
    );
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let f = s.symbolize_kernel(addr + 1);
    assert_eq!((f.name.as_str(), f.kind), ("schedule", FrameKind::Kernel));

    let mut off = Symbolizer::new(SymbolizeOptions {
        kernel: false,
        ..SymbolizeOptions::default()
    });
    assert_eq!(off.symbolize_kernel(addr + 1).name, "[kernel]");
}

#[test]
fn shared_library_frames_are_shared_between_processes() {
    // Two processes mapping the same libc: both resolve, and to the same name.
    let a = Target::spawn(Command::new("sleep").arg("1000"));
    let b = Target::spawn(Command::new("sleep").arg("1000"));
    a.wait_until_sleeping();
    b.wait_until_sleeping();
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let mut results = Vec::new();
    for t in [&a, &b] {
        let m = read_maps(t.pid())
            .into_iter()
            .find(|m| m.path.contains("libc.so") && m.perms.contains('x'))
            .expect("libc mapped");
        let h = s.add_module(spec_for(t.pid(), &m, true));
        results.push(s.symbolize(h, m.start + 0x1000));
    }
    assert_eq!(results[0], results[1]);
    assert!(!results[0][0].name.is_empty());
}

fn anon_spec(pid: u32, start: u64, end: u64) -> ModuleSpec {
    ModuleSpec {
        kind: ModuleKind::Anon,
        path: String::new(),
        pid,
        pid_start: None,
        start,
        end,
        pgoff: 0,
        build_id: None,
        inode: None,
    }
}

struct MapFile(std::path::PathBuf);
impl Drop for MapFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_map(pid: u32, body: &str, uid: u32, mode: u32) -> MapFile {
    let path = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    std::fs::write(&path, body).expect("write map");
    std::os::unix::fs::chown(&path, Some(uid), None).expect("chown (tests run as root)");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    MapFile(path)
}

#[test]
fn spoofed_perf_map_is_refused_and_good_one_used() {
    let t = Target::spawn(Command::new("sleep").arg("1000"));
    let pid = t.pid();
    let (start, end) = (0x7f00_0000_0000u64, 0x7f00_0010_0000u64);
    let body = format!("{:x} 100 jit_spoofed_fn\n", start + 0x100);

    let spoof = write_map(pid, &body, 65534, 0o644);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, start, end));
    let f = s.symbolize(h, start + 0x110);
    assert_eq!(f[0].kind, FrameKind::User);
    // Unknown anonymous code: offset within the mapping (pgoff is 0 here).
    assert_eq!(f[0].name, "[anon]+0x110");
    assert!(
        s.warnings()
            .iter()
            .any(|w| w.contains("refusing perf map") && w.contains("uid 65534")),
        "{:?}",
        s.warnings()
    );
    drop(spoof);

    let writable = write_map(pid, &body, 0, 0o666);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, start, end));
    assert_eq!(s.symbolize(h, start + 0x110)[0].kind, FrameKind::User);
    assert!(s.warnings().iter().any(|w| w.contains("writable")));
    drop(writable);

    // A symlink planted at the map path is refused even if it points at a good file.
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real.map");
    std::fs::write(&real, &body).expect("write");
    let link = MapFile(format!("/tmp/perf-{pid}.map").into());
    std::os::unix::fs::symlink(&real, &link.0).expect("symlink");
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, start, end));
    assert_eq!(s.symbolize(h, start + 0x110)[0].kind, FrameKind::User);
    assert!(s.warnings().iter().any(|w| w.contains("symbolic link")));
    drop(link);

    let good = write_map(pid, &body, 0, 0o644);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, start, end));
    assert_eq!(
        names(&s.symbolize(h, start + 0x110)),
        vec![("jit_spoofed_fn", FrameKind::Jit)]
    );
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());

    // The JIT appends as it compiles more code: a miss re-reads the grown file.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&good.0)
        .expect("append");
    writeln!(f, "{:x} 20 later_compiled_fn", start + 0x400).expect("append line");
    drop(f);
    assert_eq!(
        names(&s.symbolize(h, start + 0x410)),
        vec![("later_compiled_fn", FrameKind::Jit)]
    );
}

#[test]
fn huge_perf_map_lines_are_bounded() {
    let t = Target::spawn(Command::new("sleep").arg("1000"));
    let pid = t.pid();
    let long_name = "x".repeat(1 << 20);
    let body = format!("1000 10 {long_name}\n2000 10 after_long_line\n");
    let _map = write_map(pid, &body, 0, 0o644);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, 0x1000, 0x3000));
    let f = s.symbolize(h, 0x1004);
    assert_eq!(f[0].kind, FrameKind::Jit);
    assert!(f[0].name.len() < 16 * 1024, "name not truncated");
    assert_eq!(s.symbolize(h, 0x2004)[0].name, "after_long_line");
    assert!(s.warnings().iter().any(|w| w.contains("truncated")));
}

#[test]
fn node_perf_basic_prof_frames() {
    require_tool("node");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("hot.js");
    std::fs::write(
        &script,
        r#"
        function hotFunctionForPsample(n) { let s = 0; for (let i = 0; i < n; i++) s += i % 7; return s; }
        let t = 0;
        for (let k = 0; k < 3000; k++) t += hotFunctionForPsample(10000);
        console.log("0 " + (t & 1));
        setInterval(() => {}, 1000);
        "#,
    )
    .expect("write script");
    // Run node in the temp dir: it may drop isolate-*.log files in its working directory.
    let mut t = Target::spawn(
        Command::new("node")
            .current_dir(dir.path())
            .arg("--perf-basic-prof")
            .arg(&script),
    );
    t.read_addrs();
    let map_path = format!("/tmp/perf-{}.map", t.pid());
    let _cleanup = MapFile(map_path.clone().into());
    let map = std::fs::read_to_string(&map_path).expect("node wrote its perf map");
    let (start, name) = map
        .lines()
        .filter(|l| l.contains("hotFunctionForPsample"))
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let start = u64::from_str_radix(it.next()?, 16).ok()?;
            it.next()?;
            Some((start, it.next()?.to_string()))
        })
        .next_back()
        .expect("hotFunctionForPsample compiled");
    let m = mapping_containing(t.pid(), start);
    let spec = spec_for(t.pid(), &m, true);
    assert_eq!(spec.kind, ModuleKind::Anon, "{m:?}");
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec);
    let frames = s.symbolize(h, start + 1);
    assert_eq!(names(&frames), vec![(name.as_str(), FrameKind::Jit)]);
}

#[test]
fn perf_map_of_process_in_pid_and_mount_namespace() {
    require_tool("unshare");
    // The runtime inside the namespaces writes /tmp/perf-<its own pid>.map into its own /tmp,
    // invisible on the host; only NSpid + /proc/PID/root find it.
    let mut outer = Target::spawn(
        Command::new("unshare")
            .args(["-p", "-f", "-m", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"mount -t tmpfs tmpfs /tmp && printf '7f0000000100 100 ns_jit_fn\n' > /tmp/perf-$$.map \
                   && chmod 644 /tmp/perf-$$.map && echo $$ && exec sleep 1000"#,
            ),
    );
    let ns_pid = outer.read_addrs()[0];
    assert_eq!(ns_pid, 1, "sh should be pid 1 of its namespace");
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", outer.pid()))
        .expect("children of unshare");
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("namespaced child");
    // Killing unshare leaves its child; take it down explicitly, even if an assertion fails.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: plain kill(2) of the process this test started (through unshare).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = KillOnDrop(pid);
    assert!(!Path::new("/tmp/perf-1.map").exists() || pid != 1);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, 0x7f00_0000_0000, 0x7f00_0010_0000));
    assert_eq!(
        names(&s.symbolize(h, 0x7f00_0000_0180)),
        vec![("ns_jit_fn", FrameKind::Jit)],
        "{:?}",
        s.warnings()
    );
}

#[test]
fn exited_process_falls_back_to_host_path_only_when_identity_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = compile(dir.path(), "gone", SECRET_PROGRAM, &["-O0", "-g"]);
    let mut t = Target::spawn(&mut Command::new(&bin));
    let addr = t.read_addrs()[0] + 2;
    let m = mapping_containing(t.pid(), addr);
    let pid = t.pid();
    drop(t);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec_for(pid, &m, true));
    assert_eq!(
        names(&s.symbolize(h, addr)),
        vec![("secret_function", FrameKind::User)]
    );

    let mut wrong = spec_for(pid, &m, true);
    wrong.inode = Some((m.dev.0, m.dev.1, m.inode + 1));
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(wrong);
    assert!(s.symbolize(h, addr)[0].name.starts_with("gone+0x"));
    assert!(
        s.warnings().iter().any(|w| w.contains("inode differs")),
        "{:?}",
        s.warnings()
    );

    let mut by_build_id = spec_for(pid, &m, false);
    by_build_id.build_id = Some(vec![0xde, 0xad, 0xbe, 0xef]);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(by_build_id);
    assert!(s.symbolize(h, addr)[0].name.starts_with("gone+0x"));
    assert!(
        s.warnings().iter().any(|w| w.contains("build-id differs")),
        "{:?}",
        s.warnings()
    );
}

/// Writes a map of `lines` lines `START 10 name_I` (each 32 bytes) plus `tail` at the end.
fn write_big_map(pid: u32, lines: u64, tail: &str) -> MapFile {
    use std::io::Write;
    let path = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let guard = MapFile(path.clone());
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create map"));
    for i in 0..lines {
        writeln!(f, "{:012x} 10 early_name_{i:09}", 0x1000_0000 + i * 0x10).expect("write");
    }
    f.write_all(tail.as_bytes()).expect("write");
    f.flush().expect("flush");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    guard
}

#[test]
fn perf_map_over_its_read_budget_is_read_from_the_end() {
    let t = Target::spawn(Command::new("sleep").arg("1000"));
    let pid = t.pid();
    // 32 bytes a line: twice the read budget.
    let lines = 2 * symbolize::budget::PERF_MAP_READ_MAX / 32;
    let _map = write_big_map(pid, lines, "7f0000000100 100 late_compiled_fn\n");
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, 0x1000_0000, 0x7f00_0010_0000));
    assert_eq!(
        names(&s.symbolize(h, 0x7f00_0000_0110)),
        vec![("late_compiled_fn", FrameKind::Jit)]
    );
    // The beginning of the file was never read: its code is anonymous.
    assert_eq!(s.symbolize(h, 0x1000_0004)[0].kind, FrameKind::User);
    assert!(s.warnings().iter().any(|w| w.contains("over its budget")));
    assert!(symbolize::budget::report()
        .iter()
        .any(|l| l.contains("JIT map(s) read only in part")));
    assert!(s.heap_bytes() < 48 << 20, "{} bytes", s.heap_bytes());
}

#[test]
fn perf_map_entries_are_capped() {
    let t = Target::spawn(Command::new("sleep").arg("1000"));
    let pid = t.pid();
    let cap = symbolize::budget::PERF_MAP_ENTRIES_MAX as u64;
    let _map = write_big_map(pid, cap + 1000, "");
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(anon_spec(pid, 0x1000_0000, 0x2000_0000));
    // The newest `cap` lines are kept (later lines win anyway); the oldest are skipped.
    let line = |i: u64| 0x1000_0000 + i * 0x10 + 4;
    assert_eq!(
        s.symbolize(h, line(cap + 999))[0].name,
        "early_name_000200999"
    );
    assert_eq!(s.symbolize(h, line(1000))[0].name, "early_name_000001000");
    assert_eq!(s.symbolize(h, line(999))[0].kind, FrameKind::User);
    assert!(s.warnings().iter().any(|w| w.contains("over its budget")));
}

#[test]
fn jit_map_of_a_reused_pid_is_not_used_for_the_old_process() {
    let t = Target::spawn(Command::new("sleep").arg("1000"));
    let pid = t.pid();
    let _map = write_map(pid, "7f0000000100 100 new_process_fn\n", 0, 0o644);
    let now = symbolize::identity::ProcessIdentity::of(pid).expect("running");
    let mut spec = anon_spec(pid, 0x7f00_0000_0000, 0x7f00_0010_0000);
    // The mapping was seen in an earlier process that had this PID.
    spec.pid_start = Some(now.start_time - 1);
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let h = s.add_module(spec.clone());
    assert_eq!(s.symbolize(h, 0x7f00_0000_0110)[0].kind, FrameKind::User);
    assert!(
        s.warnings().iter().any(|w| w.contains("another process")),
        "{:?}",
        s.warnings()
    );
    // The same symbolizer asked about the current process does use its map.
    spec.pid_start = Some(now.start_time);
    let h = s.add_module(spec);
    assert_eq!(s.symbolize(h, 0x7f00_0000_0110)[0].name, "new_process_fn");
}
