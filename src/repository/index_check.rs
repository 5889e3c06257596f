//! The check of an uploaded chunk index before it is stored: every object it lists must be in
//! `data/`.
//!
//! Why: a client trusts the cached chunk indexes (`cache/chunks.*`) to skip uploading what they
//! list, and borg 2.0.0b21 uploads one even after a failed backup, listing objects whose puts
//! failed; every backup after the first also uploads the merge of the cached ones. Stored
//! unchecked, an index listing an object that is gone makes every later backup reference it.
//! How it is checked without reading all of `data/` each night: a look-up per id for a short
//! index, the objects this session put itself taken on trust (`written`), one sorted walk of
//! `data/` for a long one, and for the merge of indexes checked before only the leaves that
//! changed since (`trust`). Of an index refused after this session failed to write, the part
//! that is true is kept under its own name ([`Repository::salvage_chunk_index`]).

use std::time::SystemTime;

use super::{chunkindex, hex, trust, unhex32, Error, Repository, LOGGER};
use crate::log::Log;
use crate::store::{self, ItemInfo};

/// What checking an uploaded chunk index against `data/` found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Distinct ids listed (an index whose ids were checked in batches may count one twice).
    listed: usize,
    /// Ids not looked for: listed in the indexes merged, in leaves unchanged since (see `trust`).
    trusted: u64,
    /// Ids not looked for: objects this session put itself (see `written`).
    own: usize,
    missing: usize,
    /// The first missing id met.
    example: Option<[u8; 32]>,
    /// The missing ids, while there are at most [`SALVAGE_AT_MOST`].
    missing_ids: Vec<[u8; 32]>,
}

/// What became of the part of a refused chunk index that is true (see
/// [`Repository::salvage_chunk_index`]).
enum Salvage {
    /// Stored as `name`, listing `count` objects.
    Kept { name: String, count: usize },
    /// None of the objects it lists is in the repository.
    NothingTrue,
    /// Too long to be kept, or it could not be stored.
    NotKept,
}

/// A refused chunk index of at most this many ids, uploaded after this session failed to write
/// (32 bytes each, held whole: 1 MiB, and as much again for the index kept), has the part of it
/// that is true stored under its own name (see [`Repository::salvage_chunk_index`]). A larger
/// one would rarely find the space on the full disk that is the usual cause.
pub(super) const SALVAGE_AT_MOST: usize = 1 << 15;

/// Above this many ids an uploaded chunk index is checked against one sorted walk of `data/`
/// (directory blocks only) instead of a look-up per id (each an inode read when not cached: a
/// random read per object on a cold cache). 65 536 is the number of `data/xx/yy` directories the
/// walk reads.
pub(super) const CHUNK_INDEX_WALK_ABOVE: usize = 65_536;

/// Ids fetched per step of that walk (32 bytes each: 2 MiB).
pub(super) const CHUNK_INDEX_WALK_BATCH: usize = 65_536;

/// Ids of an uploaded chunk index held at a time (32 bytes each: 2 MiB). The index of a
/// repository of 6.5 million objects is 256 MiB; it is checked in passes instead of being held,
/// each pass reading the index again (from the page cache: 40 MB a pass for a million objects).
/// A backup of a large repository checks one every night, so this is most of its peak memory.
pub(super) const CHUNK_INDEX_IDS_HELD: usize = 1 << 16;

#[cfg(test)]
thread_local! {
    /// Tests make a chunk index's check take this much longer, as on a busy host.
    static CHECK_TAKES_LONGER: std::cell::Cell<std::time::Duration> = const { std::cell::Cell::new(std::time::Duration::ZERO) };
}

impl Repository {
    /// A checked chunk index held whole, staged and put in place with its note (see
    /// [`Repository::place_noted`]).
    pub(super) fn store_noted(&mut self, name: &str, value: &[u8], note: trust::Note, log: &Log) -> Result<(), Error> {
        let staged = self.store.stage_value(name, value)?;
        let lag = self.store.clock_lag(&staged);
        self.place_noted(staged, note, lag, log)
    }

    /// Puts a checked chunk index in place with its note (see `trust`), the note's time moved
    /// back by `lag`, how far the file system's clock lags ours ([`store::Store::clock_lag`],
    /// measured as soon as the index was staged: it is compared with the times that clock gives
    /// directories). A note that cannot be kept only costs the next merge of it a full check.
    pub(super) fn place_noted(&mut self, staged: store::Staged, mut note: trust::Note, lag: std::time::Duration, log: &Log) -> Result<(), Error> {
        note.since = note.since.checked_sub(lag).unwrap_or(std::time::UNIX_EPOCH);
        if let Err(e) = self.store.note_staged(&staged, &note.encode()) {
            log.warning(LOGGER, &format!("could not note that {} was checked: {e}", self.location));
        }
        Ok(self.store.place(staged)?)
    }

