//! A debuginfod client: debug files (and executables psample cannot read) by build-id from
//! the servers in `DEBUGINFOD_URLS`, as gdb, perf, bpftrace and samply fetch them.
//!
//! Never used unless `DEBUGINFOD_URLS` names a server (and `--debuginfod off` turns it off
//! even then). elfutils' conventions throughout: `URL/buildid/BUILDID/debuginfo` and
//! `/executable`, servers tried in the order given, the shared cache ([`cache`]),
//! `DEBUGINFOD_TIMEOUT` (seconds one transfer may take, default 90) and
//! `DEBUGINFOD_MAXSIZE` (largest file accepted, default 1 GiB here). On top, a deadline for
//! all network work of one run, so a slow or hanging server delays the profile by at most
//! that, and downloads of the modules a profile needs run in parallel ([`Debuginfod::
//! prefetch`]). A downloaded file is used, and cached, only if it is an ELF file with the
//! requested build-id.

mod cache;
mod http;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use object::Object;

use crate::bytes::FileBytes;
use cache::{Cache, Entry};
pub use http::roots as tls_roots;
use http::Fetched;

/// Default for the whole run's network work (`--debuginfod-deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// elfutils' default for DEBUGINFOD_TIMEOUT.
const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(90);
const DEFAULT_MAX_SIZE: u64 = 1 << 30;
/// Downloads at once.
const PARALLEL: usize = 4;
/// Failure reasons kept for the summary.
const MAX_REASONS: usize = 3;

/// Which file of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Debuginfo,
    Executable,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Debuginfo => "debuginfo",
            Kind::Executable => "executable",
        }
    }
}

#[derive(Debug)]
struct Config {
    urls: Vec<String>,
    transfer_timeout: Duration,
    max_size: u64,
    deadline: Duration,
}

/// Outcome per (build-id, kind), so each is looked up once per run.
#[derive(Debug, Clone)]
enum Outcome {
    Cached(PathBuf),
    Fetched(PathBuf),
    Failed,
}

pub(crate) struct Debuginfod {
    config: Config,
    cache: Cache,
    /// When the first request of this run went out; the deadline counts from there.
    started: Mutex<Option<Instant>>,
    outcomes: Mutex<HashMap<(String, Kind), Outcome>>,
    reasons: Mutex<Vec<String>>,
}

impl Debuginfod {
    /// The client `DEBUGINFOD_URLS` asks for, or `None` when it names no server (or no cache
    /// directory can be found).
    pub fn from_env(deadline: Duration) -> Option<Debuginfod> {
        let urls: Vec<String> = std::env::var("DEBUGINFOD_URLS")
            .ok()?
            .split_ascii_whitespace()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        if urls.is_empty() {
            return None;
        }
        let seconds = |var: &str| -> Option<u64> { std::env::var(var).ok()?.trim().parse().ok() };
        let config = Config {
            urls,
            transfer_timeout: seconds("DEBUGINFOD_TIMEOUT")
                .filter(|&s| s > 0)
                .map_or(DEFAULT_TRANSFER_TIMEOUT, Duration::from_secs),
            max_size: seconds("DEBUGINFOD_MAXSIZE")
                .filter(|&s| s > 0)
                .unwrap_or(DEFAULT_MAX_SIZE),
            deadline,
        };
        Some(Debuginfod::with(config, cache::default_root()?))
    }

    fn with(config: Config, cache_root: PathBuf) -> Debuginfod {
        Debuginfod {
            config,
            cache: Cache::new(cache_root),
            started: Mutex::new(None),
            outcomes: Mutex::new(HashMap::new()),
            reasons: Mutex::new(Vec::new()),
        }
    }

    /// The verified file of `kind` for `build_id`: from the cache, else downloaded (within
    /// the run's deadline). `None` when no server has it or it could not be had in time.
    pub fn find(&self, build_id: &[u8], kind: Kind) -> Option<(PathBuf, FileBytes)> {
        let hex = hex(build_id)?;
        let path = match self.outcome(&hex, kind) {
            Outcome::Cached(p) | Outcome::Fetched(p) => p,
            Outcome::Failed => return None,
        };
        let data = open_verified(&path, build_id)?;
        Some((path, data))
    }

