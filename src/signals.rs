//! Termination signals: SIGTERM, SIGINT and SIGHUP set a flag instead of killing the process, so
//! that sessions end in order and release their locks.
//!
//! A signal can arrive between a session's check of the flag and its next blocking `read`, which
//! `EINTR` alone would miss. So the handler also writes a byte to a pipe (the self-pipe pattern),
//! and [`Interruptible`] waits for its input *and* that pipe: no signal goes unnoticed. (An ssh
//! connection that is torn down sends SIGHUP.)

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set once a termination signal arrived.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// The last signal received (0: none), for the log.
pub static LAST: AtomicI32 = AtomicI32::new(0);

/// Write end of the self-pipe (-1: none), read end for [`Interruptible`].
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // only async-signal-safe work: atomic stores and a write(2).
    LAST.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write of one byte from a static buffer to our non-blocking pipe.
        unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    }
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP; with `hup_stops` false (socket mode,
/// where no terminal or ssh connection ties us to a client) SIGHUP is ignored instead.
pub fn install(hup_stops: bool) -> std::io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    WAKE_READ.store(fds[0], Ordering::SeqCst);
    WAKE_WRITE.store(fds[1], Ordering::SeqCst);
    if !hup_stops {
        // SAFETY: setting a signal's disposition to SIG_IGN is always valid.
        if unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    let signals: &[libc::c_int] = if hup_stops { &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP] } else { &[libc::SIGTERM, libc::SIGINT] };
    for &sig in signals {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well-formed; the
        // handler only touches atomics.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
            sa.sa_flags = 0; // no SA_RESTART: blocking reads return EINTR
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The read end of the self-pipe, once [`install`] made it: readable from the first termination
/// signal on (its byte is never consumed), so any loop can wait for its own input and a signal
/// together in one `poll`.
pub fn wake_fd() -> Option<std::os::fd::RawFd> {
    let fd = WAKE_READ.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

fn stopped() -> io::Error {
    io::Error::other("stopped by a signal")
}

/// A reader that fails ("stopped by a signal") as soon as a termination signal arrived, even one
/// that arrived just before it would have blocked (it polls its input together with the
/// self-pipe). Not `Interrupted`: loops that retry interrupted reads must stop, not spin.
pub struct Interruptible<R> {
    inner: R,
}

impl<R: Read + AsRawFd> Interruptible<R> {
    /// Wraps a blocking reader (stdin in stdio mode).
    pub fn new(inner: R) -> Interruptible<R> {
        Interruptible { inner }
    }

    /// The wrapped reader, for reads that never block (they need no interrupting).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read + AsRawFd> Read for Interruptible<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wake = WAKE_READ.load(Ordering::SeqCst);
        loop {
            if STOP.load(Ordering::SeqCst) {
                return Err(stopped());
            }
            if wake < 0 {
                return self.inner.read(buf);
            }
            let mut fds = [
                libc::pollfd { fd: self.inner.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two valid pollfd entries.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                return Err(stopped());
            }
            if fds[0].revents != 0 {
                return self.inner.read(buf);
            }
        }
    }
}