    /// Checks an uploaded chunk index (see [`Repository::store_store`]); what to note on it.
    pub(super) fn check_chunk_index(&mut self, name: &str, value: &dyn store::ReadAt, log: &Log) -> Result<trust::Note, Error> {
        // before anything in data/ is looked at: each id is seen there after this moment, below
        // these directories (one that cannot be told is 0, which no merge will match)
        let started = SystemTime::now();
        #[cfg(test)]
        std::thread::sleep(CHECK_TAKES_LONGER.with(|d| d.get()));
        let tree = self.store.tree_identity("data").ok().flatten().unwrap_or(0);
        // this session's own objects are taken on trust only while they are where it put them
        self.puts_moved_away(log)?;
        let invalid = |why: String| Error::Refused { name: name.to_string(), why };
        let (layout, digest) = chunkindex::validate_upload(name, value).map_err(|e| match e {
            chunkindex::Invalid::Format(why) => invalid(format!("it is not a valid chunk index ({why})")),
            chunkindex::Invalid::Name { expected } => invalid(format!("its name does not match its contents (expected {expected})")),
            chunkindex::Invalid::Unreadable(e) => e.into(),
        })?;
        // the shortcut is only a shortcut: whatever keeps it from being taken, the full check is
        // an index short enough to be looked up id by id costs no more than the leaves' times
        let unsettled = if layout.count as usize <= self.walk_above {
            None
        } else {
            self.unsettled_leaves(name, &digest, log).unwrap_or_else(|e| {
                log.warning(LOGGER, &format!("chunk index {name}: checked in full ({e})"));
                None
            })
        };
        let tally = self.missing_objects(value, layout, unsettled.as_ref())?;
        if let Some(example) = tally.example.map(|id| hex(&id)) {
            let (missing, listed) = (tally.missing, tally.listed);
            log.warning(LOGGER, &format!("refused chunk index {name}: {missing} of {listed} listed objects are missing"));
            // this session's failed write, or (a client uploads the merge of the cached indexes
            // at the start of a backup) a cached index listing objects that are gone: then every
            // backup would be refused the same way until a fresh index replaces it
            let what_to_do = match self.last_write_error.clone() {
                Some(e) => {
                    let kept = match self.salvage_chunk_index(value, layout, &tally, started, tree, log) {
                        Salvage::Kept { name, count } => format!(
                            " borgd kept the {count} listed objects the repository has as {name}, so that borg compact can free them and the next backup need not upload them again."
                        ),
                        Salvage::NothingTrue => String::new(),
                        Salvage::NotKept => " Until then, the objects the backup did store are in no cached chunk index: \
                                             borg compact --stats finds them, plain borg compact does not."
                            .to_string(),
                    };
                    format!("The backup failed writing to the repository: {e}. Once that is fixed, the next backup uploads them.{kept}")
                }
                None => "A cached chunk index (cache/chunks.*) lists objects that are gone (deleted, or never written by a failed backup). \
                         Run borg check --repository-only, which writes a fresh one; the next backup then uploads them"
                    .to_string(),
            };
            return Err(invalid(format!(
                "it lists {missing} objects that are not in the repository (e.g. {example}), so clients would skip uploading them. {what_to_do}"
            )));
        }
        if let Some(unsettled) = &unsettled {
            log.debug(LOGGER, &format!(
                "chunk index {name}: the merge of the cached indexes; {} of {} objects in unchanged directories, the other {} looked for in the {} of {} directories changed since",
                tally.trusted, layout.count, layout.count - tally.trusted, unsettled.count, unsettled.existing
            ));
        }
        // an object this session put was there after the session opened, not necessarily after
        // the check started: one taken on trust dates the whole index from the session's start
        let since = if tally.own > 0 { self.opened } else { started };
        Ok(trust::Note { since, digest, tree })
    }

    /// Stores, under its own name, the part of a refused chunk index that is true: its ids less
    /// the missing ones in `tally` (all of them known, the index of at most
    /// [`SALVAGE_AT_MOST`] ids), noted as checked at `started` (see `check_chunk_index`). Why:
    /// after a backup that failed writing (a full disk, say) the client uploads the index of
    /// what it sent; refused whole, the objects the backup did store would be in no cached
    /// index, and `borg compact` (which frees only what a cached index lists, unless run with
    /// `--stats`) could not free them, on the disk that needs it. Best effort: a failure is
    /// logged.
    fn salvage_chunk_index(&mut self, value: &dyn store::ReadAt, layout: chunkindex::Layout, tally: &Tally, started: SystemTime, tree: u64, log: &Log) -> Salvage {
        if layout.count as usize > SALVAGE_AT_MOST || tally.missing_ids.len() != tally.missing {
            return Salvage::NotKept;
        }
        let mut missing = tally.missing_ids.clone();
        missing.sort_unstable();
        let mut kept: Vec<[u8; 32]> = Vec::new();
        let mut entries = chunkindex::Entries::new(value, layout);
        loop {
            match entries.next_piece() {
                Ok(Some(piece)) => kept.extend(piece.filter(|id| missing.binary_search(id).is_err())),
                Ok(None) => break,
                Err(e) => {
                    log.warning(LOGGER, &format!("could not keep what a refused chunk index lists rightly: {e}"));
                    return Salvage::NotKept;
                }
            }
        }
        kept.sort_unstable();
        kept.dedup();
        if kept.is_empty() {
            return Salvage::NothingTrue;
        }
        let mut digest = trust::Digest::default();
        kept.iter().for_each(|id| digest.add(id));
        let index = chunkindex::serialize(kept.iter());
        let name = chunkindex::cache_name(&index);
        let since = if tally.own > 0 { self.opened } else { started };
        // only where there is space: a full disk is the usual cause of the failed write, and the
        // room kept in reserve is for what frees space. A `compact` of a full repository with
        // one more cached index would first upload their merge, larger than the room can hold.
        self.store.spare_room(true);
        let stored = match self.store.info(&name, false) {
            Ok(info) if info.exists => Ok(()),
            _ => self.store_noted(&name, &index, trust::Note { since, digest, tree }, log),
        };
        self.store.spare_room(false);
        match stored {
            Ok(()) => {
                log.info(LOGGER, &format!("kept the {} objects a refused chunk index lists rightly as {name}", kept.len()));
                Salvage::Kept { name, count: kept.len() }
            }
            Err(e) => {
                log.warning(LOGGER, &format!("could not keep what a refused chunk index lists rightly as {name}: {e}"));
                Salvage::NotKept
            }
        }
    }

