//! What lets an uploaded chunk index be checked in proportion to what changed, not to the size
//! of the repository.
//!
//! At the start of every backup after the first, a borg 2.0.0b21 client loads all cached chunk
//! indexes (`cache/chunks.*`), and if it finds more than one (last night's merge and last night's
//! new chunks) uploads their merge and deletes them. borgd checks that every object an uploaded
//! index lists exists (see `Repository::store_store`), so a repository of millions of objects
//! had all of `data/` walked every night: 0.9 s of a 1.3 s night at 500 000 objects.
//!
//! But the indexes merged were checked when they were uploaded. So each index that passes is noted,
//! on its file (see `store::Backend::note_staged`), with a [`Note`]: how many ids it lists, an
//! order-independent [`Digest`] of them, a time after which each was known present — the check's
//! start, or the session's if the check took objects the session put itself on trust
//! (`Repository::written`, which only an index of at most 65 536 ids does: a night's new chunks) —,
//! and which directories were above `data/`'s leaves then (`store::LeafTimes::tree`: their inode
//! numbers). An upload whose digest is the sum of the cached indexes' notes (its own name's too, if
//! it replaces itself) lists exactly their ids: the merge (a sum of 256-bit ids that differs in any
//! id matches by chance with probability 2^-256; the check guards against accidents, not against a
//! client with the key, who can reference missing chunks anyway). Then, if `data/` and every
//! `data/xx` are still the directories the notes saw (one moved in whole from an older copy brings
//! its leaves with the times they had there), an id needs no look-up if its leaf directory
//! (`data/xx/yy`) has not changed since the oldest of those times: an object cannot vanish from a
//! directory without changing its time. That is its status-change time, which no program can set
//! back, unlike its modification time, which `rsync -a`, `cp -a` and `tar` restore after changing
//! what is in a directory (see `store::LeafTimes`). The rest — leaves that changed, new or missing
//! — are listed, which is about a tenth of them a night.
//!
//! The shortcut is taken only where it pays: not for an index short enough to be looked up id by
//! id (as many stats as the leaves' times), nor when more than half the leaves changed (one walk
//! of `data/` is cheaper than listing them one by one).
//!
//! Times are compared with [`SLACK`] to spare: file times come from the kernel's coarse clock,
//! which lags the one `SystemTime::now` reads by up to a tick. A file system whose clock lags
//! ours (a network file system's server behind) shows it on the index just staged, and the note
//! is dated back by as much (`store::Store::clock_lag`); a leaf dated in the future (a clock
//! ahead, or ours set back) makes the upload checked in full instead.
//! Without notes (a copy of the repository, an index written by Python borg, a file system
//! without user extended attributes) an upload is checked in full and noted then.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{self, LeafTimes};

/// How much older than a note's time a leaf must be to be trusted (see the module docs).
pub const SLACK: Duration = Duration::from_secs(2);

/// An order-independent summary of a set of ids: their count and their sum (as 256-bit numbers,
/// wrapping). The digest of a merge of disjoint sets is the sum of their digests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// How many ids were added.
    pub count: u64,
    sum: [u128; 2],
}

impl Digest {
    /// Adds one id.
    pub fn add(&mut self, id: &[u8; 32]) {
        let half = |at: usize| u128::from_be_bytes(std::array::from_fn(|i| id[at + i]));
        self.add_sum([half(0), half(16)]);
        self.count += 1;
    }

    /// Adds another digest's ids (as if each had been added).
    pub fn merge(&mut self, other: &Digest) {
        self.add_sum(other.sum);
        self.count += other.count;
    }

    /// The 256-bit wrapping addition of the sums, high half first.
    fn add_sum(&mut self, [hi, lo]: [u128; 2]) {
        let (lo, carry) = self.sum[1].overflowing_add(lo);
        self.sum = [self.sum[0].wrapping_add(hi).wrapping_add(u128::from(carry)), lo];
    }
}

