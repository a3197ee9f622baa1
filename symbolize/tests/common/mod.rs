//! Helpers for integration tests against real processes: build C programs with gcc, run them,
//! read their maps, and turn mappings into ModuleSpecs. Missing tools fail the test loudly.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use symbolize::{ModuleKind, ModuleSpec};

pub fn require_tool(name: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "required tool `{name}` is missing (install it, e.g. apt-get install binutils xz-utils gcc nodejs)"
    );
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles `src` (C) into `dir/name` with extra gcc flags.
pub fn compile(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    require_tool("gcc");
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).expect("write source");
    let out = dir.join(name);
    run(Command::new("gcc").args(flags).arg("-o").arg(&out).arg(&c));
    out
}

/// A running program that prints one line of hex addresses when ready; killed on drop.
pub struct Target {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl Target {
    pub fn spawn(cmd: &mut Command) -> Target {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Target {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Block until the program sleeps in nanosleep/clock_nanosleep (`sleep N`): its loader
    /// has mapped everything, however slow the machine is.
    pub fn wait_until_sleeping(&self) {
        let path = format!("/proc/{}/syscall", self.pid());
        for _ in 0..30_000 {
            let s = std::fs::read_to_string(&path).unwrap_or_default();
            if matches!(s.split_whitespace().next(), Some("35" | "230")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never went to sleep", self.pid());
    }

    /// Next line of output, split into hex numbers (non-hex words are skipped).
    pub fn read_addrs(&mut self) -> Vec<u64> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read target output");
        assert!(!line.is_empty(), "target exited before becoming ready");
        line.split_whitespace()
            .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
            .collect()
    }

    pub fn send_line(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{s}").expect("write to target");
        stdin.flush().expect("flush");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub pgoff: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: String,
}

pub fn read_maps(pid: u32) -> Vec<MapLine> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(6, ' ');
            let range = it.next()?;
            let perms = it.next()?.to_string();
            let pgoff = u64::from_str_radix(it.next()?, 16).ok()?;
            let dev = it.next()?;
            let inode = it.next()?.parse().ok()?;
            let path = it.next().unwrap_or("").trim_start().to_string();
            let (s, e) = range.split_once('-')?;
            let (maj, min) = dev.split_once(':')?;
            Some(MapLine {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                pgoff,
                dev: (
                    u32::from_str_radix(maj, 16).ok()?,
                    u32::from_str_radix(min, 16).ok()?,
                ),
                inode,
                path,
            })
        })
        .collect()
}

pub fn mapping_containing(pid: u32, addr: u64) -> MapLine {
    read_maps(pid)
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end)
        .unwrap_or_else(|| panic!("no mapping of pid {pid} contains {addr:#x}"))
}

pub fn spec_for(pid: u32, m: &MapLine, with_inode: bool) -> ModuleSpec {
    let kind = if m.path == "[vdso]" {
        ModuleKind::Vdso
    } else if m.path.is_empty() || m.path.starts_with('[') {
        ModuleKind::Anon
    } else {
        ModuleKind::File
    };
    ModuleSpec {
        kind,
        path: m.path.clone(),
        pid,
        pid_start: None,
        start: m.start,
        end: m.end,
        pgoff: m.pgoff,
        build_id: None,
        inode: with_inode.then_some((m.dev.0, m.dev.1, m.inode)),
    }
}

pub fn build_id_of(path: &Path) -> Vec<u8> {
    use object::Object;
    let data = std::fs::read(path).expect("read binary");
    let obj = object::File::parse(&*data).expect("parse binary");
    obj.build_id()
        .expect("notes")
        .expect("binary has a build-id")
        .to_vec()
}

/// A program exposing `secret_function` (static, so only .symtab or debug info names it).
pub const SECRET_PROGRAM: &str = r#"
#include <stdio.h>
#include <unistd.h>
static volatile int sink;
__attribute__((noinline)) static void secret_function(int n) {
    for (int i = 0; i < n; i++) sink += i * 3;
}
int main(void) {
    secret_function(10);
    printf("%p\n", (void *)&secret_function);
    fflush(stdout);
    for (;;) pause();
}
"#;
