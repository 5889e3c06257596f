//! Fewer wake-ups while a client trickles puts in.
//!
//! A backup client sends puts as fast as it reads, chunks and hashes files — for small files far
//! more slowly than we store them. Reading as soon as anything arrives then costs a wake-up per
//! put or two (a `poll` that sleeps, a context switch, on a virtual machine an inter-processor
//! interrupt), and on the benchmark machine those cost a fifth of a backup session's CPU: fed a
//! recorded `borg create` session from a file (never waiting), borgd spent 0.19–0.21 s of CPU
//! on it, live 0.25–0.35 s with 4 400 context switches.
//!
//! Puts are asynchronous: borg's client sends a backup's chunks without waiting for their answers
//! (it blocks only when its pipe to us is full). So after handling puts that emptied the input, the
//! session naps briefly (at first 1 ms, `--coalesce-us`) before reading again, and one wake-up then
//! takes what the client sent in the meantime. Answers are flushed and queued puts handed to the
//! writer threads before the nap. A client that sends one request at a time and waits for each
//! answer would only see its requests delayed, so a nap that brought at most one request turns
//! napping off for the next [`BACK_OFF`] reads, as does one that held a fast client up (see
//! [`Coalescer::before_read`]); and nothing but a put is ever followed by a nap (after any other
//! call the client may be waiting for its answer). Measured (docs/BENCHMARKS.md): `borg create`
//! 2 250 instead of 4 400 context switches, 0.23–0.26 s of CPU instead of 0.25–0.35 s, and a
//! little faster; the protocol benchmark's fast client unchanged.
//!
//! A nap that paid is followed by a longer one, sized to bring about [`TARGET_REQUESTS`] or a
//! quarter of the pipe, up to [`MAX_STRETCH`] times the configured nap (and [`MAX_STRETCHED`]); any
//! other call brings it back to the configured length. A 1 ms nap brought a real `borg create` 6–10
//! small puts; naps of 3–4 ms bring ~24, and the session's waits went from ~950 to ~720
//! (docs/BENCHMARKS.md).
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

/// The longest nap, as a multiple of the configured one: naps grow towards this while each
/// still brings little (see [`Coalescer::before_read`]) …
pub const MAX_STRETCH: u32 = 8;

/// … but never past this, unless the configured nap is longer (then naps stay at that length):
/// an operator who configured long naps gets what they asked for, and no more.
pub const MAX_STRETCHED: Duration = Duration::from_millis(8);

/// A nap is lengthened until it brings about this many requests: well below [`MANY`], so a
/// longer nap is not taken for one that held a fast client up.
pub const TARGET_REQUESTS: u32 = MANY / 2;

/// Where the input's capacity is not known (not a pipe): a nap that brought more than one read
/// takes held a client up, and naps are lengthened until they bring about this many bytes,
/// half of one read.
pub const TARGET_BYTES_UNKNOWN: usize = 128 * 1024;

/// What came in since the last nap, to judge it by.
#[derive(Debug, Default)]
struct SinceNap {
    requests: u32,
    /// Bytes read since the nap.
    bytes: usize,
    /// A request other than a put came (see [`Coalescer::handled`]).
    other: bool,
    /// A read returned all it asked for: more had arrived than one read takes.
    full_read: bool,
}

/// Decides, before each read that may block, whether to nap first and for how long, and whether
/// the client is ahead of the session (see the module docs).
#[derive(Debug)]
pub struct Coalescer {
    /// The configured nap (`--coalesce-us`): the shortest, and the one after a back-off.
    base: Duration,
    /// Bytes the client can send before it blocks (a pipe's capacity), if known.
    capacity: Option<usize>,
    /// The next nap's length, between `base` and [`MAX_STRETCH`] times it (at most
    /// [`MAX_STRETCHED`], or `base` where that is longer).
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
    /// A coalescer napping `nap` at a time at first (zero: never), for an input that holds
    /// `capacity` bytes before its writer blocks (a pipe's size), if known.
    pub fn new(nap: Duration, capacity: Option<usize>) -> Coalescer {
        Coalescer { base: nap, capacity, nap, after_put: false, drained: false, since_nap: None, backoff: 0, batch: 0, last_batch: 0 }
    }

    /// A read from the client returned `bytes`; `drained`: it got less than it asked for.
    pub fn read(&mut self, bytes: usize, drained: bool) {
        self.drained = drained;
        if self.batch > 0 {
            self.last_batch = self.batch;
            self.batch = 0;
        }
        if let Some(s) = &mut self.since_nap {
            s.full_read |= !drained;
            s.bytes += bytes;
        }
    }

