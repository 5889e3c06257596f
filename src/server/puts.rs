//! Small puts written by a few threads at once, so that one session's file-system waits overlap.
//!
//! Creating an object's file can block on a disk read the kernel needs first (an inode bitmap,
//! an inode-table block, a directory block). A server writing one object at a time — Python's,
//! or ours by default — sits idle through every such read, and a backup into a new repository
//! makes many of them: in a profile of 20 000 fresh 1 KiB puts, borgd was off the CPU for half
//! of the phase, nearly all of it in `mkdir`/`open` waiting for metadata. With writer threads
//! (`--put-writers N`), those waits overlap (a C loop doing the same writes: 8 400–9 100
//! objects/s on one thread, 11 000–16 200/s on four, for the same CPU time). That pays for a
//! client faster than the disk, and costs CPU; off by default (see [`WRITERS`]).
//!
//! Only while the client is ahead of the session (see `server::coalesce::Coalescer::client_ahead`):
//! a client that trickles puts in gains nothing from the threads, and each hand-over costs it
//! wake-ups, so the session then writes its puts itself.
//!
//! What the client sees does not change. A put is answered once written, with its own msgid;
//! borg's client matches answers by msgid (puts are asynchronous calls, answered in any order).
//! Every other request waits until every put handed out so far is written and answered
//! ([`PutWriters::drain`]), so it sees the repository exactly as if the puts had run one after
//! the other; a put of an object that is still being written waits for that write as well.
//! What the writers wrote successfully is handed back to the session (at that drain, or in
//! batches of [`HAND_BACK_AT`]), so the repository knows those objects exist (`repository::written`).
//! Objects stay small here (below [`LATER_BELOW`]): large ones are written by the session
//! itself, streamed and around the page cache. Memory is bounded by [`MAX_BYTES`] of copied
//! values in flight.
//!
//! Waking a thread is the expensive part of handing it work: a system call and a context switch,
//! often on a CPU that was idle. So puts are handed out in batches: the session queues what one
//! read from the client brought and wakes idle writers when it is about to wait — for the client
//! ([`PutWriters::kick`]) or for the writers — or when [`KICK_AT`] puts (or [`KICK_BYTES`]) are
//! queued; a writer takes queued puts one after the other without sleeping in between, and wakes
//! a waiting session only once what it waits for is reached (half of the pending limit when full).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::CallError;
use crate::fasthash::FastBuild;
use crate::output::SharedOutput;
use crate::rpc::wire::{encode_exception, Exception};
use crate::rpc::{encode_reply, Reply};
use crate::repository::WrittenKey;
use crate::store::{Durability, LaterWrite};

/// Writer threads per session unless `--put-writers` says otherwise: none, so each session
/// writes its puts itself. That costs the least CPU: in the same runs, 5% less for 1 KiB puts
/// into a new repository than four writers (0.93 against 0.98 s for 20 000) and 7% less for a
/// real `borg create` (0.226 against 0.244 s), no slower in wall time with a real client, which
/// sends more slowly than one thread stores (docs/BENCHMARKS.md); and a backup host's many
/// sessions overlap each other's waits anyway. Writers pay for one client faster than the disk:
/// four lift its 1 KiB put rate 1.6× (21 000 → 34 500/s into a new repository; four covered
/// most of the waiting in the C loop above, eight did a little better on two cores).
pub const WRITERS: usize = 0;

/// Writer threads per session with `--fsync=always` unless `--put-writers` says otherwise: there
/// every put waits for its own `fsync`, and four writers overlap those waits (2 377 instead of
/// 1 825 1 KiB puts per second, docs/BENCHMARKS.md).
pub const WRITERS_ALWAYS: usize = 4;

/// The writer threads a session gets unless `--put-writers` says otherwise.
pub fn default_writers(durability: Durability) -> usize {
    if durability == Durability::Always {
        WRITERS_ALWAYS
    } else {
        WRITERS
    }
}

/// Puts of values at least this large are written by the session itself (see the module docs):
/// the ones the store writes directly, with the session's aligned buffer.
pub const LATER_BELOW: usize = crate::store::DIRECT_FROM as usize;

/// Bytes of values copied out of the receive buffer and not yet written, at most (a put that
/// would exceed it waits). Keeps a session's memory flat whatever the client has in flight.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// Puts handed out and not yet answered, at most.
const MAX_PENDING: usize = 64;

