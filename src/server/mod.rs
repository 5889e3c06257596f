//! Serving clients: the loop that connects the frame reader, the session and the output.
//!
//! [`serve_stream`] runs one session over any byte stream (stdin/stdout for ssh, a unix socket
//! connection in socket mode). Responses and log records are buffered and flushed whenever no
//! further complete request is buffered, so a client keeping 100 requests in flight gets its
//! answers in a few large writes. However the stream ends — close, end of input, a broken pipe,
//! a protocol error or a signal — the session ends too, releasing its lock.

pub mod coalesce;
pub mod paths;
pub mod puts;
pub mod session;
pub mod socket;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::log::{Level, Log};
use crate::output::{Output, SharedOutput};
use crate::rpc::frame::{FrameError, FrameReader, Input};
use crate::rpc::wire::{encode_exception, Exception};
use crate::rpc::{encode_reply, msgpack, Body, Method, Request, RequestError};
pub use session::{Config, Session};
use puts::PutWriters;

/// How a session ended, when it did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading the client's stream failed: a vanished peer, a message over the limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client sent what cannot be answered (not even a message id).
    #[error("{0}")]
    Protocol(String),
    /// Answering failed (the client went away).
    #[error("write to client: {0}")]
    Write(io::Error),
    /// SIGTERM, SIGHUP or SIGINT ended the session (its lock given back).
    #[error("stopped by signal")]
    Stopped,
}

/// Logging wishes of the client (`--debug`, `--debug-topic`, ...).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The least level sent.
    pub level: Level,
    /// Debug topics switched on (`borg.debug.<topic>` loggers).
    pub topics: Vec<String>,
}

fn locked(out: &SharedOutput) -> io::Result<std::sync::MutexGuard<'_, Output>> {
    out.lock().map_err(|_| io::Error::other("output lock poisoned"))
}

/// Writes an answer: its header, then its body (bytes, or a file sent without copying).
fn write_answer(out: &SharedOutput, header: &[u8], body: Body<'_>) -> io::Result<()> {
    let mut w = locked(out)?;
    w.write_all(header)?;
    match body {
        Body::None => Ok(()),
        Body::Bytes(b) => w.write_all(b),
        Body::File(f, len) => w.send_file(f, len),
        Body::Ids(ids) => {
            let mut part = Vec::with_capacity(64 * 1024);
            for chunk in ids.chunks(1024) {
                part.clear();
                crate::rpc::encode_ids(chunk, &mut part);
                w.write_all(&part)?;
            }
            Ok(())
        }
    }
}

/// Serves one client over `input`/`output` until the stream ends or `stop` is set;
/// `input_capacity`: how much the client can send before it blocks (a pipe's size), if known,
/// for judging the coalescer's naps (see [`coalesce`]).
pub fn serve_stream<R: Input, W: Write + AsRawFd + Send + 'static>(
    cfg: Arc<Config>,
    logcfg: &LogConfig,
    input: R,
    input_capacity: Option<usize>,
    output: W,
    thread: i64,
    stop: &AtomicBool,
) -> Served {
    let fd = output.as_raw_fd();
    let out = Output::shared(Box::new(output), Some(fd));
    let log = Log::new(logcfg.level, logcfg.topics.clone(), Some(out.clone()), false);
    let mut session = Session::new(cfg.clone(), log, thread);
    let result = match run(&mut session, &out, FrameReader::new(input, cfg.max_message).streaming(STREAM_FROM).streams_up_to(STREAMED_MAX), input_capacity, stop) {
        // whatever failed while a termination signal was being handled: it is the signal
        Err(_) if stop.load(Ordering::Relaxed) => Err(ServeError::Stopped),
        r => r,
    };
    if let Some(e) = result.as_ref().err().filter(|e| !matches!(e, ServeError::Stopped)) {
        // tell the client (if it still listens) why we hang up; then end the session.
        session.log().error("borgd.server", &format!("borgd: ending session: {e}"));
    }
    session.end();
    let _ = locked(&out).and_then(|mut w| w.flush());
    Served { result, repository: session.opened().map(Path::to_path_buf) }
}

/// How a session went: for the process's exit status (stdio) or the server's log (socket mode).
#[derive(Debug)]
pub struct Served {
    /// Whether it ended cleanly.
    pub result: Result<(), ServeError>,
    /// The repository it opened last, if any.
    pub repository: Option<PathBuf>,
}

