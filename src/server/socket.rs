//! The unix-socket transport for `socket://` clients: many sessions at once, one thread each.
//!
//! Python's `borg serve --socket` serves one connection at a time; borgd runs every connection as
//! its own session (same protocol, options, restrictions and permissions as stdio mode), so a slow
//! or stuck client never delays another. Each session gets its own non-zero lock thread id, so
//! locks of different sessions of this process stay distinguishable.
//!
//! Lifecycle: a stale socket file (nobody accepts on it) is replaced, a live one makes us refuse to
//! start; the socket is made mode 0770 (group members may connect) and a PID file is written beside
//! it. SIGTERM/SIGINT stop accepting, end every session (their locks are released), remove both
//! files and exit 0; SIGHUP is ignored. Connections beyond `--max-connections` are answered with a
//! clear error and closed: at most [`REFUSALS_AT_ONCE`] at a time, each for at most
//! [`REFUSAL_TIME`], and any more closed unanswered, so that a flood of connections costs a
//! bounded number of threads (unbounded, it once made thread creation fail and the server panic).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{read_nowait, serve_stream, Config, LogConfig, ServeError};
use crate::rpc::frame::{FrameReader, Input};
use crate::rpc::msgpack;
use crate::rpc::wire::{encode_exception, Exception};
use crate::rpc::{encode_reply, Reply, Request};

/// Socket-mode failures that prevent serving at all.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live server answers on the socket (the socket, and its PID file).
    #[error("another borg serve is already listening on {0} (its PID file: {1})")]
    InUse(PathBuf, PathBuf),
    /// Making the socket or PID file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A runtime directory platformdirs would accept: a real directory we own, private to us.
fn private_dir_ok(p: &Path, missing_ok: bool) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(md) => md.is_dir() && md.uid() == euid() && md.mode() & 0o077 == 0,
        Err(_) => missing_ok,
    }
}

/// The socket path a borg 2.0.0b21 client uses with plain `--socket`:
/// `$BORG_RUNTIME_DIR/borg.sock`, else `$BORG_BASE_DIR/.cache/borg/borg.sock`, else
/// platformdirs' user runtime dir: `$XDG_RUNTIME_DIR/borg` (if it is a private directory of
/// ours), `/run/user/<uid>/borg` (likewise), or `$TMPDIR/runtime-<uid>/borg`.
pub fn default_socket_path() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let runtime = if let Some(d) = var("BORG_RUNTIME_DIR") {
        d
    } else if let Some(base) = var("BORG_BASE_DIR") {
        base.join(".cache").join("borg")
    } else {
        let uid = euid();
        let base = match var("XDG_RUNTIME_DIR").filter(|x| private_dir_ok(x, true)) {
            Some(x) => x,
            None => {
                let run = PathBuf::from(format!("/run/user/{uid}"));
                if private_dir_ok(&run, false) {
                    run
                } else {
                    var("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp")).join(format!("runtime-{uid}"))
                }
            }
        };
        base.join("borg")
    };
    runtime.join("borg.sock")
}

/// The PID file beside a socket: `.sock` replaced by `.pid` (appended if there is none).
pub fn pid_file_for(socket: &Path) -> PathBuf {
    let s = socket.to_string_lossy();
    PathBuf::from(format!("{}.pid", s.strip_suffix(".sock").unwrap_or(&s)))
}

/// Owns the socket and PID files; removes them when dropped.
struct Files {
    socket: PathBuf,
    pid: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.pid);
    }
}

