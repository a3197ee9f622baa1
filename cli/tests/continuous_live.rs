//! Continuous mode on real processes: one file per interval, retention, re-attaching after
//! a restart (--comm), pushing to a Pyroscope-style listener, and diffing two recordings.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use support::*;

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

fn total(path: &Path) -> u64 {
    collect::output::input::load_folded(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(|l| l.1)
        .sum()
}

/// The interval length a pprof file says it covers (its `duration_nanos`).
fn pprof_duration(path: &Path) -> std::time::Duration {
    let bytes = std::fs::read(path).unwrap();
    let p = collect::output::pprof::Profile::read(&bytes, 64 << 20)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::time::Duration::from_nanos(p.duration_nanos.max(0) as u64)
}

#[test]
fn one_file_per_interval_newest_kept() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let pid = w.pid.to_string();
    let o = Command::new(psample())
        .args([
            "record", "-F", "199", "-p", &pid, "-d", "5", "--every", "1s", "--keep", "2",
        ])
        .arg("--out-dir")
        .arg(dir.path())
        .args(["--format", "pprof"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // About 5 intervals; fewer when the first symbolization is slow on a loaded machine
    // (its time is sampled into the next interval, not lost).
    let written: usize = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("intervals")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no interval count in\n{stderr}"));
    assert!(written >= 3, "{stderr}");
    let samples = summary_number(&stderr, "samples").unwrap() as u64;
    let kept = files(dir.path(), ".pb.gz");
    assert_eq!(kept.len(), 2, "{kept:?}");
    // psample-record-KEY-RUN-SEQ-STAMP.pb.gz: the last two intervals of run 1.
    let seqs: Vec<u64> = kept
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let parts: Vec<&str> = name.split('-').collect();
            assert_eq!(
                (parts[0], parts[1], parts[3]),
                ("psample", "record", "0001"),
                "{name}"
            );
            parts[4].parse().unwrap()
        })
        .collect();
    assert_eq!(seqs, [written as u64 - 1, written as u64], "{kept:?}");
    // The older kept file is a whole interval, not the partial last one: its recorded
    // length is at least --every (an interval ends at the first check after it is due).
    // That is what it is written with, whatever CPU the workload got; how many samples a
    // starved thread yields in it is not (14 at 199 Hz with `stress-ng --cpu 2`), so the
    // samples only have to show the busy thread was seen.
    let older = pprof_duration(&kept[0]);
    assert!(
        older >= std::time::Duration::from_secs(1),
        "{}: {older:?}",
        kept[0].display()
    );
    assert!(total(&kept[0]) > 0, "{}", kept[0].display());
    assert!(kept.iter().map(|f| total(f)).sum::<u64>() <= samples);
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Lines of a child's stderr, collected by a thread as they come.
fn collect_lines(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut t = t.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

#[test]
fn comm_target_is_reattached_after_restart() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // Two different programs under one private name (so no other process matches --comm):
    // what each interval file holds shows which run of the target it saw.
    let copy = |workload_name: &str, sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        let bin = d.join("psrestart");
        std::fs::copy(workload(workload_name), &bin).unwrap();
        bin
    };
    let (first_bin, second_bin) = (copy("cpu_split_fp", "a"), copy("syscall_heavy", "b"));
    let spawn = |bin: &Path| {
        let child = Command::new(bin)
            .args(["-s", "0"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Running {
            pid: child.id(),
            child,
        }
    };
    let out = dir.path().join("out");
    let mut ps = Command::new(psample())
        .args([
            "record",
            "-F",
            "199",
            "--comm",
            "psrestart",
            "--every",
            "1s",
        ])
        .arg("--out-dir")
        .arg(&out)
        .args(["--format", "folded"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillGuard(Some(ps.id()));
    let stderr = collect_lines(ps.stderr.take().unwrap());
    let has_frame = |frame: &str| {
        out.is_dir()
            && files(&out, ".folded")
                .iter()
                .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(frame)))
    };
    // Each step waits for what it needs, not for a time.
    let first = spawn(&first_bin);
    wait_until_sampling(ps.id());
    wait_for_cpu(first.pid, 0.5);
    drop(first);
    wait_until("psample to notice the exit", || {
        stderr.lock().unwrap().contains("re-attaching")
    });
    let second = spawn(&second_bin);
    wait_until("an interval of the restarted target", || {
        has_frame("syscall_loop")
    });
    sigint(ps.id());
    let status = ps.wait().unwrap();
    guard.defuse();
    drop(second);
    let stderr = stderr.lock().unwrap().clone();
    assert!(status.success(), "{stderr}");
    let written = files(&out, ".folded");
    let texts: Vec<String> = written
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // Samples before the restart and after it, in different files, in that order.
    let before = texts.iter().rposition(|t| t.contains("hot_a"));
    let after = texts.iter().position(|t| t.contains("syscall_loop"));
    assert!(
        matches!((before, after), (Some(b), Some(a)) if b < a),
        "files: {written:?}\n{texts:?}"
    );
    assert!(texts
        .iter()
        .all(|t| !(t.contains("hot_a") && t.contains("syscall_loop"))));
}

/// A Pyroscope-like listener: answers 503 to the first request, 200 afterwards, and keeps
/// each request (head, body).
/// (request head, body) of every request received.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn listener() -> (String, Requests) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let got: Requests = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            // Header names are case-insensitive (HTTP/1.1 clients may send them lower case).
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then_some(v)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let status = if n == 0 { "503 Busy" } else { "200 OK" };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            g.lock().unwrap().push((head, body));
        }
    });
    (url, got)
}

