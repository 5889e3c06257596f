//! Bytes ↔ whole msgpack messages over a stream, with a hard size limit.
//!
//! The reader owns the receive buffer and nothing else. It hands out complete messages only, tells
//! a clean end of stream (nothing buffered) apart from a peer that vanished mid-message, and never
//! grows its buffer beyond the message size limit, whatever a length header announces. Messages
//! its caller streams (see [`FrameReader::payload`]) may be larger: they are never held whole.

use std::io::{self, Read};

use super::msgpack::{self, DecodeError};

/// Why no further message can be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream in the middle of a message.
    #[error("connection closed in the middle of a message ({0} bytes buffered)")]
    Truncated(usize),
    /// A message larger than the limit was announced.
    #[error("{0}")]
    TooLarge(String),
    /// The bytes are not msgpack we accept.
    #[error("{0}")]
    Invalid(String),
    /// Reading failed.
    #[error("read from client: {0}")]
    Io(#[from] io::Error),
}

/// Reads whole messages from `R`, keeping at most `limit` bytes of one message in memory.
pub struct FrameReader<R> {
    inner: R,
    /// Storage; `buf[start..end]` holds received bytes not yet consumed. Bytes past `end` are
    /// initialised scratch space, so reads never pay for zeroing memory again.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: usize,
    /// The largest message at all: larger than `limit` only for messages the caller streams
    /// (see [`FrameReader::streams_up_to`]).
    max: usize,
    /// Bytes the message at `start` needs at least, from the last check (avoids rescans).
    needed: usize,
    /// The last read returned less than it asked for: the sender is slower than we are.
    drained: bool,
    /// Bytes the last read returned.
    last_read: usize,
    /// Messages at least this long are streamed by the caller (see [`FrameReader::streaming`]).
    stream_from: usize,
}

/// What a [`FrameReader`] reads from: a byte stream that can perhaps also hand over what has
/// already arrived without waiting for more (pipes and sockets can; a test's byte slice need not).
pub trait Input: Read {
    /// Whether [`read_arrived`](Input::read_arrived) works here.
    fn reads_arrived(&self) -> bool {
        false
    }

