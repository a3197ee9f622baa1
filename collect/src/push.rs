//! `--push URL`: upload each interval's profile to a Pyroscope-compatible ingest endpoint
//! (`POST /ingest?name=..&from=..&until=..&format=folded|pprof`).
//!
//! HTTP and HTTPS through ureq (blocking, no async runtime) with rustls, trusting the roots
//! the debuginfod client trusts ([`symbolize::tls_roots`]). What the server sees:
//! - the application name in Pyroscope's `name{key=value,…}` form, from `--push-name` and
//!   every `--label` (a label of the same key replaces the name's own);
//! - `--push-header NAME=VALUE` headers (a tenant id such as `X-Scope-OrgID`, a bearer
//!   token) and basic auth from the URL's userinfo (`https://user:secret@host`), never
//!   shown in messages.
//!
//! Uploads run on a background thread fed through a bounded queue: sampling never waits for
//! the network. A failed upload is retried with exponential backoff ([`ATTEMPTS`] in all),
//! then given up; once the queue is full, new intervals are dropped. Every interval ends in
//! exactly one of: delivered, failed, dropped, or undelivered (still queued or being
//! retried when psample stopped waiting for it) — the summary counts each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::output::sample_labels::check_label;
use crate::output::Format;

/// Intervals waiting for upload; beyond this, new ones are dropped.
pub const QUEUE: usize = 8;
/// Attempts per interval before giving up on it.
pub const ATTEMPTS: u32 = 5;
/// Longest one request may take (connect, TLS, send, reply).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What `--push` sends where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// `http[s]://[user:password@]host[:port][/prefix]`.
    pub url: String,
    /// Application name, optionally with Pyroscope labels: `app` or `app{k=v}`.
    pub name: String,
    /// `--label KEY=VALUE`s, added to the name's labels.
    pub labels: Vec<(String, String)>,
    /// `--push-header NAME=VALUE`s, sent with every upload.
    pub headers: Vec<(String, String)>,
}

/// The ingest URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/prefix]/ingest`, without credentials.
    pub ingest: String,
    /// `Basic …` from the URL's userinfo.
    pub authorization: Option<String>,
}

impl Endpoint {
    /// Parse `http[s]://[user[:password]@]HOST[:PORT][/PREFIX]`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| matches!(*s, "http" | "https"))
            .ok_or_else(|| {
                "--push: expected http://HOST[:PORT] or https://HOST[:PORT]".to_string()
            })?;
        if rest.contains(['?', '#']) {
            return Err("--push: the URL may not carry a query or fragment".into());
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        check_host_port(hostport)?;
        let authorization = userinfo.map(basic_auth).transpose()?;
        Ok(Endpoint {
            ingest: format!("{scheme}://{hostport}{}/ingest", path.trim_end_matches('/')),
            authorization,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with a valid port.
fn check_host_port(hostport: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("--push: bad address {hostport:?}"))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '%') {
        return Err(format!("--push: bad host {host:?}"));
    }
    if let Some(p) = port {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("--push: bad port {p:?}"))?;
    }
    Ok(())
}

/// `Basic base64(user:password)` from percent-encoded userinfo.
fn basic_auth(userinfo: &str) -> Result<String, String> {
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let plain = format!("{}:{}", percent_decode(user)?, percent_decode(pass)?);
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(plain)
    ))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("--push: bad percent-encoding in the URL's credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "--push: credentials are not UTF-8".into())
}

/// The application name with every label: `app{a=1,b=2}` (Pyroscope's form). Labels in
/// `name` itself come first; a `--label` of the same key replaces one.
pub fn app_name(name: &str, labels: &[(String, String)]) -> Result<String, String> {
    let (base, own) = match name.split_once('{') {
        Some((b, rest)) => {
            let inner = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("--push-name {name:?}: expected NAME{{KEY=VALUE,...}}"))?;
            (b, inner)
        }
        None => (name, ""),
    };
    if base.is_empty() || base.contains(['{', '}', ',', '=']) {
        return Err(format!("--push-name {name:?}: bad application name"));
    }
    let mut all: Vec<(String, String)> = Vec::new();
    for kv in own.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--push-name {name:?}: expected KEY=VALUE in {{}}"))?;
        all.push((k.trim().to_string(), v.trim().to_string()));
    }
    for (k, v) in labels {
        check_label(k, v)?;
        all.retain(|(ok, _)| ok != k);
        all.push((k.clone(), v.clone()));
    }
    if all.is_empty() {
        return Ok(base.to_string());
    }
    let inner: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!("{base}{{{}}}", inner.join(",")))
}

/// `--push-header NAME=VALUE`: an HTTP token name and a value without control characters.
/// The headers psample sets for the upload itself cannot be replaced.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (n, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--push-header {s:?}: expected NAME=VALUE"))?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if n.is_empty() || !n.chars().all(token) {
        return Err(format!("--push-header: {n:?} is not a header name"));
    }
    let own = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
    ];
    if own.contains(&n.to_ascii_lowercase().as_str()) {
        return Err(format!("--push-header: {n} is set by psample"));
    }
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "--push-header {n}: the value has control characters"
        ));
    }
    Ok((n.to_string(), v.to_string()))
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

