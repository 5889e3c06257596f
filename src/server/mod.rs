//! Serving clients: the loop that connects the frame reader, the session and the output.
//!
//! [`serve_stream`] runs one session over any byte stream (stdin/stdout for ssh, a unix socket
//! connection in socket mode). Responses and log records are buffered and flushed whenever no
//! further complete request is buffered, so a client keeping 100 requests in flight gets its
//! answers in a few large writes. However the stream ends — close, end of input, a broken pipe,
//! a protocol error or a signal — the session ends too, releasing its lock.

pub mod paths;
pub mod session;
pub mod socket;

use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::log::{Level, Log, Output};
use crate::rpc::frame::{FrameError, FrameReader};
use crate::rpc::wire::{encode_exception, Exception};
use crate::rpc::{encode_reply, msgpack, Request, RequestError};
pub use session::{Config, Session};

/// How a session ended, when it did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Protocol(String),
    #[error("write to client: {0}")]
    Write(io::Error),
    #[error("stopped by signal")]
    Stopped,
}

/// Logging wishes of the client (`--debug`, `--debug-topic`, ...).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: Level,
    pub topics: Vec<String>,
}

fn write_all_shared(out: &Output, parts: &[&[u8]]) -> io::Result<()> {
    let mut w = out.lock().map_err(|_| io::Error::other("output lock poisoned"))?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

fn flush_shared(out: &Output) -> io::Result<()> {
    out.lock().map_err(|_| io::Error::other("output lock poisoned"))?.flush()
}

/// Serves one client over `input`/`output` until the stream ends or `stop` is set.
pub fn serve_stream<R: Read, W: Write + Send + 'static>(
    cfg: Arc<Config>,
    logcfg: &LogConfig,
    input: R,
    output: W,
    thread: i64,
    stop: &AtomicBool,
) -> Result<(), ServeError> {
    let out: Output = Arc::new(Mutex::new(Box::new(BufWriter::with_capacity(256 * 1024, output))));
    let log = Log::new(logcfg.level, logcfg.topics.clone(), Some(out.clone()), false);
    let mut session = Session::new(cfg.clone(), log, thread);
    let result = run(&mut session, &out, FrameReader::new(input, cfg.max_message), stop);
    if let Err(e) = &result {
        // tell the client (if it still listens) why we hang up; then end the session.
        session.log().error("borgd.server", &format!("borgd: ending session: {e}"));
    }
    session.end();
    let _ = flush_shared(&out);
    result
}

fn run<R: Read>(session: &mut Session, out: &Output, mut reader: FrameReader<R>, stop: &AtomicBool) -> Result<(), ServeError> {
    let mut header = Vec::with_capacity(256);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(ServeError::Stopped);
        }
        let Some(len) = reader.buffered_frame()? else {
            flush_shared(out).map_err(ServeError::Write)?;
            match reader.fill() {
                Ok(true) => continue,
                Ok(false) => return Ok(()), // clean end of input
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let frame = reader.frame(len);
        let value = msgpack::parse(frame).map_err(|e| ServeError::Protocol(e.to_string()))?;
        header.clear();
        match Request::from_value(value) {
            Ok(req) => match session.call(&req) {
                Ok(reply) => {
                    // large binaries go out without being copied behind the header
                    let data = encode_reply(req.msgid, &reply, &mut header).unwrap_or_default();
                    write_all_shared(out, &[&header, data]).map_err(ServeError::Write)?;
                }
                Err(e) => {
                    encode_exception(req.msgid, &Exception::from(&e), &mut header);
                    write_all_shared(out, &[&header]).map_err(ServeError::Write)?;
                }
            },
            Err(RequestError::Malformed { msgid, why }) => {
                let e = crate::error::CallError::BadRequest { method: "?".into(), why };
                encode_exception(msgid, &Exception::from(&e), &mut header);
                write_all_shared(out, &[&header]).map_err(ServeError::Write)?;
            }
            Err(e @ RequestError::Unanswerable(_)) => return Err(ServeError::Protocol(e.to_string())),
        }
        reader.consume(len);
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
    serve_stream(cfg, logcfg, stdin, stdout, 0, stop)
}