fn run<R: Input>(session: &mut Session, out: &SharedOutput, mut reader: FrameReader<R>, input_capacity: Option<usize>, stop: &AtomicBool) -> Result<(), ServeError> {
    let mut header = Vec::with_capacity(256);
    // started at the first put they can take; dropped (finishing their puts) when this returns
    let mut writers: Option<PutWriters> = None;
    let mut coalescer = coalesce::Coalescer::new(session.config().coalesce, input_capacity);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(ServeError::Stopped);
        }
        let Some(len) = reader.buffered_frame()? else {
            if reader.needed() >= STREAM_FROM {
                drain(session, writers.as_ref());
                if let Some(method) = stream_message(session, out, &mut reader, &mut header)? {
                    coalescer.handled(method == Method::Put);
                    continue;
                }
            }
            if let Some(w) = &writers {
                w.kick();
            }
            locked(out).and_then(|mut w| w.flush()).map_err(ServeError::Write)?;
            if let Some(nap) = coalescer.before_read() {
                std::thread::sleep(nap);
            }
            match reader.fill() {
                Ok(true) => {
                    coalescer.read(reader.last_read(), reader.drained());
                    continue;
                }
                Ok(false) => return Ok(()), // clean end of input
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let frame = reader.frame(len);
        let value = msgpack::parse(frame).map_err(|e| ServeError::Protocol(e.to_string()))?;
        let request = Request::from_value(value);
        coalescer.handled(matches!(&request, Ok(req) if req.method == "put"));
        match request {
            Ok(req) => match put_later(session, &req, out, &mut writers, coalescer.client_ahead()) {
                Ok(true) => {} // answered by a writer thread once written
                Ok(false) => {
                    drain(session, writers.as_ref());
                    answer(out, &mut header, req.msgid, session.call(&req))?;
                }
                Err(e) => answer(out, &mut header, req.msgid, Err(e))?,
            },
            Err(RequestError::Malformed { msgid, why }) => {
                answer(out, &mut header, msgid, Err(crate::error::CallError::BadRequest { method: "?".into(), why }))?;
            }
            Err(e @ RequestError::Unanswerable(_)) => return Err(ServeError::Protocol(e.to_string())),
        }
        reader.consume(len);
        if header.capacity() > 64 * 1024 {
            header = Vec::with_capacity(256); // an unusually large answer: do not keep its buffer
        }
    }
}

/// Answers request `msgid` with its reply or its exception (`header` is scratch space).
fn answer(out: &SharedOutput, header: &mut Vec<u8>, msgid: i64, result: Result<crate::rpc::Reply, crate::error::CallError>) -> Result<(), ServeError> {
    header.clear();
    match result {
        Ok(reply) => {
            let body = encode_reply(msgid, &reply, header);
            write_answer(out, header, body)
        }
        Err(e) => {
            encode_exception(msgid, &Exception::from(&e), header);
            write_answer(out, header, Body::None)
        }
    }
    .map_err(ServeError::Write)
}

/// Hands a small `put` to the session's writer threads (see [`puts`]) when the client is ahead
/// of us or they are still busy (the session would only wait for them), starting them at the
/// first such put; `Ok(false)` if it is not one they take (then the caller drains them and runs the
/// request in order).
fn put_later(session: &mut Session, req: &Request<'_>, out: &SharedOutput, writers: &mut Option<PutWriters>, client_ahead: bool) -> Result<bool, crate::error::CallError> {
    let n = session.config().put_writers;
    if req.method != "put" || n == 0 {
        return Ok(false);
    }
    if !client_ahead && writers.as_ref().is_none_or(PutWriters::idle) {
        return Ok(false);
    }
    if writers.is_none() {
        match PutWriters::start(out.clone(), n) {
            Ok(w) => *writers = Some(w),
            Err(e) => {
                // no threads to be had: this put is written in order; the next one tries again
                session.log().warning("borgd.server", &format!("borgd: writing a put in order (no writer threads: {e})"));
                return Ok(false);
            }
        }
    }
    let Some(w) = writers.as_ref() else { return Ok(false) };
    let Some((write, value, key)) = session.put_later(req)? else { return Ok(false) };
    let written = w.submit(req.msgid, write, value.to_vec(), key);
    if !written.is_empty() {
        session.note_written(&written);
    }
    Ok(true)
}

/// Waits for the session's writer threads to finish every put handed out, so that whatever
/// comes next sees them all; the repository learns what they wrote and the first failure.
fn drain(session: &mut Session, writers: Option<&PutWriters>) {
    let Some(w) = writers else { return };
    let (error, written) = w.drain();
    session.note_written(&written);
    if let Some(error) = error {
        session.note_write_error(error);
    }
}

/// Messages at least this large are candidates for streaming (see [`stream_message`]): the
/// objects the store writes directly, around the page cache, whose bytes then go from the
/// connection straight into the direct writer's buffer instead of through the message buffer
/// first (objects of 512 KiB – 1 MiB, buffered whole before, were 21 MB of a 250 MB backup's
/// copies); and chunk indexes, which are checked in a temp file instead of in memory.
const STREAM_FROM: usize = crate::store::DIRECT_FROM as usize;

