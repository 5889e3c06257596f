//! `check(repair, max_duration)`: validates every data object's `RepoObj` header and checksums.
//!
//! As in borg 2.0.0b21: a partial check (`max_duration > 0`) resumes after the key stored in
//! `cache/last-key-checked` and stops after `max_duration` seconds, recording where it stopped;
//! a full check starts over and forgets any partial progress. Progress is checkpointed every
//! five minutes. With `repair`, an object that is still corrupt when read a second time is
//! deleted. A full pass that reaches the end writes a fresh chunk-index cache listing every
//! object that verified and deletes all other cached indexes, so clients relearn what exists.
//!
//! Unlike b21, a check without `repair` leaves the corrupt objects it keeps out of that index
//! too. Python lists them ("the index may have corrupted objects"), and clients trust the index:
//! the next backup references a corrupt chunk instead of uploading it again, and is broken too
//! (found by hand: a power cut in the middle of a backup leaves objects whose names were written
//! but not their data; `borg check`, then `borg create` of the same files, and that archive failed
//! to extract). Left out, a chunk a backup needs is uploaded again, and its `put` replaces the
//! corrupt object (see `Repository::put`), which heals every archive that references it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::{chunkindex, repoobj, Error, Repository, LOGGER};
use crate::log::Log;
use crate::store;

