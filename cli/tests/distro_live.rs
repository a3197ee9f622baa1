//! Binaries as distros ship them: stripped of every symbol but `.dynsym`, static functions
//! unnamed, debug info elsewhere. Built here from `workloads/distro_demo.c`, stripped with
//! binutils, and profiled for real.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// A stripped copy of distro_demo with its debug file kept apart, and the function table of
/// the unstripped build (name → (file offset of the start, size)).
pub struct Stripped {
    pub dir: tempfile::TempDir,
    pub binary: PathBuf,
    pub debug: PathBuf,
    pub functions: BTreeMap<String, (u64, u64)>,
    pub build_id: String,
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (binutils) is needed: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The PIE's text is linked at file offset == address (checked), so `nm`'s addresses are
/// the file offsets psample names unnamed code by.
fn text_offset_is_address(binary: &Path) {
    let phdrs = tool("readelf", &["-lW", binary.to_str().unwrap()]);
    let text = phdrs
        .lines()
        .find(|l| l.trim_start().starts_with("LOAD") && l.contains("R E"))
        .expect("an executable LOAD segment");
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        u64::from_str_radix(f[1].trim_start_matches("0x"), 16).unwrap(),
        u64::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap(),
        "text segment offset != address: {text}"
    );
}

pub fn stripped_demo() -> Stripped {
    let built = workload("distro_demo");
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("distro_demo");
    let debug = dir.path().join("distro_demo.debug");
    std::fs::copy(&built, &binary).unwrap();
    let (b, d) = (binary.to_str().unwrap(), debug.to_str().unwrap());
    tool("objcopy", &["--only-keep-debug", b, d]);
    // As dh_strip does for a program: everything but what the dynamic linker needs.
    tool(
        "strip",
        &["--strip-unneeded", "--remove-section=.comment", b],
    );
    let sections = tool("readelf", &["-SW", b]);
    assert!(!sections.contains(".symtab") && !sections.contains(".debug_info"));
    text_offset_is_address(&binary);
    let mut functions = BTreeMap::new();
    for l in tool("nm", &["-S", built.to_str().unwrap()]).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 4 && (f[2] == "t" || f[2] == "T") {
            let addr = u64::from_str_radix(f[0], 16).unwrap();
            let size = u64::from_str_radix(f[1], 16).unwrap();
            functions.insert(f[3].to_string(), (addr, size));
        }
    }
    let notes = tool("readelf", &["-n", b]);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("build-id note")
        .to_string();
    Stripped {
        dir,
        binary,
        debug,
        functions,
        build_id,
    }
}

impl Stripped {
    pub fn frame(&self, function: &str) -> String {
        format!("distro_demo+0x{:x}", self.functions[function].0)
    }
}

