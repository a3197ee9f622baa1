//! `--push URL`: upload each interval's profile to a Pyroscope-compatible ingest endpoint
//! (`POST /ingest?name=..&from=..&until=..&format=folded|pprof`).
//!
//! Plain HTTP/1.1 over a std `TcpStream`: no TLS (put a local agent or proxy in front for
//! HTTPS). Uploads run on a background thread fed through a bounded queue: sampling never
//! waits for the network; when the server is down, intervals are retried with exponential
//! backoff and, once the queue is full, new ones are dropped and counted.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::output::Format;

/// Intervals waiting for upload; beyond this, new ones are dropped.
pub const QUEUE: usize = 8;
/// Attempts per interval before giving up on it.
pub const ATTEMPTS: u32 = 5;

/// `http://host[:port][/prefix]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix before `/ingest`.
    pub prefix: String,
}

impl Endpoint {
    /// Parse `http://HOST[:PORT][/PREFIX]`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = match url.strip_prefix("http://") {
            Some(r) => r,
            None if url.starts_with("https://") => {
                return Err("--push supports plain http:// only (no TLS); use a local \
                            agent or proxy for HTTPS"
                    .into())
            }
            None => return Err(format!("--push {url:?}: expected http://HOST[:PORT]")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("--push: credentials in the URL are not supported".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("--push: bad port {p:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("--push {url:?}: no host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One upload.
pub struct Upload {
    /// The profile file's bytes.
    pub body: Vec<u8>,
    /// Start of the interval.
    pub from: SystemTime,
    /// End of the interval.
    pub until: SystemTime,
}

/// The request line target and headers for an upload (split out to be testable).
pub fn request(ep: &Endpoint, name: &str, format: Format, rate: u64, up: &Upload) -> Vec<u8> {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (fmt, ctype) = match format {
        Format::Pprof => ("pprof", "application/octet-stream"),
        _ => ("folded", "text/plain"),
    };
    let mut target = format!(
        "{}/ingest?name={}&from={}&until={}&format={fmt}&spyName=psample&aggregationType=sum",
        ep.prefix,
        percent_encode(name),
        secs(up.from),
        secs(up.until).max(secs(up.from) + 1),
    );
    if rate > 0 {
        target.push_str(&format!("&sampleRate={rate}&units=samples"));
    }
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: psample/{}\r\n\
         Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ep.host,
        ep.port,
        env!("CARGO_PKG_VERSION"),
        up.body.len()
    )
    .into_bytes();
    req.extend_from_slice(&up.body);
    req
}

fn send(ep: &Endpoint, req: &[u8]) -> Result<(), String> {
    let addr = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", ep.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", ep.host))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(req).map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("reading the reply: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let code = line.split_whitespace().nth(1).unwrap_or("");
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(format!(
            "server answered {:?}",
            line.lines().next().unwrap_or("")
        ))
    }
}

#[derive(Default)]
struct Stats {
    /// Queued or being sent.
    pending: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

/// Background uploader.
pub struct Pusher {
    tx: Option<SyncSender<Upload>>,
    stats: Arc<Stats>,
    rate: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Pusher {
    /// Start the upload thread for `url` under application name `name`.
    pub fn start(url: &str, name: &str, format: Format, _command: &str) -> Result<Pusher, String> {
        Self::start_with_backoff(url, name, format, Duration::from_secs(1))
    }

    /// `first_backoff` doubles after every failed attempt (tests use a short one).
    pub fn start_with_backoff(
        url: &str,
        name: &str,
        format: Format,
        first_backoff: Duration,
    ) -> Result<Pusher, String> {
        let ep = Endpoint::parse(url)?;
        let (tx, rx) = sync_channel::<Upload>(QUEUE);
        let stats = Arc::new(Stats::default());
        let rate = Arc::new(AtomicU64::new(0));
        let (st, rt, name) = (stats.clone(), rate.clone(), name.to_string());
        let thread = std::thread::Builder::new()
            .name("psample-push".into())
            .spawn(move || worker(rx, ep, name, format, rt, st, first_backoff))
            .map_err(|e| format!("cannot start the push thread: {e}"))?;
        Ok(Pusher {
            tx: Some(tx),
            stats,
            rate,
            thread: Some(thread),
        })
    }

    /// Samples per second, sent as `sampleRate` (record); 0 leaves it out (offcpu).
    pub fn set_sample_rate(&self, hz: u64) {
        self.rate.store(hz, Ordering::Relaxed);
    }

    /// Queue an interval; never blocks.
    pub fn submit(&self, body: Vec<u8>, from: SystemTime, until: SystemTime) {
        let Some(tx) = &self.tx else { return };
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Upload { body, from, until }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.pending.fetch_sub(1, Ordering::Relaxed);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Uploads done, retried and dropped, for the summary.
    pub fn describe(&self) -> String {
        let s = &self.stats;
        format!(
            "{} sent, {} retries, {} failed, {} dropped (queue full)",
            s.sent.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed)
        )
    }

    /// Wait up to `grace` for everything queued to be sent or given up (the end of a
    /// session, so its summary shows the outcome). Sampling is over by then.
    pub fn wait_idle(&self, grace: Duration) {
        let deadline = std::time::Instant::now() + grace;
        while self.stats.pending.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop accepting intervals and give queued ones up to `grace` to go out.
    pub fn finish(&mut self, grace: Duration) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + grace;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(3));
    }
}

fn worker(
    rx: Receiver<Upload>,
    ep: Endpoint,
    name: String,
    format: Format,
    rate: Arc<AtomicU64>,
    stats: Arc<Stats>,
    first_backoff: Duration,
) {
    let mut last_error = String::new();
    while let Ok(up) = rx.recv() {
        let req = request(&ep, &name, format, rate.load(Ordering::Relaxed), &up);
        let mut backoff = first_backoff;
        let mut ok = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            match send(&ep, &req) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => {
                    if e != last_error {
                        crate::errln!("psample: --push: {e}");
                        last_error = e;
                    }
                }
            }
        }
        if ok {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            last_error.clear();
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_refuse_what_we_cannot_do() {
        assert_eq!(
            Endpoint::parse("http://pyro:4040").unwrap(),
            Endpoint {
                host: "pyro".into(),
                port: 4040,
                prefix: String::new()
            }
        );
        assert_eq!(Endpoint::parse("http://h/base/").unwrap().prefix, "/base");
        assert_eq!(Endpoint::parse("http://h").unwrap().port, 80);
        assert!(Endpoint::parse("https://h").unwrap_err().contains("TLS"));
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("http://:1").is_err());
        assert!(Endpoint::parse("http://u:p@h").is_err());
        assert!(Endpoint::parse("http://h:99999").is_err());
    }

    #[test]
    fn request_carries_name_times_format_and_body() {
        let ep = Endpoint::parse("http://127.0.0.1:4040").unwrap();
        let up = Upload {
            body: b"a;b 3\n".to_vec(),
            from: UNIX_EPOCH + Duration::from_secs(100),
            until: UNIX_EPOCH + Duration::from_secs(110),
        };
        let r = String::from_utf8(request(&ep, "my app{env=x}", Format::Folded, 99, &up)).unwrap();
        assert!(r.starts_with(
            "POST /ingest?name=my%20app%7Benv%3Dx%7D&from=100&until=110&format=folded&"
        ));
        assert!(r.contains("sampleRate=99"));
        assert!(r.contains("Content-Length: 6\r\n"));
        assert!(r.ends_with("\r\n\r\na;b 3\n"));
    }
}
