//! Fewer wake-ups while a client trickles puts in.
//!
//! A backup client sends puts as fast as it reads, chunks and hashes files — for small files far
//! more slowly than we store them. Reading as soon as anything arrives then costs a wake-up per
//! put or two (a `poll` that sleeps, a context switch, on a virtual machine an inter-processor
//! interrupt), and on the benchmark machine those cost a fifth of a backup session's CPU: fed a
//! recorded `borg create` session from a file (never waiting), borgd spent 0.19–0.21 s of CPU
//! on it, live 0.25–0.35 s with 4 400 context switches.
//!
//! Puts are asynchronous: borg's client keeps up to 100 requests in flight and waits for none of
//! them. So after handling puts that emptied the input, the session naps briefly (default 1 ms,
//! `--coalesce-us`) before reading again, and one wake-up then takes what the client sent in the
//! meantime. Answers are flushed and queued puts handed to the writer threads before the nap.
//! A client that sends one request at a time and waits for each answer would only see its
//! requests delayed, so a nap that brought at most one request turns napping off for the next
//! [`BACK_OFF`] reads, as does one that held a fast client up (see
//! [`Coalescer::before_read`]); and nothing but a put is ever followed by a nap (after any other
//! call the client may be waiting for its answer). Measured (docs/BENCHMARKS.md): `borg create`
//! 2 250 instead of 4 400 context switches, 0.23–0.26 s of CPU instead of 0.25–0.35 s, and a
//! little faster; the protocol benchmark's fast client unchanged.
//!
//! The same observations say when the session's writer threads pay ([`Coalescer::client_ahead`]):
//! while the client is ahead of the session, not while it trickles.

use std::time::Duration;

/// Reads without napping after a nap that did not pay (see [`Coalescer::before_read`]).
pub const BACK_OFF: u32 = 64;

/// A nap that brought at most this many requests saved no wake-up: the client is slower than
/// the nap (or sends one request at a time and waits for each answer).
pub const FEW: u32 = 1;

/// A nap that brought at least this many requests held a fast client up: borg's client keeps at
/// most 100 in flight, and had half of them waiting on us.
pub const MANY: u32 = 50;

/// Requests one read brings (this one or the one before) from which the client counts as ahead
/// of us: then the session's writer threads take its small puts (see [`Coalescer::client_ahead`]).
pub const AHEAD_AT: u32 = 8;

/// Default nap: long enough for a client preparing small files to send a few more, short next
/// to its own work per file.
pub const DEFAULT_NAP_US: u64 = 1000;

/// What came in since the last nap, to judge it by.
#[derive(Debug, Default)]
struct SinceNap {
    requests: u32,
    /// A read returned all it asked for: more had arrived than one read takes.
    full_read: bool,
}

/// Decides, before each read that may block, whether to nap first, and whether the client is
/// ahead of the session (see the module docs).
#[derive(Debug)]
pub struct Coalescer {
    nap: Duration,
    /// The last request handled was a put.
    after_put: bool,
    /// The last read emptied the input: the client is slower than we are.
    drained: bool,
    /// Since the last nap, until it is judged.
    since_nap: Option<SinceNap>,
    /// Reads left before napping is considered again.
    backoff: u32,
    /// Requests handled since the last read that brought any, and in the batch before.
    batch: u32,
    last_batch: u32,
}

impl Coalescer {
    /// A coalescer napping `nap` at a time (zero: never).
    pub fn new(nap: Duration) -> Coalescer {
        Coalescer { nap, after_put: false, drained: false, since_nap: None, backoff: 0, batch: 0, last_batch: 0 }
    }

    /// A read from the client returned; `drained`: it got less than it asked for.
    pub fn read(&mut self, drained: bool) {
        self.drained = drained;
        if self.batch > 0 {
            self.last_batch = self.batch;
            self.batch = 0;
        }
        if let Some(s) = &mut self.since_nap {
            s.full_read |= !drained;
        }
    }

    /// A request was handled; `put`: it was a put.
    pub fn handled(&mut self, put: bool) {
        self.after_put = put;
        self.batch += 1;
        if let Some(s) = &mut self.since_nap {
            s.requests += 1;
        }
    }