fn bind(path: &Path) -> Result<(UnixListener, Files), SocketError> {
    let io_err = |op, source| SocketError::Io { op, path: path.to_path_buf(), source };
    let pid = pid_file_for(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("create directory for", e))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf(), pid)),
            // nobody accepts on it: a stale socket of a server that died
            Err(_) => std::fs::remove_file(path).map_err(|e| io_err("remove stale socket", e))?,
        }
    }
    // The PID file first, and whole (a temp file renamed into place): whoever finds the socket
    // listening finds the PID file too, never empty. (Written after the bind, a test that read it
    // as soon as the socket answered found it empty, once in a suite run.)
    let me = std::process::id().to_string();
    let tmp = PathBuf::from(format!("{}.{me}.tmp", pid.display()));
    std::fs::write(&tmp, &me).and_then(|()| std::fs::rename(&tmp, &pid)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SocketError::Io { op: "write PID file", path: pid.clone(), source: e }
    })?;
    let listener = UnixListener::bind(path).map_err(|e| {
        if std::fs::read_to_string(&pid).is_ok_and(|c| c == me) {
            let _ = std::fs::remove_file(&pid);
        }
        io_err("bind", e)
    })?;
    let files = Files { socket: path.to_path_buf(), pid };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770)).map_err(|e| io_err("chmod", e))?;
    Ok((listener, files))
}

/// A connection's input.
impl Input for UnixStream {
    fn reads_arrived(&self) -> bool {
        true
    }

    fn read_arrived(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_nowait(self, buf)
    }
}

/// Connections over `--max-connections` answered at once, each on a thread of its own; more
/// are closed unanswered (the client then reports a closed connection instead of our error).
pub const REFUSALS_AT_ONCE: usize = 16;

/// How long, in all, a refused connection is given to send the requests we answer: a client
/// sends its first at once, so this only bounds one that sends nothing, or trickles.
pub const REFUSAL_TIME: Duration = Duration::from_secs(5);

/// Connections closed unanswered in a flood, counted and logged at most once per
/// [`UNANSWERED_REPORT_EVERY`]: a flood must not also flood the log.
struct Unanswered {
    /// Why they are closed unanswered, as the log says it.
    why: String,
    count: u64,
    last_report: Option<Instant>,
}

/// How often a flood's unanswered connections are reported at most.
const UNANSWERED_REPORT_EVERY: Duration = Duration::from_secs(1);

impl Unanswered {
    fn new(why: String) -> Unanswered {
        Unanswered { why, count: 0, last_report: None }
    }

    /// One more connection closed unanswered; reported now if the last report is old enough.
    fn closed(&mut self) {
        self.count += 1;
        self.report_if_due();
    }

    /// Reports what was counted if the last report is old enough (the accept loop looks at
    /// least once a second, so a flood's last connections are reported soon after it ends).
    fn report_if_due(&mut self) {
        if self.last_report.is_none_or(|t| t.elapsed() >= UNANSWERED_REPORT_EVERY) {
            self.report();
        }
    }

    /// Reports what was counted since the last report, if anything.
    fn report(&mut self) {
        if self.count > 0 {
            eprintln!("borgd: closed {} connection(s) unanswered: {}", self.count, self.why);
            self.count = 0;
            self.last_report = Some(Instant::now());
        }
    }
}

/// The largest message a refused connection may send: a client's first requests are small, and
/// a refusal must not hold the megabytes a session may.
const REFUSAL_MESSAGE_LIMIT: usize = 64 * 1024;