    /// If the upload `name` is the merge of the cached chunk indexes, each noted when it
    /// was checked (see `trust`): the leaves of `data/` changed since, where its ids must still
    /// be looked for. `None`: it is checked in full (also when `data/` or one of its `data/xx`
    /// is not the directory the notes saw).
    fn unsettled_leaves(&mut self, name: &str, digest: &trust::Digest, log: &Log) -> Result<Option<trust::Unsettled>, Error> {
        let now = SystemTime::now();
        let mut merged = trust::Digest::default();
        let mut since: Option<SystemTime> = None;
        let mut trees = Vec::new();
        for item in self.store.list("cache", false)? {
            let other = format!("cache/{}", item.name);
            // the upload's own name too: an index replaced by the same contents (a merge of
            // one index and empty ones) is its own merge
            if !item.name.starts_with("chunks.") || item.directory {
                continue;
            }
            match self.store.note(&other)?.as_deref().and_then(trust::Note::parse) {
                Some(note) => {
                    merged.merge(&note.digest);
                    since = Some(since.map_or(note.since, |s| s.min(note.since)));
                    trees.push((other, note.tree));
                }
                // an empty index lists nothing (a new repository's); any other is not known
                None if item.size <= 4096 && chunkindex::entry_count(&self.store.load(&other, 0, None, false)?).is_ok_and(|n| n == 0) => {}
                None => {
                    log.debug(LOGGER, &format!("chunk index {name}: checked in full ({other} has no note of its check)"));
                    return Ok(None);
                }
            }
        }
        if merged != *digest {
            return Ok(None); // not the merge of them
        }
        let Some(since) = since else { return Ok(None) };
        let Some(times) = self.store.leaf_times("data")? else { return Ok(None) };
        if let Some((other, _)) = trees.iter().find(|(_, tree)| *tree != times.tree) {
            // data/ or one of its data/xx replaced whole: its leaves' times are another tree's
            log.debug(LOGGER, &format!("chunk index {name}: checked in full (a directory of data/ is not the one {other} was checked in)"));
            return Ok(None);
        }
        let Some(unsettled) = trust::Unsettled::new(times, since, now) else {
            log.debug(LOGGER, &format!("chunk index {name}: checked in full (a directory of data/ is dated in the future)"));
            return Ok(None);
        };
        if unsettled.count > unsettled.existing / 2 {
            // most leaves changed (the first merge after a first backup): one walk of data/
            // costs less than listing them one by one
            log.debug(LOGGER, &format!("chunk index {name}: checked in full ({} of {} directories changed)", unsettled.count, unsettled.existing));
            return Ok(None);
        }
        Ok(Some(unsettled))
    }

    /// Which of the ids a checked index lists are not in `data/` — with `unsettled`, only of those
    /// in leaves changed since the indexes it merges were checked (see `trust`). At most
    /// `ids_held` ids are held at a time: a longer index is read in passes, each taking the ids of
    /// one range of two-byte prefixes and walking only that part of `data/` (an index whose ids
    /// crowd into one range is checked a batch at a time). Objects this session put itself are
    /// taken on trust only in an index of at most `walk_above` ids: a longer one's merge takes
    /// the shortcut of `trust`, which needs the index dated from its check, and the session's
    /// own objects, just written, are the cheapest to look up.
    fn missing_objects(&mut self, data: &dyn store::ReadAt, layout: chunkindex::Layout, unsettled: Option<&trust::Unsettled>) -> Result<Tally, Error> {
        const PREFIXES: u64 = 1 << 16;
        let trust_own = layout.count <= self.walk_above as u64;
        // ids are spread evenly over the leaves there are: those to look for are about the share
        // of them that changed (and any listed in leaves that are gone)
        let looked_for = match unsettled {
            Some(u) => (u128::from(layout.count) * u.count as u128).div_ceil(u.existing.max(1) as u128) as u64,
            None => layout.count,
        };
        let passes = looked_for.div_ceil(self.ids_held as u64).clamp(1, PREFIXES);
        let mut tally = Tally::default();
        let mut ids = Vec::new();
        for pass in 0..passes {
            let (lo, hi) = (pass * PREFIXES / passes, (pass + 1) * PREFIXES / passes);
            // a pass walks its share of data/'s directories: worth it for a share of the ids
            let walk_above = self.walk_above / passes as usize;
            let mut entries = chunkindex::Entries::new(data, layout);
            while let Some(piece) = entries.next_piece()? {
                for id in piece.filter(|id| (lo..hi).contains(&u64::from(u16::from_be_bytes([id[0], id[1]])))) {
                    match unsettled {
                        Some(u) if !u.must_look(id) => tally.trusted += 1,
                        _ => ids.push(*id),
                    }
                }
                if ids.len() >= self.ids_held {
                    self.missing_among(&mut ids, lo, walk_above, unsettled, trust_own, &mut tally)?;
                }
            }
            self.missing_among(&mut ids, lo, walk_above, unsettled, trust_own, &mut tally)?;
        }
        Ok(tally)
    }