    /// Reads what has already arrived, never waiting: `WouldBlock` when nothing has.
    fn read_arrived(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl Input for &[u8] {}

/// The benchmark's reader of a server's answers (it streams nothing).
impl Input for std::process::ChildStdout {}

/// Inputs chosen at run time (the benchmark reads servers over pipes and unix sockets alike).
impl<T: Input + ?Sized> Input for Box<T> {
    fn reads_arrived(&self) -> bool {
        (**self).reads_arrived()
    }

    fn read_arrived(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_arrived(buf)
    }
}

/// At a message boundary a reader that streams large messages first reads this much: enough
/// for any message's header, so a large one's data stays in the stream for its destination.
const PROBE: usize = 4096;

/// The buffer's initial size, and how much it grows by when full.
const READ_CHUNK: usize = 256 * 1024;

impl<R: Input> FrameReader<R> {
    /// A reader for messages of at most `limit` bytes.
    pub fn new(inner: R, limit: usize) -> FrameReader<R> {
        FrameReader { inner, buf: vec![0; READ_CHUNK], start: 0, end: 0, limit, max: limit, needed: 1, drained: false, last_read: 0, stream_from: usize::MAX }
    }

    /// Lets messages of up to `max` bytes be announced: the caller streams those larger than
    /// the limit (see [`payload`](Self::payload)) before asking for more bytes, and
    /// [`fill`](Self::fill) refuses to buffer one it did not stream.
    pub fn streams_up_to(mut self, max: usize) -> FrameReader<R> {
        self.max = max.max(self.limit);
        self
    }

    /// Tells the reader that its caller streams messages of at least `len` bytes (see
    /// [`payload`](Self::payload)) rather than waiting for them whole. A read at a message
    /// boundary then takes the next message's first 4 KiB, and the rest of what has
    /// arrived (without waiting) only if that message is not one to stream: a large message's
    /// data is copied out of the stream once, straight to where it goes, instead of into this
    /// buffer and then again (a `create` session read each large chunk's first ~290 KB into this
    /// buffer: 30 MB of 256 MB copied twice, 4% of its CPU). Only for inputs that can read
    /// without waiting, so that a read still takes everything that has arrived.
    pub fn streaming(mut self, len: usize) -> FrameReader<R> {
        if self.inner.reads_arrived() {
            self.stream_from = len;
        }
        self
    }

    /// The length of the next complete message if one is buffered; never reads.
    pub fn buffered_frame(&mut self) -> Result<Option<usize>, FrameError> {
        if self.end - self.start < self.needed {
            return Ok(None);
        }
        match msgpack::check(&self.buf[self.start..self.end], self.max) {
            Ok(n) => Ok(Some(n)),
            Err(DecodeError::Incomplete { needed }) => {
                self.needed = needed;
                Ok(None)
            }
            Err(e @ DecodeError::TooLarge { .. }) => Err(FrameError::TooLarge(e.to_string())),
            Err(e @ DecodeError::Invalid(_)) => Err(FrameError::Invalid(e.to_string())),
        }
    }

    /// The bytes of the message [`buffered_frame`](Self::buffered_frame) measured.
    pub fn frame(&self, len: usize) -> &[u8] {
        &self.buf[self.start..self.start + len]
    }

    /// Drops a handled message from the buffer.
    pub fn consume(&mut self, len: usize) {
        self.start += len;
        self.needed = 1;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The bytes received so far of the message being received.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// How long the message being received is at least (from the last check).
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// The last `len` bytes of the message being received, from `offset` into it, as a reader
    /// that takes what is buffered and then reads the rest from the stream: a large payload
    /// goes to its destination without ever being held whole. Call [`Payload::finish`].
    pub fn payload(&mut self, offset: usize, len: usize) -> Payload<'_, R> {
        let at = self.start + offset;
        Payload { reader: self, at, remaining: len }
    }

    /// Whether the last [`fill`](Self::fill) emptied the stream (got less than it asked for).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// How many bytes the last [`fill`](Self::fill) got (how fast the sender is).
    pub fn last_read(&self) -> usize {
        self.last_read
    }

    /// Reads more bytes (blocking). `Ok(false)` on a clean end of stream. A message larger than
    /// the limit that the caller did not stream is refused here, before any of it is buffered.
    pub fn fill(&mut self) -> Result<bool, FrameError> {
        if self.needed > self.limit {
            return Err(FrameError::TooLarge(DecodeError::TooLarge { announced: self.needed, limit: self.limit }.to_string()));
        }
        // move a partial message to the front so the buffer never grows past one message.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // grow to fit the message being received; the buffer then keeps its size for the
        // session (the largest message sets the peak either way; regrowing for every large
        // put would only add page faults and zeroing)
        let want = self.needed.max(self.end + READ_CHUNK).min(self.limit.max(READ_CHUNK));
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        let room = self.buf.len() - self.end;
        let probe = self.end == 0 && self.stream_from < usize::MAX && room > PROBE;
        let asked = if probe { PROBE } else { room };
        let n = self.inner.read(&mut self.buf[self.end..self.end + asked])?;
        self.drained = n < asked;
        self.last_read = n;
        self.end += n;
        if n == 0 {
            return if self.end == 0 { Ok(false) } else { Err(FrameError::Truncated(self.end)) };
        }
        if probe && !self.drained && !self.streams_next() {
            self.take_arrived(room);
        }
        Ok(true)
    }

    /// Whether the message at the start of the buffer is one the caller streams (its header
    /// says how long it is); remembers its length so that it is not measured again.
    fn streams_next(&mut self) -> bool {
        match msgpack::check(&self.buf[self.start..self.end], self.max) {
            Err(DecodeError::Incomplete { needed }) => {
                self.needed = needed;
                needed >= self.stream_from
            }
            // complete, or not ours to judge here: `buffered_frame` says which
            _ => false,
        }
    }

    /// After a probe: the rest of what has arrived, as if one read of `room` bytes had been made.
    /// Any failure leaves the probe's bytes as the read (the next read meets a real error); one
    /// that is not "nothing arrived" stops the probing.
    fn take_arrived(&mut self, room: usize) {
        match self.inner.read_arrived(&mut self.buf[self.end..]) {
            Ok(k) => {
                self.end += k;
                self.last_read += k;
                self.drained = self.last_read < room;
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => self.drained = true,
            Err(_) => self.stream_from = usize::MAX,
        }
    }
}

/// The streamed tail of a message; see [`FrameReader::payload`].
pub struct Payload<'a, R> {
    reader: &'a mut FrameReader<R>,
    /// Position in the reader's buffer of the next buffered payload byte.
    at: usize,
    remaining: usize,
}

impl<R: Input> Read for Payload<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out.len().min(self.remaining);
        let n = if self.at < self.reader.end {
            let n = want.min(self.reader.end - self.at);
            out[..n].copy_from_slice(&self.reader.buf[self.at..self.at + n]);
            self.at += n;
            n
        } else {
            let n = self.reader.inner.read(&mut out[..want])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a message"));
            }
            n
        };
        self.remaining -= n;
        Ok(n)
    }
}

