//! The real kernel, answering as an old one: runs a real binary (psample) against this
//! machine's kernel while its `perf_event_open`, perf ioctls and `bpf` calls are answered the
//! way a kernel of a chosen [`KernelProfile`] answers them, and its ring headers look like
//! that kernel's.
//!
//! The emulated kernels ([`crate::kernel`]) check what psample asks for and how it parses old
//! layouts, but produce scripted records; here the records are the real kernel's, so what
//! psample does *after* a fallback (which events it relies on, how it reads them) meets real
//! scheduler behaviour.
//!
//! How: the launched process gets a seccomp filter with a user-notification listener between
//! fork and exec ([`filter`]); the listener fd comes back over a socketpair to a supervisor
//! thread, which for each intercepted call ([`answer`]):
//! - `perf_event_open`: reads the attr from the caller's memory and judges it with
//!   [`crate::attr_rules::check_open_on`] (the emulator's rules): refused with that errno
//!   (E2BIG with the old attr size written back), passed to the real kernel unchanged, or —
//!   when the old kernel would store it differently (fields it treats as padding) — opened by
//!   the supervisor with the stored attr and the fd installed in the caller;
//! - perf ioctls and `bpf`: refused as [`crate::ioctl_rules`] says, else passed;
//! - `mmap` of a perf fd: passed, after clearing the ring header's data_offset/data_size
//!   where the profile lacks them ([`ring_header`]).
//!
//! Nothing in the launched binary is changed. Passing a call with
//! SECCOMP_USER_NOTIF_FLAG_CONTINUE lets the caller change its arguments between our check and
//! the kernel's (the flag's documented TOCTOU): irrelevant for a test harness whose caller is
//! the program under test. Not emulated: file reads (sysctls, the tracing directory — psample
//! sees this kernel's tracefs and formats) and the scheduler itself.

mod answer;
mod filter;
mod listener;
mod remote;
mod ring_header;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use answer::Answerer;
pub use answer::Tally;
use listener::{Listener, Ready};

use perfring::sys::Kernel;

use crate::profile::KernelProfile;

/// A process running under the interposer.
pub struct Supervised {
    child: Option<Child>,
    supervisor: Option<JoinHandle<Tally>>,
    stop: Arc<AtomicBool>,
}

/// Launch `cmd` with its perf calls answered as `profile`'s kernel would.
pub fn spawn(profile: KernelProfile, cmd: &mut Command) -> io::Result<Supervised> {
    let tracepoint_ids = real_tracepoint_ids(&profile);
    let nr_cpus = perfring::sys::LinuxKernel
        .online_cpus()
        .ok()
        .and_then(|c| c.iter().max().map(|m| *m as i32 + 1))
        .unwrap_or(crate::attr_rules::NR_CPUS);
    let prog = filter::program();
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    // SAFETY: geteuid has no preconditions.
    let no_new_privs = unsafe { libc::geteuid() } != 0;
    // SAFETY: the closure only makes system calls on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || filter::install_and_send(&prog, theirs_fd, no_new_privs));
    }
    let child = cmd.spawn()?;
    drop(theirs);
    let listener = match filter::recv_fd(ours.as_raw_fd()) {
        Ok(fd) => Listener::new(fd),
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let answerer = Answerer::new(profile, tracepoint_ids, nr_cpus);
    let supervisor = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("interposer".into())
            .spawn(move || supervise(listener, answerer, &stop))?
    };
    Ok(Supervised {
        child: Some(child),
        supervisor: Some(supervisor),
        stop,
    })
}

impl Supervised {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Wait for the process (collecting piped output) and for the supervisor.
    pub fn wait_with_output(mut self) -> io::Result<(Output, Tally)> {
        let child = self.child.take().expect("child present until waited");
        let out = child.wait_with_output();
        let tally = self.finish();
        Ok((out?, tally))
    }

    pub fn wait(mut self) -> io::Result<(ExitStatus, Tally)> {
        let mut child = self.child.take().expect("child present until waited");
        let st = child.wait();
        let tally = self.finish();
        Ok((st?, tally))
    }

    fn finish(&mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.supervisor
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.finish();
    }
}

fn supervise(listener: Listener, mut answerer: Answerer, stop: &AtomicBool) -> Tally {
    loop {
        // While a ring header is held, look again soon for the target's own mapping.
        let timeout = if answerer.holding_headers() { 2 } else { 20 };
        match listener.wait(timeout) {
            Ok(Ready::Call) => match listener.receive() {
                Ok(Some(n)) => {
                    if let Err(e) = answerer.handle(&listener, &n) {
                        answerer
                            .tally
                            .errors
                            .push(format!("answering call {}: {e}", n.nr));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    answerer.tally.errors.push(format!("receiving: {e}"));
                    break;
                }
            },
            Ok(Ready::AllGone) => break,
            Ok(Ready::Nothing) if stop.load(Ordering::Relaxed) => break,
            Ok(Ready::Nothing) => {}
            Err(e) => {
                answerer.tally.errors.push(format!("polling: {e}"));
                break;
            }
        }
        answerer.release_headers();
    }
    answerer.tally.clone()
}

/// This kernel's ids of the tracepoints the old kernel has too; any other tracepoint is
/// refused with ENOENT, as an unknown id is.
fn real_tracepoint_ids(p: &KernelProfile) -> Vec<u64> {
    let roots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    p.tracepoints()
        .iter()
        .filter_map(|(sys, name)| {
            roots.iter().find_map(|r| {
                std::fs::read_to_string(format!("{r}/events/{sys}/{name}/id"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .collect()
}
