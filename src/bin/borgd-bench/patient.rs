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
//! replays that is the `measure` wrapper, and the server under it dies with it: see
//! [`dies_with_us`]); elsewhere it is left as it is. In `e2e`'s live sessions the real client
//! talks to the server, with no limit of its own: there the whole client command gets the stall
//! limit ([`wait_bounded`]), and past it the benchmark kills the client and the server.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
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

/// Makes the process `cmd` starts die (SIGKILL) when the thread that starts it exits: killing
/// `measure` then stops the server under it too, stalled or not.
pub fn dies_with_us(cmd: &mut Command) -> &mut Command {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (prctl,
    // getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // the parent died before the line above: nothing would kill this process now
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// Waits for `child` to exit, at most `limit`; past it calls `stop` (which must make the child
/// exit: kill it and what it started) and then waits for it. Returns its status and whether
/// `stop` was called. Nothing wakes during the wait, so a measured session beside it is not
/// disturbed.
pub fn wait_bounded(child: &mut Child, limit: Duration, stop: impl FnOnce() + Send) -> io::Result<(ExitStatus, bool)> {
    let (done, ended) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let watchdog = s.spawn(move || match ended.recv_timeout(limit) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                stop();
                true
            }
            _ => false,
        });
        let status = child.wait();
        drop(done);
        let stopped = watchdog.join().unwrap_or(false);
        status.map(|st| (st, stopped))
    })
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
    fn a_child_past_the_limit_is_stopped_and_one_within_it_is_not() {
        let mut slow = Command::new("sleep").arg("5").spawn().unwrap();
        let pid = slow.id() as libc::pid_t;
        let t = std::time::Instant::now();
        // SAFETY: kill with the pid of a child not reaped yet.
        let (st, stopped) = wait_bounded(&mut slow, Duration::from_millis(100), || unsafe { libc::kill(pid, libc::SIGKILL); }).unwrap();
        assert!(stopped && !st.success(), "{st}");
        assert!(t.elapsed() < Duration::from_secs(4), "waited for the child instead");
        let mut quick = Command::new("true").spawn().unwrap();
        let (st, stopped) = wait_bounded(&mut quick, Duration::from_secs(5), || panic!("stopped a child within its limit")).unwrap();
        assert!(!stopped && st.success());
    }

    #[test]
    fn a_child_started_through_dies_with_us_dies_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt;
        // started from a thread that then ends: killed at once with it, or left running
        let started = |guarded: bool| {
            std::thread::spawn(move || {
                let mut cmd = Command::new("sleep");
                cmd.arg("5");
                if guarded {
                    dies_with_us(&mut cmd);
                }
                cmd.spawn().unwrap()
            })
            .join()
            .unwrap()
        };
        let kill = |c: &Child| {
            let pid = c.id() as libc::pid_t;
            // SAFETY: kill with the pid of a child not reaped yet.
            move || unsafe { libc::kill(pid, libc::SIGKILL); }
        };
        let mut guarded = started(true);
        let stop = kill(&guarded);
        let (st, stopped) = wait_bounded(&mut guarded, Duration::from_secs(3), stop).unwrap();
        assert!(!stopped && st.signal() == Some(libc::SIGKILL), "{st}");
        let mut plain = started(false);
        let stop = kill(&plain);
        let (_, stopped) = wait_bounded(&mut plain, Duration::from_millis(300), stop).unwrap();
        assert!(stopped, "a plain child died with its thread: the check above proves nothing");
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
