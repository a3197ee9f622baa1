//! Standard streams psample does not control: started with stderr or stdout closed
//! (`2>&-`), or writing into a pipe whose reader went away (`| head -1`).
//!
//! A closed descriptor 0, 1 or 2 would be handed out by the next `open` — a perf event or an
//! output file would then receive diagnostics — so they are pointed at /dev/null first
//! ([`guard_std_fds`]). Messages go through [`errln!`](crate::errln) and
//! [`outln!`](crate::outln), which drop what cannot be written instead of panicking like
//! `eprintln!`/`println!`: the exit code says how the run went, whether or not anyone reads.

/// Points closed descriptors 0, 1 and 2 at /dev/null (opened read-write, never written by
/// us). Must run before anything else opens a file.
pub fn guard_std_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the descriptor.
        let closed = unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF);
        if !closed {
            continue;
        }
        // SAFETY: open/dup2/close on descriptors we own; the lowest free descriptor is `fd`
        // itself (lower ones are open or were just reopened), dup2 covers any other case.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 && null != fd {
                libc::dup2(null, fd);
                libc::close(null);
            }
        }
    }
}

/// `eprintln!` that drops the message when stderr cannot be written.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}

/// `println!` that drops the text when stdout cannot be written (report text; profiles are
/// written with their errors checked).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` counterpart of [`outln!`](crate::outln).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stdout().lock(), $($arg)*);
    }};
}