/// What borgd remembers about a chunk index it stored: every id in `digest` was known to be in
/// `data/` at some moment after `since`, when the directories above its leaves were `tree`
/// (see `store::LeafTimes::tree`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// When the ids were last all known present (a check's start, or its session's).
    pub since: SystemTime,
    /// Which ids the index lists.
    pub digest: Digest,
    /// The directories above `data/`'s leaves at that moment (see `store::LeafTimes::tree`).
    pub tree: u64,
}

/// The first word of a note: its format (a note of another format is no note; the first, v1,
/// had no `tree`).
const TAG: &str = "borgd-checked-v2";

impl Note {
    /// One line of text (readable with `getfattr -n user.borgd.note`).
    pub fn encode(&self) -> Vec<u8> {
        let since = self.since.duration_since(UNIX_EPOCH).unwrap_or_default();
        let [hi, lo] = self.digest.sum;
        format!("{TAG} {}.{:09} {} {hi:032x}{lo:032x} {:016x}", since.as_secs(), since.subsec_nanos(), self.digest.count, self.tree).into_bytes()
    }

    /// A note [`Note::encode`] wrote; `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Note> {
        let text = std::str::from_utf8(text).ok()?;
        let mut words = text.split(' ');
        if words.next()? != TAG {
            return None;
        }
        let (secs, nanos) = words.next()?.split_once('.')?;
        let since = UNIX_EPOCH.checked_add(Duration::new(secs.parse().ok()?, nanos.parse().ok().filter(|n| *n < 1_000_000_000)?))?;
        let count = words.next()?.parse().ok()?;
        let sum = words.next()?;
        let tree = words.next()?;
        if sum.len() != 64 || tree.len() != 16 || words.next().is_some() {
            return None;
        }
        let half = |s: &str| u128::from_str_radix(s, 16).ok();
        Some(Note { since, digest: Digest { count, sum: [half(&sum[..32])?, half(&sum[32..])?] }, tree: u64::from_str_radix(tree, 16).ok()? })
    }
}

/// Dates the note of every chunk index of the repository at `repo` (on a posix file system)
/// `by` later, as if each check had run that much later, then waits until a change made from
/// then on counts as made after them (their times less [`SLACK`], and a tick of the kernel's
/// coarse clock). For tests: a leaf's time cannot be set back (see `store::LeafTimes`), so this
/// is how a test puts the leaves' last changes long enough before a check. How many notes
/// there were. Public only because integration tests cannot reach `cfg(test)` items; kept out
/// of the docs.
#[doc(hidden)]
pub fn date_notes_later(repo: &std::path::Path, by: Duration) -> std::io::Result<usize> {
    let mut latest: Option<SystemTime> = None;
    let mut dated = 0;
    for entry in std::fs::read_dir(repo.join("cache"))? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("chunks.") {
            continue;
        }
        let edit = |text: &[u8]| match Note::parse(text) {
            Some(mut note) => {
                note.since += by;
                latest = latest.max(Some(note.since));
                note.encode()
            }
            None => text.to_vec(),
        };
        if store::rewrite_note(&entry.path(), edit)? {
            dated += 1;
        }
    }
    let settled_until = latest.and_then(|t| t.checked_sub(SLACK)).map(|t| t + Duration::from_millis(20));
    if let Some(wait) = settled_until.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
        std::thread::sleep(wait);
    }
    Ok(dated)
}

/// Which leaf directories of `data/` the ids of a trusted merge must still be looked for in:
/// those changed (or made, or gone) since the merged indexes' oldest note, less [`SLACK`].
#[derive(Debug)]
pub struct Unsettled {
    /// Bytes of id prefix per leaf.
    depth: usize,
    /// Per leaf (by its number, see `store::leaf_of`): whether it changed.
    changed: Vec<bool>,
    /// How many leaves there are.
    pub existing: usize,
    /// How many of them changed.
    pub count: usize,
}