    /// A request was handled; `put`: it was a put. Anything else may have a client waiting for
    /// its answer, and the next such call after a put may arrive during a nap: naps are the
    /// configured length again.
    pub fn handled(&mut self, put: bool) {
        self.after_put = put;
        self.batch += 1;
        if let Some(s) = &mut self.since_nap {
            s.requests += 1;
            s.other |= !put;
        }
        if !put {
            self.nap = self.base;
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

    /// Called when no complete request is buffered and the next read may block. Returns how long to
    /// nap before reading, if at all: only after a put, when the last read emptied the input. The
    /// previous nap is judged first: if it brought at most [`FEW`] requests (it saved nothing, or
    /// delayed a client waiting for each answer), or held a client faster than us up ([`MANY`]
    /// requests or more; half the input's capacity or more, where that is known — else more than
    /// one read takes), there is no nap for [`BACK_OFF`] reads, and the next one is the configured
    /// length again. Otherwise the next nap is sized from this one's yield to bring about
    /// [`TARGET_REQUESTS`], or a quarter of the input's capacity, whichever comes first (at most
    /// twice or half as long as this one, between the configured length and [`MAX_STRETCH`] times
    /// it, never past [`MAX_STRETCHED`] unless configured longer): borg's client does not wait for
    /// the answers to a backup's puts, so a longer nap costs it nothing while its pipe has room,
    /// and every wake-up saved saves the server tens of microseconds of CPU on a virtual machine
    /// (docs/BENCHMARKS.md).
    pub fn before_read(&mut self) -> Option<Duration> {
        if let Some(s) = self.since_nap.take() {
            if s.requests <= FEW || self.held_up(&s) {
                self.backoff = BACK_OFF;
                self.nap = self.base;
            } else if !s.other {
                self.nap = self.next_nap(&s);
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

    /// Whether the nap that brought `s` held the client up (see [`Coalescer::before_read`]).
    fn held_up(&self, s: &SinceNap) -> bool {
        s.requests >= MANY
            || match self.capacity {
                Some(c) => s.bytes >= c / 2,
                None => s.full_read,
            }
    }

    /// The length of the nap after one of the current length that brought `s`.
    fn next_nap(&self, s: &SinceNap) -> Duration {
        let target_bytes = self.capacity.map_or(TARGET_BYTES_UNKNOWN, |c| c / 4);
        let by_requests = f64::from(TARGET_REQUESTS) / f64::from(s.requests.max(1));
        let by_bytes = target_bytes as f64 / s.bytes.max(1) as f64;
        let factor = by_requests.min(by_bytes).clamp(0.5, 2.0);
        self.nap.mul_f64(factor).clamp(self.base, (self.base * MAX_STRETCH).min(self.base.max(MAX_STRETCHED)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAP: Duration = Duration::from_millis(1);

    /// A pipe's capacity, as `F_GETPIPE_SZ` gives borgd's stdin.
    const PIPE: usize = crate::server::PIPE_SIZE;

    /// A coalescer with nap `base` that has just handled a put which emptied its input: its
    /// next `before_read` decides the first nap.
    fn after_a_put(base: Duration, capacity: Option<usize>) -> Coalescer {
        let mut c = Coalescer::new(base, capacity);
        c.read(100, true);
        c.handled(true);
        c
    }

    /// A nap, then `requests` puts of `bytes` in all arriving in one read (`full`: it filled the
    /// buffer).
    fn nap_brings(c: &mut Coalescer, requests: u32, bytes: usize, full: bool) {
        c.read(bytes, !full);
        for _ in 0..requests {
            c.handled(true);
        }
    }

    #[test]
    fn naps_only_after_puts_that_emptied_the_input() {
        for capacity in [None, Some(PIPE)] {
            let mut c = Coalescer::new(NAP, capacity);
            c.read(100, true);
            assert_eq!(c.before_read(), None, "nothing handled yet");
            c.handled(false);
            assert_eq!(c.before_read(), None, "after a call the client may be waiting for");
            c.read(100, false);
            c.handled(true);
            assert_eq!(c.before_read(), None, "the client is ahead of us: read at once");
            c.read(100, true);
            assert_eq!(c.before_read(), Some(NAP));
            // naps that bring a few requests each keep napping on
            for _ in 0..10 {
                nap_brings(&mut c, 3, 3 * 1024, false);
                assert!(c.before_read().is_some());
            }
        }
    }

    #[test]
    fn naps_that_did_not_pay_turn_napping_off_for_a_while() {
        let cases = [
            (None, 1, 1024, false, "one request: a client waiting for each answer"),
            (None, 0, 1024, false, "nothing: a large put still arriving"),
            (None, MANY, 50 * 1024, false, "a fast client's window"),
            (None, 5, 256 * 1024, true, "more than one read takes"),
            (Some(PIPE), MANY, 50 * 1024, false, "a fast client's window"),
            (Some(PIPE), 5, PIPE / 2, true, "half the pipe: a fast client"),
        ];
        for (capacity, requests, bytes, full, why) in cases {
            let mut c = after_a_put(NAP, capacity);
            assert_eq!(c.before_read(), Some(NAP));
            nap_brings(&mut c, 4, 4096, false);
            assert_eq!(c.before_read(), Some(NAP * 2), "{why}: a nap that paid is lengthened");
            nap_brings(&mut c, requests, bytes, full);
            for i in 0..BACK_OFF {
                assert_eq!(c.before_read(), None, "{why}: read {i} of the back-off");
                c.read(100, true);
                c.handled(true);
            }
            assert_eq!(c.before_read(), Some(NAP), "{why}: tried again after the back-off, as configured");
        }
    }

    #[test]
    fn a_full_read_is_not_a_fast_client_where_the_pipe_had_room() {
        let mut c = after_a_put(NAP, Some(PIPE));
        assert_eq!(c.before_read(), Some(NAP));
        // 300 KiB arrived: more than one 256 KiB read takes, well under half the pipe
        nap_brings(&mut c, 10, 300 * 1024, true);
        assert_eq!(c.before_read(), None, "more is waiting: read it at once");
        nap_brings(&mut c, 2, 40 * 1024, false);
        assert_eq!(c.before_read(), Some(NAP), "no back-off; not lengthened, past a quarter of the pipe");
    }

    #[test]
    fn naps_grow_towards_their_targets_and_no_further() {
        let mut c = after_a_put(NAP, Some(PIPE));
        let mut nap = c.before_read().unwrap_or_default();
        let mut naps = vec![nap];
        // a client sending 4 small puts per millisecond, 8 KiB each
        for _ in 0..8 {
            let requests = (4.0 * nap.as_secs_f64() * 1000.0) as u32;
            nap_brings(&mut c, requests, requests as usize * 8192, false);
            nap = c.before_read().unwrap_or_default();
            naps.push(nap);
        }
        let ms: Vec<u128> = naps.iter().map(Duration::as_millis).collect();
        // doubling at most per nap; TARGET_REQUESTS (25) at 4 per ms is 6.25 ms
        assert_eq!(ms, [1, 2, 4, 6, 6, 6, 6, 6, 6]);
        // a faster client: the byte target (a quarter of the pipe) shortens them again, by
        // half at most per nap, never below the configured nap
        for _ in 0..4 {
            nap_brings(&mut c, 20, 512 * 1024 - 1, false);
            nap = c.before_read().unwrap_or_default();
        }
        assert_eq!(nap, NAP);
        // a very slow client: never past MAX_STRETCH times the configured nap
        for _ in 0..10 {
            nap_brings(&mut c, 2, 2048, false);
            nap = c.before_read().unwrap_or_default();
        }
        assert_eq!(nap, NAP * MAX_STRETCH);
    }

    #[test]
    fn configured_long_naps_are_not_stretched_past_8_ms_or_their_own_length() {
        for (base_ms, longest_ms) in [(1, 8), (2, 8), (4, 8), (8, 8), (20, 20)] {
            let base = Duration::from_millis(base_ms);
            let mut c = after_a_put(base, Some(PIPE));
            let mut nap = c.before_read().unwrap_or_default();
            // a slow client: every nap brings two small puts
            for _ in 0..10 {
                nap_brings(&mut c, 2, 2048, false);
                nap = c.before_read().unwrap_or_default();
            }
            assert_eq!(nap, Duration::from_millis(longest_ms), "configured {base_ms} ms");
        }
    }

    #[test]
    fn any_other_call_brings_naps_back_to_the_configured_length() {
        let mut c = after_a_put(NAP, Some(PIPE));
        for _ in 0..4 {
            c.before_read();
            nap_brings(&mut c, 3, 3 * 8192, false);
        }
        assert!(c.before_read().is_some_and(|n| n > NAP));
        c.read(100, true);
        c.handled(false); // say, a get the client waits for
        c.handled(true);
        assert_eq!(c.before_read(), Some(NAP));
    }

    #[test]
    fn the_client_is_ahead_while_reads_bring_many_requests() {
        let mut c = Coalescer::new(NAP, None);
        c.read(100, true);
        for i in 0..AHEAD_AT {
            assert!(!c.client_ahead(), "request {i} of the first read");
            c.handled(true);
        }
        assert!(c.client_ahead(), "a large read");
        c.read(100, true); // the rest of a message: no request yet, the last batch still counts
        c.read(100, true);
        c.handled(true);
        assert!(c.client_ahead(), "judged by the read before while this one is small");
        c.read(100, true);
        c.handled(true);
        assert!(!c.client_ahead(), "two small reads: trickling");
        c.read(256 * 1024, false);
        assert!(c.client_ahead(), "a read that got all it asked for (large puts)");
    }

    #[test]
    fn zero_never_naps() {
        let mut c = Coalescer::new(Duration::ZERO, Some(PIPE));
        for _ in 0..3 {
            nap_brings(&mut c, 3, 3000, false);
            assert_eq!(c.before_read(), None);
        }
    }
}
