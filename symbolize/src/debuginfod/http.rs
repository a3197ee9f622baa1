//! One download from a debuginfod server, over HTTP or HTTPS.
//!
//! ureq (blocking, no async runtime) with rustls on the *ring* provider: pure Rust apart from
//! ring's self-contained C and assembly, so the static musl build needs only the distro's
//! musl-gcc. Trusted roots are the system's (so internal CAs of a company's debuginfod
//! work, and `SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured), else Mozilla's bundled set for a
//! host without a CA bundle.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// How one request ended.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// The body was written to the sink.
    Body,
    /// The server does not have it (404).
    NotFound,
    /// Anything else, with a short reason.
    Failed(String),
}

/// The roots HTTPS trusts: the system's CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured),
/// else Mozilla's bundled set. Shared with `--push` (collect), loaded once.
pub fn roots() -> RootCerts {
    static ROOTS: OnceLock<RootCerts> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            let certs: Vec<Certificate<'static>> = native
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            if certs.is_empty() {
                RootCerts::WebPki
            } else {
                RootCerts::Specific(Arc::new(certs))
            }
        })
        .clone()
}

/// An agent whose every request ends within `timeout` (connect, TLS, headers and body).
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(TlsConfig::builder().root_certs(roots()).build())
        .user_agent(concat!("psample/", env!("CARGO_PKG_VERSION")))
        .max_redirects(4)
        .build()
        .into()
}

/// GETs `url` into `sink`, refusing bodies larger than `max_size` bytes.
pub(crate) fn fetch(
    agent: &ureq::Agent,
    url: &str,
    max_size: u64,
    sink: &mut impl std::io::Write,
) -> Fetched {
    let mut resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(e) => return Fetched::Failed(short(&e.to_string())),
    };
    match resp.status().as_u16() {
        200 => {}
        404 => return Fetched::NotFound,
        s => return Fetched::Failed(format!("HTTP {s}")),
    }
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_size) {
        return Fetched::Failed(format!("larger than the {max_size}-byte cap"));
    }
    let mut body = resp.body_mut().with_config().limit(max_size).reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => return Fetched::Body,
            Ok(n) => {
                if let Err(e) = sink.write_all(&buf[..n]) {
                    return Fetched::Failed(format!("writing the cache: {e}"));
                }
            }
            Err(e) => return Fetched::Failed(short(&e.to_string())),
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}