/// The largest message a client may send at all: a streamed value can be as large as msgpack
/// allows (4 GiB, as Python's server accepts for `store_store`), plus its request's other fields.
pub const STREAMED_MAX: usize = (4 << 30) + (64 << 10);

/// If the message being received is a `put` or a `store_store` whose value's header has
/// arrived, handles it now, streaming the value from the connection to the store instead of
/// buffering it whole (chunks are up to 20 MiB, a large repository's chunk index hundreds of
/// MB; memory stays flat). Returns the method it handled; `None` if the message is not one to
/// stream (it is then buffered as usual, within the message limit).
fn stream_message<R: Input>(session: &mut Session, out: &SharedOutput, reader: &mut FrameReader<R>, header: &mut Vec<u8>) -> Result<Option<Method>, ServeError> {
    let Some((bin_start, bin_end, len)) = msgpack::trailing_bin(reader.pending()) else { return Ok(None) };
    // the request with an empty binary in place of the value: parse it as usual
    let mut stub = reader.pending()[..bin_start].to_vec();
    msgpack::encode::bin(&mut stub, &[]);
    let Ok(value) = msgpack::parse(&stub) else { return Ok(None) };
    let Ok(req) = Request::from_value(value) else { return Ok(None) };
    type Streamed = fn(&mut Session, &Request<'_>, u64, &mut dyn Read) -> Result<crate::rpc::Reply, crate::error::CallError>;
    let method = Method::from_name(req.method);
    let handle: Streamed = match method {
        Some(Method::Put) => Session::put_from,
        Some(Method::StoreStore) => Session::store_store_from,
        _ => return Ok(None),
    };
    let mut payload = reader.payload(bin_end, len);
    let result = handle(session, &req, len as u64, &mut payload);
    payload.finish()?; // drains what was not written (after an error), keeping the stream in step
    answer(out, header, req.msgid, result)?;
    Ok(method)
}

/// The size borgd makes its stdin and stdout pipes (the kernel's limit for unprivileged
/// processes): larger pipes mean fewer context switches per large object. The benchmark sizes its
/// own pipes to match, so a recorder or a feeder between client and server changes nothing.
pub const PIPE_SIZE: usize = 1 << 20;

/// Makes `fd` a [`PIPE_SIZE`] pipe if it is a pipe; failure (not a pipe, over the system limit)
/// keeps what it had. One place for the server's own descriptors and the benchmark's.
pub fn enlarge_pipe(fd: impl AsFd) {
    // SAFETY: fcntl on a descriptor the caller holds open.
    unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
}

/// Reads what has already arrived on `fd` without waiting (`WouldBlock` when nothing has), for
/// the frame reader's reads split at message boundaries ([`FrameReader::streaming`]): a pipe or
/// a socket, with `RWF_NOWAIT`. Where the kernel refuses that (another error), the reader stops
/// splitting its reads.
pub fn read_nowait(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a descriptor its owner holds open; one iovec over `buf`, which outlives the call;
    // offset -1 is the current position (the only one a pipe or socket has).
    let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// stdin in stdio mode.
impl<R: Read + AsRawFd> Input for crate::signals::Interruptible<R> {
    fn reads_arrived(&self) -> bool {
        true
    }

    fn read_arrived(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_nowait(self.get_ref(), buf)
    }
}

/// Serves one client on this process's stdin/stdout (the ssh case).
///
/// The descriptors are used unbuffered by Rust's std (whose stdout is line-buffered): we do our
/// own buffering of whole messages.
pub fn serve_stdio(cfg: Arc<Config>, logcfg: &LogConfig, stop: &AtomicBool) -> Result<(), ServeError> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(std::fs::File::from).map_err(ServeError::Write);
    let stdin = dup(io::stdin().as_fd())?;
    let stdout = dup(io::stdout().as_fd())?;
    enlarge_pipe(&stdin);
    enlarge_pipe(&stdout);
    // what the client can send before it blocks, for judging naps (see `coalesce`)
    // SAFETY: fcntl on a valid descriptor we own; -1 (not a pipe) is handled.
    let capacity = usize::try_from(unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_GETPIPE_SZ) }).ok().filter(|&c| c > 0);
    serve_stream(cfg, logcfg, crate::signals::Interruptible::new(stdin), capacity, stdout, 0, stop).result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_without_waiting_take_what_arrived_and_never_block() {
        let (mut rx, mut tx) = io::pipe().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(read_nowait(&rx, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        tx.write_all(b"0123456789").unwrap();
        assert_eq!(read_nowait(&rx, &mut buf).unwrap(), 10);
        assert_eq!(&buf[..10], b"0123456789");
        assert_eq!(read_nowait(&rx, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(tx);
        assert_eq!(read_nowait(&rx, &mut buf).unwrap(), 0); // end of stream
        assert_eq!(rx.read(&mut buf).unwrap(), 0);
    }
}
