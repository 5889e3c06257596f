//! Room kept in reserve: a few files at the store's root, given up one at a time when a
//! write that keeps the repository going finds no space, so that a full repository can still be
//! locked, read, and have space freed in it.
//!
//! Why: every borg command takes a lock, and a lock is a new file. On a full file system, or at
//! its owner's quota, Python's server then fails every command — `borg list` as much as `borg
//! delete` and `borg compact`, the ones that would free space — with "Disk quota exceeded" or "No
//! space left on device", and only more space from the host's administrator helps (borg's own
//! `repo-space --free` needs the lock too). A backup that fills the quota to its last few
//! kilobytes leaves a repository in that state.
//!
//! The rules:
//! - A write outside `data/` (a lock, the manifest, an archive entry, a key, a chunk index) or a
//!   delete that fails for lack of space (`ENOSPC`, `EDQUOT`) gives up one piece of the room and
//!   is tried again, while pieces are left: the four small pieces first, then the large one; a
//!   write larger than a small piece (a chunk index) takes the large one first. A chunk index
//!   streamed in (512 KiB or more) is tried again too, as its space is allocated before a byte
//!   of it is read (see `Store::stage` and `beneath::Dir::reserve`).
//! - A repository whose cached chunk indexes are larger than the small pieces hold gets a large
//!   piece sized to them ([`large_piece_for`]), made and grown at the close of a session that
//!   stored one: `borg compact`, and every backup, of a repository with more than one cached
//!   index first uploads their merge, before anything is freed. Once the indexes have shrunk to
//!   a quarter of what it was sized for (`borg delete` or `prune`, then `compact`), it is made
//!   again at their size, or removed where the small pieces hold them: the space it kept beyond
//!   them is the repository owner's again.
//! - A store that gave up room refuses new data objects for the rest of its session: a backup
//!   would otherwise take the room it freed, and the next command would be stuck again. Reading,
//!   deleting and the bookkeeping of deletes (`borg delete`, `prune`, `compact`) go on.
//! - The room is made, as far as space allows, when a session that writes opens a repository
//!   whose room is short (one Python borg made, or one that lost its room): before that session
//!   (a backup, say) can fill the disk. A new repository's is made when its first session
//!   (normally `repo-create`) closes, and so is what a session gave up or could not make, from
//!   what it freed (after `compact`, say): after the close's barrier, as the room need not be
//!   durable (a piece a crash loses or cuts short is made again). What a session deleted is made
//!   to count as free first, if space runs out (see [`Backend::free_deleted_space`]).
//!
//! The pieces follow borgstore's convention for hidden internal files (the `.hid` suffix, as its
//! `quota.hid`): no client can name or list them, Python borg does not look at them, and
//! destroying the repository removes them with everything else. They hold pseudo-random bytes,
//! so that a compressing or deduplicating file system stores them whole.

use super::{Backend, Error, WriteOptions};
use crate::testdata::Noise;

/// How many pieces the room is given up in: a lock needs an inode and a block on ext4 or XFS;
/// in a full Btrfs quota group a 300-byte file could not be made with 16 KiB freed, and could
/// with 64 KiB.
pub const PIECES: usize = 4;
/// Bytes per piece: 512 KiB of room per repository in all.
pub const PIECE_SIZE: usize = 128 * 1024;
/// The smallest piece made of what space is left (see [`Room::keep`]): a file system block.
pub const SMALLEST_PIECE: usize = 4096;
/// The large piece, beside the small ones, of a repository whose cached chunk indexes are
/// larger than the small pieces hold (see [`large_piece_for`]).
pub const LARGE: usize = PIECES;
/// The large piece is made again smaller once it is this many times the size its indexes want
/// (see [`Room::keep`]): not at every night's small change, which would write it again and
/// again, only after a `compact` that freed much.
pub const SHRINK_AT: u64 = 4;

/// The size of the large piece for cached chunk indexes (`cache/chunks.*`) of `indexes` bytes
/// in all, 0 for none. Why: `borg compact`, and every backup, of a repository with more than
/// one cached index first uploads their merge, about as large as they are together, before it
/// frees anything; in a full repository that upload must fit in the room. Sized to the next
/// power of two of 1.25 times theirs, so the piece is written again only when it must double:
/// a few times in a repository's life, not as its index grows night by night. None while the
/// small pieces hold them.
pub fn large_piece_for(indexes: u64) -> u64 {
    let small = (PIECES * PIECE_SIZE) as u64;
    if indexes <= small / 2 {
        return 0;
    }
    indexes.saturating_add(indexes / 4).checked_next_power_of_two().unwrap_or(0)
}