/// Everything every upload of a run carries.
struct Target {
    ep: Endpoint,
    app: String,
    format: Format,
    headers: Vec<(String, String)>,
    agent: ureq::Agent,
}

impl Target {
    /// POST one interval; `Err` with a short reason (never the credentials).
    fn send(&self, rate: u64, up: &Upload) -> Result<(), String> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let (fmt, ctype) = match self.format {
            Format::Pprof => ("pprof", "application/octet-stream"),
            _ => ("folded", "text/plain"),
        };
        let (from, until) = (secs(up.from), secs(up.until).max(secs(up.from) + 1));
        let mut req = self
            .agent
            .post(&self.ep.ingest)
            .query("name", &self.app)
            .query("from", from.to_string())
            .query("until", until.to_string())
            .query("format", fmt)
            .query("spyName", "psample")
            .query("aggregationType", "sum")
            .header("Content-Type", ctype);
        if rate > 0 {
            req = req
                .query("sampleRate", rate.to_string())
                .query("units", "samples");
        }
        if let Some(a) = &self.ep.authorization {
            req = req.header("Authorization", a);
        }
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        let resp = req.send(&up.body[..]).map_err(|e| short(&e.to_string()))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the server answered HTTP {status}"))
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        // A redirected POST would become a GET: an ingest URL that redirects is a mistake.
        .max_redirects(0)
        // One upload per interval (seconds apart): a pooled connection the server has since
        // closed would only cost a spurious failure.
        .max_idle_connections(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(symbolize::tls_roots())
                .build(),
        )
        .user_agent(concat!("psample/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

#[derive(Default)]
struct Stats {
    /// Queued or being sent.
    pending: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    /// Given up unsent because psample was exiting.
    abandoned: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What happened to the intervals handed to the pusher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Accepted by the server (2xx).
    pub delivered: u64,
    /// Attempts after a first failure.
    pub retries: u64,
    /// Given up after [`ATTEMPTS`] failed attempts.
    pub failed: u64,
    /// Never queued: the queue was full.
    pub dropped: u64,
    /// Still queued or being retried when psample stopped waiting (lost at exit).
    pub undelivered: u64,
    /// The last error the server or network gave.
    pub last_error: Option<String>,
}

impl PushStats {
    /// `2 delivered, 1 retry, 0 failed, 0 dropped (queue full), 1 undelivered at exit (…)`.
    pub fn describe(&self) -> String {
        let mut s =
            format!(
            "{} delivered, {} {}, {} failed after {ATTEMPTS} attempts, {} dropped (queue full), \
             {} undelivered at exit",
            self.delivered,
            self.retries,
            if self.retries == 1 { "retry" } else { "retries" },
            self.failed,
            self.dropped,
            self.undelivered
        );
        if let Some(e) = &self.last_error {
            s.push_str(&format!(" (last error: {e})"));
        }
        s
    }

    /// Everything not delivered.
    pub fn not_delivered(&self) -> u64 {
        self.failed + self.dropped + self.undelivered
    }

    /// As `--summary-json` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "delivered": self.delivered,
            "retries": self.retries,
            "failed": self.failed,
            "dropped_queue_full": self.dropped,
            "undelivered_at_exit": self.undelivered,
            "last_error": self.last_error,
        })
    }
}