impl Unsettled {
    /// From the leaves' times; `None` if a leaf is dated after `now` (plus [`SLACK`]): a clock
    /// that does not agree with the file system's cannot say what changed.
    pub fn new(times: LeafTimes, since: SystemTime, now: SystemTime) -> Option<Unsettled> {
        let settled_before = since.checked_sub(SLACK)?;
        let future = now + SLACK;
        if times.times.iter().flatten().any(|t| *t > future) {
            return None;
        }
        let changed: Vec<bool> = times.times.iter().map(|t| t.is_none_or(|t| t >= settled_before)).collect();
        let existing = times.times.iter().flatten().count();
        let count = times.times.iter().flatten().filter(|t| **t >= settled_before).count();
        // the times themselves (16 bytes a leaf, 1 MiB for data/) go here
        Some(Unsettled { depth: times.depth, changed, existing, count })
    }

    /// The leaf holding `id`.
    pub fn leaf_of(&self, id: &[u8; 32]) -> usize {
        store::leaf_of(self.depth, id).unwrap_or(0)
    }

    /// Whether `id` must be looked for (its leaf changed).
    pub fn must_look(&self, id: &[u8; 32]) -> bool {
        self.changed.get(self.leaf_of(id)).copied().unwrap_or(true)
    }

    /// Bytes of id prefix per leaf.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> [u8; 32] {
        std::array::from_fn(|k| (n.wrapping_mul(2_654_435_761) >> (k % 4 * 8)) as u8 ^ (k as u8).wrapping_mul(0x9d))
    }

    #[test]
    fn a_merge_of_disjoint_sets_has_the_sum_of_their_digests_and_nothing_else_does() {
        let (mut a, mut b, mut merged) = (Digest::default(), Digest::default(), Digest::default());
        (0..1000).for_each(|n| a.add(&id(n)));
        (1000..1300).for_each(|n| b.add(&id(n)));
        (0..1300).rev().for_each(|n| merged.add(&id(n)));
        let mut sum = a;
        sum.merge(&b);
        assert_eq!(sum, merged);
        // one id swapped for another, one dropped, the ids carried into the high half
        let mut swapped = Digest::default();
        (0..1299).chain([5000]).for_each(|n| swapped.add(&id(n)));
        assert_ne!(swapped, merged);
        let mut short = Digest::default();
        (1..1300).for_each(|n| short.add(&id(n)));
        assert_ne!(short.count, merged.count);
        let (mut carried, mut each) = (Digest::default(), Digest::default());
        carried.add(&[0xff; 32]);
        carried.add(&[0xff; 32]);
        each.merge(&carried);
        let mut expected = [0xff; 32];
        expected[31] = 0xfe; // 2 * (2^256 - 1) mod 2^256
        let mut one = Digest::default();
        one.add(&expected);
        assert_eq!(carried.sum, one.sum);
        assert_eq!(each, carried);
    }

    #[test]
    fn notes_read_back_what_was_written_and_nothing_else() {
        let mut digest = Digest::default();
        (0..10).for_each(|n| digest.add(&id(n)));
        let note = Note { since: UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789), digest, tree: 0x0123_4567_89ab_cdef };
        let text = note.encode();
        assert!(text.starts_with(b"borgd-checked-v2 1795000000.123456789 10 "), "{}", String::from_utf8_lossy(&text));
        assert!(text.ends_with(b" 0123456789abcdef"), "{}", String::from_utf8_lossy(&text));
        assert_eq!(Note::parse(&text), Some(note));
        // a note of the first format (no tree) is no note: that index is checked in full once
        let v1 = String::from_utf8(text.clone()).unwrap().replace("-v2 ", "-v1 ");
        let v1 = &v1[..v1.rfind(' ').unwrap()];
        assert_eq!(Note::parse(v1.as_bytes()), None);
        for bad in [&b""[..], b"borgd-checked-v3 1.0 1 00", b"borgd-checked-v2 1.0 1 00 00", b"borgd-checked-v2 x 1 00"] {
            assert_eq!(Note::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let mut trailing = text.clone();
        trailing.extend_from_slice(b" more");
        assert_eq!(Note::parse(&trailing), None);
    }
}
