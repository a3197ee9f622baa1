//! Mapped files that shrink while we read them.
//!
//! psample maps ELF and DWARF files instead of copying them (a distribution debug file is
//! hundreds of MiB, of which a profile touches a few pages). A file truncated after it was
//! mapped turns every access past its new end into SIGBUS, and the files belong to the
//! profiled processes: a target truncating its own debug file would kill the profiler.
//!
//! Every mapping psample reads is registered here. A SIGBUS inside a registered range is
//! answered by mapping a zero page over the faulting page (the access then reads zeros) and
//! flagging the range; the owner checks [`Registration::faulted`] after reading and drops what
//! it derived from the file. A SIGBUS anywhere else goes to the previous handler (Rust's stack
//! overflow handler, or the default action), so real bugs still crash.
//!
//! The handler only touches atomics and calls `mmap(2)` directly through `syscall(2)`, which
//! is async-signal-safe.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings registered at once: a symbolizer of a busy host (-a) holds a few thousand files.
const SLOTS: usize = 16_384;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static SLOT_TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
/// The disposition before ours; written once, before our handler can run.
static mut PREVIOUS: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A registered mapping; unregistered on drop (drop it before unmapping).
#[derive(Debug)]
pub(crate) struct Registration {
    slot: usize,
}

impl Registration {
    /// Registers `[start, start + len)`. `None` when the handler cannot be installed or every
    /// slot is taken: the caller must then not map the file.
    pub fn new(start: *const u8, len: usize) -> Option<Registration> {
        install();
        if !INSTALLED.load(Ordering::Acquire) {
            return None;
        }
        for (i, slot) in SLOT_TABLE.iter().enumerate() {
            if slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.start.store(start as usize, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.faulted.store(false, Ordering::Relaxed);
                slot.state.store(ACTIVE, Ordering::Release);
                return Some(Registration { slot: i });
            }
        }
        None
    }

    /// Whether a read of the range faulted (the file shrank): whatever was read from it may be
    /// zeros instead of the file's bytes.
    pub fn faulted(&self) -> bool {
        SLOT_TABLE[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        SLOT_TABLE[self.slot].state.store(FREE, Ordering::Release);
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: zeroed sigaction is a valid value; `PREVIOUS` is written here, once, before
        // the handler that reads it is installed (Once orders it before any later reader).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            let prev = &raw mut PREVIOUS;
            if libc::sigaction(libc::SIGBUS, &sa, (*prev).as_mut_ptr()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    for slot in &SLOT_TABLE {
        if slot.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let len = slot.len.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        let page_start = addr & !(page - 1);
        // SAFETY: replaces one page of a mapping we own (registered above) with an anonymous
        // zero page; raw syscall, async-signal-safe.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                page_start,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r as usize == page_start {
            slot.faulted.store(true, Ordering::Release);
            return;
        }
        break;
    }
    // SAFETY: PREVIOUS was initialised before this handler was installed.
    unsafe { chain(sig, info, ctx) }
}

/// Hands a SIGBUS that is not ours to the disposition we replaced.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = &raw const PREVIOUS;
    // SAFETY: initialised before our handler was installed (see `install`).
    let prev = unsafe { (*prev).assume_init_ref() };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Restore the default action; returning re-executes the access, which then kills the
        // process with SIGBUS as if we had never been here.
        // SAFETY: zeroed sigaction with SIG_DFL is valid.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler installed without SA_SIGINFO.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn truncated_mapping_reads_zeros_and_is_flagged() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![0xabu8; 3 * 4096]).unwrap();
        // SAFETY: test mapping of our own temp file.
        let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
        let reg = Registration::new(map.as_ptr(), map.len()).expect("registered");
        assert_eq!(map[5000], 0xab);
        assert!(!reg.faulted());
        f.set_len(0).unwrap();
        // Without the guard this read kills the test binary with SIGBUS.
        let v = std::hint::black_box(&map[..])[2 * 4096 + 7];
        assert_eq!(v, 0);
        assert!(reg.faulted());
        drop(reg);
        drop(map);
    }
}