const LAST_KEY_CHECKED: &str = "cache/last-key-checked";
const CHECKPOINT_EVERY: Duration = Duration::from_secs(300);
const LOG_FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Repository {
    /// Checks the repository; `Ok(true)` when no errors were found or they were repaired.
    pub fn check(&mut self, repair: bool, max_duration: f64, log: &Log) -> Result<bool, Error> {
        let partial = max_duration > 0.0;
        if repair && partial {
            return Err(Error::Integrity("check --repair cannot be combined with --max-duration".into()));
        }
        // whatever was written before must be durable before we vouch for the repository.
        self.store.barrier()?;
        if repair {
            self.written.forget_all(); // a repair may delete objects
        }
        let mode = if partial { "partial" } else { "full" };
        log.info(LOGGER, &format!("Starting {mode} repository check"));
        let mut last_key_checked = String::new();
        if partial {
            match self.store.load(LAST_KEY_CHECKED, 0, None, false) {
                Ok(v) => last_key_checked = String::from_utf8_lossy(&v).into_owned(),
                Err(store::Error::ObjectNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            self.forget_last_key_checked()?;
        }
        if last_key_checked.is_empty() {
            log.info(LOGGER, "Starting from beginning.");
        } else {
            log.info(LOGGER, &format!("Skipping to keys after {last_key_checked}."));
        }
        let after = last_key_checked.strip_prefix("data/").map(str::to_string);

        let started = Instant::now();
        let mut last_checkpoint = started;
        let mut last_flush = started;
        let (mut checked, mut errors) = (0u64, 0u64);
        // the ids of the objects kept, for the fresh chunk index, spooled to a temporary file
        // (40 bytes each) rather than held: memory stays flat however large the repository
        let mut kept = Spool::new()?;
        let mut finished = true;
        let mut names: Vec<String>;
        // a partial check stops within a batch, so keep its batches small
        let batch = if partial { 64 } else { 1024 };
        // Names come in bounded batches, so never more than a batch is held in memory.
        let mut cursor = after;
        loop {
            names = match self.store.list_range_map("data", cursor.as_deref(), batch, store::Detail::Names, &|i| Some(i.name)) {
                Ok(names) => names,
                Err(store::Error::ObjectNotFound(_)) => break, // no data/ at all yet
                Err(e) => return Err(e.into()),
            };
            if names.is_empty() {
                break;
            }
            // load and verify the batch on all cores, then handle results in key order
            let verdicts = self.verify_batch(&names)?;
            for (name, verdict) in names.iter().zip(verdicts) {
                self.refresh_lock(log)?;
                let key = format!("data/{name}");
                let Some(problems) = verdict else { continue }; // vanished since listing
                checked += 1;
                let mut corrupt = !problems.is_empty();
                if corrupt {
                    errors += 1;
                    for p in &problems {
                        log.error(LOGGER, &format!("Repo object {name} is corrupted: {p}"));
                    }
                    if repair {
                        corrupt = self.repair_object(&key, name, log)?;
                    }
                }
                // only what verified: a client must never take a corrupt object for a stored chunk
                if !corrupt {
                    if let Some(id) = super::unhex32(name) {
                        kept.push(&id)?;
                    }
                }
                let now = Instant::now();
                if now.duration_since(last_flush) > LOG_FLUSH_EVERY {
                    last_flush = now;
                    log.flush();
                }
                if now.duration_since(last_checkpoint) > CHECKPOINT_EVERY {
                    last_checkpoint = now;
                    log.info(LOGGER, &format!("Checkpointing at key {key}."));
                    self.store.store(LAST_KEY_CHECKED, key.as_bytes())?;
                }
                if partial && now.duration_since(started).as_secs_f64() > max_duration {
                    log.info(LOGGER, &format!("Finished partial repository check, last key checked is {key}."));
                    self.store.store(LAST_KEY_CHECKED, key.as_bytes())?;
                    finished = false;
                    break;
                }
            }
            if !finished {
                break;
            }
            cursor = names.last().cloned();
        }
        if repair {
            // a crashed writer's temp files: never visible to list, removed here for good.
            for t in self.store.remove_temp_files()? {
                log.warning(LOGGER, &format!("Removed leftover temp file {t}."));
            }
        }
        let mut index_written = false;
        if finished {
            log.info(LOGGER, "Finished repository check.");
            self.forget_last_key_checked()?;
            if !partial {
                index_written = self.write_chunk_index(kept, log)?;
            }
        }
        log.info(LOGGER, &format!("Checked {checked} repository objects, {errors} errors."));
        if errors == 0 {
            log.info(LOGGER, &format!("Finished {mode} repository check, no problems found."));
        } else if repair {
            log.info(LOGGER, &format!("Finished {mode} repository check, errors found and repaired."));
        } else {
            log.error(LOGGER, &format!("Finished {mode} repository check, errors found."));
            if index_written {
                let s = if errors == 1 { "" } else { "s" };
                log.warning(LOGGER, &format!(
                    "borgd: {errors} corrupted object{s} left out of the chunk index written now: a backup that needs \
                     one uploads it again, which replaces it; borg check --repair deletes them."
                ));
            }
        }
        Ok(errors == 0 || repair)
    }

    /// Loads and verifies objects on all cores: per name, its problems (`None`: it vanished).
    fn verify_batch(&self, names: &[String]) -> Result<Vec<Option<Vec<&'static str>>>, Error> {
        let store = &self.store;
        let verify = |name: &String| -> Result<Option<Vec<&'static str>>, Error> {
            match store.load(&format!("data/{name}"), 0, None, false) {
                Ok(obj) => Ok(Some(repoobj::verify(&obj))),
                Err(store::Error::ObjectNotFound(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let parts: Vec<Result<Vec<_>, Error>> = crate::fanout::split(
            names,
            crate::fanout::threads(),
            |part| part.iter().map(verify).collect(),
            || Err(Error::Integrity("a check worker panicked".into())),
        );
        let mut out = Vec::with_capacity(names.len());
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    /// Reads a corrupt object once more; deletes it if it is still corrupt. Returns whether it
    /// is (still) corrupt.
    fn repair_object(&mut self, key: &str, name: &str, log: &Log) -> Result<bool, Error> {
        match self.store.load(key, 0, None, false) {
            Err(store::Error::ObjectNotFound(_)) => {
                log.error(LOGGER, &format!("Repo object {name} is corrupted: existing object vanished."));
                Ok(true)
            }
            Err(e) => Err(e.into()),
            Ok(again) if repoobj::verify(&again).is_empty() => {
                log.error(LOGGER, &format!("Repo object {name} is corrupted: reloading did help, inconsistent behaviour detected!"));
                Ok(false)
            }
            Ok(_) => {
                log.error(LOGGER, &format!("Repo object {name} is corrupted: reloading did not help, deleting it!"));
                self.store.delete(key, false)?;
                Ok(true)
            }
        }
    }

    fn forget_last_key_checked(&mut self) -> Result<(), Error> {
        match self.store.delete(LAST_KEY_CHECKED, false) {
            Ok(()) | Err(store::Error::ObjectNotFound(_)) => Ok(()),
            // read-only mode may not delete it; a stale checkpoint only affects partial checks.
            Err(store::Error::PermissionDenied { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a chunk index of exactly the spooled ids and deletes every other cached index;
    /// whether it did (read-only mode stores nothing). The index is never in memory: it is hashed
    /// (its name) in one pass over the spool and streamed into the store in a second.
    fn write_chunk_index(&mut self, spool: Spool, log: &Log) -> Result<bool, Error> {
        let (mut file, count) = spool.finish()?;
        let header = chunkindex::header(count);
        let len = header.len() as u64 + (count * chunkindex::ENTRY_SIZE) as u64;
        let io = spool_error;
        let mut hasher = xxhash_rust::xxh64::Xxh64::new(chunkindex::HASH_SEED);
        hasher.update(&header);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let name = format!("cache/chunks.{:016x}", hasher.digest());
        log.debug(LOGGER, &format!("caching chunks index of {count} objects as {name} in repository..."));
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut src = std::io::Read::chain(&header[..], &mut file);
        match self.store.store_from(&name, len, &mut src) {
            Ok(()) => {}
            // borg check in read-only mode: nothing may be written, the check itself still counts.
            Err(store::Error::PermissionDenied { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let own = name.trim_start_matches("cache/").to_string();
        for info in self.store.list("cache", false)? {
            if info.name.starts_with("chunks.") && info.name != own {
                match self.store.delete(&format!("cache/{}", info.name), false) {
                    Ok(()) | Err(store::Error::ObjectNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(true)
    }
}

/// Chunk-index entries written to a temp file as a check finds objects (see [`crate::spool`]).
struct Spool(crate::spool::Spool);

fn spool_error(source: std::io::Error) -> Error {
    crate::spool::error("spool the chunk index in", source).into()
}

impl Spool {
    fn new() -> Result<Spool, Error> {
        crate::spool::Spool::new().map(Spool).map_err(spool_error)
    }

    fn push(&mut self, id: &[u8; 32]) -> Result<(), Error> {
        self.0.push(&chunkindex::entry(id)).map_err(spool_error)
    }

    fn finish(self) -> Result<(File, usize), Error> {
        self.0.finish().map(|(file, count, _)| (file, count)).map_err(spool_error)
    }
}