/// Keys of objects written successfully at which [`PutWriters::submit`] hands them back to the
/// session, so that a long run of puts without any other request keeps this list short.
pub const HAND_BACK_AT: usize = 1024;

/// Queued puts at which the session wakes an idle writer without waiting for the end of the
/// batch (so a large batch is written while the rest of it is still being decoded).
pub const KICK_AT: usize = 16;

/// Queued bytes at which the session wakes an idle writer without waiting for the end of the
/// batch (a batch of 64 KiB objects).
pub const KICK_BYTES: usize = 256 * 1024;

struct Job {
    msgid: i64,
    write: LaterWrite,
    value: Vec<u8>,
    key: WrittenKey,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Bytes of the values in `queue`.
    queued_bytes: usize,
    /// Handed out and not yet answered (queued or being written).
    pending: usize,
    /// Bytes of the values pending.
    bytes: usize,
    /// Names of the objects pending.
    names: HashSet<String, FastBuild>,
    /// The first failure since the last [`PutWriters::drain`].
    error: Option<String>,
    /// Objects written successfully and not yet handed back to the session.
    written: Vec<WrittenKey>,
    closing: bool,
    /// The session thread waits for puts to finish (in `submit` or `drain`), until this.
    session_waits: Option<Until>,
    /// Writers waiting for work and not yet woken (a notification is a system call even when
    /// nobody waits; a writer woken twice is a wasted one).
    idle: usize,
    /// Writers woken and not yet running. A writer returning from its wait takes one of these
    /// if there is one, else (a spurious wake-up) leaves `idle`: `idle + woken` is always the
    /// number of writers inside their wait.
    woken: usize,
}

/// What the session thread waits for: at most this many puts and bytes pending. A writer wakes
/// it only then, not at every put it finishes (each wake-up is a context switch).
#[derive(Clone, Copy)]
struct Until {
    pending: usize,
    bytes: usize,
}

impl Until {
    fn reached(self, s: &State) -> bool {
        s.pending <= self.pending && s.bytes <= self.bytes
    }
}

impl State {
    /// How many idle writers (at most `max`) to wake for the queued work, marking them woken.
    fn wake(&mut self, max: usize) -> usize {
        let n = self.idle.min(self.queue.len()).min(max);
        self.idle -= n;
        self.woken += n;
        n
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled once per put handed out: wakes one writer, not all of them.
    work: Condvar,
    /// Signalled when a put finishes while the session thread waits for that.
    done: Condvar,
    out: SharedOutput,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a writer thread never panics while holding the lock; if one did, the state is still
        // consistent enough to finish the session
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, cv: &Condvar, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes `n` writers.
    fn notify(&self, n: usize) {
        for _ in 0..n {
            self.work.notify_one();
        }
    }

    /// The session thread waits for as long as `wait` says what for (first waking writers for
    /// whatever is queued: they may be what it waits for).
    fn wait_done<'a>(&self, mut g: MutexGuard<'a, State>, wait: impl Fn(&State) -> Option<Until>) -> MutexGuard<'a, State> {
        while let Some(until) = wait(&g) {
            let n = g.wake(usize::MAX);
            self.notify(n);
            g.session_waits = Some(until);
            g = self.wait(&self.done, g);
        }
        g.session_waits = None;
        g
    }
}