    /// Counts into `tally` which of `ids` (all with a two-byte prefix of at least `from`) are
    /// not in `data/`, and empties `ids`: with `trust_own`, none for objects this session put
    /// itself; a look-up each if there are at most `walk_above` others, else one sorted walk of
    /// `data/` from `from` on merged with them all (which checks this session's objects too: it
    /// lists them anyway, and then the index's note can date from the check, see
    /// `check_chunk_index`); with `unsettled`, each leaf they are in listed instead.
    fn missing_among(&mut self, ids: &mut Vec<[u8; 32]>, from: u64, walk_above: usize, unsettled: Option<&trust::Unsettled>, trust_own: bool, tally: &mut Tally) -> Result<(), Error> {
        ids.sort_unstable();
        ids.dedup();
        tally.listed += ids.len();
        let own = self.written.count_known(ids);
        let walk = unsettled.is_none() && ids.len() - own > walk_above;
        if trust_own && !walk {
            self.written.remove_known(ids);
            tally.own += own;
        }
        let missing = |id: &[u8; 32], tally: &mut Tally| {
            tally.missing += 1;
            tally.example.get_or_insert(*id);
            if tally.missing_ids.len() < SALVAGE_AT_MOST {
                tally.missing_ids.push(*id);
            }
        };
        if let Some(unsettled) = unsettled {
            // ids in the leaves that changed: a look-up for a lone one, else the leaf listed
            for group in ids.chunk_by(|a, b| unsettled.leaf_of(a) == unsettled.leaf_of(b)) {
                if let [id] = group {
                    if !self.has_object(id)? {
                        missing(id, tally);
                    }
                    continue;
                }
                let mut present: Vec<[u8; 32]> = self.store.list_leaf("data", unsettled.depth(), unsettled.leaf_of(&group[0]))?.iter().filter_map(|n| unhex32(n)).collect();
                present.sort_unstable();
                for id in group.iter().filter(|id| present.binary_search(id).is_err()) {
                    missing(id, tally);
                }
            }
            ids.clear();
            return Ok(());
        }
        if !walk {
            for id in ids.iter() {
                if !self.has_object(id)? {
                    missing(id, tally);
                }
            }
            ids.clear();
            return Ok(());
        }
        let mut k = 0; // ids[..k] are accounted for
        let mut after: Option<String> = (from > 0).then(|| format!("{from:04x}"));
        loop {
            let batch = match self.store.list_range_map("data", after.as_deref(), self.walk_batch, store::Detail::Names, &|info: ItemInfo| unhex32(&info.name)) {
                Ok(b) => b,
                Err(store::Error::ObjectNotFound(_)) => Vec::new(), // no data/ yet
                Err(e) => return Err(e.into()),
            };
            for present in &batch {
                while k < ids.len() && ids[k] < *present {
                    missing(&ids[k], tally);
                    k += 1;
                }
                if k < ids.len() && ids[k] == *present {
                    k += 1;
                }
            }
            match batch.last() {
                Some(last) if batch.len() == self.walk_batch && k < ids.len() => after = Some(hex(last)),
                _ => break,
            }
        }
        for id in &ids[k..] {
            missing(id, tally);
        }
        ids.clear();
        Ok(())
    }