/// The name of piece `i` at the store's root.
pub fn piece_name(i: usize) -> String {
    format!("borgd-room.{i}.hid")
}

/// Whether `e` says the file system (or the owner's quota) has no space left.
pub fn no_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if super::beneath::no_space(source))
}

/// What one store (one session) did with the room.
#[derive(Debug, Default)]
pub struct Room {
    /// Why room was given up (the error that found no space), once it was.
    given: Option<String>,
    /// This store deleted an item since the room was last made: its space may not count as
    /// free yet (see [`Room::keep`]).
    deleted: bool,
    /// No piece is given up meanwhile (see [`Room::spare`]).
    spared: bool,
}

impl Room {
    /// Why this store gave up room, if it did: then it refuses new data objects.
    pub fn given(&self) -> Option<&str> {
        self.given.as_deref()
    }

    /// Gives up one piece, after `why` found no space for a write of about `need` bytes:
    /// `false` if none is left. The space is made to count as free before this returns (see
    /// [`Backend::free_deleted_space`]).
    pub fn give(&mut self, backend: &mut dyn Backend, why: &Error, need: u64) -> Result<bool, Error> {
        if self.spared {
            return Ok(false);
        }
        // the small pieces first: most writes that find no space are small (a lock). One
        // larger than a small piece (the merge of the cached chunk indexes) takes the large
        // piece first: the small ones stay for the locks and bookkeeping after it, and it is
        // not tried again (written again, written back) once per small piece in vain.
        let small = (0..PIECES).rev();
        let order: Vec<usize> = if need > PIECE_SIZE as u64 { [LARGE].into_iter().chain(small).collect() } else { small.chain([LARGE]).collect() };
        for i in order {
            match backend.delete(&piece_name(i), false) {
                Ok(()) => {
                    self.given.get_or_insert_with(|| why.to_string());
                    backend.free_deleted_space()?;
                    return Ok(true);
                }
                Err(Error::ObjectNotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// While `spare` holds, no piece is given up: writes that find no space fail as the file
    /// system does. For what is worth writing only where there is space anyway.
    pub fn spare(&mut self, spare: bool) {
        self.spared = spare;
    }

    /// Notes that the store deleted an item (see [`Room::keep`]).
    pub fn note_deleted(&mut self) {
        self.deleted = true;
    }

    /// Whether every small piece is there, whole (the large one is looked after by
    /// [`Room::keep`] alone, where the indexes are known).
    pub fn whole(&self, backend: &dyn Backend) -> Result<bool, Error> {
        for i in 0..PIECES {
            let info = backend.info(&piece_name(i))?;
            if !info.exists || (info.size as usize) < PIECE_SIZE {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Makes the small pieces that are missing or smaller than whole, until one cannot be
    /// written; then sizes the large piece to `large` (see [`large_piece_for`]; `None` leaves
    /// it as it is): makes it where it is smaller, if there is space for it, and makes it again
    /// where it is at least [`SHRINK_AT`] times larger, or removes it where `large` is 0. How
    /// many pieces it made. Where a whole small piece no longer fits, the largest that does
    /// (halving down to [`SMALLEST_PIECE`]) is made instead: what a full session freed (its
    /// lock, say) goes back into the room, where nothing else can take it.
    pub fn keep(&mut self, backend: &mut dyn Backend, large: Option<u64>) -> Result<usize, Error> {
        let mut made = 0;
        // what the session deleted may not count as free yet (a Btrfs quota group frees it at
        // the next commit): made to count once, the first time space runs out. Only then: a
        // `syncfs` flushes every other writer's data on the file system too, and a session on a
        // nearly full disk that deleted nothing would pay for it at every open.
        let mut freed = !std::mem::take(&mut self.deleted);
        for i in 0..PIECES {
            let name = piece_name(i);
            let info = backend.info(&name)?;
            let had = if info.exists { info.size as usize } else { 0 };
            if had >= PIECE_SIZE {
                continue;
            }
            let mut size = PIECE_SIZE;
            loop {
                match write_piece(backend, &name, size as u64) {
                    Ok(()) => break,
                    Err(e) if no_space(&e) && !freed => {
                        backend.free_deleted_space()?;
                        freed = true;
                    }
                    Err(e) if no_space(&e) && size / 2 >= SMALLEST_PIECE.max(had + 1) => size /= 2,
                    Err(e) => return Err(e),
                }
            }
            made += 1;
            if size < PIECE_SIZE {
                return Ok(made); // space ran out
            }
        }
        let Some(large) = large else { return Ok(made) };
        let name = piece_name(LARGE);
        let info = backend.info(&name)?;
        let had = if info.exists { info.size } else { 0 };
        if large == 0 {
            if info.exists {
                match backend.delete(&name, false) {
                    Ok(()) | Err(Error::ObjectNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        } else if had < large || had / SHRINK_AT >= large {
            // smaller: replaced, so the larger one stays while there is no space for it
            match write_piece(backend, &name, large) {
                Ok(()) => made += 1,
                Err(e) if no_space(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(made)
    }
}

/// Writes piece `name`, `len` bytes no file system can compress or share with another piece
/// ([`Noise`] from a random seed), streamed: the large piece is as large as the cached indexes,
/// tens of MB for a repository of a million objects, more than a session holds in memory.
/// Replacing: a piece another session made meanwhile is as good.
fn write_piece(backend: &mut dyn Backend, name: &str, len: u64) -> Result<(), Error> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| Error::Io { op: "getrandom", path: "".into(), source: std::io::Error::other(e.to_string()) })?;
    let mut noise = Noise::new(u64::from_le_bytes(seed), len);
    backend.store_from(name, len, &mut noise, WriteOptions::plain(false, true))
}

#[cfg(test)]
mod tests {
    use super::super::{borg_levels, sim, Durability, Error, Mode, Permissions, Store};
    use super::*;

    /// A created store on a simulated disk, with its room made, and the disk's handle.
    fn store_with_room() -> (Store, sim::SimHandle) {
        let (disk, h) = sim::SimDisk::new();
        let mut s = Store::new(Box::new(disk), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Barrier);
        s.create().unwrap();
        s.store("config/readme", b"borg").unwrap();
        assert!(!s.room_whole().unwrap());
        assert_eq!(s.keep_room().unwrap(), PIECES);
        assert!(s.room_whole().unwrap());
        assert_eq!(s.keep_room().unwrap(), 0, "made twice");
        (s, h)
    }

    fn pieces(h: &sim::SimHandle) -> usize {
        h.live().keys().filter(|k| k.starts_with("borgd-room.") && k.ends_with(".hid")).count()
    }

    fn edquot(e: &Error) -> bool {
        matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EDQUOT))
    }

    /// The room is no client's: its pieces can be neither named nor listed.
    #[test]
    fn the_room_is_hidden_from_clients() {
        let (mut s, h) = store_with_room();
        assert!(h.live().get(&piece_name(0)).is_some_and(|v| v.len() == PIECE_SIZE));
        let listed: Vec<String> = s.list("", false).unwrap().into_iter().map(|i| i.name).collect();
        assert!(!listed.iter().any(|n| n.contains("room")), "{listed:?}");
        for name in [piece_name(0), format!("config/{}", piece_name(0))] {
            assert!(matches!(s.load(&name, 0, None, false), Err(Error::InvalidName { .. })));
            assert!(matches!(s.store(&name, b"x"), Err(Error::InvalidName { .. })));
            assert!(matches!(s.delete(&name, false), Err(Error::InvalidName { .. })));
        }
        assert_eq!(pieces(&h), PIECES);
    }

    /// Full (every byte of the quota used): a lock takes one piece of the room, and from then on
    /// new data is refused while deleting and bookkeeping go on; once space is freed, the room
    /// is made whole again.
    #[test]
    fn a_full_store_gives_up_room_for_bookkeeping_and_refuses_new_data() {
        let (mut s, h) = store_with_room();
        s.store("data/aabbcc", &[1u8; 1000]).unwrap();
        h.limit_space(Some(h.used()));
        s.store("locks/0123", &[b'{'; 300]).unwrap();
        assert_eq!(pieces(&h), PIECES - 1);
        let why = s.room_given().expect("room was given").to_string();
        assert!(why.contains("locks/0123") && why.contains("quota"), "{why}");
        // new data may not take the room back, whatever its size
        let e = s.store("data/ddeeff", b"x").unwrap_err();
        assert!(matches!(&e, Error::Full(w) if *w == why), "{e:?}");
        assert!(e.to_string().contains("borg compact"), "{e}");
        assert!(matches!(s.store_from("data/ddeeff", 1, &mut &b"x"[..]), Err(Error::Full(_))));
        // bookkeeping larger than what is left of the piece takes as many more as it needs
        s.store("config/manifest", &vec![7u8; PIECE_SIZE + 1]).unwrap();
        assert_eq!(pieces(&h), PIECES - 2);
        s.move_item("config/manifest", None, true, false, false).unwrap();
        s.delete("data/aabbcc", false).unwrap();
        // more than the room holds: the file system's own error
        let e = s.store("config/big", &vec![0u8; PIECES * PIECE_SIZE]).unwrap_err();
        assert!(edquot(&e), "{e:?}");
        assert_eq!(pieces(&h), 0);
        // space freed (the quota raised): the room is made again as far as it fits, a piece of
        // what is left where a whole one does not; whole once there is space again
        h.limit_space(Some(h.used() + PIECE_SIZE + PIECE_SIZE / 2 + 100));
        assert_eq!(s.keep_room().unwrap(), 2);
        let size = |i| h.live().get(&piece_name(i)).map(Vec::len);
        assert_eq!((size(0), size(1), size(2)), (Some(PIECE_SIZE), Some(PIECE_SIZE / 2), None));
        assert!(!s.room_whole().unwrap());
        h.limit_space(None);
        assert_eq!(s.keep_room().unwrap(), PIECES - 1);
        assert!((0..PIECES).all(|i| size(i) == Some(PIECE_SIZE)));
        assert!(s.room_whole().unwrap());
    }

    /// A store that found space refuses nothing and keeps its room; one without room (a
    /// repository never opened by borgd, say) fails as the file system does.
    #[test]
    fn room_is_given_only_when_space_runs_out_and_only_if_there_is_some() {
        let (mut s, h) = store_with_room();
        h.limit_space(Some(h.used() + 2000));
        s.store("locks/0123", &[b'{'; 300]).unwrap();
        s.store("data/aabbcc", &[1u8; 1000]).unwrap();
        assert_eq!((pieces(&h), s.room_given()), (PIECES, None));
        let e = s.store("data/ddeeff", &[1u8; 1000]).unwrap_err();
        assert!(edquot(&e), "data never takes room: {e:?}");
        assert_eq!((pieces(&h), s.room_given()), (PIECES, None));

        let (disk, h) = sim::SimDisk::new();
        let mut bare = Store::new(Box::new(disk), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Barrier);
        bare.create().unwrap();
        h.limit_space(Some(0));
        let e = bare.store("locks/0123", b"{}").unwrap_err();
        assert!(edquot(&e), "{e:?}");
        assert_eq!(bare.room_given(), None);
    }

    /// Making the room finds no space once (what the session deleted not yet counted free, as in
    /// a Btrfs quota group until its commit): the deleted space is made to count and the piece
    /// made whole, not halved; a session that deleted nothing does not try.
    #[test]
    fn making_the_room_first_counts_what_was_deleted() {
        let (mut s, h) = store_with_room();
        s.store("archives/aa", b"x").unwrap();
        let piece = |h: &sim::SimHandle| h.live().get(&piece_name(3)).map(Vec::len);
        for deleted in [false, true] {
            Backend::delete(&mut sim::SimDisk::again(&h), &piece_name(3), false).unwrap();
            if deleted {
                s.delete("archives/aa", false).unwrap();
            }
            h.inject("store", &piece_name(3), libc::EDQUOT);
            assert_eq!(s.keep_room().unwrap(), 1);
            // having deleted nothing, no retry: the piece halved
            let expected = if deleted { PIECE_SIZE } else { PIECE_SIZE / 2 };
            assert_eq!(piece(&h), Some(expected), "deleted {deleted}");
        }
    }

    /// Cached chunk indexes larger than the small pieces hold get a large piece beside them,
    /// written again only when it must grow; a value streamed into a full store (the
    /// merge of those indexes a client uploads first) is staged once as many pieces as it
    /// needs were given up, as the space is found missing before a byte of it is read: a small
    /// one takes a small piece, one larger than a small piece the large piece first, leaving
    /// what small pieces it does not need for the bookkeeping after it.
    #[test]
    fn a_large_index_streamed_into_a_full_store_takes_the_large_piece() {
        assert_eq!([0, 256 << 10, 300 << 10, 20 << 20].map(large_piece_for), [0, 0, 512 << 10, 32 << 20]);
        let (mut s, h) = store_with_room();
        let size = |i| h.live().get(&piece_name(i)).map(Vec::len);
        assert_eq!(size(LARGE), None, "no indexes: no large piece");
        s.store("cache/chunks.aa", &vec![1u8; 300 << 10]).unwrap();
        assert_eq!(s.keep_room().unwrap(), 1);
        assert_eq!(size(LARGE), Some(512 << 10));
        s.store("cache/chunks.bb", &vec![2u8; 100 << 10]).unwrap();
        assert_eq!(s.keep_room().unwrap(), 0, "still within the piece: not written again");
        assert!(s.room_whole().unwrap());

        h.limit_space(Some(h.used()));
        let small = vec![4u8; 100 << 10];
        let staged = s.stage("cache/chunks.dd", small.len() as u64, &mut &small[..]).unwrap();
        s.place(staged).unwrap();
        let sizes = || (0..=LARGE).map(size).collect::<Vec<_>>();
        let whole = Some(PIECE_SIZE);
        assert_eq!(sizes(), [whole, whole, whole, None, Some(512 << 10)], "a small piece for a small value");
        // 600 KiB: the large piece (512 KiB) and what is left of the small one are not enough,
        // so one more small piece goes; two are left
        let merged = vec![3u8; 600 << 10];
        let staged = s.stage("cache/chunks.cc", merged.len() as u64, &mut &merged[..]).unwrap();
        s.place(staged).unwrap();
        assert_eq!(h.live().get("cache/chunks.cc"), Some(&merged));
        assert_eq!(sizes(), [whole, whole, None, None, None], "the large piece first, then as many small ones as needed");
        assert!(s.room_given().is_some());
    }

    /// The large piece follows the cached indexes down too, but only once they shrank to a
    /// quarter of what it was sized for (after a `compact` that freed much, not a night's
    /// change), and goes where the small pieces hold them; a cache without indexes (the
    /// client's next one is as large as ever) leaves it as it is.
    #[test]
    fn the_large_piece_shrinks_only_with_the_indexes_much_smaller() {
        let (mut s, h) = store_with_room();
        let size = |i| h.live().get(&piece_name(i)).map(Vec::len);
        let index = |s: &mut Store, name: &str, len: usize| {
            for item in s.list("cache", false).unwrap_or_default() {
                s.delete(&format!("cache/{}", item.name), false).unwrap();
            }
            if len > 0 {
                s.store(&format!("cache/{name}"), &vec![1u8; len]).unwrap();
            }
            s.keep_room().unwrap()
        };
        assert_eq!(index(&mut s, "chunks.aa", 3 << 20), 1);
        assert_eq!(size(LARGE), Some(4 << 20));
        assert_eq!(index(&mut s, "chunks.bb", 1536 << 10), 0, "half: left as it is");
        assert_eq!(size(LARGE), Some(4 << 20));
        assert_eq!(index(&mut s, "chunks.cc", 400 << 10), 1, "an eighth: made again");
        assert_eq!(size(LARGE), Some(512 << 10));
        assert_eq!(index(&mut s, "", 0), 0);
        assert_eq!(size(LARGE), Some(512 << 10), "no indexes: left as it is");
        assert_eq!(index(&mut s, "chunks.dd", 100 << 10), 0);
        assert_eq!(size(LARGE), None, "held by the small pieces: removed");
        assert!(s.room_whole().unwrap());
        assert_eq!(pieces(&h), PIECES);
    }

    /// A value staged whole and placed in a full store (an uploaded chunk index) is placed once
    /// room is given, and a rename that finds no space (a soft delete on a full Btrfs) likewise;
    /// so is a value held whole that finds no space to be staged (on tmpfs, say).
    #[test]
    fn placing_and_renaming_are_tried_again_after_room_is_given() {
        let (mut s, h) = store_with_room();
        s.store("archives/aa", b"").unwrap();
        let staged = s.stage("cache/chunks.0001", 5000, &mut &[3u8; 5000][..]).unwrap();
        h.limit_space(Some(h.used()));
        s.place(staged).unwrap();
        assert_eq!(h.live().get("cache/chunks.0001").map(Vec::len), Some(5000));
        assert_eq!(pieces(&h), PIECES - 1);
        h.inject("stage", "cache/chunks.0002", libc::ENOSPC);
        let staged = s.stage_value("cache/chunks.0002", &[4u8; 100]).unwrap();
        s.place(staged).unwrap();
        assert_eq!(pieces(&h), PIECES - 2);
        h.inject("rename", "archives/aa", libc::EDQUOT);
        s.move_item("archives/aa", None, true, false, false).unwrap();
        assert!(h.live().contains_key("archives/aa.del"));
        assert_eq!(pieces(&h), PIECES - 3);
    }
}