/// The writer threads of one session, started at its first put that can be written this way.
pub struct PutWriters {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl PutWriters {
    /// Starts `n` (at least one) threads; their answers go to `out`.
    pub fn start(out: SharedOutput, n: usize) -> std::io::Result<PutWriters> {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), work: Condvar::new(), done: Condvar::new(), out });
        let mut writers = PutWriters { shared, threads: Vec::with_capacity(n.max(1)) };
        for i in 0..n.max(1) {
            let shared = writers.shared.clone();
            let t = std::thread::Builder::new().name(format!("borgd-put-{i}")).stack_size(256 * 1024).spawn(move || work(&shared))?;
            writers.threads.push(t);
        }
        Ok(writers)
    }

    /// Whether nothing handed out is still being written.
    pub fn idle(&self) -> bool {
        self.shared.lock().pending == 0
    }

    /// Hands a put to the writers (waiting while too much is in flight, or while the same object
    /// is still being written). Returns the keys of objects written since they were last handed
    /// back once there are [`HAND_BACK_AT`] of them (else nothing, without allocating).
    pub fn submit(&self, msgid: i64, write: LaterWrite, value: Vec<u8>, key: WrittenKey) -> Vec<WrittenKey> {
        let len = value.len();
        let s = self.shared.lock();
        let mut s = self.shared.wait_done(s, |s| {
            if s.names.contains(write.name()) {
                // the same object: the next put finished may be it
                Some(Until { pending: s.pending - 1, bytes: usize::MAX })
            } else if s.pending >= MAX_PENDING || (s.pending > 0 && s.bytes + len > MAX_BYTES) {
                // full: wait until half is written, then hand out a batch again
                Some(Until { pending: MAX_PENDING / 2, bytes: MAX_BYTES / 2 })
            } else {
                None
            }
        });
        s.pending += 1;
        s.bytes += len;
        s.queued_bytes += len;
        s.names.insert(write.name().to_string());
        s.queue.push_back(Job { msgid, write, value, key });
        let enough = s.queue.len() >= KICK_AT || s.queued_bytes >= KICK_BYTES;
        let n = if enough { s.wake(1) } else { 0 };
        let written = if s.written.len() >= HAND_BACK_AT { std::mem::take(&mut s.written) } else { Vec::new() };
        drop(s);
        self.shared.notify(n);
        written
    }

    /// Wakes idle writers for the puts queued so far: the session is about to wait for its
    /// client, and the writers should not wait with it.
    pub fn kick(&self) {
        let n = self.shared.lock().wake(usize::MAX);
        self.shared.notify(n);
    }

    /// Waits until every put handed out is written and answered; returns the first failure
    /// among them, if any (the repository remembers it, see `Repository::note_write_error`),
    /// and the keys of the objects written successfully since they were last handed back.
    pub fn drain(&self) -> (Option<String>, Vec<WrittenKey>) {
        let s = self.shared.lock();
        let mut s = self.shared.wait_done(s, |s| (s.pending > 0).then_some(Until { pending: 0, bytes: 0 }));
        (s.error.take(), std::mem::take(&mut s.written))
    }
}

