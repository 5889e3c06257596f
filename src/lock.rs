//! Shared/exclusive repository locks kept *in the store*, compatible with borg's `storelocking`.
//!
//! A lock is a JSON record under `locks/`, named by the xxh64 of its bytes:
//! `{"exclusive": false, "hostid": "...", "processid": 123, "threadid": 0, "time": "...+00:00"}`.
//! Byte-for-byte the same as Python writes it, so Python borg and borgd see each other's locks.
//! A lock is stale (and removed by whoever notices) when it was not refreshed for 30 minutes or
//! when its owner is a dead process on this host. Owners hold a lock for as long as they refresh
//! it at least every 15 minutes; every repository operation refreshes when due.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::host;
use crate::log::Log;
use crate::store::{self, Store};

const LOGGER: &str = "borg.storelocking";
/// A lock not refreshed for this long is stale.
pub const STALE: Duration = Duration::from_secs(30 * 60);
const OTHERS_GO_AWAY: Duration = Duration::from_millis(100);

/// Lock failures, as the client knows them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not get the lock within `lock_wait`, or our lock vanished (killed by break-lock or
    /// as stale): in both cases the client must not go on.
    #[error("Failed to create/acquire the lock {0} (timeout).")]
    Timeout(String),
    /// A lock record that is not valid JSON of the expected shape.
    #[error("Lock {name} is not a valid borg lock record ({why}); use borg break-lock if no borg is running")]
    Corrupt {
        /// The record's name under `locks/`.
        name: String,
        /// Why it cannot be read as a lock.
        why: String,
    },
    /// The store failed underneath.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Who holds a lock: Python's `(hostid, processid, threadid)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The host id (`BORG_HOST_ID`, or computed as Python does): whose process `pid` is.
    pub host: String,
    /// The owning process, looked for on this host to tell a dead owner's lock.
    pub pid: i64,
    /// The owning thread (sessions of one socket-mode process differ only here).
    pub thread: i64,
}

impl Owner {
    /// This process, with a session-specific thread id (0 for the one session of stdio mode).
    pub fn current(thread: i64) -> Owner {
        Owner { host: host::host_id().to_string(), pid: i64::from(std::process::id()), thread }
    }
}

#[derive(Deserialize)]
struct Record {
    exclusive: bool,
    hostid: String,
    processid: i64,
    threadid: i64,
    time: String,
}

struct Found {
    key: String,
    exclusive: bool,
    owner: Owner,
    time: DateTime<Utc>,
}

/// A held lock; release it with [`Lock::release`] (the session does so however it ends).
pub struct Lock {
    owner: Owner,
    /// The name (under `locks/`) of our record: released by name, with nothing to list or read.
    key: String,
    exclusive: bool,
    last_refresh: Option<DateTime<Utc>>,
    store_name: String,
}