#[test]
fn intervals_are_pushed_and_failures_retried() {
    require!(Need::SystemWide);
    let _g = serial();
    let (url, got) = listener();
    // Credentials in the URL become basic auth (and stay out of the request line).
    let url = url.replace("http://", "http://alice:s%40cret@");
    let w = start("cpu_split_fp", &["-s", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let pid = w.pid.to_string();
    let t0 = std::time::Instant::now();
    let o = Command::new(psample())
        .args(["record", "-F", "99", "-p", &pid, "-d", "3", "--every", "1s"])
        .arg("--out-dir")
        .arg(dir.path())
        .args(["--push", &url, "--push-name", "shop{env=test}"])
        .args([
            "--label",
            "team=perf",
            "--push-header",
            "X-Scope-OrgID=tenant-1",
        ])
        .output()
        .unwrap();
    let ran = t0.elapsed().as_secs() + 1;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let reqs = got.lock().unwrap().clone();
    // Every interval, the first one twice (503, then 200 on the retry).
    assert!(reqs.len() >= 3, "{stderr}\n{reqs:?}");
    assert_eq!(reqs[0].1, reqs[1].1, "the retry resends the same interval");
    let expect = format!(
        "{} delivered, 1 retry, 0 failed after 5 attempts, 0 dropped (queue full), 0 undelivered",
        reqs.len() - 1
    );
    assert!(stderr.contains(&expect), "want {expect:?} in\n{stderr}");
    for (head, body) in &reqs {
        let line = head.lines().next().unwrap();
        assert!(
            line.starts_with("POST /ingest?name=shop%7Benv%3Dtest%2Cteam%3Dperf%7D&from="),
            "{line}"
        );
        let lower = head.to_ascii_lowercase();
        // base64("alice:s@cret")
        assert!(
            lower.contains("authorization: basic ywxpy2u6c0bjcmv0\r\n"),
            "{head}"
        );
        assert!(lower.contains("x-scope-orgid: tenant-1\r\n"), "{head}");
        assert!(!head.contains("cret"), "{head}");
        assert!(line.contains("&format=folded") && line.contains("&sampleRate=99"));
        let q: std::collections::HashMap<&str, &str> = line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .split_once('?')
            .unwrap()
            .1
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let (from, until): (u64, u64) = (q["from"].parse().unwrap(), q["until"].parse().unwrap());
        // Whole seconds; on a loaded machine an interval can run late (the first
        // symbolization is slow), but none is longer than the run.
        assert!(until > from && until - from <= ran, "{line} (ran {ran} s)");
        assert!(head
            .to_ascii_lowercase()
            .contains("content-type: text/plain"));
        let text = String::from_utf8(body.clone()).unwrap();
        let folded = parse_folded(&text);
        assert!(
            folded.keys().all(|k| k.starts_with("cpu_split_fp;")),
            "{text}"
        );
    }
}

/// A server that is down the whole run: nothing is delivered, and the summary (text and
/// JSON) says so instead of "0 failed, 0 dropped".
#[test]
fn pushes_to_a_server_that_is_down_are_reported_undelivered() {
    require!(Need::SystemWide);
    let _g = serial();
    // A port that was just free: connections are refused.
    let url = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let w = start("cpu_split_fp", &["-s", "30"]);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let o = Command::new(psample())
        .args([
            "record",
            "-F",
            "99",
            "-p",
            &w.pid.to_string(),
            "-d",
            "2",
            "--every",
            "1s",
        ])
        .arg("--out-dir")
        .arg(dir.path().join("out"))
        .args(["--push", &url, "--summary-json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = &doc["sessions"][0];
    let written = s["intervals"]["written"].as_u64().unwrap();
    let push = &s["push"];
    assert!(written >= 1, "{s}");
    assert_eq!(push["delivered"], 0, "{push}");
    let lost = ["failed", "dropped_queue_full", "undelivered_at_exit"]
        .iter()
        .map(|k| push[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(lost, written, "every interval is accounted for: {push}");
    assert!(
        push["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{push}"
    );
    let warning = format!("--push: {written} of {written} intervals were not delivered");
    assert!(stderr.contains(&warning), "want {warning:?} in\n{stderr}");
    assert!(stderr.contains("0 delivered"), "{stderr}");
}

/// A Pyroscope-like HTTPS server in Python: answers 200 to every POST and logs each
/// request's line and headers, one JSON object a line.
const HTTPS_SERVER: &str = r#"
import http.server, json, ssl, sys
port_file, cert, key, log = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
open(port_file + ".tmp", "w").write(str(srv.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
"#;

/// `--push https://...` trusts the system's CA store (here SSL_CERT_FILE naming the test's
/// CA), sends basic auth and the headers over TLS; without the CA it delivers nothing.
#[test]
fn intervals_are_pushed_over_https() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let tls = TestTls::new(&dir.path().join("tls"));
    let (port_file, log) = (dir.path().join("port"), dir.path().join("requests"));
    let server = Command::new("python3")
        .args(["-c", HTTPS_SERVER])
        .args([&port_file, &tls.leaf_pem, &tls.leaf_key, &log])
        .spawn()
        .expect("python3");
    let _server = Running {
        pid: server.id(),
        child: server,
    };
    wait_until("the HTTPS server", || port_file.exists());
    let port = std::fs::read_to_string(&port_file).unwrap();
    let url = format!("https://alice:secret@127.0.0.1:{port}");
    let w = start("cpu_split_fp", &["-s", "30"]);
    let push = |ca: Option<&Path>| {
        let mut c = Command::new(psample());
        c.args(["record", "-F", "99", "-p", &w.pid.to_string(), "-d", "2"])
            .args(["--every", "1s", "--out-dir"])
            .arg(dir.path().join("out"))
            .args(["--push", &url, "--push-header", "X-Scope-OrgID=tenant-1"])
            .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => c.env("SSL_CERT_FILE", ca),
            None => c.env("SSL_CERT_FILE", "/nonexistent"),
        };
        let o = c.output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let stderr = push(Some(&tls.ca_pem));
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    let reqs: Vec<serde_json::Value> = requests
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!reqs.is_empty(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} delivered, 0 retries, 0 failed", reqs.len())),
        "{stderr}"
    );
    for r in &reqs {
        assert!(r["path"]
            .as_str()
            .unwrap()
            .starts_with("/ingest?name=psample.record"));
        let h = &r["headers"];
        // base64("alice:secret")
        assert_eq!(h["authorization"], "Basic YWxpY2U6c2VjcmV0", "{r}");
        assert_eq!(h["x-scope-orgid"], "tenant-1", "{r}");
    }
    // An unknown CA: refused, nothing delivered, and the summary says so.
    let stderr = push(None);
    assert!(stderr.contains("0 delivered"), "{stderr}");
    assert!(stderr.contains("were not delivered"), "{stderr}");
    let after = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        after.lines().count(),
        reqs.len(),
        "nothing more reached the server"
    );
}

const CHANGED: &str = r#"
#include <stdio.h>
#include <time.h>
static volatile unsigned long sink;
__attribute__((noinline)) void old_hot(void) { for (int i = 0; i < 100000; i++) sink += i; }
__attribute__((noinline)) void new_hot(void) { for (int i = 0; i < 100000; i++) sink ^= i; }
/* 1.2 s of CPU time, not of wall time: both versions get the same number of samples however
 * loaded the machine is, so the diff compares like with like. */
int main(void) {
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    do {
#ifdef NEW
        new_hot();
#else
        old_hot();
#endif
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    } while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 1200000000L);
    return 0;
}
"#;

#[test]
fn diff_of_a_changed_hot_path_highlights_it() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("changed.c");
    std::fs::write(&src, CHANGED).unwrap();
    let build = |name: &str, def: &[&str]| {
        let out = dir.path().join(name);
        let st = Command::new("gcc")
            .args(["-O1", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .args(def)
            .arg(&src)
            .status()
            .expect("gcc");
        assert!(st.success());
        out
    };
    // Same program name both times, as a deploy would have it.
    let v1 = build("v1", &[]);
    let v2 = build("v2", &["-DNEW"]);
    let app = dir.path().join("app");
    let rec = |bin: &Path, out: &str| -> PathBuf {
        std::fs::copy(bin, &app).unwrap();
        let out = dir.path().join(out);
        let o = Command::new(psample())
            .args(["record", "-F", "499", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&app)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let before = rec(&v1, "before.folded");
    let after = rec(&v2, "after.pb.gz");
    let svg = dir.path().join("diff.svg");
    let o = Command::new(psample())
        .arg("diff")
        .arg(&before)
        .arg(&after)
        .arg("-o")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    let i = text.find("<title>new_hot (").expect("new_hot in the diff");
    let rest = &text[i..];
    let fill = &rest[rest.find("fill=\"rgb(").unwrap() + 10..];
    let rgb: Vec<u32> = fill
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    assert!(
        rgb[0] > 200 && rgb[1] < 150,
        "new_hot should be red: {rgb:?}"
    );
    // The title says how much it grew: +N samples (+%).
    assert!(rest[..300].contains("+"), "{}", &rest[..300]);

    // And report reads the pprof file.
    let o = Command::new(psample())
        .args(["report", "--top", "3"])
        .arg(&after)
        .output()
        .unwrap();
    let rep = String::from_utf8_lossy(&o.stdout);
    assert!(
        rep.split("top functions by self time:")
            .nth(1)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("new_hot"),
        "{rep}"
    );
}

#[test]
fn offcpu_intervals_split_blocked_time_without_double_counting() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("sleep_pipe", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pid = w.pid.to_string();
    let o = Command::new(psample())
        .args([
            "offcpu", "-p", &pid, "-d", "4", "--every", "1s", "--format", "folded",
        ])
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let written = files(dir.path(), ".folded");
    assert!(written.len() >= 3, "{written:?}\n{stderr}");
    let threads = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .count() as u64;
    let per_file: Vec<u64> = written.iter().map(|f| total(f)).collect();
    // Blocked time is wall time per thread at most: across all files, no more than the run
    // (plus the slack of an interval spanning the start) for each thread.
    let sum: u64 = per_file.iter().sum();
    assert!(sum > 1_000_000, "blocked us per file: {per_file:?}");
    assert!(
        sum <= threads * 4_600_000,
        "blocked us per file: {per_file:?} ({threads} threads)"
    );
    assert!(
        per_file[1] > 200_000,
        "a whole interval of a sleeping workload: {per_file:?}"
    );
}

/// `wall --every 1s` in pprof: every interval file reads back (three values) with each line
/// ending in its kind, and a worker's kinds of time over all files add up to the run, with
/// no interval counted twice.
#[test]
fn wall_intervals_add_up_to_the_run() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("wall_split", &["-s", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let pid = w.pid.to_string();
    let o = Command::new(psample())
        .args([
            "wall", "-p", &pid, "-d", "3", "--every", "1s", "--format", "pprof",
        ])
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let written = files(dir.path(), ".pb.gz");
    assert!(written.len() >= 3, "{written:?}\n{stderr}");
    let mut per_file = Vec::new();
    for f in &written {
        let lines = collect::output::input::load_folded(f).unwrap();
        let mut worker = [0u64; 3];
        for (stack, ns) in &lines {
            let i = match stack.rsplit(';').next().unwrap() {
                "[on-cpu]" => 0,
                "[off-cpu]" => 1,
                "[runnable]" => 2,
                other => panic!("{}: a line ends in {other}", f.display()),
            };
            if stack.starts_with("wall_w0;") {
                worker[i] += ns;
            }
        }
        per_file.push(worker);
    }
    let sum: u64 = per_file.iter().flatten().sum();
    assert!(
        (sum as f64 - 3e9).abs() <= 0.05 * 3e9,
        "wall_w0's time per file (on, off, runnable ns): {per_file:?}\n{stderr}"
    );
    assert!(per_file.iter().take(2).all(|k| k[0] > 0 && k[1] > 0));
}