impl Drop for PutWriters {
    /// Finishes what was handed out (those puts were accepted: they are written and answered),
    /// then ends the threads.
    fn drop(&mut self) {
        self.drain();
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn work(shared: &Shared) {
    let mut answer = Vec::with_capacity(256);
    loop {
        let job = {
            let mut s = shared.lock();
            loop {
                if let Some(job) = s.queue.pop_front() {
                    s.queued_bytes -= job.value.len();
                    break job;
                }
                if s.closing {
                    return;
                }
                s.idle += 1;
                s = shared.wait(&shared.work, s);
                if s.woken > 0 {
                    s.woken -= 1;
                } else {
                    s.idle -= 1;
                }
            }
        };
        answer.clear();
        let failure = match job.write.write(&job.value) {
            Ok(()) => {
                encode_reply(job.msgid, &Reply::Nil, &mut answer);
                None
            }
            Err(e) => {
                let said = e.to_string();
                encode_exception(job.msgid, &Exception::from(&CallError::from(e)), &mut answer);
                Some(said)
            }
        };
        // the answer is in the output before the put stops counting as pending, so a drained
        // session's next answer always comes after it. A failed write to the client ends the
        // session through the serve loop's own next read or write.
        if let Ok(mut w) = shared.out.lock() {
            let _ = w.write_all(&answer);
        }
        let (idle, wake) = {
            let mut s = shared.lock();
            s.pending -= 1;
            s.bytes -= job.value.len();
            s.names.remove(job.write.name());
            match failure {
                Some(said) => {
                    s.error.get_or_insert(said);
                }
                None => s.written.push(job.key),
            }
            let wake = s.session_waits.is_some_and(|u| u.reached(&s));
            if wake {
                s.session_waits = None;
            }
            (s.pending == 0, wake)
        };
        if wake {
            shared.done.notify_one();
        }
        if idle {
            // the serve loop may be waiting for the client, who may be waiting for these answers
            if let Ok(mut w) = shared.out.lock() {
                let _ = w.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Captured, Output};
    use crate::rpc::frame::FrameReader;
    use crate::store::{borg_levels, Durability, Mode, Permissions, PosixFs, Store};
    use std::time::Duration;

    /// Puts are handed out in batches and writers are woken only when the session is about to
    /// wait: however a batch ends — a `drain` after a few puts (fewer than [`KICK_AT`]), more
    /// puts than [`MAX_PENDING`] (the session waits at the high-water mark), the same object
    /// twice in a row, a [`PutWriters::kick`] — every put is written and answered exactly once,
    /// handed back as written exactly once (by `submit` past [`HAND_BACK_AT`], or by `drain`),
    /// and nobody is left waiting for a wake-up that never comes.
    #[test]
    fn every_put_is_written_and_answered_once_however_a_batch_ends() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let open = || Store::new(Box::new(PosixFs::new(repo.clone(), Durability::Barrier)), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Barrier);
        open().create().unwrap();
        let mut store = open();
        store.open().unwrap();
        let sink = Captured::default();
        let out = Output::shared(Box::new(sink.clone()), None);
        let (done, finished) = std::sync::mpsc::channel();
        let run = std::thread::spawn(move || {
            let w = PutWriters::start(out.clone(), 3).unwrap();
            // every writer asleep, as between a client's batches
            let asleep = |w: &PutWriters| while w.shared.lock().idle < 3 {
                std::thread::sleep(Duration::from_millis(1));
            };
            let mut msgid = 0;
            let mut handed_back: Vec<WrittenKey> = Vec::new();
            let mut from_submit = 0;
            let mut put = |w: &PutWriters, name: String, value: Vec<u8>, back: &mut Vec<WrittenKey>| {
                msgid += 1;
                let got = w.submit(msgid, store.store_later(&name).unwrap().unwrap(), value, msgid as WrittenKey);
                back.extend(got);
            };
            let drained = |w: &PutWriters, back: &mut Vec<WrittenKey>| {
                let (error, keys) = w.drain();
                back.extend(keys);
                error
            };
            asleep(&w);
            for i in 0..5u32 {
                put(&w, format!("data/aa{i:04x}"), i.to_le_bytes().to_vec(), &mut handed_back);
            }
            assert_eq!(drained(&w, &mut handed_back), None);
            asleep(&w);
            for i in 0..(HAND_BACK_AT as u32 + 3 * MAX_PENDING as u32) {
                put(&w, format!("data/bb{i:04x}"), i.to_le_bytes().to_vec(), &mut handed_back);
            }
            from_submit += handed_back.len() - 5;
            put(&w, "data/cc0000".into(), b"first".to_vec(), &mut handed_back);
            put(&w, "data/cc0000".into(), b"second".to_vec(), &mut handed_back);
            w.kick();
            asleep(&w);
            put(&w, "data/dd0000".into(), b"last".to_vec(), &mut handed_back);
            // the session is about to wait for its client, who waits for this answer
            w.kick();
            let t = std::time::Instant::now();
            while w.shared.lock().pending > 0 {
                assert!(t.elapsed() < Duration::from_secs(30), "a kicked put was never written");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(drained(&w, &mut handed_back), None);
            assert!(from_submit >= HAND_BACK_AT, "a long run of puts hands written keys back as it goes");
            handed_back.sort_unstable();
            assert_eq!(handed_back, (1..=msgid as WrittenKey).collect::<Vec<_>>(), "every put handed back once");
            drop(w);
            out.lock().unwrap().flush().unwrap();
            done.send(msgid).unwrap();
            store
        });
        let sent = finished.recv_timeout(Duration::from_secs(60)).expect("a batch was never written: writers left waiting");
        let store = run.join().unwrap();
        // each msgid answered once, with no error
        let bytes = sink.0.lock().unwrap().clone();
        let mut reader = FrameReader::new(&bytes[..], 1 << 20);
        let mut answered = vec![0; sent as usize + 1];
        loop {
            while let Some(len) = reader.buffered_frame().unwrap() {
                let v = crate::rpc::msgpack::parse(reader.frame(len)).unwrap();
                assert!(v.get("e").is_none(), "an error answer: {v:?}");
                let Some(crate::rpc::msgpack::Value::Int(id)) = v.get("i") else { panic!("no msgid: {v:?}") };
                answered[*id as usize] += 1;
                reader.consume(len);
            }
            if !reader.fill().unwrap() {
                break;
            }
        }
        assert!(answered[1..].iter().all(|&n| n == 1), "answers per msgid: {answered:?}");
        assert_eq!(store.load("data/aa0003", 0, None, false).unwrap(), 3u32.to_le_bytes());
        assert_eq!(store.load("data/bb00bf", 0, None, false).unwrap(), 0xbfu32.to_le_bytes());
        assert_eq!(store.load("data/cc0000", 0, None, false).unwrap(), b"second");
        assert_eq!(store.load("data/dd0000", 0, None, false).unwrap(), b"last");
    }
}