    /// Whether object `id` is in `data/` (one look-up).
    fn has_object(&self, id: &[u8; 32]) -> Result<bool, Error> {
        Ok(self.store.info(&Self::data_name(id)?, false)?.exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::repoobj;
    use crate::repository::tests::{on_disk, opts, sim_repo};
    use crate::lock::Owner;
    use std::time::Duration;

    #[test]
    fn a_chunk_index_listing_unwritten_objects_is_refused_with_the_cause() {
        let (mut repo, h, log) = sim_repo();
        let obj = repoobj::Header::wrap(b"m", b"d");
        repo.put(&[1; 32], &obj, &log).unwrap();
        h.inject("store", "data/", libc::ENOSPC);
        assert!(repo.put(&[2; 32], &obj, &log).is_err());
        let bad = chunkindex::serialize([[1u8; 32], [2u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&bad), &bad, &log).unwrap_err().to_string();
        assert!(e.contains("1 objects that are not in the repository") && e.contains("No space left on device"), "{e}");
        let good = chunkindex::serialize([[1u8; 32]].iter());
        repo.store_store(&chunkindex::cache_name(&good), &good, &log).unwrap();
        // a long index is checked by walking data/ once: same verdicts (here forced for 3 ids)
        repo.walk_above = 0;
        let e = repo.store_store(&chunkindex::cache_name(&bad), &bad, &log).unwrap_err().to_string();
        assert!(e.contains("1 objects that are not in the repository") && e.contains(&hex(&[2; 32])), "{e}");
        repo.store_store(&chunkindex::cache_name(&good), &good, &log).unwrap();
        repo.walk_above = CHUNK_INDEX_WALK_ABOVE;
        let e = repo.store_store("cache/chunks.0000000000000000", &good, &log).unwrap_err().to_string();
        assert!(e.contains("name does not match"), "{e}");
        // other cache items are not chunk indexes and are stored as they are
        repo.store_store("cache/last-key-checked", b"data/xx", &log).unwrap();
        // streamed (a large index): the same verdicts, and a refused one leaves nothing
        let e = repo.store_store_from(&chunkindex::cache_name(&bad), bad.len() as u64, &mut &bad[..], &log).unwrap_err().to_string();
        assert!(e.contains("1 objects that are not in the repository"), "{e}");
        assert!(!h.live().contains_key(&chunkindex::cache_name(&bad)));
        let e = repo.store_store_from("cache/chunks.0000000000000000", good.len() as u64, &mut &good[..], &log).unwrap_err().to_string();
        assert!(e.contains("name does not match"), "{e}");
        let other = chunkindex::serialize([[1u8; 32], [1u8; 32]].iter());
        repo.store_store_from(&chunkindex::cache_name(&other), other.len() as u64, &mut &other[..], &log).unwrap();
        assert_eq!(h.live().get(&chunkindex::cache_name(&other)), Some(&other));
    }

    /// A chunk index refused after this session failed to write (the index of a backup the disk
    /// filled up) has the part of it that is true kept under its own name, noted as checked, so
    /// `borg compact` can free what the backup stored; refused for any other cause, or listing
    /// nothing that is there, it keeps nothing.
    #[test]
    fn what_a_refused_index_lists_rightly_is_kept_after_a_failed_write() {
        let (_dir, path, log) = on_disk();
        let mut repo = Repository::open(&path, &opts(true), Owner::current(5), &log).unwrap();
        let obj = repoobj::Header::wrap(b"m", b"d");
        let cached = |repo: &Repository| -> Vec<String> { repo.store.list("cache", false).unwrap().into_iter().map(|i| i.name).collect() };
        let before = cached(&repo);
        // a cached index listing an object that is gone, no write failed: nothing kept
        repo.put(&[1; 32], &obj, &log).unwrap();
        let lost = chunkindex::serialize([[1u8; 32], [9u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&lost), &lost, &log).unwrap_err().to_string();
        assert!(e.contains("borg check --repository-only") && !e.contains("kept"), "{e}");
        assert_eq!(cached(&repo), before);

        repo.put(&[3; 32], &obj, &log).unwrap();
        repo.note_write_error("write data/02/02/0202…: No space left on device".into());
        let nothing = chunkindex::serialize([[2u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&nothing), &nothing, &log).unwrap_err().to_string();
        assert!(!e.contains("kept") && !e.contains("compact"), "{e}");
        assert_eq!(cached(&repo), before, "nothing listed is there: nothing kept");
        // too long to be held: kept nowhere, and said how compact finds the backup's objects
        let long = chunkindex::serialize((0..=SALVAGE_AT_MOST as u32).map(|n| std::array::from_fn(|k| (n >> (8 * (k % 4))) as u8 ^ 0x55)).collect::<Vec<[u8; 32]>>().iter());
        let e = repo.store_store(&chunkindex::cache_name(&long), &long, &log).unwrap_err().to_string();
        assert!(e.contains("borg compact --stats finds them"), "{e}");
        assert_eq!(cached(&repo), before);
        let bad = chunkindex::serialize([[3u8; 32], [2u8; 32], [1u8; 32], [3u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&bad), &bad, &log).unwrap_err().to_string();
        let right = chunkindex::serialize([[1u8; 32], [3u8; 32]].iter());
        let name = chunkindex::cache_name(&right);
        assert!(e.contains("No space left on device") && e.contains(&format!("kept the 2 listed objects the repository has as {name}")), "{e}");
        assert_eq!(repo.store.load(&name, 0, None, false).unwrap(), right);
        assert!(!repo.store.info(&chunkindex::cache_name(&bad), false).unwrap().exists);
        assert_eq!(cached(&repo).len(), before.len() + 1);
        let note = trust::Note::parse(&repo.store.note(&name).unwrap().expect("a note")).unwrap();
        assert_eq!(note.digest, chunkindex::validate_upload(&name, &right).unwrap().1);
        // kept once: the same refusal again finds it there
        let again = repo.store_store(&chunkindex::cache_name(&bad), &bad, &log).unwrap_err().to_string();
        assert!(again.contains(&name), "{again}");
        repo.close(&log).unwrap();
    }

    /// On a full disk what a refused index lists rightly is not kept: the room kept in reserve
    /// is for what frees space, and the refusal says how `borg compact` finds the backup's
    /// objects all the same.
    #[test]
    fn a_refused_index_is_kept_in_part_only_where_there_is_space() {
        let (mut repo, h, log) = sim_repo();
        let obj = repoobj::Header::wrap(b"m", b"d");
        repo.put(&[1; 32], &obj, &log).unwrap();
        repo.close(&log).unwrap(); // a new repository has its room once its first session closes
        let mut repo = Repository::open_backend(Box::new(store::sim::SimDisk::again(&h)), "sim".into(), &opts(false), Owner::current(0), &log).unwrap();
        repo.note_write_error("write data/02/02/0202…: No space left on device".into());
        h.limit_space(Some(h.used()));
        let bad = chunkindex::serialize([[1u8; 32], [2u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&bad), &bad, &log).unwrap_err().to_string();
        assert!(e.contains("borg compact --stats finds them"), "{e}");
        assert_eq!(h.live().keys().filter(|k| k.ends_with(".hid")).count(), 4, "room taken");
        assert!(!h.live().contains_key(&chunkindex::cache_name(&chunkindex::serialize([[1u8; 32]].iter()))));
        // the room is spared only meanwhile: the manifest takes a piece as ever
        repo.store_store("config/manifest", b"m", &log).unwrap();
        assert_eq!(h.live().keys().filter(|k| k.ends_with(".hid")).count(), 3);
        repo.close(&log).unwrap();
    }

    /// A chunk index listing only objects this session put needs no look-up (a look-up here would
    /// meet the injected fault); once the session deleted data, every id is looked up again.
    #[test]
    fn a_chunk_index_of_objects_this_session_put_needs_no_look_up() {
        let (mut repo, h, log) = sim_repo();
        let obj = repoobj::Header::wrap(b"m", b"d");
        repo.put(&[1; 32], &obj, &log).unwrap();
        repo.put(&[2; 32], &obj, &log).unwrap();
        h.inject("info", "data/", libc::EIO);
        let both = chunkindex::serialize([[1u8; 32], [2u8; 32]].iter());
        repo.store_store(&chunkindex::cache_name(&both), &both, &log).unwrap();
        repo.delete(&[2; 32], &log).unwrap();
        let one = chunkindex::serialize([[1u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&one), &one, &log).unwrap_err().to_string();
        assert!(e.contains("Input/output error"), "looked up after a delete: {e}");
        repo.store_store(&chunkindex::cache_name(&one), &one, &log).unwrap();
    }

    /// The walk and the look-ups agree on every mix of present, missing, duplicate and
    /// soft-deleted ids, including ids before, between and after the stored ones.
    #[test]
    fn chunk_index_walk_and_look_ups_agree() {
        let (mut repo, _h, log) = sim_repo();
        let obj = repoobj::Header::wrap(b"m", b"d");
        let id = |a: u8, b: u8| -> [u8; 32] { std::array::from_fn(|i| if i == 0 { a } else { b }) };
        for (a, b) in [(0x10, 1), (0x10, 2), (0x80, 0), (0xf0, 9)] {
            repo.put(&id(a, b), &obj, &log).unwrap();
        }
        repo.put(&id(0x90, 0), &obj, &log).unwrap();
        repo.store.move_item(&format!("data/{}", hex(&id(0x90, 0))), None, true, false, false).unwrap();
        // ids sharing a leaf (data/90/00) with the soft-deleted one: one there, one never put
        let beside = |c: u8| -> [u8; 32] { std::array::from_fn(|i| if i < 2 { id(0x90, 0)[i] } else { c }) };
        repo.put(&beside(7), &obj, &log).unwrap();
        repo.written.forget_all(); // look every id up (or walk for it): that is what is compared
        let cases: Vec<Vec<[u8; 32]>> = vec![
            vec![id(0x10, 1), id(0x10, 2), id(0x80, 0), id(0xf0, 9)],
            vec![id(0x00, 0), id(0x10, 1), id(0x10, 1), id(0x50, 5), id(0x90, 0), id(0xff, 0xff)],
            vec![id(0xf0, 9), id(0x10, 1)],
            vec![id(0x11, 0)],
            vec![beside(8), id(0x90, 0), beside(7), id(0x10, 2)],
        ];
        for ids in cases {
            let index = chunkindex::serialize(ids.iter());
            let (layout, _) = chunkindex::validate_upload(&chunkindex::cache_name(&index), &index).unwrap();
            repo.walk_above = usize::MAX;
            let by_look_up = repo.missing_objects(&index, layout, None).unwrap();
            // ids held: all at once; in passes over ranges of ids (and batches within a range)
            for held in [usize::MAX, 2, 1] {
                repo.ids_held = held;
                for (walk_above, batch) in [(usize::MAX, 1), (0, 1), (0, 2), (0, 3), (0, 1000)] {
                    (repo.walk_above, repo.walk_batch) = (walk_above, batch);
                    let found = repo.missing_objects(&index, layout, None).unwrap();
                    let how = format!("{ids:02x?}, {held} held, walk above {walk_above}, batches of {batch}");
                    assert_eq!(found.missing, by_look_up.missing, "{how}");
                    if held >= ids.len() {
                        assert_eq!(found, by_look_up, "{how}");
                    }
                }
                // looked for leaf by leaf (every leaf changed, as after a merge, see `trust`)
                let now = SystemTime::now();
                let every_leaf = trust::Unsettled::new(store::LeafTimes { depth: 2, times: vec![None; 1 << 16], tree: 0 }, now, now).unwrap();
                let found = repo.missing_objects(&index, layout, Some(&every_leaf)).unwrap();
                let how = format!("{ids:02x?}, {held} held, leaf by leaf");
                assert_eq!((found.missing, found.trusted), (by_look_up.missing, 0), "{how}");
                if held >= ids.len() {
                    assert_eq!(found, by_look_up, "{how}");
                }
            }
        }
    }

    /// What the check of an uploaded index does, with how many ids it took on trust.
    fn tally_of(repo: &mut Repository, index: &[u8], log: &Log) -> Tally {
        let name = chunkindex::cache_name(index);
        let (layout, digest) = chunkindex::validate_upload(&name, &index).unwrap();
        let unsettled = repo.unsettled_leaves(&name, &digest, log).unwrap();
        repo.missing_objects(&index, layout, unsettled.as_ref()).unwrap()
    }

    /// The merge of checked indexes is trusted where `data/` did not change since they were
    /// checked, and only there: an object removed behind borgd's back is still found missing
    /// (also once its leaf's modification time is set back), and an index that is not exactly
    /// their merge, or merges one without a note, or comes after a `data/xx` was replaced whole
    /// by an older copy, is checked in full.
    #[test]
    fn a_merge_of_checked_indexes_is_looked_for_only_where_data_changed() {
        let (dir, path, log) = on_disk();
        let mut repo = Repository::open(&path, &opts(true), Owner::current(5), &log).unwrap();
        let id = |n: u32| -> [u8; 32] { std::array::from_fn(|k| (n.wrapping_mul(0x9e37_79b9) >> (8 * (k % 4))) as u8 ^ k as u8) };
        let obj = repoobj::Header::wrap(b"m", b"d");
        for n in 0..300 {
            repo.put(&id(n), &obj, &log).unwrap();
        }
        let (a, b) = (chunkindex::serialize((0..200).map(id).collect::<Vec<_>>().iter()), chunkindex::serialize((200..300).map(id).collect::<Vec<_>>().iter()));
        for index in [&a, &b] {
            assert_eq!(tally_of(&mut repo, index, &log).trusted, 0, "nothing merged yet: all checked");
            let name = chunkindex::cache_name(index);
            repo.store_store(&name, index, &log).unwrap();
            // noted: what it lists, and the session's start, as it lists objects the session
            // put itself (one clock here: no lag to allow for)
            let note = trust::Note::parse(&repo.store.note(&name).unwrap().expect("a note")).unwrap();
            assert_eq!(note.digest, chunkindex::validate_upload(&name, index).unwrap().1);
            assert!(note.since <= repo.opened && note.since > repo.opened - Duration::from_secs(1), "{note:?}");
        }
        // their merge right away: every leaf changed since (this session wrote them all), so
        // it is checked in full, by one walk
        let merged = chunkindex::serialize((0..300).rev().map(id).collect::<Vec<_>>().iter());
        let (_, digest) = chunkindex::validate_upload(&chunkindex::cache_name(&merged), &merged).unwrap();
        assert!(repo.unsettled_leaves(&chunkindex::cache_name(&merged), &digest, &log).unwrap().is_none());
        assert_eq!(tally_of(&mut repo, &merged, &log), Tally { listed: 300, own: 300, ..Tally::default() });
        // an older copy of the directory `data/xx` holding object 42, beside the repository,
        // which lacks that object (its leaves changed long before the notes, as below)
        let (top_of_42, nested_42) = (format!("data/{:02x}", id(42)[0]), store::nest(&Repository::data_name(&id(42)).unwrap(), 2, None));
        assert_ne!(id(42)[0], id(17)[0]);
        let older = dir.path().join("older");
        assert!(std::process::Command::new("cp").arg("-a").arg(path.join(&top_of_42)).arg(&older).status().unwrap().success());
        std::fs::remove_file(older.join(&nested_42[top_of_42.len() + 1..])).unwrap();
        repo.close(&log).unwrap();
        // as if both had been checked well after this session's last change (the leaves' times
        // cannot be set back instead)
        assert_eq!(trust::date_notes_later(&path, trust::SLACK + Duration::from_secs(2)).unwrap(), 2);
        // the next night: the merge, looked for nowhere
        let mut repo = Repository::open(&path, &opts(false), Owner::current(5), &log).unwrap();
        let tally = tally_of(&mut repo, &merged, &log);
        assert_eq!((tally.trusted, tally.listed, tally.missing), (300, 0, 0));
        // an object of `a` removed behind borgd's back: its leaf changed, and it is looked for
        let gone = id(17);
        let nested = store::nest(&Repository::data_name(&gone).unwrap(), 2, None);
        std::fs::remove_file(path.join(&nested)).unwrap();
        let tally = tally_of(&mut repo, &merged, &log);
        assert_eq!((tally.trusted, tally.missing, tally.example), (299 - tally.listed as u64 + 1, 1, Some(gone)), "{tally:?}");
        assert!(tally.listed >= 1 && tally.listed < 10, "only the changed leaf: {tally:?}");
        // and still when the leaf's modification time is set back, as `rsync -a`, `cp -a` and
        // `tar` leave a directory they removed files from or restored
        let leaf = path.join(&nested).parent().unwrap().to_path_buf();
        std::fs::File::open(&leaf).unwrap().set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
        let again = tally_of(&mut repo, &merged, &log);
        assert_eq!((again.missing, again.example, again.listed), (1, Some(gone), tally.listed), "{again:?}");
        let e = repo.store_store(&chunkindex::cache_name(&merged), &merged, &log).unwrap_err().to_string();
        assert!(e.contains("1 objects that are not in the repository") && e.contains(&hex(&gone)), "{e}");
        // not the merge: one id of `b` swapped for one that was never there, in a leaf that has
        // not changed; the digests differ and the whole index is looked for
        let mut stranger = id(250);
        stranger[31] ^= 1;
        let not_merge = chunkindex::serialize((0..300).filter(|n| *n != 17 && *n != 250).map(id).chain([stranger]).collect::<Vec<_>>().iter());
        let tally = tally_of(&mut repo, &not_merge, &log);
        assert_eq!((tally.trusted, tally.missing, tally.example), (0, 1, Some(stranger)), "{tally:?}");
        // object 42's `data/xx` replaced whole by the older copy: its leaves have the times they
        // had there, before the notes, but it is another directory, so the merge is looked for
        // everywhere, and 42 is missing too
        std::fs::rename(path.join(&top_of_42), dir.path().join("was")).unwrap();
        std::fs::rename(&older, path.join(&top_of_42)).unwrap();
        let tally = tally_of(&mut repo, &merged, &log);
        assert_eq!((tally.trusted, tally.missing), (0, 2), "{tally:?}");
        // a cached index rewritten without borgd (as Python does: a new file renamed over it),
        // or copied with its attributes: no note, and the merge is checked in full
        let b_path = path.join("cache").join(&chunkindex::cache_name(&b)["cache/".len()..]);
        let copy = path.join("cache").join("copy");
        std::process::Command::new("cp").arg("-a").arg(&b_path).arg(&copy).status().unwrap();
        std::fs::rename(&copy, &b_path).unwrap();
        assert_eq!(tally_of(&mut repo, &merged, &log).trusted, 0);
        repo.close(&log).unwrap();
    }

    /// An index longer than the walk threshold is noted as of its check, not of the session's
    /// start: its check looks this session's own objects up too, by the walk of `data/` or one
    /// by one with the rest (one removed behind borgd's back is found missing), so nothing in it
    /// rests on what the session wrote. The next merge of it then trusts leaves that changed
    /// before the check (a first backup's own puts), where a short index, which takes the
    /// session's objects on trust, is still dated from the session's start.
    #[test]
    fn a_long_index_is_noted_as_of_its_check() {
        let (_dir, path, log) = on_disk();
        let id = |n: u32| -> [u8; 32] { std::array::from_fn(|k| (n.wrapping_mul(0x9e37_79b9) >> (8 * (k % 4))) as u8 ^ k as u8) };
        let obj = repoobj::Header::wrap(b"m", b"d");
        let mut repo = Repository::open(&path, &opts(true), Owner::current(5), &log).unwrap();
        for n in 0..200 {
            repo.put(&id(n), &obj, &log).unwrap();
        }
        repo.close(&log).unwrap();
        // a session open for ten minutes before its index comes (a first backup's), which put
        // 100 objects of its own
        let mut repo = Repository::open(&path, &opts(false), Owner::current(5), &log).unwrap();
        repo.opened -= Duration::from_secs(600);
        repo.walk_above = 150;
        for n in 200..300 {
            repo.put(&id(n), &obj, &log).unwrap();
        }
        let name_of = |n: u32| store::nest(&Repository::data_name(&id(n)).unwrap(), 2, None);
        std::fs::remove_file(path.join(name_of(250))).unwrap();
        let all = chunkindex::serialize((0..300).map(id).collect::<Vec<_>>().iter());
        let e = repo.store_store(&chunkindex::cache_name(&all), &all, &log).unwrap_err().to_string();
        assert!(e.contains("1 objects that are not in the repository") && e.contains(&hex(&id(250))), "{e}");
        let index = chunkindex::serialize((0..300).filter(|n| *n != 250).map(id).collect::<Vec<_>>().iter());
        let name = chunkindex::cache_name(&index);
        let before = SystemTime::now();
        repo.store_store(&name, &index, &log).unwrap();
        let note = trust::Note::parse(&repo.store.note(&name).unwrap().expect("a note")).unwrap();
        assert!(note.since >= before - Duration::from_secs(1), "dated from the check: {note:?}");
        // longer than 150 ids but for the session's own, which are looked up with the rest
        // rather than walked for (and the one removed is found missing)
        let mostly_own = |gone: bool| chunkindex::serialize((0..60).chain(200..300).filter(|n| gone || *n != 250).map(id).collect::<Vec<_>>().iter());
        let (layout, _) = chunkindex::validate_upload(&chunkindex::cache_name(&mostly_own(true)), &mostly_own(true)).unwrap();
        let tally = repo.missing_objects(&mostly_own(true), layout, None).unwrap();
        assert_eq!((tally.listed, tally.own, tally.missing, tally.example), (160, 0, 1, Some(id(250))));
        assert!(repo.check_chunk_index(&chunkindex::cache_name(&mostly_own(false)), &mostly_own(false), &log).unwrap().since >= before);
        // an index of the session's own objects alone is looked up nowhere: dated from its start
        let own = chunkindex::serialize((200..300).filter(|n| *n != 250).map(id).collect::<Vec<_>>().iter());
        let (layout, _) = chunkindex::validate_upload(&chunkindex::cache_name(&own), &own).unwrap();
        assert_eq!(repo.missing_objects(&own, layout, None).unwrap(), Tally { listed: 99, own: 99, ..Tally::default() });
        assert_eq!(repo.check_chunk_index(&chunkindex::cache_name(&own), &own, &log).unwrap().since, repo.opened);
        repo.close(&log).unwrap();
        // every leaf changed during that session, before its check: dated a little later (the
        // leaves' last changes more than `SLACK` before it), the next merge (of that one index:
        // itself) is looked for nowhere; dated from the session's start, it would be looked for
        // everywhere
        assert_eq!(trust::date_notes_later(&path, trust::SLACK + Duration::from_millis(100)).unwrap(), 1);
        let mut repo = Repository::open(&path, &opts(false), Owner::current(5), &log).unwrap();
        let tally = tally_of(&mut repo, &index, &log);
        assert_eq!((tally.trusted, tally.listed, tally.missing), (299, 0, 0), "{tally:?}");
        repo.close(&log).unwrap();
    }

    /// A streamed index's note is dated from its check, however long the check takes: how far
    /// the file system's clock lags ours is measured as soon as the index is staged. Measured
    /// after the check, it dated the note back by the check's length, and on a busy host the
    /// next night looked again in every leaf the backup's last seconds had changed (seen on XFS
    /// in CI: 665 leaves).
    #[test]
    fn a_slow_check_does_not_date_its_note_back() {
        let (_dir, path, log) = on_disk();
        let mut repo = Repository::open(&path, &opts(true), Owner::current(5), &log).unwrap();
        let ids: Vec<[u8; 32]> = (0..20u8).map(|n| [n; 32]).collect();
        for id in &ids {
            repo.put(id, &repoobj::Header::wrap(b"m", b"d"), &log).unwrap();
        }
        repo.close(&log).unwrap();
        // another session: none of the objects is its own, so the note is dated from the check
        let mut repo = Repository::open(&path, &opts(false), Owner::current(5), &log).unwrap();
        let index = chunkindex::serialize(ids.iter());
        let name = chunkindex::cache_name(&index);
        CHECK_TAKES_LONGER.with(|d| d.set(Duration::from_millis(1500)));
        let before = SystemTime::now();
        let stored = repo.store_store_from(&name, index.len() as u64, &mut &index[..], &log);
        CHECK_TAKES_LONGER.with(|d| d.set(Duration::ZERO));
        stored.unwrap();
        let note = trust::Note::parse(&repo.store.note(&name).unwrap().expect("a note")).unwrap();
        let back = before.duration_since(note.since).unwrap_or_default();
        assert!(back < Duration::from_millis(500), "the note is dated {back:?} before the store began");
        repo.close(&log).unwrap();
    }
}