/// Background uploader.
pub struct Pusher {
    tx: Option<SyncSender<Upload>>,
    stats: Arc<Stats>,
    rate: Arc<AtomicU64>,
    abandon: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pusher {
    /// Start the upload thread.
    pub fn start(opts: &PushOptions, format: Format) -> Result<Pusher, String> {
        Self::start_with_backoff(opts, format, Duration::from_secs(1))
    }

    /// `first_backoff` doubles after every failed attempt (tests use a short one).
    pub fn start_with_backoff(
        opts: &PushOptions,
        format: Format,
        first_backoff: Duration,
    ) -> Result<Pusher, String> {
        let target = Target {
            ep: Endpoint::parse(&opts.url)?,
            app: app_name(&opts.name, &opts.labels)?,
            format,
            headers: opts.headers.clone(),
            agent: agent(),
        };
        let (tx, rx) = sync_channel::<Upload>(QUEUE);
        let stats = Arc::new(Stats::default());
        let rate = Arc::new(AtomicU64::new(0));
        let abandon = Arc::new(AtomicBool::new(false));
        let w = Worker {
            target,
            stats: stats.clone(),
            rate: rate.clone(),
            abandon: abandon.clone(),
            first_backoff,
        };
        let thread = std::thread::Builder::new()
            .name("psample-push".into())
            .spawn(move || w.run(rx))
            .map_err(|e| format!("cannot start the push thread: {e}"))?;
        Ok(Pusher {
            tx: Some(tx),
            stats,
            rate,
            abandon,
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
        self.stats.pending.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Upload { body, from, until }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.pending.fetch_sub(1, Ordering::SeqCst);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What happened so far: intervals still queued or being retried count as undelivered.
    pub fn stats(&self) -> PushStats {
        let s = &self.stats;
        PushStats {
            delivered: s.delivered.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            undelivered: s.pending.load(Ordering::SeqCst) + s.abandoned.load(Ordering::Relaxed),
            last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Wait up to `grace` for everything queued to be delivered or given up (the end of a
    /// session, so its summary shows the outcome). Sampling is over by then.
    pub fn wait_idle(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.stats.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop accepting intervals and give queued ones up to `grace` to go out; what is left
    /// then is abandoned (and was reported as undelivered).
    pub fn finish(&mut self, grace: Duration) {
        self.tx = None;
        let Some(t) = self.thread.take() else { return };
        let deadline = Instant::now() + grace;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.abandon.store(true, Ordering::SeqCst);
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(3));
    }
}

/// The upload thread's side.
struct Worker {
    target: Target,
    stats: Arc<Stats>,
    rate: Arc<AtomicU64>,
    abandon: Arc<AtomicBool>,
    first_backoff: Duration,
}

impl Worker {
    fn run(self, rx: Receiver<Upload>) {
        let mut said = String::new();
        while let Ok(up) = rx.recv() {
            let delivered = self.deliver(&up, &mut said);
            let counter = match delivered {
                Some(true) => &self.stats.delivered,
                Some(false) => &self.stats.failed,
                None => &self.stats.abandoned,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.stats.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Up to [`ATTEMPTS`] tries: `Some(delivered)`, or `None` when psample is exiting.
    fn deliver(&self, up: &Upload, said: &mut String) -> Option<bool> {
        let mut backoff = self.first_backoff;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                if !self.sleep(backoff) {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            if self.abandon.load(Ordering::SeqCst) {
                return None;
            }
            match self.target.send(self.rate.load(Ordering::Relaxed), up) {
                Ok(()) => {
                    said.clear();
                    return Some(true);
                }
                Err(e) => {
                    if e != *said {
                        crate::errln!("psample: --push: {e}");
                        said.clone_from(&e);
                    }
                    if let Ok(mut l) = self.stats.last_error.lock() {
                        *l = Some(e);
                    }
                }
            }
        }
        Some(false)
    }

    /// Sleep `d` unless psample starts exiting; whether it slept the whole time.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.abandon.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_credentials_kept_out_of_the_url() {
        let e = Endpoint::parse("http://pyro:4040").unwrap();
        assert_eq!(e.ingest, "http://pyro:4040/ingest");
        assert_eq!(e.authorization, None);
        assert_eq!(
            Endpoint::parse("https://h/base/").unwrap().ingest,
            "https://h/base/ingest"
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:4040").unwrap().ingest,
            "http://[::1]:4040/ingest"
        );
        let e = Endpoint::parse("https://alice:s%40cret@grafana.example:443/pyro").unwrap();
        assert_eq!(e.ingest, "https://grafana.example:443/pyro/ingest");
        // base64("alice:s@cret")
        assert_eq!(e.authorization.as_deref(), Some("Basic YWxpY2U6c0BjcmV0"));
        for bad in [
            "ftp://h",
            "http://:1",
            "http://h:99999",
            "http://h:0",
            "pyro:4040",
            "http://h/?x=1",
            "http://u:%zz@h",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_join_the_name_in_pyroscope_form() {
        let l = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(app_name("app", &[]).unwrap(), "app");
        assert_eq!(
            app_name("app", &l(&[("env", "prod"), ("region", "eu")])).unwrap(),
            "app{env=prod,region=eu}"
        );
        assert_eq!(
            app_name("shop{env=test,team=a}", &l(&[("env", "prod")])).unwrap(),
            "shop{team=a,env=prod}"
        );
        assert!(app_name("shop{env=test", &[]).is_err());
        assert!(app_name("", &[]).is_err());
        assert!(app_name("app", &l(&[("pid", "1")])).is_err());
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(
            parse_header("X-Scope-OrgID=tenant-1").unwrap(),
            ("X-Scope-OrgID".to_string(), "tenant-1".to_string())
        );
        assert!(parse_header("Authorization=Bearer abc=").is_ok());
        for bad in [
            "X",
            "=v",
            "Bad Name=v",
            "Content-Length=3",
            "X=a\r\nInjected: 1",
        ] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_summary_counts_every_interval_once() {
        let s = PushStats {
            delivered: 2,
            retries: 1,
            failed: 0,
            dropped: 0,
            undelivered: 1,
            last_error: Some("connection refused".into()),
        };
        assert_eq!(
            s.describe(),
            "2 delivered, 1 retry, 0 failed after 5 attempts, 0 dropped (queue full), \
             1 undelivered at exit (last error: connection refused)"
        );
        assert_eq!(s.not_delivered(), 1);
        assert_eq!(s.to_json()["undelivered_at_exit"], 1);
    }
}
