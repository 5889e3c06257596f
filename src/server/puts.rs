//! Small puts written by a few threads at once, so that one session's file-system waits overlap.
//!
//! Creating an object's file can block on a disk read the kernel needs first (an inode bitmap,
//! an inode-table block, a directory block). A server writing one object at a time — Python's,
//! or ours before this — sits idle through every such read, and a backup into a new repository
//! makes many of them: in a profile of 20 000 fresh 1 KiB puts, borgd was off the CPU for half
//! of the phase, nearly all of it in `mkdir`/`open` waiting for metadata. With [`WRITERS`]
//! threads writing, those waits overlap (a C loop doing the same writes: 8 400–9 100 objects/s on
//! one thread, 11 000–16 200/s on four, for the same CPU time).
//!
//! What the client sees does not change. A put is answered once written, with its own msgid;
//! borg's client matches answers by msgid (puts are asynchronous calls, answered in any order).
//! Every other request waits until every put handed out so far is written and answered
//! ([`PutWriters::drain`]), so it sees the repository exactly as if the puts had run one after
//! the other; a put of an object that is still being written waits for that write as well.
//! Objects stay small here (below [`LATER_BELOW`]): large ones are written by the session
//! itself, streamed and around the page cache. Memory is bounded by [`MAX_BYTES`] of copied
//! values in flight.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::CallError;
use crate::output::SharedOutput;
use crate::rpc::wire::{encode_exception, Exception};
use crate::rpc::{encode_reply, Reply};
use crate::store::LaterWrite;

/// Threads writing one session's puts unless `--put-writers` says otherwise. Four covered
/// most of the waiting in the C loop above (eight did a little better, on a machine with two
/// cores); each costs a small stack.
pub const WRITERS: usize = 4;

/// Puts of values at least this large are written by the session itself (see the module docs).
pub const LATER_BELOW: usize = 512 * 1024;

/// Bytes of values copied out of the receive buffer and not yet written, at most (a put that
/// would exceed it waits). Keeps a session's memory flat whatever the client has in flight.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// Puts handed out and not yet answered, at most.
const MAX_PENDING: usize = 64;

struct Job {
    msgid: i64,
    write: LaterWrite,
    value: Vec<u8>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Handed out and not yet answered (queued or being written).
    pending: usize,
    bytes: usize,
    /// Names of the objects pending.
    names: HashSet<String>,
    /// The first failure since the last [`PutWriters::drain`].
    error: Option<String>,
    closing: bool,
    /// The session thread waits for a put to finish (in `submit` or `drain`).
    session_waits: bool,
    /// Writers waiting for work (a notification is a system call even when nobody waits).
    idle: usize,
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

    /// The session thread waits until `until` is false.
    fn wait_done<'a>(&self, mut g: MutexGuard<'a, State>, until: impl Fn(&State) -> bool) -> MutexGuard<'a, State> {
        while until(&g) {
            g.session_waits = true;
            g = self.wait(&self.done, g);
        }
        g.session_waits = false;
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

    /// Hands a put to the writers (waiting while too much is in flight, or while the same object
    /// is still being written).
    pub fn submit(&self, msgid: i64, write: LaterWrite, value: Vec<u8>) {
        let len = value.len();
        let s = self.shared.lock();
        let mut s = self.shared.wait_done(s, |s| s.pending >= MAX_PENDING || (s.pending > 0 && s.bytes + len > MAX_BYTES) || s.names.contains(write.name()));
        s.pending += 1;
        s.bytes += len;
        s.names.insert(write.name().to_string());
        s.queue.push_back(Job { msgid, write, value });
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Waits until every put handed out is written and answered; returns the first failure
    /// among them, if any (the repository remembers it, see `Repository::note_write_error`).
    pub fn drain(&self) -> Option<String> {
        let s = self.shared.lock();
        self.shared.wait_done(s, |s| s.pending > 0).error.take()
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
                    break job;
                }
                if s.closing {
                    return;
                }
                s.idle += 1;
                s = shared.wait(&shared.work, s);
                s.idle -= 1;
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
            if let Some(said) = failure {
                s.error.get_or_insert(said);
            }
            (s.pending == 0, s.session_waits)
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