    /// Downloads, in parallel, the files of `wanted` that are not cached yet, so the
    /// [`Self::find`] calls that follow are cache hits.
    pub fn prefetch(&self, wanted: &[(Vec<u8>, Kind)]) {
        let queue: Mutex<Vec<(String, Kind)>> = Mutex::new(
            wanted
                .iter()
                .filter_map(|(id, kind)| Some((hex(id)?, *kind)))
                .collect(),
        );
        let workers = PARALLEL.min(queue.lock().map_or(0, |q| q.len()));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((hex, kind)) = next else { break };
                    self.outcome(&hex, kind);
                });
            }
        });
    }

    /// `fetched N, cached N, failed N` and the first reasons, if anything was looked up.
    pub fn summary(&self) -> Option<String> {
        let outcomes = self.outcomes.lock().ok()?;
        if outcomes.is_empty() {
            return None;
        }
        let count = |f: fn(&Outcome) -> bool| outcomes.values().filter(|o| f(o)).count();
        let mut line = format!(
            "{} fetched, {} cached, {} failed ({})",
            count(|o| matches!(o, Outcome::Fetched(_))),
            count(|o| matches!(o, Outcome::Cached(_))),
            count(|o| matches!(o, Outcome::Failed)),
            self.config.urls.join(" ")
        );
        if let Ok(reasons) = self.reasons.lock() {
            if !reasons.is_empty() {
                line.push_str(&format!(": {}", reasons.join("; ")));
            }
        }
        Some(line)
    }

    fn outcome(&self, hex: &str, kind: Kind) -> Outcome {
        let key = (hex.to_string(), kind);
        if let Some(known) = self.outcomes.lock().ok().and_then(|o| o.get(&key).cloned()) {
            return known;
        }
        let outcome = match self.cache.lookup(hex, kind) {
            Entry::Present(p) if open_verified(&p, &unhex(hex)).is_some() => Outcome::Cached(p),
            Entry::Missing => Outcome::Failed,
            Entry::Present(_) | Entry::Unknown => self.download(hex, kind),
        };
        if let Ok(mut o) = self.outcomes.lock() {
            o.insert(key, outcome.clone());
        }
        outcome
    }

    /// Time left before the run's deadline (starting the clock on first use).
    fn remaining(&self) -> Duration {
        let Ok(mut started) = self.started.lock() else {
            return Duration::ZERO;
        };
        let t0 = *started.get_or_insert_with(Instant::now);
        self.config.deadline.saturating_sub(t0.elapsed())
    }

    fn note(&self, reason: String) {
        if let Ok(mut r) = self.reasons.lock() {
            if r.len() < MAX_REASONS && !r.contains(&reason) {
                r.push(reason);
            }
        }
    }

    fn download(&self, hex: &str, kind: Kind) -> Outcome {
        let mut not_found = 0;
        for url in &self.config.urls {
            let left = self.remaining();
            if left.is_zero() {
                self.note(format!(
                    "deadline of {} s reached",
                    self.config.deadline.as_secs()
                ));
                return Outcome::Failed;
            }
            let full = format!("{url}/buildid/{hex}/{}", kind.as_str());
            match self.try_server(&full, hex, kind, left) {
                Ok(path) => return Outcome::Fetched(path),
                Err(None) => not_found += 1,
                Err(Some(reason)) => self.note(format!("{full}: {reason}")),
            }
        }
        if not_found == self.config.urls.len() {
            self.note(format!("{hex}/{}: not found", kind.as_str()));
            self.cache.mark_missing(hex, kind);
        }
        Outcome::Failed
    }

    /// `Err(None)`: the server does not have it; `Err(Some(reason))`: it failed.
    fn try_server(
        &self,
        url: &str,
        hex: &str,
        kind: Kind,
        left: Duration,
    ) -> Result<PathBuf, Option<String>> {
        let (temp, mut file) = self
            .cache
            .temp(hex, kind)
            .map_err(|e| Some(format!("cache {}: {e}", self.cache.root().display())))?;
        let agent = http::agent(self.config.transfer_timeout.min(left));
        let fetched = http::fetch(&agent, url, self.config.max_size, &mut file);
        drop(file);
        let result = match fetched {
            Fetched::Body if open_verified(&temp, &unhex(hex)).is_some() => self
                .cache
                .commit(&temp, hex, kind)
                .map_err(|e| Some(format!("cache: {e}"))),
            Fetched::Body => Err(Some("not an ELF file with that build-id".into())),
            Fetched::NotFound => Err(None),
            Fetched::Failed(why) => Err(Some(why)),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

/// The file at `path`, mapped, if it is a regular ELF file with build-id `want`. Opened as
/// psample opens a target's files ([`crate::target_file::open_host`]): a link is not
/// followed, nothing but a regular file is opened (no FIFO to block on, no device), and the
/// mapping is guarded against the file shrinking: the cache is only as trusted as its
/// directory.
fn open_verified(path: &std::path::Path, want: &[u8]) -> Option<FileBytes> {
    let file = crate::target_file::open_host(path, false).ok()?;
    let data = FileBytes::map(&file).ok()?;
    let id = object::File::parse(&*data).ok()?.build_id().ok()??;
    crate::locate::build_ids_match(want, id).then_some(data)
}

fn hex(id: &[u8]) -> Option<String> {
    // Build-ids are 16 or 20 bytes (GNU), anything from 2 bytes is accepted by elfutils.
    (id.len() >= 2 && id.len() <= 64).then(|| id.iter().map(|b| format!("{b:02x}")).collect())
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers 404 to every request, but only once `want` connections are open at the same
    /// time (or after 10 s): a client that fetches one file at a time never sees an answer
    /// before that timeout. Returns the most connections seen open at once.
    fn concurrency_probe(want: usize) -> (u16, std::thread::JoinHandle<usize>) {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let open = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let mut handlers = Vec::new();
            for conn in listener.incoming().take(want) {
                let Ok(mut conn) = conn else { break };
                let (open, most) = (open.clone(), most.clone());
                handlers.push(std::thread::spawn(move || {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let mut req = [0u8; 1024];
                    let _ = conn.read(&mut req);
                    let t0 = Instant::now();
                    while most.load(Ordering::SeqCst) < want && t0.elapsed().as_secs() < 10 {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    open.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            for h in handlers {
                let _ = h.join();
            }
            most.load(Ordering::SeqCst)
        });
        (port, handle)
    }

    #[test]
    fn prefetch_downloads_in_parallel_and_records_misses() {
        let (port, probe) = concurrency_probe(PARALLEL);
        let cache = tempfile::tempdir().unwrap();
        let d = Debuginfod::with(
            Config {
                urls: vec![format!("http://127.0.0.1:{port}")],
                transfer_timeout: Duration::from_secs(60),
                max_size: 1 << 20,
                deadline: Duration::from_secs(60),
            },
            cache.path().to_path_buf(),
        );
        let wanted: Vec<(Vec<u8>, Kind)> = (0..PARALLEL as u8)
            .map(|i| (vec![0xab, i, 1, 2], Kind::Debuginfo))
            .collect();
        let t0 = Instant::now();
        d.prefetch(&wanted);
        assert_eq!(
            probe.join().unwrap(),
            PARALLEL,
            "downloads were not concurrent"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
        let summary = d.summary().unwrap();
        let head = format!("0 fetched, 0 cached, {PARALLEL} failed (http://127.0.0.1:{port}): ");
        assert!(
            summary.starts_with(&head) && summary.contains("/debuginfo: not found"),
            "{summary}"
        );
        // Every server said 404: negative entries, as elfutils writes them.
        assert_eq!(
            d.cache.lookup("ab000102", Kind::Debuginfo),
            cache::Entry::Missing
        );
    }

    #[test]
    fn hex_round_trips() {
        let id = [0xde, 0xad, 0x01, 0xff];
        assert_eq!(hex(&id).as_deref(), Some("dead01ff"));
        assert_eq!(unhex("dead01ff"), id);
        assert_eq!(hex(&[1]), None);
    }
}
