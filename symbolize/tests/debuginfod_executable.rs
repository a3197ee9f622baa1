//! A mapped file that can no longer be read (deleted, its process gone), whose build-id the
//! kernel reported: debuginfod's `/executable` gives the binary back. One test in its own
//! binary, because it sets DEBUGINFOD_URLS for the whole process.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;
use symbolize::{FrameKind, ModuleKind, SymbolizeOptions, Symbolizer};

/// Serves `body` for `GET path` and 404 for anything else, on loopback, until the test
/// process ends (the thread only ever blocks in accept).
fn serve(path: String, body: Vec<u8>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = [0u8; 2048];
            let n = conn.read(&mut req).unwrap_or(0);
            let line = String::from_utf8_lossy(&req[..n]);
            let ok = line.starts_with(&format!("GET {path} "));
            let head = if ok {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
            };
            let _ = conn.write_all(head.as_bytes());
            if ok {
                let _ = conn.write_all(&body);
            }
        }
    });
    port
}

#[test]
fn an_unreadable_executable_comes_from_debuginfod_by_its_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let bin = compile(
        dir.path(),
        "gone",
        SECRET_PROGRAM,
        &["-O0", "-g", "-Wl,--build-id"],
    );
    let id = build_id_of(&bin);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let served = std::fs::read(&bin).unwrap();

    let mut t = Target::spawn(&mut Command::new(&bin));
    let function = t.read_addrs()[0];
    let mut spec = spec_for(t.pid(), &mapping_containing(t.pid(), function), false);
    assert_eq!(spec.kind, ModuleKind::File);
    // As a PERF_RECORD_MMAP2 with the build-id flag reports it.
    spec.build_id = Some(id.clone());
    drop(t);
    std::fs::remove_file(&bin).unwrap();

    let name_with = |debuginfod: Option<Duration>| {
        let mut s = Symbolizer::new(SymbolizeOptions {
            debuginfod,
            kernel: false,
            ..SymbolizeOptions::default()
        });
        let h = s.add_module(spec.clone());
        (s.symbolize(h, function + 2), s.debuginfod_summary())
    };
    let (frames, summary) = name_with(None);
    assert!(frames[0].name.starts_with("gone+0x"), "{frames:?}");
    assert_eq!(summary, None);

    let port = serve(format!("/buildid/{hex}/executable"), served);
    let cache = dir.path().join("cache");
    std::env::set_var("DEBUGINFOD_URLS", format!("http://127.0.0.1:{port}"));
    std::env::set_var("DEBUGINFOD_CACHE_PATH", &cache);
    let (frames, summary) = name_with(Some(Duration::from_secs(20)));
    assert_eq!(frames[0].name, "secret_function");
    assert_eq!(frames[0].kind, FrameKind::User);
    let summary = summary.expect("debuginfod was used");
    assert!(
        summary.starts_with("1 fetched, 0 cached, 0 failed"),
        "{summary}"
    );
    assert!(cache.join(&hex).join("executable").is_file());
}