/// Answers the requests of a connection we cannot serve with an error (and its `close` with
/// success, so the client reports our error rather than a closed connection), then hangs up;
/// within [`REFUSAL_TIME`] in all.
fn refuse(stream: UnixStream, message: &str) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let deadline = Instant::now() + REFUSAL_TIME;
    let _ = writer.set_write_timeout(Some(REFUSAL_TIME));
    let mut reader = FrameReader::new(stream, REFUSAL_MESSAGE_LIMIT);
    let error = Exception::from(&crate::error::CallError::Unsupported(message.to_string()));
    for _ in 0..8 {
        let Ok(Some(n)) = next_frame(&mut reader, &writer, deadline) else { break };
        let request = msgpack::parse(reader.frame(n)).ok().and_then(|v| Request::from_value(v).ok()).map(|r| (r.msgid, r.method == "close"));
        reader.consume(n);
        let Some((msgid, is_close)) = request else { break };
        let mut out = Vec::new();
        if is_close {
            encode_reply(msgid, &Reply::Nil, &mut out);
        } else {
            encode_exception(msgid, &error, &mut out);
        }
        if writer.write_all(&out).is_err() || is_close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// The next whole message of a refused connection, `None` at its end or past `deadline`.
/// `socket` is the connection itself (another descriptor of it): each read may wait only for
/// what is left until the deadline.
fn next_frame(reader: &mut FrameReader<UnixStream>, socket: &UnixStream, deadline: Instant) -> Result<Option<usize>, crate::rpc::frame::FrameError> {
    loop {
        if let Some(n) = reader.buffered_frame()? {
            return Ok(Some(n));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // a zero timeout would mean none at all
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return Ok(None);
        }
        if !reader.fill()? {
            return Ok(None);
        }
    }
}

/// How long the accept loop waits in one `poll` at most: a connection or a termination signal
/// ends the wait at once (the signal through the self-pipe, see [`crate::signals`]); this only
/// bounds how late a stop flag set without a signal is seen.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Waits until `listener` has a connection to accept or a termination signal arrived, at most
/// `max`. (The accept loop slept 50 ms between tries before: every connection waited up to 50
/// ms to be accepted, 30 ms more than a whole one-put session over stdio; docs/BENCHMARKS.md.)
fn wait_for_connection(listener: &UnixListener, max: Duration) {
    let mut fds = vec![libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    if let Some(wake) = crate::signals::wake_fd() {
        fds.push(libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 });
    }
    let ms = libc::c_int::try_from(max.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` holds valid pollfd entries for its length. Whatever poll returns (ready,
    // timed out, interrupted), the caller tries `accept` and checks its stop flag again.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// Who is at the other end of a connection, for the server's log: the peer's process and user
/// as the kernel recorded them when it connected (`SO_PEERCRED`).
fn peer(stream: &UnixStream) -> String {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred of that size, on a
    // descriptor the stream owns.
    let r = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, std::ptr::addr_of_mut!(cred).cast(), &mut len)
    };
    if r != 0 {
        format!("an unknown peer ({})", io::Error::last_os_error())
    } else if len as usize != std::mem::size_of::<libc::ucred>() {
        "an unknown peer".to_string()
    } else {
        format!("PID {}, UID {}", cred.pid, cred.uid)
    }
}

/// Serves `socket://` clients on `path` until `stop` is set.
pub fn serve_socket(
    cfg: Arc<Config>,
    logcfg: &LogConfig,
    path: &Path,
    max_connections: usize,
    stop: &'static AtomicBool,
) -> Result<(), SocketError> {
    let (listener, _files) = bind(path)?;
    listener.set_nonblocking(true).map_err(|e| SocketError::Io { op: "configure", path: path.to_path_buf(), source: e })?;
    eprintln!("borgd serve: PID {}, listening on socket {} ...", std::process::id(), path.display());
    let sessions: Arc<Mutex<HashMap<i64, UnixStream>>> = Arc::new(Mutex::new(HashMap::new()));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut unanswered = Unanswered::new(format!("{max_connections} sessions active (--max-connections) and {REFUSALS_AT_ONCE} refusals under way"));
    let mut handles = Vec::new();
    let mut next_id: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                unanswered.report_if_due();
                handles.retain(|h: &std::thread::JoinHandle<()>| !h.is_finished());
                wait_for_connection(&listener, IDLE_CHECK);
                continue;
            }
            Err(e) => {
                eprintln!("borgd: accept on {}: {e}", path.display());
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let active = sessions.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        if active >= max_connections {
            if refusing.load(Ordering::Relaxed) >= REFUSALS_AT_ONCE {
                unanswered.closed();
                continue;
            }
            unanswered.report_if_due();
            eprintln!("borgd: refusing a connection from {}: {active} sessions active (--max-connections {max_connections})", peer(&stream));
            let msg = format!("borgd: server busy: {active} sessions active, the limit is {max_connections} (--max-connections); try again later");
            refusing.fetch_add(1, Ordering::Relaxed);
            let done = Arc::clone(&refusing);
            let spawned = std::thread::Builder::new().name("refusal".into()).spawn(move || {
                refuse(stream, &msg);
                done.fetch_sub(1, Ordering::Relaxed);
            });
            if let Err(e) = spawned {
                // the connection went with the closure: closed unanswered
                eprintln!("borgd: cannot start a thread to refuse a connection: {e}");
                refusing.fetch_sub(1, Ordering::Relaxed);
            }
            continue;
        }
        unanswered.report_if_due();
        next_id += 1;
        let id = next_id;
        let (Ok(reader), Ok(registered)) = (stream.try_clone(), stream.try_clone()) else { continue };
        if let Ok(mut s) = sessions.lock() {
            s.insert(id, registered);
        }
        let peer = peer(&stream);
        eprintln!("borgd: accepted connection {id} on socket {} from {peer}", path.display());
        let cfg = cfg.clone();
        let logcfg = logcfg.clone();
        let registry = sessions.clone();
        let spawned = std::thread::Builder::new().name(format!("session-{id}")).spawn(move || {
            let served = serve_stream(cfg, &logcfg, reader, None, stream, id, stop);
            let repository = served.repository.map_or_else(|| "no repository opened".to_string(), |p| format!("repository {}", p.display()));
            match served.result {
                Ok(()) | Err(ServeError::Stopped) => eprintln!("borgd: finished connection {id} ({peer}; {repository})"),
                Err(e) => eprintln!("borgd: connection {id} ended: {e} ({peer}; {repository})"),
            }
            if let Ok(mut s) = registry.lock() {
                s.remove(&id);
            }
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("borgd: cannot start a session thread: {e}");
                if let Ok(mut s) = sessions.lock() {
                    s.remove(&id);
                }
            }
        }
    }
    unanswered.report();
    eprintln!("borgd: stopping: ending {} session(s)", sessions.lock().map(|s| s.len()).unwrap_or(0));
    drop(listener);
    // wake every session blocked reading its client: it sees end of input and closes in order.
    if let Ok(s) = sessions.lock() {
        for stream in s.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_replaces_the_sock_suffix() {
        assert_eq!(pid_file_for(Path::new("/run/borg/borg.sock")), PathBuf::from("/run/borg/borg.pid"));
        assert_eq!(pid_file_for(Path::new("/x/sock")), PathBuf::from("/x/sock.pid"));
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        {
            let _stale = UnixListener::bind(&p).unwrap();
        } // listener closed, file stays: stale
        let (live, files) = bind(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o770);
        assert!(files.pid.exists());
        assert!(matches!(bind(&p), Err(SocketError::InUse(..))));
        drop(live);
        drop(files);
        assert!(!p.exists() && !dir.path().join("s.pid").exists());
    }

    /// The accept loop waits for a connection in `poll`, not by sleeping between tries: a
    /// pending connection ends the wait at once (the bound is far above any scheduling delay and
    /// far below the wait's maximum, so only a wait that ignores the connection fails it).
    #[test]
    fn a_pending_connection_ends_the_wait_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.sock");
        let listener = UnixListener::bind(&p).unwrap();
        listener.set_nonblocking(true).unwrap();
        let _client = UnixStream::connect(&p).unwrap();
        let t = std::time::Instant::now();
        wait_for_connection(&listener, Duration::from_secs(60));
        assert!(t.elapsed() < Duration::from_secs(30), "waited {:?} with a connection pending", t.elapsed());
        assert!(listener.accept().is_ok());
    }

    #[test]
    fn a_connection_hands_over_what_arrived_without_waiting() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        assert!(ours.reads_arrived());
        let mut buf = [0u8; 16];
        assert_eq!(ours.read_arrived(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        theirs.write_all(b"put").unwrap();
        assert_eq!(ours.read_arrived(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"put");
    }
}