#[test]
fn stripped_static_functions_are_one_frame_each_named_by_their_start() {
    require!(Need::SystemWide);
    let _g = serial();
    let s = stripped_demo();
    let bin = s.binary.to_str().unwrap().to_string();
    let out = run_psample(&["record", "-F", "499", "--", &bin, "-s", "2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let folded = parse_folded(&out.folded);

    // Every frame in the stripped binary is a function start: no per-address siblings.
    let starts: BTreeSet<String> = s.functions.keys().map(|f| s.frame(f)).collect();
    let ours: BTreeSet<&str> = folded
        .keys()
        .flat_map(|k| k.split(';'))
        .filter(|f| f.starts_with("distro_demo+0x"))
        .collect();
    let stray: Vec<&&str> = ours.iter().filter(|f| !starts.contains(**f)).collect();
    assert!(
        stray.is_empty(),
        "frames not at a function start: {stray:?}"
    );
    let path = format!(
        "{};{};{}",
        s.frame("main"),
        s.frame("demo_round"),
        s.frame("demo_alpha")
    );
    let alpha: u64 = folded
        .iter()
        .filter(|(k, _)| k.contains(&path))
        .map(|(_, c)| c)
        .sum();
    let beta = count_with(&folded, &s.frame("demo_beta"));
    let total: u64 = folded.values().sum();
    assert!(
        alpha * 2 >= total && beta > 0 && alpha > beta,
        "main;demo_round;demo_alpha {alpha}, demo_beta {beta} of {total}:\n{}",
        out.folded
    );
}

/// (address, mapping id, function name) of one pprof location.
type RawLocation = (u64, u64, String);

/// `go tool pprof -raw`: every location, and each mapping's (start, file offset) by id.
fn pprof_raw(file: &Path) -> (Vec<RawLocation>, BTreeMap<u64, (u64, u64)>) {
    let raw = tool("go", &["tool", "pprof", "-raw", file.to_str().unwrap()]);
    let mut locations = Vec::new();
    let mut mappings = BTreeMap::new();
    let mut section = "";
    for l in raw.lines() {
        match l.trim() {
            "Locations" | "Mappings" => section = l.trim(),
            t if section == "Locations" => {
                // "3: 0x563acb5da374 M=1 dd+0x1110 :0 s=0"
                let f: Vec<&str> = t.split_whitespace().collect();
                if let (Some(addr), Some(m), Some(name)) = (
                    f.get(1).and_then(|a| a.strip_prefix("0x")),
                    f.get(2).and_then(|m| m.strip_prefix("M=")),
                    f.get(3),
                ) {
                    locations.push((
                        u64::from_str_radix(addr, 16).unwrap(),
                        m.parse().unwrap(),
                        name.to_string(),
                    ));
                }
            }
            t if section == "Mappings" => {
                // "1: 0x563acb5da000/0x563acb5db000/0x1000 /tmp/x/distro_demo ID [FN]"
                let f: Vec<&str> = t.split_whitespace().collect();
                if let (Some(id), Some(range)) = (f.first(), f.get(1)) {
                    let r: Vec<u64> = range
                        .split('/')
                        .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap())
                        .collect();
                    mappings.insert(id.trim_end_matches(':').parse().unwrap(), (r[0], r[2]));
                }
            }
            _ => {}
        }
    }
    (locations, mappings)
}

#[test]
fn pprof_keeps_exact_addresses_of_unnamed_functions() {
    require!(Need::SystemWide);
    let _g = serial();
    let s = stripped_demo();
    let bin = s.binary.to_str().unwrap().to_string();
    let out_file = s.dir.path().join("out.pb.gz");
    let o = Command::new(psample())
        .args(["record", "-F", "499", "-o"])
        .arg(&out_file)
        .args(["--", &bin, "-s", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (locations, mappings) = pprof_raw(&out_file);
    let mut by_function: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (addr, m, name) in &locations {
        let Some(function) = s.functions.keys().find(|f| s.frame(f) == *name) else {
            continue;
        };
        let (start, pgoff) = mappings[m];
        let offset = addr - start + pgoff;
        let (fstart, size) = s.functions[function];
        assert!(
            (fstart..fstart + size).contains(&offset),
            "location 0x{addr:x} (offset 0x{offset:x}) is named {name} but lies outside \
             {function} 0x{fstart:x}+0x{size:x}"
        );
        by_function.entry(function).or_default().insert(offset);
    }
    let alpha = by_function.get("demo_alpha").map_or(0, BTreeSet::len);
    assert!(
        alpha >= 2,
        "demo_alpha's samples should keep their distinct addresses: {by_function:?}"
    );
}

// ---------------------------------------------------------------------------------------
// debuginfod
// ---------------------------------------------------------------------------------------

/// A server process the test started; killed (and reaped) when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status code of `GET path` on 127.0.0.1:port, if anything answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// elfutils' debuginfod serving the ELF/DWARF files of `dir`, on loopback, once it has
/// indexed `build_id`.
fn debuginfod_server(dir: &Path, db: &Path, build_id: &str) -> Server {
    let path = format!("/buildid/{build_id}/debuginfo");
    for _attempt in 0..5 {
        let port = free_port();
        let child = Command::new("debuginfod")
            .args(["-F", "-g", "0", "-t", "0", "-p", &port.to_string(), "-d"])
            .arg(db)
            .arg(dir)
            // It would forward misses to the servers the environment names.
            .env_remove("DEBUGINFOD_URLS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("debuginfod is needed (apt-get install debuginfod)");
        let mut server = Server { child, port };
        for _ in 0..300 {
            if http_status(port, &path) == Some(200) {
                return server;
            }
            if server.child.try_wait().ok().flatten().is_some() {
                break; // The port was taken meanwhile: try another.
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        drop(server);
    }
    panic!("debuginfod did not come up serving {path}");
}

/// psample record of the stripped demo with `env` set and DEBUGINFOD_* otherwise unset.
fn record_with(s: &Stripped, env: &[(&str, &str)], extra: &[&str]) -> (Output, f64) {
    let out_file = s.dir.path().join("out.folded");
    let _ = std::fs::remove_file(&out_file);
    let mut cmd = Command::new(psample());
    cmd.args(["record", "-F", "499", "-o"]).arg(&out_file);
    cmd.args(extra);
    cmd.arg("--").arg(&s.binary).args(["-s", "1"]);
    for var in [
        "DEBUGINFOD_URLS",
        "DEBUGINFOD_TIMEOUT",
        "DEBUGINFOD_MAXSIZE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let t0 = std::time::Instant::now();
    let o = cmd.output().expect("run psample");
    let secs = t0.elapsed().as_secs_f64();
    (
        Output {
            status: o.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            folded: std::fs::read_to_string(&out_file).unwrap_or_default(),
        },
        secs,
    )
}

fn summary_line<'a>(stderr: &'a str, key: &str) -> &'a str {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no {key} line in:\n{stderr}"))
}

/// Function names and the inlined helper came from the debug file.
fn named_from_debug_file(out: &Output) {
    let folded = parse_folded(&out.folded);
    assert!(
        count_with(&folded, "demo_alpha") > 0
            && count_with(&folded, "demo_beta") > 0
            && count_with(&folded, "demo_mix_[i]") > 0,
        "names and inline frames from the debug file expected:\n{}\n{}",
        out.folded,
        out.stderr
    );
}

/// Nothing named the static functions: every frame in the binary is a function start.
fn named_by_function_starts(s: &Stripped, out: &Output) {
    assert_eq!(out.status, 0, "{}", out.stderr);
    let starts: BTreeSet<String> = s.functions.keys().map(|f| s.frame(f)).collect();
    let folded = parse_folded(&out.folded);
    assert!(
        count_with(&folded, &s.frame("demo_alpha")) > 0,
        "{}",
        out.folded
    );
    for frame in folded.keys().flat_map(|k| k.split(';')) {
        assert!(
            !frame.starts_with("demo_"),
            "{frame} named without debug info"
        );
        if frame.starts_with("distro_demo+") {
            assert!(starts.contains(frame), "{frame} is not a function start");
        }
    }
}

#[test]
fn debuginfod_names_a_stripped_binary_then_its_cache_does() {
    require!(Need::SystemWide);
    let _g = serial();
    let s = stripped_demo();
    let serve = s.dir.path().join("served");
    std::fs::create_dir(&serve).unwrap();
    std::fs::copy(&s.debug, serve.join("distro_demo.debug")).unwrap();
    let cache = s.dir.path().join("cache");
    let cache_s = cache.to_str().unwrap().to_string();
    let server = debuginfod_server(&serve, &s.dir.path().join("db.sqlite"), &s.build_id);
    let url = format!("http://127.0.0.1:{}", server.port);

    let env = [
        ("DEBUGINFOD_URLS", url.as_str()),
        ("DEBUGINFOD_CACHE_PATH", cache_s.as_str()),
    ];
    let (out, _) = record_with(&s, &env, &[]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    named_from_debug_file(&out);
    let line = summary_line(&out.stderr, "debuginfod");
    assert!(line.starts_with("1 fetched, 0 cached, 0 failed"), "{line}");
    assert!(cache.join(&s.build_id).join("debuginfo").is_file());

    // The server is gone: the cache alone names the frames.
    drop(server);
    let (out, _) = record_with(&s, &env, &[]);
    named_from_debug_file(&out);
    let line = summary_line(&out.stderr, "debuginfod");
    assert!(line.starts_with("0 fetched, 1 cached, 0 failed"), "{line}");

    // --debuginfod off: not even the cache is consulted.
    let (out, _) = record_with(&s, &env, &["--debuginfod", "off"]);
    named_by_function_starts(&s, &out);
    assert!(!out.stderr.contains("debuginfod"), "{}", out.stderr);
}

/// A loopback server that accepts connections and then, per connection, either never
/// answers or answers 200 with `body`. Stops when dropped.
struct FakeServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(body: Option<Vec<u8>>) -> FakeServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        if let Some(body) = &body {
                            let _ = conn.set_nonblocking(false);
                            let mut req = [0u8; 1024];
                            let _ = conn.read(&mut req);
                            let _ = write!(
                                conn,
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = conn.write_all(body);
                        } else {
                            held.push(conn); // Never answered.
                        }
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        FakeServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_hanging_or_lying_debuginfod_costs_at_most_the_deadline_and_changes_nothing() {
    require!(Need::SystemWide);
    let _g = serial();
    let s = stripped_demo();
    let cache = s.dir.path().join("cache");
    let cache_s = cache.to_str().unwrap().to_string();

    // Hangs after accepting. Its transfer timeout is far beyond the 2 s deadline: only the
    // deadline can end the wait.
    let hang = FakeServer::start(None);
    let url = format!("http://127.0.0.1:{}", hang.port);
    let env = [
        ("DEBUGINFOD_URLS", url.as_str()),
        ("DEBUGINFOD_CACHE_PATH", cache_s.as_str()),
        ("DEBUGINFOD_TIMEOUT", "600"),
    ];
    let (out, secs) = record_with(&s, &env, &["--debuginfod-deadline", "2s"]);
    named_by_function_starts(&s, &out);
    let line = summary_line(&out.stderr, "debuginfod");
    assert!(line.starts_with("0 fetched, 0 cached, 1 failed"), "{line}");
    // 1 s of workload + 2 s of deadline; the bound is loose for loaded machines, but far
    // below the 600 s the transfer timeout alone would allow.
    assert!(secs < 60.0, "took {secs:.1} s with a 2 s deadline");
    drop(hang);

    // Answers 200 with something that is not the debug file.
    let liar = FakeServer::start(Some(b"\x7fELF but not really a debug file".repeat(100)));
    let url = format!("http://127.0.0.1:{}", liar.port);
    let env = [
        ("DEBUGINFOD_URLS", url.as_str()),
        ("DEBUGINFOD_CACHE_PATH", cache_s.as_str()),
    ];
    let (out, _) = record_with(&s, &env, &[]);
    named_by_function_starts(&s, &out);
    let line = summary_line(&out.stderr, "debuginfod");
    assert!(
        line.starts_with("0 fetched, 0 cached, 1 failed") && line.contains("build-id"),
        "{line}"
    );
    // Nothing unverified entered the cache, and no temporary file was left.
    let entry = cache.join(&s.build_id);
    let left: Vec<_> = std::fs::read_dir(&entry)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cache holds {left:?}");
}

#[test]
fn debuginfod_over_https_with_the_systems_trust_store() {
    require!(Need::SystemWide);
    let _g = serial();
    let s = stripped_demo();
    let tls = s.dir.path().join("tls");
    let www = tls.join("www");
    let served = www.join("buildid").join(&s.build_id);
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(&s.debug, served.join("debuginfo")).unwrap();
    let certs = TestTls::new(&tls);
    let (ca_pem, leaf_pem, leaf_key) = (
        certs.ca_pem.to_str().unwrap().to_string(),
        certs.leaf_pem.to_str().unwrap().to_string(),
        certs.leaf_key.to_str().unwrap().to_string(),
    );
    let mut server = None;
    for _attempt in 0..5 {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", &leaf_pem, "-key", &leaf_key])
            .current_dir(&www)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        let mut srv = Server { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                server = Some(srv);
                break;
            }
            if srv.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if server.is_some() {
            break;
        }
    }
    let server = server.expect("openssl s_server did not start");
    let url = format!("https://127.0.0.1:{}", server.port);
    let cache = s.dir.path().join("cache");
    let cache_s = cache.to_str().unwrap().to_string();

    // Not trusted by the system: refused, frames stay unnamed.
    let env = [
        ("DEBUGINFOD_URLS", url.as_str()),
        ("DEBUGINFOD_CACHE_PATH", cache_s.as_str()),
    ];
    let (out, _) = record_with(&s, &env, &[]);
    named_by_function_starts(&s, &out);
    assert!(summary_line(&out.stderr, "debuginfod").contains("1 failed"));

    // Trusted through SSL_CERT_FILE, as a company CA in the system store would be.
    let env = [
        ("DEBUGINFOD_URLS", url.as_str()),
        ("DEBUGINFOD_CACHE_PATH", cache_s.as_str()),
        ("SSL_CERT_FILE", ca_pem.as_str()),
    ];
    let (out, _) = record_with(&s, &env, &[]);
    named_from_debug_file(&out);
    let line = summary_line(&out.stderr, "debuginfod");
    assert!(line.starts_with("1 fetched"), "{line}");
}