impl<R: Input> Payload<'_, R> {
    /// Reads and drops what the consumer left unread (the stream stays in step even when
    /// writing the payload failed), then drops the whole message from the reader.
    pub fn finish(mut self) -> Result<(), FrameError> {
        let mut scratch = Vec::new();
        while self.remaining > 0 {
            if scratch.is_empty() {
                scratch = vec![0u8; 64 * 1024];
            }
            match self.read(&mut scratch) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Truncated(self.remaining)),
                Err(e) => return Err(e.into()),
            }
        }
        // everything buffered belonged to this message (it was incomplete)
        self.reader.start = 0;
        self.reader.end = 0;
        self.reader.needed = 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::msgpack::encode;

    fn two_messages() -> Vec<u8> {
        let mut out = Vec::new();
        encode::map(&mut out, 1);
        encode::str(&mut out, "i");
        encode::int(&mut out, 1);
        encode::bin(&mut out, &vec![5u8; 300_000]);
        out
    }

    /// Delivers its bytes in tiny pieces, as a slow pipe would.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = b.len().min(7).min(self.0.len() - self.1);
            b[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    impl Input for Trickle {}

    /// A pipe holding `arrived` bytes: blocking reads and reads without waiting both take from
    /// it; records each read's kind and size.
    struct Pipe {
        arrived: Vec<u8>,
        at: usize,
        reads: Vec<(&'static str, usize)>,
    }
    impl Read for Pipe {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = b.len().min(self.arrived.len() - self.at);
            b[..n].copy_from_slice(&self.arrived[self.at..self.at + n]);
            self.at += n;
            self.reads.push(("read", n));
            Ok(n)
        }
    }
    impl Input for Pipe {
        fn reads_arrived(&self) -> bool {
            true
        }
        fn read_arrived(&mut self, b: &mut [u8]) -> io::Result<usize> {
            if self.at == self.arrived.len() {
                self.reads.push(("nowait", 0));
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.read(b)?;
            self.reads.pop();
            self.reads.push(("nowait", n));
            Ok(n)
        }
    }

    #[test]
    fn at_a_boundary_a_streamed_message_stays_in_the_stream_and_others_arrive_whole() {
        // small messages, then one to stream (600 000 bytes of data), then another small one
        let mut bytes = Vec::new();
        for _ in 0..3 {
            encode::bin(&mut bytes, &[1u8; 10_000]);
        }
        encode::bin(&mut bytes, &vec![2u8; 600_000]);
        encode::bin(&mut bytes, &[3u8; 10]);
        let pipe = Pipe { arrived: bytes, at: 0, reads: Vec::new() };
        let mut r = FrameReader::new(pipe, 1 << 20).streaming(512 * 1024);
        // one fill takes everything that has arrived up to its room, in two reads
        assert!(r.fill().unwrap());
        assert_eq!(r.inner.reads, vec![("read", PROBE), ("nowait", READ_CHUNK - PROBE)]);
        assert!(!r.drained());
        assert_eq!(r.last_read(), READ_CHUNK);
        for _ in 0..3 {
            let n = r.buffered_frame().unwrap().unwrap();
            assert_eq!(n, 10_003);
            r.consume(n);
        }
        // three messages ahead, the large one's head came with that read: stream the rest
        assert!(r.buffered_frame().unwrap().is_none());
        assert!(r.needed() >= 512 * 1024);
        let mut p = r.payload(5, 600_000);
        std::io::copy(&mut p, &mut std::io::sink()).unwrap();
        p.finish().unwrap();
        // at the boundary after it: a probe, which empties the pipe (so no second read)
        r.inner.reads.clear();
        assert!(r.fill().unwrap());
        assert_eq!(r.inner.reads, vec![("read", 12)]);
        assert!(r.drained());
        assert_eq!(r.buffered_frame().unwrap(), Some(12));
        r.consume(12);

        // a message to stream at a boundary: only the probe is read, its data stays in the pipe
        let mut bytes = Vec::new();
        encode::bin(&mut bytes, &vec![2u8; 600_000]);
        let pipe = Pipe { arrived: bytes, at: 0, reads: Vec::new() };
        let mut r = FrameReader::new(pipe, 1 << 20).streaming(512 * 1024);
        assert!(r.fill().unwrap());
        assert_eq!(r.inner.reads, vec![("read", PROBE)]);
        assert!(r.buffered_frame().unwrap().is_none());
        assert_eq!(r.needed(), 600_005);
        assert_eq!(r.inner.at, PROBE);
    }

    #[test]
    fn without_streaming_or_reads_without_waiting_a_read_takes_all_its_room() {
        let mut bytes = Vec::new();
        encode::bin(&mut bytes, &vec![2u8; 600_000]);
        let pipe = Pipe { arrived: bytes.clone(), at: 0, reads: Vec::new() };
        let mut r = FrameReader::new(pipe, 1 << 20);
        assert!(r.fill().unwrap());
        assert_eq!(r.inner.reads, vec![("read", READ_CHUNK)]);
        let mut r = FrameReader::new(Trickle(bytes, 0), 1 << 20).streaming(512 * 1024);
        assert!(r.fill().unwrap());
        assert_eq!(r.last_read(), 7);
    }

    #[test]
    fn messages_split_anywhere_are_reassembled() {
        let bytes = two_messages();
        let mut r = FrameReader::new(Trickle(bytes, 0), 1 << 20);
        let mut lens = Vec::new();
        loop {
            match r.buffered_frame().unwrap() {
                Some(n) => {
                    lens.push(n);
                    r.consume(n);
                }
                None => {
                    if !r.fill().unwrap() {
                        break;
                    }
                }
            }
        }
        assert_eq!(lens.len(), 2);
        assert_eq!(lens[1], 300_005);
    }

    #[test]
    fn payloads_stream_from_buffer_then_stream_and_keep_the_stream_in_step() {
        let mut bytes = vec![0xc6, 0, 0, 0, 10];
        bytes.extend_from_slice(b"0123456789");
        bytes.push(0x07); // the next message
        let mut r = FrameReader::new(Trickle(bytes, 0), 1 << 20);
        r.fill().unwrap(); // 7 bytes: header and "01"
        assert!(r.buffered_frame().unwrap().is_none());
        assert_eq!(r.needed(), 15);
        let mut p = r.payload(5, 10);
        let mut first = [0u8; 4];
        p.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"0123");
        p.finish().unwrap(); // drains "456789" unread
        r.fill().unwrap();
        assert_eq!(r.buffered_frame().unwrap(), Some(1));
        assert_eq!(r.frame(1), &[0x07]);
    }

    #[test]
    fn truncated_and_oversized_messages_are_errors() {
        let bytes = two_messages();
        let mut r = FrameReader::new(&bytes[..bytes.len() - 1], 1 << 20);
        let mut seen = 0;
        let err = loop {
            match r.buffered_frame() {
                Ok(Some(n)) => {
                    seen += 1;
                    r.consume(n);
                }
                Ok(None) => match r.fill() {
                    Ok(true) => {}
                    Ok(false) => panic!("clean EOF"),
                    Err(e) => break e,
                },
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(seen, 1);
        assert!(matches!(err, FrameError::Truncated(_)));
        let mut r = FrameReader::new(&bytes[..], 1000);
        r.fill().unwrap();
        let n = r.buffered_frame().unwrap().unwrap();
        r.consume(n);
        assert!(matches!(r.buffered_frame(), Err(FrameError::TooLarge(_))));
    }
}
