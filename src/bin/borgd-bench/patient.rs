//! Pipes and sockets to a server under test that give up when the server stalls.
//!
//! The benchmark talks to every server over its stdin/stdout or a unix-socket connection. A
//! server that stops answering (or stops reading its requests) without closing its end would
//! otherwise hang the whole run, silently, in a blocking `read` or `write`. Through [`Patient`]
//! the descriptor is non-blocking and every wait for it is a `poll` bounded by the stall limit:
//! a read or write that sees no progress for that long fails with `TimedOut`, saying so, and the
//! run stops with that server's error instead of hanging. The limit is generous (a `check` of a
//! large repository answers nothing for a while): [`DEFAULT_STALL`], or `BORGD_BENCH_STALL_S`.
//! Where the benchmark would then wait for the stalled process to exit, it kills it instead (in
//! replays that is the `measure` wrapper; the server under it is left as it is); elsewhere it is
//! left as it is. Not covered: `e2e`'s live sessions, where the real client talks to the server
//! and has no such limit of its own.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use borgd::rpc::frame::Input;

/// How long a server may go without reading or answering anything before the benchmark gives
/// up on it: far beyond any step of a run on this machine, short of forever.
pub const DEFAULT_STALL: Duration = Duration::from_secs(600);

/// The stall limit for this run: `BORGD_BENCH_STALL_S` seconds if set (the tests use a short
/// one), else [`DEFAULT_STALL`].
pub fn stall_limit() -> Result<Duration, String> {
    match std::env::var("BORGD_BENCH_STALL_S") {
        Err(_) => Ok(DEFAULT_STALL),
        Ok(v) => match v.parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => Err(format!("BORGD_BENCH_STALL_S={v:?}: give a positive number of seconds")),
        },
    }
}

/// One end of a pipe or socket to a server, made non-blocking, whose reads and writes wait at
/// most the stall limit for the server to move.
pub struct Patient<T> {
    inner: T,
    limit: Duration,
}

impl<T: AsRawFd> Patient<T> {
    /// Takes over `inner` (switching its descriptor to non-blocking: every wait is ours now).
    pub fn new(inner: T, limit: Duration) -> io::Result<Patient<T>> {
        let fd = inner.as_raw_fd();
        // SAFETY: fcntl on a descriptor `inner` owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Patient { inner, limit })
    }

    /// Waits until the descriptor is ready for `events`, at most the stall limit.
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        wait_for(self.inner.as_raw_fd(), events, self.limit)
    }
}

/// `poll` for one descriptor, retried on `EINTR` against the same deadline; `TimedOut` when
/// nothing happened within `limit`.
fn wait_for(fd: RawFd, events: libc::c_short, limit: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd { fd, events, revents: 0 };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            // readable, writable, or the other end gone: the read or write says which
            n if n > 0 => return Ok(()),
            0 => {
                let what = if events == libc::POLLIN { "answered" } else { "read what was sent" };
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("the server has not {what} for {:.0} s (it stalled; BORGD_BENCH_STALL_S sets the limit)", limit.as_secs_f64())));
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

impl<T: Read + AsRawFd> Read for Patient<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(libc::POLLIN)?,
                r => return r,
            }
        }
    }
}

impl<T: Write + AsRawFd> Write for Patient<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.inner.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(libc::POLLOUT)?,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Answers are read the ordinary way (the benchmark never asks for what has merely arrived).
impl<T: Read + AsRawFd> Input for Patient<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_silent_peer_is_a_timeout_and_a_talking_one_is_read() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut a = Patient::new(a, Duration::from_millis(50)).unwrap();
        let mut buf = [0u8; 8];
        let e = a.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("has not answered"), "{e}");
        b.write_all(b"hi").unwrap();
        assert_eq!(a.read(&mut buf).unwrap(), 2);
        drop(b);
        assert_eq!(a.read(&mut buf).unwrap(), 0, "a closed peer is the end of the stream");
    }

    #[test]
    fn a_peer_that_stops_reading_is_a_timeout_once_the_buffers_are_full() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut a = Patient::new(a, Duration::from_millis(50)).unwrap();
        let e = a.write_all(&vec![0u8; 64 << 20]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("has not read what was sent"), "{e}");
    }
}
