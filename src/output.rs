//! Where a session's messages go: a buffered writer over the client's stream, plus the stream's
//! descriptor so objects can be sent straight from their files (`sendfile`), without passing
//! through our memory.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

/// Parts at least this large bypass the buffer (no extra copy of a large answer).
const DIRECT_WRITE: usize = 32 * 1024;

/// A session's output stream.
pub struct Output {
    w: BufWriter<Box<dyn Write + Send>>,
    /// The descriptor under `w`, if it has one (pipe or socket): enables `sendfile`.
    fd: Option<RawFd>,
}

/// The output shared by a session and its logger.
pub type SharedOutput = Arc<Mutex<Output>>;

impl Output {
    /// Wraps a writer; `fd` must be the descriptor `w` writes to (it lives as long as `w`).
    pub fn new(w: Box<dyn Write + Send>, fd: Option<RawFd>) -> Output {
        Output { w: BufWriter::with_capacity(256 * 1024, w), fd }
    }

    /// Shared, for a session and its logger.
    pub fn shared(w: Box<dyn Write + Send>, fd: Option<RawFd>) -> SharedOutput {
        Arc::new(Mutex::new(Output::new(w, fd)))
    }

    /// Queues bytes (large ones are written through at once, after what is queued).
    pub fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        if b.len() >= DIRECT_WRITE {
            self.w.flush()?;
            self.w.get_mut().write_all(b)
        } else {
            self.w.write_all(b)
        }
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// Sends exactly `len` bytes of `file` from its start: with `sendfile` where the kernel
    /// allows (page references into a pipe, no copies), else through a bounded buffer.
    pub fn send_file(&mut self, file: &File, len: u64) -> io::Result<()> {
        self.w.flush()?;
        let mut off: libc::off_t = 0;
        if let Some(out) = self.fd {
            while (off as u64) < len {
                let want = (len - off as u64).min(1 << 30) as usize;
                // SAFETY: valid descriptors; off is a valid in/out offset.
                let n = unsafe { libc::sendfile(out, file.as_raw_fd(), &mut off, want) };
                if n > 0 {
                    continue;
                }
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object shrank while being sent"));
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => wait_writable(out)?,
                    // not supported for this pair of descriptors: copy the rest
                    Some(libc::EINVAL) | Some(libc::ENOSYS) => break,
                    _ => return Err(e),
                }
            }
        }
        if (off as u64) < len {
            let mut rest = file.try_clone()?;
            std::io::Seek::seek(&mut rest, io::SeekFrom::Start(off as u64))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = len - off as u64;
            while left > 0 {
                let step = left.min(buf.len() as u64) as usize;
                let n = rest.read(&mut buf[..step])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object shrank while being sent"));
                }
                self.w.get_mut().write_all(&buf[..n])?;
                left -= n as u64;
            }
        }
        Ok(())
    }
}

fn wait_writable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// A writer into memory that tests read back (the bytes a client would receive).
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_sent_whole_through_a_pipe_and_without_a_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        let fd = w.as_raw_fd();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        let mut out = Output::new(Box::new(w), Some(fd));
        out.write_all(b"head").unwrap();
        out.send_file(&File::open(&path).unwrap(), content.len() as u64).unwrap();
        drop(out);
        let got = reader.join().unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &content[..]);
        // no descriptor: the copy path
        let sink = Captured::default();
        let mut out = Output::new(Box::new(sink.clone()), None);
        out.send_file(&File::open(&path).unwrap(), content.len() as u64).unwrap();
        assert_eq!(*sink.0.lock().unwrap(), content);
        // a file shorter than promised is an error, never a short answer
        let mut out = Output::new(Box::new(sink), None);
        assert!(out.send_file(&File::open(&path).unwrap(), content.len() as u64 + 1).is_err());
    }
}
