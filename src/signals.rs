//! Termination signals: SIGTERM, SIGINT and SIGHUP set a flag instead of killing the process, so
//! that sessions end in order and release their locks.
//!
//! The handlers are installed *without* `SA_RESTART`: a session blocked reading from its client
//! gets `EINTR`, sees the flag and ends. (An ssh connection that is torn down sends SIGHUP.)

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set once a termination signal arrived.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// The last signal received (0: none), for the log.
pub static LAST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // only async-signal-safe work: two atomic stores.
    LAST.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP; with `hup_stops` false (socket mode,
/// where no terminal or ssh connection ties us to a client) SIGHUP is ignored instead.
pub fn install(hup_stops: bool) -> std::io::Result<()> {
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