fn timestamp(now: DateTime<Utc>) -> String {
    now.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

/// The JSON text Python's `json.dumps(dict(...))` produces for a lock record.
fn record_json(exclusive: bool, owner: &Owner, time: &str) -> String {
    format!(
        "{{\"exclusive\": {}, \"hostid\": {}, \"processid\": {}, \"threadid\": {}, \"time\": \"{}\"}}",
        exclusive,
        serde_json::Value::String(owner.host.clone()),
        owner.pid,
        owner.thread,
        time
    )
}

fn create_record(store: &mut Store, exclusive: bool, owner: &Owner, log: &Log) -> Result<(String, DateTime<Utc>), Error> {
    let now = Utc::now();
    let ts = timestamp(now);
    let value = record_json(exclusive, owner, &ts);
    let key = format!("{:016x}", xxhash_rust::xxh64::xxh64(value.as_bytes(), 0));
    log.debug(LOGGER, &format!("LOCK-CREATE: creating lock in store. key: {key}, lock: {value}."));
    if let Err(e) = store.store(&format!("locks/{key}"), value.as_bytes()) {
        // it may be in place all the same (written and linked, then its fsync failed)
        let _ = delete_record(store, &key, log);
        return Err(e.into());
    }
    // the timestamp as written (millisecond precision), like Python re-parses it.
    let written = DateTime::parse_from_rfc3339(&ts).map(|d| d.with_timezone(&Utc)).unwrap_or(now);
    Ok((key, written))
}

fn delete_record(store: &mut Store, key: &str, log: &Log) -> Result<(), Error> {
    log.debug(LOGGER, &format!("LOCK-DELETE: deleting lock from store. key: {key}."));
    match store.delete(&format!("locks/{key}"), false) {
        Ok(()) | Err(store::Error::ObjectNotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// All live locks; stale ones are deleted on the way (whoever owns them).
fn live_locks(store: &mut Store, log: &Log) -> Result<Vec<Found>, Error> {
    let infos = match store.list("locks", false) {
        Ok(i) => i,
        Err(store::Error::ObjectNotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let now = Utc::now();
    let mut found = Vec::new();
    for info in infos {
        let name = format!("locks/{}", info.name);
        let content = match store.load(&name, 0, None, false) {
            Ok(c) => c,
            Err(store::Error::ObjectNotFound(_)) => continue, // released meanwhile
            Err(e) => return Err(e.into()),
        };
        if content.is_empty() {
            // No live borg ever shows an empty record (each is written whole before its name
            // appears); a power cut does, keeping the name and losing the data. It is as dead as
            // its writer: refusing it would lock the repository until someone breaks the lock.
            log.warning(LOGGER, &format!("Removing the empty lock record {name}: a crash lost what its writer wrote."));
            delete_record(store, &info.name, log)?;
            continue;
        }
        let corrupt = |why: String| Error::Corrupt { name: name.clone(), why };
        let rec: Record = serde_json::from_slice(&content).map_err(|e| corrupt(e.to_string()))?;
        let time = DateTime::parse_from_rfc3339(&rec.time)
            .map_err(|e| corrupt(format!("time {:?}: {e}", rec.time)))?
            .with_timezone(&Utc);
        let owner = Owner { host: rec.hostid, pid: rec.processid, thread: rec.threadid };
        let too_old = now.signed_duration_since(time).to_std().map(|age| age > STALE).unwrap_or(false);
        if too_old || !host::owner_alive(&owner.host, owner.pid, owner.thread) {
            log.debug(LOGGER, &format!("LOCK-STALE: removing stale lock {} of {owner:?}.", info.name));
            delete_record(store, &info.name, log)?;
            continue;
        }
        found.push(Found { key: info.name, exclusive: rec.exclusive, owner, time });
    }
    Ok(found)
}

fn jitter_sleep(deadline: Instant) {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    let delay = Duration::from_secs_f64(1.0 + 4.0 * frac);
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(delay.min(left));
}

/// How [`settle`] left a lock record of ours.
enum Settled {
    /// It stands: the lock is ours.
    Held,
    /// It was deleted again (another locker won the race); try again after a pause.
    Retry,
    /// It was deleted again at the deadline.
    TimedOut,
}

/// After our record `key` was written: re-checks, after the store's visibility delay, that no
/// other exclusive lock exists, and for an exclusive lock waits for the shared holders to go,
/// deleting our record where we must give way (Python's algorithm).
fn settle(store: &mut Store, exclusive: bool, key: &str, deadline: Instant, log: &Log) -> Result<Settled, Error> {
    std::thread::sleep(store.visibility_delay());
    let exclusives: Vec<_> = live_locks(store, log)?.into_iter().filter(|l| l.exclusive).collect();
    if exclusive {
        if exclusives.len() == 1 && exclusives[0].key == key {
            while Instant::now() < deadline {
                let all = live_locks(store, log)?;
                if all.len() == 1 && all[0].key == key {
                    log.debug(LOGGER, "LOCK-ACQUIRE: success! no non-exclusive locks are left!");
                    return Ok(Settled::Held);
                }
                std::thread::sleep(OTHERS_GO_AWAY);
            }
            log.debug(LOGGER, "LOCK-ACQUIRE: timeout while waiting for non-exclusive locks to go away.");
            delete_record(store, key, log)?;
            return Ok(Settled::TimedOut);
        }
        log.debug(LOGGER, "LOCK-ACQUIRE: someone else also created an exclusive lock, deleting ours.");
    } else if exclusives.is_empty() {
        log.debug(LOGGER, "LOCK-ACQUIRE: success! no exclusive locks detected.");
        return Ok(Settled::Held);
    } else {
        log.debug(LOGGER, "LOCK-ACQUIRE: exclusive locks detected, deleting our shared lock.");
    }
    delete_record(store, key, log)?;
    Ok(Settled::Retry)
}

impl Lock {
    /// Acquires a shared or exclusive lock within `timeout`, with Python's algorithm: create our
    /// record when no exclusive lock exists, re-check (after the store's visibility delay) to
    /// resolve races, and
    /// (exclusive) wait for shared holders to go away; otherwise retry after 1–5 s.
    pub fn acquire(store: &mut Store, exclusive: bool, timeout: Duration, owner: Owner, log: &Log) -> Result<Lock, Error> {
        log.debug(LOGGER, &format!("LOCK-ACQUIRE: trying to acquire a lock. exclusive: {exclusive}."));
        let started = Instant::now();
        let deadline = started + timeout;
        while Instant::now() < deadline {
            if !live_locks(store, log)?.iter().any(|l| l.exclusive) {
                let (key, time) = create_record(store, exclusive, &owner, log)?;
                match settle(store, exclusive, &key, deadline, log) {
                    Ok(Settled::Held) => return Ok(Lock { owner, key, exclusive, last_refresh: Some(time), store_name: store.describe() }),
                    Ok(Settled::Retry) => {}
                    Ok(Settled::TimedOut) => break,
                    Err(e) => {
                        // never leave our record behind a failure: a socket-mode session's record
                        // names a live process and a thread, so nobody would take it for stale
                        // before 30 minutes
                        let _ = delete_record(store, &key, log);
                        return Err(e);
                    }
                }
            }
            jitter_sleep(deadline);
        }
        log.debug(LOGGER, "LOCK-ACQUIRE: timeout while trying to acquire a lock.");
        Err(Error::Timeout(store.describe()))
    }

    /// Whether this is an exclusive lock.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Removes our lock record (all of them, should there be several). Ours first, by its name:
    /// that needs no listing and no reading, so a session ending short of file descriptors
    /// (the store keeps `locks/` open) still releases its lock. Then, as Python's release does,
    /// any other record of ours (one a failed refresh left behind); a failure there is logged,
    /// the lock being released already.
    pub fn release(self, store: &mut Store, log: &Log) -> Result<(), Error> {
        log.debug(LOGGER, &format!("LOCK-RELEASE: releasing lock {}.", self.key));
        match store.delete(&format!("locks/{}", self.key), false) {
            Ok(()) => {}
            Err(store::Error::ObjectNotFound(_)) => log.debug(LOGGER, "LOCK-RELEASE: trying to release the lock, but none was found."),
            Err(e) => return Err(e.into()),
        }
        let others = live_locks(store, log).and_then(|locks| {
            for l in locks.into_iter().filter(|l| l.owner == self.owner) {
                log.debug(LOGGER, &format!("LOCK-RELEASE: releasing lock {}.", l.key));
                delete_record(store, &l.key, log)?;
            }
            Ok(())
        });
        if let Err(e) = others {
            log.debug(LOGGER, &format!("LOCK-RELEASE: could not look for other records of ours: {e}"));
        }
        Ok(())
    }

    /// Replaces our record by a fresh one when it is older than half the stale time; fails if
    /// our lock was removed meanwhile (then another borg may have changed the repository).
    pub fn refresh(&mut self, store: &mut Store, log: &Log) -> Result<(), Error> {
        let now = Utc::now();
        let half = chrono::Duration::from_std(STALE / 2).unwrap_or(chrono::Duration::minutes(15));
        match self.last_refresh {
            Some(t) if now > t + half => {}
            _ => return Ok(()),
        }
        let mine: Vec<_> = live_locks(store, log)?.into_iter().filter(|l| l.owner == self.owner).collect();
        let Some(old) = mine.first() else {
            log.debug(LOGGER, "LOCK-REFRESH: our lock was killed, there is no safe way to continue.");
            self.last_refresh = None;
            return Err(Error::Timeout(self.store_name.clone()));
        };
        if now > old.time + half {
            log.debug(LOGGER, &format!("LOCK-REFRESH: lock needs a refresh. lock: {}.", old.key));
            let (key, time) = create_record(store, old.exclusive, &self.owner, log)?;
            self.last_refresh = Some(time);
            self.key = key;
            delete_record(store, &old.key, log)?;
        }
        Ok(())
    }

    /// Deletes every lock record, whoever holds it (`borg break-lock`).
    pub fn break_all(store: &mut Store, log: &Log) -> Result<(), Error> {
        log.debug(LOGGER, "LOCK-BREAK: break_lock() was called - deleting ALL locks!");
        let infos = match store.list("locks", false) {
            Ok(i) => i,
            Err(store::Error::ObjectNotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for info in infos {
            delete_record(store, &info.name, log)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{borg_levels, Durability, Mode, Permissions, PosixFs};

    fn store(dir: &std::path::Path) -> Store {
        let mut s = Store::new(
            Box::new(PosixFs::new(dir.to_path_buf(), Durability::Never)),
            borg_levels(2),
            Permissions::for_mode(Mode::All),
            Durability::Never,
        );
        s.create().unwrap();
        s
    }

    /// A failure after our record was written (here: reading the records back) leaves no record
    /// of ours behind, shared or exclusive: a socket-mode session's record would otherwise block
    /// every exclusive locker for 30 minutes.
    #[test]
    fn a_failed_acquisition_leaves_no_record_behind() {
        for exclusive in [false, true] {
            let (disk, h) = crate::store::sim::SimDisk::new();
            let mut s = Store::new(Box::new(disk), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Never);
            s.create().unwrap();
            let log = Log::silent();
            h.inject("load", "locks/", libc::EMFILE);
            let e = Lock::acquire(&mut s, exclusive, Duration::from_secs(1), Owner::current(7), &log);
            assert!(matches!(e, Err(Error::Store(_))), "exclusive {exclusive}: {:?}", e.err());
            assert!(!h.live().keys().any(|k| k.starts_with("locks/")), "exclusive {exclusive}: our record was left behind");
            // and the next attempt takes the lock
            let l = Lock::acquire(&mut s, exclusive, Duration::from_secs(1), Owner::current(7), &log).unwrap();
            l.release(&mut s, &log).unwrap();
        }
    }

    #[test]
    fn record_is_byte_identical_to_python_json_dumps() {
        let owner = Owner { host: "vm@3281355014145".into(), pid: 3449, thread: 0 };
        assert_eq!(
            record_json(true, &owner, "2026-11-26T07:39:20.123+00:00"),
            r#"{"exclusive": true, "hostid": "vm@3281355014145", "processid": 3449, "threadid": 0, "time": "2026-11-26T07:39:20.123+00:00"}"#
        );
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let log = Log::silent();
        let a = Lock::acquire(&mut s, false, Duration::from_secs(1), Owner::current(1), &log).unwrap();
        let b = Lock::acquire(&mut s, false, Duration::from_secs(1), Owner::current(2), &log).unwrap();
        let e = Lock::acquire(&mut s, true, Duration::from_millis(300), Owner::current(3), &log);
        assert!(matches!(e, Err(Error::Timeout(_))));
        a.release(&mut s, &log).unwrap();
        b.release(&mut s, &log).unwrap();
        let e = Lock::acquire(&mut s, true, Duration::from_secs(1), Owner::current(3), &log).unwrap();
        assert!(matches!(
            Lock::acquire(&mut s, false, Duration::from_millis(200), Owner::current(4), &log),
            Err(Error::Timeout(_))
        ));
        e.release(&mut s, &log).unwrap();
        assert!(s.list("locks", false).unwrap().is_empty());
    }

    /// Lockers racing from the same instant (the posix store re-checks without waiting): never
    /// two exclusive holders, and never a shared holder beside an exclusive one.
    #[test]
    fn racing_lockers_never_hold_together() {
        use std::sync::atomic::{AtomicI32, Ordering};
        use std::sync::{Arc, Barrier};
        let dir = tempfile::tempdir().unwrap();
        drop(store(dir.path()));
        // >0: shared holders; -1: one exclusive holder
        let held = Arc::new(AtomicI32::new(0));
        let start = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (path, held, start) = (dir.path().to_path_buf(), held.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut s = Store::new(Box::new(PosixFs::new(path, Durability::Never)), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Never);
                    s.open().unwrap();
                    let log = Log::silent();
                    let exclusive = i % 2 == 0;
                    start.wait();
                    let l = Lock::acquire(&mut s, exclusive, Duration::from_secs(60), Owner::current(i), &log).unwrap();
                    if exclusive {
                        assert_eq!(held.compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst), Ok(0), "exclusive lock granted while another is held");
                        std::thread::sleep(Duration::from_millis(30));
                        held.store(0, Ordering::SeqCst);
                    } else {
                        assert!(held.fetch_add(1, Ordering::SeqCst) >= 0, "shared lock granted beside an exclusive one");
                        std::thread::sleep(Duration::from_millis(30));
                        held.fetch_sub(1, Ordering::SeqCst);
                    }
                    l.release(&mut s, &log).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(store_list_is_empty(dir.path()));
    }

    fn store_list_is_empty(dir: &std::path::Path) -> bool {
        let mut s = Store::new(Box::new(PosixFs::new(dir.to_path_buf(), Durability::Never)), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Never);
        s.open().is_ok() && s.list("locks", false).map(|l| l.is_empty()).unwrap_or(false)
    }

    #[test]
    fn dead_local_owner_and_old_locks_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let log = Log::silent();
        let dead = Owner { host: host::host_id().into(), pid: 999_999_999, thread: 0 };
        create_record(&mut s, true, &dead, &log).unwrap();
        let old = record_json(true, &Owner { host: "elsewhere@1".into(), pid: 1, thread: 0 }, "2020-01-01T00:00:00.000+00:00");
        s.store("locks/0123456789abcdef", old.as_bytes()).unwrap();
        let l = Lock::acquire(&mut s, true, Duration::from_secs(1), Owner::current(0), &log).unwrap();
        assert_eq!(s.list("locks", false).unwrap().len(), 1);
        l.release(&mut s, &log).unwrap();
    }

    /// An empty record — what a power cut leaves of one: its name without its data — is removed
    /// as stale; any other record that is not a lock is still refused, named in the error.
    #[test]
    fn an_empty_record_is_stale_and_a_garbled_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let log = Log::silent();
        s.store("locks/68bde828335524e9", b"").unwrap();
        let l = Lock::acquire(&mut s, true, Duration::from_secs(1), Owner::current(0), &log).unwrap();
        assert_eq!(s.list("locks", false).unwrap().len(), 1, "the empty record is gone, ours is there");
        l.release(&mut s, &log).unwrap();
        s.store("locks/0123456789abcdef", b"{\"exclusive\": tr").unwrap();
        let Err(e) = Lock::acquire(&mut s, true, Duration::from_secs(1), Owner::current(0), &log) else {
            panic!("a garbled record taken for stale");
        };
        assert!(matches!(&e, Error::Corrupt { name, .. } if name == "locks/0123456789abcdef"), "{e}");
    }
}