    /// Whether the client sends faster than one thread stores: the last read got all it asked
    /// for, or a read (this one or the one before) brought at least [`AHEAD_AT`] requests. Then
    /// handing small puts to writer threads pays (two cores storing at once: 36 000 instead of
    /// 21 000 1 KiB puts per second in the protocol benchmark); while the client trickles, each
    /// hand-over only adds wake-ups (a `borg create`: 1 500 instead of 2 400 context switches
    /// when the session writes them itself).
    pub fn client_ahead(&self) -> bool {
        !self.drained || self.batch.max(self.last_batch) >= AHEAD_AT
    }

    /// Called when no complete request is buffered and the next read may block. Returns how
    /// long to nap before reading, if at all: only after a put, when the last read emptied the
    /// input. The previous nap is judged first: if it brought at most [`FEW`] requests (it saved
    /// nothing, or delayed a client waiting for each answer), [`MANY`] or more, or more than one
    /// read takes (it held up a client faster than us), there is no nap for [`BACK_OFF`] reads.
    pub fn before_read(&mut self) -> Option<Duration> {
        if let Some(s) = self.since_nap.take() {
            if s.full_read || s.requests <= FEW || s.requests >= MANY {
                self.backoff = BACK_OFF;
            }
        }
        if self.backoff > 0 {
            self.backoff -= 1;
            return None;
        }
        if self.nap.is_zero() || !self.after_put || !self.drained {
            return None;
        }
        self.since_nap = Some(SinceNap::default());
        Some(self.nap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAP: Duration = Duration::from_millis(1);

    /// A nap, then `requests` puts arriving in one read (`full`: it filled the buffer).
    fn nap_brings(c: &mut Coalescer, requests: u32, full: bool) {
        c.read(!full);
        for _ in 0..requests {
            c.handled(true);
        }
    }

    #[test]
    fn naps_only_after_puts_that_emptied_the_input() {
        let mut c = Coalescer::new(NAP);
        c.read(true);
        assert_eq!(c.before_read(), None, "nothing handled yet");
        c.handled(false);
        assert_eq!(c.before_read(), None, "after a call the client may be waiting for");
        c.read(false);
        c.handled(true);
        assert_eq!(c.before_read(), None, "the client is ahead of us: read at once");
        c.read(true);
        assert_eq!(c.before_read(), Some(NAP));
        // naps that bring a few requests each keep napping on
        for _ in 0..10 {
            nap_brings(&mut c, 3, false);
            assert_eq!(c.before_read(), Some(NAP));
        }
    }

    #[test]
    fn naps_that_did_not_pay_turn_napping_off_for_a_while() {
        for (requests, full, why) in [(1, false, "one request: a client waiting for each answer"), (0, false, "nothing: a large put still arriving"), (MANY, false, "a fast client's window"), (5, true, "more than one read takes")] {
            let mut c = Coalescer::new(NAP);
            c.read(true);
            c.handled(true);
            assert_eq!(c.before_read(), Some(NAP));
            nap_brings(&mut c, requests, full);
            for i in 0..BACK_OFF {
                assert_eq!(c.before_read(), None, "{why}: read {i} of the back-off");
                c.read(true);
                c.handled(true);
            }
            assert_eq!(c.before_read(), Some(NAP), "{why}: tried again after the back-off");
        }
    }

    #[test]
    fn the_client_is_ahead_while_reads_bring_many_requests() {
        let mut c = Coalescer::new(NAP);
        c.read(true);
        for i in 0..AHEAD_AT {
            assert!(!c.client_ahead(), "request {i} of the first read");
            c.handled(true);
        }
        assert!(c.client_ahead(), "a large read");
        c.read(true); // the rest of a message: no request yet, the last batch still counts
        c.read(true);
        c.handled(true);
        assert!(c.client_ahead(), "judged by the read before while this one is small");
        c.read(true);
        c.handled(true);
        assert!(!c.client_ahead(), "two small reads: trickling");
        c.read(false);
        assert!(c.client_ahead(), "a read that got all it asked for (large puts)");
    }

    #[test]
    fn zero_never_naps() {
        let mut c = Coalescer::new(Duration::ZERO);
        for _ in 0..3 {
            nap_brings(&mut c, 3, false);
            assert_eq!(c.before_read(), None);
        }
    }
}
