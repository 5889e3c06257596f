//! The borgstore key/value model: a tiny [`Backend`] contract (module `backend`) and the
//! [`Store`] policy above it.
//!
//! As in Python's borgstore, a backend only knows flat names and files; the store adds what every
//! backend should get for free: per-namespace nesting levels, soft deletion (`.del` suffix),
//! recursive listing, name validation, the permission table, and the durability policy (which
//! writes must reach the disk before which — see [`Durability`]).

mod backend;
mod name;
mod permissions;
mod beneath;
mod direct;
pub use direct::DIRECT_FROM;
mod parents;
#[cfg(test)]
mod crash_tests;
mod posixfs;
mod room;
#[cfg(test)]
pub mod sim;

pub use backend::{Backend, DamageTest, Detail, ItemInfo, ItemWriter, Object, StagedBody, Subdirectory, WriteOptions};
pub use name::{nest, push_hex, validate as validate_name, DEL_SUFFIX, MAX_NAME_LENGTH};
pub use permissions::{Mode, Permissions};
pub use posixfs::{rewrite_note, PosixFs, TempFile};
/// Tests make every open beneath a directory fail with a chosen errno (see `beneath`).
#[cfg(test)]
pub(crate) use beneath::OPENS_FAIL_WITH;

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store, with the name or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The item does not exist (borgstore's `ObjectNotFound`).
    #[error("Object not found: {0}")]
    ObjectNotFound(String),
    /// The permission mode does not allow this operation on this name.
    #[error("Permission denied ({mode} mode): {op} of '{name}' needs one of the permissions '{required}'")]
    PermissionDenied {
        /// The session's mode.
        mode: Mode,
        /// The operation refused.
        op: &'static str,
        /// The item it concerned.
        name: String,
        /// The permission letters that would allow it.
        required: &'static str,
    },
    /// The client named something that is not a valid store name.
    #[error("Invalid store name {name:?}: {why}")]
    InvalidName {
        /// The name as sent.
        name: String,
        /// Which rule it breaks.
        why: String,
    },
    /// `create` found something already there.
    #[error("store base path is not empty: {0}")]
    AlreadyExists(PathBuf),
    /// A store that must not replace found the item already there (see [`WriteOptions`]);
    /// [`Store`] turns it into the permission error it stands for, so it never reaches a client.
    #[error("item exists and may not be replaced: {0}")]
    ItemExists(String),
    /// `open`/`destroy` found nothing there.
    #[error("store base path does not exist or is not a directory: {0}")]
    DoesNotExist(PathBuf),
    /// The file system said no.
    #[error("{op} {path}: {source}")]
    Io {
        /// The call that failed.
        op: &'static str,
        /// The path it concerned.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A new data object refused: this session found the repository full and gave up room kept
    /// for locks and bookkeeping, which new data must not take back (see `room`).
    #[error("borgd refuses new data: the repository is full ({0}). It could be opened only with \
             room borgd keeps in reserve, which new data must not take. Free space first: borg \
             delete or borg prune, then borg compact (or borg repo-space --free)")]
    Full(String),
}

/// When written data is forced to stable storage (`borgd serve --fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Data objects are written without fsync; before anything that can reference them
    /// (manifest, archives, keys, config, cache) is written, and on close/check/destroy, every
    /// write since the last barrier is made durable. Referencing items are fsynced themselves.
    Barrier,
    /// Every object is fsynced (file and directory) before it is acknowledged.
    Always,
    /// Never fsync: Python borgstore's behaviour; a power cut can lose acknowledged data.
    Never,
}

/// One store of an item decided (permissions, name, durability) by a [`Store`] and carried out
/// later, possibly on another thread (see [`Store::store_later`]).
pub struct LaterWrite {
    writer: std::sync::Arc<dyn ItemWriter>,
    name: String,
    nested: String,
    how: WriteOptions,
    mode: Mode,
}

impl LaterWrite {
    /// The item's name, as the client gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `value`; a refused replace is the permission error it stands for.
    pub fn write(&self, value: &[u8]) -> Result<(), Error> {
        overwrite_denied(self.writer.write(&self.nested, value, self.how), self.mode, &self.name)
    }
}

/// A value received whole but not yet stored (see [`Store::stage`]): what must be checked before
/// it may be stored under its name — an uploaded chunk index — is read back from here, a file
/// beside its target, instead of being held in memory.
pub struct Staged {
    body: StagedBody,
    name: String,
    nested: String,
    how: WriteOptions,
}

/// When each leaf directory of a namespace last changed (see [`Store::leaf_times`]): indexed
/// by the key prefix the leaf holds (its first `depth` bytes), `None` for a leaf that does not
/// exist. An item cannot vanish from a leaf without changing its time, nor can the time be set
/// back (see [`Subdirectory`]); and a leaf cannot be replaced by another without changing its
/// time (a rename sets it, on ext4, XFS and Btrfs) or, when a directory above it is replaced
/// whole, `tree`. That is what lets a repository trust, without looking, what it saw in a leaf
/// that has not changed since.
#[derive(Debug, Clone)]
pub struct LeafTimes {
    /// Bytes of key prefix per leaf (the namespace's nesting levels: 2 for `data/`).
    pub depth: usize,
    /// When each leaf last changed (see [`Subdirectory`]), by number (see [`leaf_of`]); `None`
    /// where there is no such leaf.
    pub times: Vec<Option<std::time::SystemTime>>,
    /// Which directories hold the leaves: a hash of the ids of the namespace's directory and of
    /// every directory between it and the leaves (see [`Store::tree_identity`]).
    pub tree: u64,
}

/// The leaf (of a namespace nested `depth` deep) holding `key`'s item, as [`LeafTimes`] and
/// [`Store::list_leaf`] number them; a key shorter than the nesting has none.
pub fn leaf_of(depth: usize, key: &[u8]) -> Option<usize> {
    key.get(..depth).map(|p| p.iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b)))
}

/// Bytes read at any offset, whether held in memory or waiting in a file: a staged value is
/// checked where it is, in pieces.
pub trait ReadAt {
    /// How many bytes there are.
    fn size(&self) -> u64;
    /// Reads into `buf` from `offset`; fewer bytes only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;
}

impl ReadAt for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let rest = self.get(usize::try_from(offset).unwrap_or(usize::MAX)..).unwrap_or(&[]);
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        self.as_slice().read_at(offset, buf)
    }
}

impl ReadAt for Staged {
    fn size(&self) -> u64 {
        match &self.body {
            StagedBody::Memory(v) => v.len() as u64,
            StagedBody::File(f) => f.size(),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        match &self.body {
            StagedBody::Memory(v) => v.as_slice().read_at(offset, buf),
            StagedBody::File(f) => f.read_at(offset, buf).map_err(|e| Error::Io { op: "read back", path: self.name.clone().into(), source: e }),
        }
    }
}

/// Whether `name` is a data object's: what a backup adds, and never takes room kept in reserve.
fn is_data(name: &str) -> bool {
    name.starts_with("data/")
}

/// A store without `W` found the item there (the backend refused to replace it): that is
/// overwriting, which needs `W` — the permission error the client gets.
fn overwrite_denied(stored: Result<(), Error>, mode: Mode, name: &str) -> Result<(), Error> {
    match stored {
        Err(Error::ItemExists(_)) => Err(Error::PermissionDenied { mode, op: "store", name: name.to_string(), required: "W" }),
        other => other,
    }
}

/// The per-namespace nesting configuration borg 2 uses, longest namespace first.
pub fn borg_levels(data_levels: usize) -> Vec<(String, Vec<usize>)> {
    vec![
        ("archives/".into(), vec![0]),
        ("cache/".into(), vec![0]),
        ("config/".into(), vec![0]),
        ("data/".into(), vec![data_levels]),
        ("keys/".into(), vec![0]),
        ("locks/".into(), vec![0]),
    ]
}

/// A reader that counts what was read from it (see [`Store::stage`]).
struct Counted<'a> {
    inner: &'a mut dyn std::io::Read,
    read: &'a std::cell::Cell<u64>,
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// A backend plus the borgstore policy: levels, soft delete, permissions, durability ordering.
pub struct Store {
    backend: Box<dyn Backend>,
    levels: Vec<(String, Vec<usize>)>,
    permissions: Permissions,
    durability: Durability,
    room: room::Room,
    /// What makes an existing data object damaged: a mode without `W` replaces such an object,
    /// and keeps an intact one (see [`WriteOptions::content_addressed`]).
    damaged_data: Option<DamageTest>,
}

impl Store {
    /// Wraps a backend with a levels configuration, a permission table and a durability mode.
    pub fn new(
        backend: Box<dyn Backend>,
        mut levels: Vec<(String, Vec<usize>)>,
        permissions: Permissions,
        durability: Durability,
    ) -> Store {
        levels.sort_by_key(|(ns, _)| std::cmp::Reverse(ns.len()));
        Store { backend, levels, permissions, durability, room: room::Room::default(), damaged_data: None }
    }

    /// Data objects are named by their contents: where the permission mode forbids overwriting,
    /// a write of one that exists replaces it if `test` finds it damaged and keeps it otherwise,
    /// and succeeds either way (see [`WriteOptions::content_addressed`]).
    pub fn content_addressed_data(&mut self, test: DamageTest) {
        self.damaged_data = Some(test);
    }

    /// Where the store lives, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// See [`Backend::visibility_delay`].
    pub fn visibility_delay(&self) -> std::time::Duration {
        self.backend.visibility_delay()
    }

    fn check(&self, op: &'static str, name: &str, required: &'static str) -> Result<(), Error> {
        if self.permissions.allows(name, required) {
            Ok(())
        } else {
            Err(Error::PermissionDenied { mode: self.permissions.mode(), op, name: name.to_string(), required })
        }
    }

    /// Items that can reference data objects: they must never be durable before that data.
    fn references_data(name: &str) -> bool {
        !(name.starts_with("data/") || name.starts_with("locks/"))
    }

    fn levels_of(&self, name: &str) -> Result<&[usize], Error> {
        self.levels
            .iter()
            .find(|(ns, _)| name.starts_with(ns.as_str()))
            .map(|(_, l)| l.as_slice())
            .ok_or_else(|| Error::InvalidName { name: name.to_string(), why: "no such namespace".into() })
    }

    /// The nested backend name of an item: where it is if it exists at any configured level,
    /// else where it would be written (the last level), as borgstore's `find`.
    fn find(&self, name: &str, deleted: bool) -> Result<String, Error> {
        validate_name(name)?;
        let levels = self.levels_of(name)?;
        let suffix = deleted.then_some(DEL_SUFFIX);
        let (last, others) = levels.split_last().ok_or_else(|| Error::InvalidName {
            name: name.to_string(),
            why: "namespace has no levels".into(),
        })?;
        for level in others {
            let nested = nest(name, *level, suffix);
            if self.backend.info(&nested)?.exists {
                return Ok(nested);
            }
        }
        Ok(nest(name, *last, suffix))
    }

    /// Creates a new, empty store (needs `w`/`W` on the root).
    pub fn create(&mut self) -> Result<(), Error> {
        self.check("create", "", "wW")?;
        self.backend.create()
    }

    /// Undoes a [`Store::create`] whose repository could not be completed: deletes the items
    /// `written` (names as given to [`Store::store`], which this creation wrote itself), then
    /// whatever `create` made that is empty now. Best effort, and no permission is needed: only
    /// what this creation made goes. Without it a half-made repository stays, which `repo-create`
    /// calls existing and every other command missing.
    pub fn undo_create(&mut self, written: &[&str]) {
        for name in written {
            if let Ok(nested) = self.find(name, false) {
                let _ = self.backend.delete(&nested, false);
            }
        }
        let _ = self.backend.remove_empty();
    }

    /// See [`Backend::close_held_directories`].
    pub fn close_held_directories(&mut self) {
        self.backend.close_held_directories();
    }

    /// See [`Backend::held_directories_moved`]: whether what this store wrote can still be found
    /// where it wrote it.
    pub fn held_directories_moved(&mut self) -> Result<Vec<String>, Error> {
        self.backend.held_directories_moved()
    }

    /// Removes the store entirely (needs `D` on the root).
    pub fn destroy(&mut self) -> Result<(), Error> {
        self.check("destroy", "", "D")?;
        self.backend.destroy()
    }

    /// Checks that the store exists.
    pub fn open(&mut self) -> Result<(), Error> {
        self.backend.open()
    }

    /// Information about one item.
    pub fn info(&self, name: &str, deleted: bool) -> Result<ItemInfo, Error> {
        self.check("info", name, "lr")?;
        let nested = self.find(name, deleted)?;
        self.backend.info(&nested)
    }

    /// Reads an item (or a part of it).
    pub fn load(&self, name: &str, offset: u64, size: Option<usize>, deleted: bool) -> Result<Vec<u8>, Error> {
        self.check("load", name, "r")?;
        let nested = self.find(name, deleted)?;
        self.backend.load(&nested, offset, size)
    }

    /// The whole item for sending (see [`Object`]).
    pub fn read_object(&self, name: &str) -> Result<Object, Error> {
        self.check("load", name, "r")?;
        let nested = self.find(name, false)?;
        self.backend.read_object(&nested)
    }

    /// Writes an item; overwriting needs `W`, a new item `w` or `W`.
    pub fn store(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        let (nested, how) = self.prepare_store(name)?;
        let stored = self.write(name, value.len() as u64, |b| b.store(&nested, value, how));
        overwrite_denied(stored, self.permissions.mode(), name)
    }

    /// Runs `op`, a write of `name` of about `need` bytes: once for a data object, which never
    /// takes room kept in reserve; for anything else [`Store::with_room`].
    fn write<T>(&mut self, name: &str, need: u64, op: impl FnMut(&mut dyn Backend) -> Result<T, Error>) -> Result<T, Error> {
        self.write_while(name, need, op, || true)
    }

    /// [`Store::write`] while `again` says `op` can be tried again.
    fn write_while<T>(&mut self, name: &str, need: u64, mut op: impl FnMut(&mut dyn Backend) -> Result<T, Error>, again: impl Fn() -> bool) -> Result<T, Error> {
        if is_data(name) {
            op(self.backend.as_mut())
        } else {
            self.with_room_while(need, op, again)
        }
    }

    /// Runs `op`, a write outside `data/` of about `need` bytes (0: a few, as a delete), giving
    /// up a piece of the room kept in reserve each time it finds no space (see `room`), while
    /// pieces are left.
    fn with_room<T>(&mut self, need: u64, op: impl FnMut(&mut dyn Backend) -> Result<T, Error>) -> Result<T, Error> {
        self.with_room_while(need, op, || true)
    }

    /// [`Store::with_room`] while `again` says `op` can be tried again.
    fn with_room_while<T>(&mut self, need: u64, mut op: impl FnMut(&mut dyn Backend) -> Result<T, Error>, again: impl Fn() -> bool) -> Result<T, Error> {
        loop {
            match op(self.backend.as_mut()) {
                Err(e) if room::no_space(&e) && again() => match self.room.give(self.backend.as_mut(), &e, need) {
                    Ok(true) => continue,
                    _ => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Makes the room kept in reserve whole again, as far as space allows, its large piece
    /// sized for the cached chunk indexes there are (see `room`); how many pieces it made.
    /// Needs no permission: the pieces are no client's to see.
    pub fn keep_room(&mut self) -> Result<usize, Error> {
        // indexes that cannot be listed leave the large piece as it is, not the small ones; so
        // does a cache without any (the client's next index, built from a listing of the
        // repository, is as large as ever)
        let large = self.cached_indexes_size().ok().filter(|&size| size > 0).map(room::large_piece_for);
        self.room.keep(self.backend.as_mut(), large)
    }

    /// The bytes of the cached chunk indexes (`cache/chunks.*`) together.
    fn cached_indexes_size(&self) -> Result<u64, Error> {
        match self.backend.list("cache", Detail::Sizes) {
            Ok(items) => Ok(items.iter().filter(|i| i.name.starts_with("chunks.")).map(|i| i.size).sum()),
            Err(Error::ObjectNotFound(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// While `spare` holds, writes take no room kept in reserve: one that finds no space fails
    /// as the file system does (see `room`). For what is worth writing only where there is space.
    pub fn spare_room(&mut self, spare: bool) {
        self.room.spare(spare);
    }

    /// Whether the room kept in reserve is whole (see `room`).
    pub fn room_whole(&self) -> Result<bool, Error> {
        self.room.whole(self.backend.as_ref())
    }

    /// Why this store gave up room kept in reserve, if it did (then it refuses new data).
    pub fn room_given(&self) -> Option<&str> {
        self.room.given()
    }

    /// [`Store::store`], decided now and written later by whoever calls [`LaterWrite::write`]
    /// (another thread, say) — `None` if the backend cannot write from other threads. Only for
    /// data objects: nothing needs a barrier before them.
    pub fn store_later(&mut self, name: &str) -> Result<Option<LaterWrite>, Error> {
        if !is_data(name) {
            return Ok(None);
        }
        let Some(writer) = self.backend.shared_writer() else { return Ok(None) };
        let (nested, how) = self.prepare_store(name)?;
        self.backend.note_shared_write();
        Ok(Some(LaterWrite { writer, name: name.to_string(), nested, how, mode: self.permissions.mode() }))
    }

    /// [`Store::store`] with the value streamed from `src` (`len` bytes) as it arrives.
    pub fn store_from(&mut self, name: &str, len: u64, src: &mut dyn std::io::Read) -> Result<(), Error> {
        let (nested, how) = self.prepare_store(name)?;
        overwrite_denied(self.backend.store_from(&nested, len, src, how), self.permissions.mode(), name)
    }

    /// Receives the value of a store of `name` (`len` bytes from `src`) without storing it yet:
    /// [`Store::place`] stores it once the caller has read it back and found it acceptable;
    /// dropped instead, it leaves nothing. Permissions are checked first, before a byte is read.
    /// Outside `data/` a backend that finds no space before it has read a byte of the value
    /// (the posix backend allocates the space first) is tried again after room kept in reserve
    /// is given up (see `room`); once bytes were read, the value cannot be read again.
    pub fn stage(&mut self, name: &str, len: u64, src: &mut dyn std::io::Read) -> Result<Staged, Error> {
        let (nested, how) = self.prepare_store(name)?;
        let read = std::cell::Cell::new(0u64);
        let mut src = Counted { inner: src, read: &read };
        let body = self.write_while(name, len, |b| b.stage(&nested, len, &mut src, how), || read.get() == 0)?;
        Ok(Staged { body, name: name.to_string(), nested, how })
    }

    /// [`Store::stage`] of a value held whole: outside `data/` it can be tried again, so it
    /// takes room kept in reserve when it finds no space (see `room`), as a store does.
    pub fn stage_value(&mut self, name: &str, value: &[u8]) -> Result<Staged, Error> {
        let (nested, how) = self.prepare_store(name)?;
        let len = value.len() as u64;
        let body = self.write(name, len, |b| b.stage(&nested, len, &mut &value[..], how))?;
        Ok(Staged { body, name: name.to_string(), nested, how })
    }

    /// Stores a value [`Store::stage`] received, under the name it was staged for.
    pub fn place(&mut self, staged: Staged) -> Result<(), Error> {
        let Staged { mut body, name, nested, how } = staged;
        // a name for what is written already, but where a backend without files holds it
        let need = match &body {
            StagedBody::Memory(value) => value.len() as u64,
            StagedBody::File(_) => 0,
        };
        let placed = self.write(&name, need, |b| b.place(&nested, &mut body, how));
        overwrite_denied(placed, self.permissions.mode(), &name)
    }

    /// Attaches `note` to a staged value (see [`Backend::note_staged`]); `false` where the
    /// backend keeps no notes.
    pub fn note_staged(&mut self, staged: &Staged, note: &[u8]) -> Result<bool, Error> {
        self.backend.note_staged(&staged.nested, &staged.body, note)
    }

    /// How far the file system's clock lags this process's, as a value just staged shows it
    /// (the time of its last write against now): zero on a local file system, seconds on a
    /// network one whose server's clock is behind. Times compared with file times are moved
    /// back by it (see `repository::trust`); a clock ahead shows as zero here and as file times
    /// in the future there.
    pub fn clock_lag(&self, staged: &Staged) -> std::time::Duration {
        self.backend.staged_time(&staged.body).and_then(|written| std::time::SystemTime::now().duration_since(written).ok()).unwrap_or_default()
    }

    /// The note attached to an item (see [`Backend::note_staged`]); `None` without one, or
    /// without the item.
    pub fn note(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        self.check("info", name, "lr")?;
        let nested = self.find(name, false)?;
        self.backend.note(&nested)
    }

    /// When each leaf directory of `namespace` last changed (see [`LeafTimes`]); `None` if the
    /// backend cannot tell, or the namespace is nested deeper than two levels (16 million
    /// leaves: not worth it).
    pub fn leaf_times(&self, namespace: &str) -> Result<Option<LeafTimes>, Error> {
        self.nesting(namespace, true)
    }

    /// Which directories hold the leaves of `namespace` (see [`LeafTimes::tree`]), without
    /// looking at the leaves (257 look-ups for `data/`): what a check of `data/` notes, so that
    /// a directory above the leaves replaced whole since (moved in from an older copy, its
    /// leaves' times as they were there) makes what the check saw untrusted.
    pub fn tree_identity(&self, namespace: &str) -> Result<Option<u64>, Error> {
        Ok(self.nesting(namespace, false)?.map(|t| t.tree))
    }

    /// [`Store::leaf_times`], the leaves' times only `with_leaves` (else `times` is empty).
    fn nesting(&self, namespace: &str, with_leaves: bool) -> Result<Option<LeafTimes>, Error> {
        use std::hash::Hasher;
        validate_name(namespace)?;
        self.check("list", namespace, "l")?;
        let depth = match self.levels_of(&format!("{namespace}/"))? {
            [depth] if *depth <= 2 => *depth,
            _ => return Ok(None),
        };
        // the times (16 bytes a leaf, 1 MiB for `data/`) only where they are asked for
        let mut times = LeafTimes { depth, times: if with_leaves { vec![None; 1 << (8 * depth)] } else { Vec::new() }, tree: 0 };
        // nesting directories are named by two lower-case hex digits, as the keys are: each is
        // looked up by name (a listing of the parent would cost more and tell nothing more)
        let hex: Vec<String> = (0..=255u8).map(|b| format!("{b:02x}")).collect();
        let hex: Vec<&str> = hex.iter().map(String::as_str).collect();
        let subdirectories = |dir: &str, names: &[&str]| match self.backend.subdirectories(dir, names) {
            Err(Error::ObjectNotFound(_)) => Ok(Some(vec![None; names.len()])), // gone: its leaves are missing
            other => other,
        };
        // a stable hash (it is kept in notes), of each directory above the leaves by its key
        // prefix and level; the namespace's own first
        let mut tree = crate::fasthash::FastHasher::default();
        let Some(top) = subdirectories("", &[namespace])? else { return Ok(None) };
        let top = top.first().copied().flatten();
        tree.write_u64(top.map_or(0, |t| t.id));
        if depth == 0 {
            if with_leaves {
                times.times[0] = top.map(|t| t.changed);
            }
            times.tree = tree.finish();
            return Ok(Some(times));
        }
        // the directories of one level that exist, each with the key prefix its entries share
        let mut dirs = vec![(namespace.to_string(), 0usize)];
        for level in 1..=depth {
            if level == depth && !with_leaves {
                break;
            }
            let mut next = Vec::new();
            for (dir, prefix) in &dirs {
                let Some(found) = subdirectories(dir, &hex)? else { return Ok(None) };
                for ((byte, name), sub) in hex.iter().enumerate().zip(found) {
                    let Some(sub) = sub else { continue };
                    let prefix = prefix << 8 | byte;
                    if level == depth {
                        times.times[prefix] = Some(sub.changed);
                    } else {
                        tree.write_u64((level as u64) << 56 | prefix as u64);
                        tree.write_u64(sub.id);
                        next.push((format!("{dir}/{name}"), prefix));
                    }
                }
            }
            dirs = next;
        }
        times.tree = tree.finish();
        Ok(Some(times))
    }

    /// The names (keys, not soft-deleted) of the items in one leaf directory of `namespace`,
    /// leaf `leaf` of [`LeafTimes`] nested `depth` deep, unsorted: what a leaf that changed
    /// holds now.
    pub fn list_leaf(&self, namespace: &str, depth: usize, leaf: usize) -> Result<Vec<String>, Error> {
        validate_name(namespace)?;
        self.check("list", namespace, "l")?;
        let mut dir = namespace.to_string();
        for level in (0..depth).rev() {
            dir.push('/');
            push_hex(&mut dir, &[(leaf >> (8 * level)) as u8]);
        }
        match self.backend.list(&dir, Detail::Names) {
            Ok(items) => Ok(items.into_iter().filter(|i| !i.directory).filter_map(|i| Self::visible(i, false, None)).map(|i| i.name).collect()),
            Err(Error::ObjectNotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Where a store of `name` goes, after the permission check, and how to write it: durable
    /// (making earlier data durable first, if it can reference data) and whether it may replace
    /// an existing item (`W`; with only `w` it may not).
    fn prepare_store(&mut self, name: &str) -> Result<(String, WriteOptions), Error> {
        if let Some(why) = self.room.given().filter(|_| is_data(name)) {
            return Err(Error::Full(why.to_string()));
        }
        let nested = self.find(name, false)?;
        let replace = if self.permissions.allows(name, "W") {
            true
        } else if self.permissions.allows(name, "w") {
            false // the backend refuses atomically if the item exists
        } else {
            // denied either way; look it up only to name the permission that is missing
            let exists = self.backend.info(&nested)?.exists;
            self.check("store", name, if exists { "W" } else { "wW" })?;
            true
        };
        let durable = self.ordered_write(name)?;
        let content_addressed = if replace || !is_data(name) { None } else { self.damaged_data };
        Ok((nested, WriteOptions { durable, replace, content_addressed }))
    }

    /// Deletes an item for good (see [`Store::move_item`] for the undoable kind, a soft delete).
    pub fn delete(&mut self, name: &str, deleted: bool) -> Result<(), Error> {
        self.check("delete", name, "D")?;
        let nested = self.find(name, deleted)?;
        let durable = self.durability != Durability::Never && Self::references_data(name);
        self.with_room(0, |b| b.delete(&nested, durable))?;
        self.room.note_deleted();
        Ok(())
    }

    /// borgstore's `move`: soft delete, undelete, or a generic rename.
    pub fn move_item(
        &mut self,
        name: &str,
        new_name: Option<&str>,
        delete: bool,
        undelete: bool,
        deleted: bool,
    ) -> Result<(), Error> {
        let (from, to, target_name) = if delete {
            let from = self.find(name, false)?;
            let to = format!("{from}{DEL_SUFFIX}");
            (from, to, name.to_string())
        } else if undelete {
            let from = self.find(name, true)?;
            let to = from.strip_suffix(DEL_SUFFIX).unwrap_or(&from).to_string();
            (from, to, name.to_string())
        } else {
            let new_name = new_name.filter(|n| !n.is_empty()).ok_or_else(|| Error::InvalidName {
                name: name.to_string(),
                why: "generic move requires new_name to be given".into(),
            })?;
            (self.find(name, deleted)?, self.find(new_name, deleted)?, new_name.to_string())
        };
        self.check("move", name, "D")?;
        if self.permissions.mode() != Mode::All {
            let exists = self.backend.info(&to)?.exists;
            self.check("move", &target_name, if exists { "W" } else { "wW" })?;
        }
        // a rename of a referencing item makes (or unmakes) references: order it like a write.
        let durable = self.ordered_write(&target_name)? || self.ordered_write(name)?;
        self.with_room(0, |b| b.rename(&from, &to, durable))
    }

    /// Lists all items below `name`, recursing into nesting directories, sorted by name;
    /// `deleted` selects soft-deleted items (their names reported without the suffix).
    pub fn list(&self, name: &str, deleted: bool) -> Result<Vec<ItemInfo>, Error> {
        let mut out = Vec::new();
        self.list_each(name, deleted, &mut |info| {
            out.push(info);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Store::list`], handing each item to `visit` as it is found instead of collecting them
    /// (a listing of a large namespace is never held whole).
    pub fn list_each(&self, name: &str, deleted: bool, visit: &mut dyn FnMut(ItemInfo) -> Result<(), Error>) -> Result<(), Error> {
        validate_name(name).or_else(|e| if name.is_empty() { Ok(()) } else { Err(e) })?;
        self.check("list", name, "l")?;
        self.walk_dir(name, "", None, deleted, Detail::Sizes, &mut |info| visit(info).map(|()| true))?;
        Ok(())
    }

    /// Up to `limit` (not deleted) items below `name` whose keys sort after `after`, in key
    /// order. Nesting directories that can only hold smaller keys are skipped, and consecutive
    /// top-level directories are walked on several threads (listing is system-call bound).
    pub fn list_range(&self, name: &str, after: Option<&str>, limit: usize) -> Result<Vec<ItemInfo>, Error> {
        self.list_range_map(name, after, limit, Detail::Sizes, &Some)
    }

    /// [`Store::list_range`], reporting what `detail` says and keeping each item in the form
    /// `map` gives it (`None` skips it), so a long listing is held only in its compact form.
    pub fn list_range_map<T: Send>(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
        detail: Detail,
        map: &(dyn Fn(ItemInfo) -> Option<T> + Sync),
    ) -> Result<Vec<T>, Error> {
        validate_name(name)?;
        self.check("list", name, "l")?;
        let threads = crate::fanout::threads();
        let top = self.backend.list(name, detail)?;
        let mut out = Vec::new();
        let mut i = 0;
        while i < top.len() && out.len() < limit {
            if !top[i].directory {
                out.extend(Self::visible(top[i].clone(), false, after).and_then(map));
                i += 1;
                continue;
            }
            let end = (i..top.len()).take_while(|j| top[*j].directory).take(threads * 4).count() + i;
            let group: Vec<&ItemInfo> = top[i..end].iter().filter(|d| !Self::below(&d.name, after)).collect();
            i = end;
            let room = limit - out.len();
            let walk_part = |part: &[&ItemInfo]| -> Result<Vec<T>, Error> {
                let mut found = Vec::new();
                for d in part {
                    let mut visit = |info: ItemInfo| {
                        found.extend(map(info));
                        Ok(found.len() < room)
                    };
                    if !self.walk_dir(&format!("{name}/{}", d.name), &d.name, after, false, detail, &mut visit)? {
                        break;
                    }
                }
                Ok(found)
            };
            let parts: Vec<Result<Vec<T>, Error>> =
                crate::fanout::split(&group, threads, walk_part, || Err(Error::InvalidName { name: name.into(), why: "listing worker panicked".into() }));
            for part in parts {
                let part = part?;
                let take = part.len().min(limit - out.len());
                out.extend(part.into_iter().take(take));
            }
        }
        Ok(out)
    }

    /// Whether a nesting directory with key prefix `prefix` can only hold keys up to `after`.
    fn below(prefix: &str, after: Option<&str>) -> bool {
        after.is_some_and(|a| prefix < &a[..a.len().min(prefix.len())])
    }

    /// Whether a listed file is part of a listing of live (or, with `deleted`, soft-deleted)
    /// items after the key `after`; soft-deleted names are reported without their suffix.
    fn visible(mut info: ItemInfo, deleted: bool, after: Option<&str>) -> Option<ItemInfo> {
        match (info.name.strip_suffix(DEL_SUFFIX).map(str::len), deleted) {
            (Some(stem), true) => info.name.truncate(stem),
            (None, false) => {}
            _ => return None,
        }
        after.is_none_or(|a| info.name.as_str() > a).then_some(info)
    }

    /// Visits the files below `dir` in key order, recursing into nesting directories and
    /// skipping those that can only hold keys up to `after`; `visit` returns `false` to stop.
    fn walk_dir(
        &self,
        dir: &str,
        prefix: &str,
        after: Option<&str>,
        deleted: bool,
        detail: Detail,
        visit: &mut dyn FnMut(ItemInfo) -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        for info in self.backend.list(dir, detail)? {
            if info.directory {
                let sub_prefix = format!("{prefix}{}", info.name);
                if Self::below(&sub_prefix, after) {
                    continue;
                }
                let sub = if dir.is_empty() { info.name } else { format!("{dir}/{}", info.name) };
                if !self.walk_dir(&sub, &sub_prefix, after, deleted, detail, visit)? {
                    return Ok(false);
                }
            } else if let Some(info) = Self::visible(info, deleted, after) {
                if !visit(info)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Removes leftover temp files (needs `D` on the root: `check --repair` in a writable mode).
    pub fn remove_temp_files(&mut self) -> Result<Vec<String>, Error> {
        self.check("remove temp files of", "", "D")?;
        self.backend.remove_temp_files()
    }

    /// Makes everything written so far durable (no-op with `--fsync=never`).
    pub fn barrier(&mut self) -> Result<(), Error> {
        if self.durability == Durability::Barrier {
            self.backend.barrier()?;
        }
        Ok(())
    }

    /// Before a write of `name`: if it can reference data, first make all data durable, and ask
    /// for the write itself to be durable. Returns whether it must be durable.
    fn ordered_write(&mut self, name: &str) -> Result<bool, Error> {
        match self.durability {
            Durability::Never => Ok(false),
            Durability::Always => Ok(true),
            Durability::Barrier if Self::references_data(name) => {
                self.backend.barrier()?;
                Ok(true)
            }
            Durability::Barrier => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on the posix backend at `repo` in barrier mode, with the permissions of `mode`.
    fn posix_store(repo: &std::path::Path, mode: Mode) -> Store {
        Store::new(Box::new(PosixFs::new(repo.to_path_buf(), Durability::Barrier)), borg_levels(2), Permissions::for_mode(mode), Durability::Barrier)
    }

    /// A new posix-backed store in a temp directory (kept while the first value lives) and its
    /// path; tests open it with the permissions they need ([`posix_store`]).
    fn new_posix_store() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        posix_store(&repo, Mode::All).create().unwrap();
        (dir, repo)
    }

    /// Leaf times: one per existing leaf of `data/`, indexed by the key prefix it holds, `None`
    /// for leaves that do not exist (or are gone), a leaf's time moving when an item leaves it;
    /// a leaf's items listed by prefix; no times for namespaces nested deeper than two levels.
    #[test]
    fn leaf_times_and_listings_follow_the_nesting() {
        let (_dir, repo) = new_posix_store();
        let mut s = posix_store(&repo, Mode::All);
        s.open().unwrap();
        for key in ["aabb01", "aabb02", "aacc01", "0001ff"] {
            s.store(&format!("data/{key}"), b"x").unwrap();
        }
        let times = s.leaf_times("data").unwrap().expect("posix stores know directory times");
        assert_eq!(times.depth, 2);
        let leaf = |key: &str| leaf_of(times.depth, &u32::from_str_radix(key, 16).unwrap().to_be_bytes()[1..]).unwrap();
        let present: Vec<usize> = (0..times.times.len()).filter(|i| times.times[*i].is_some()).collect();
        assert_eq!(present, vec![leaf("0001ff"), leaf("aabb01"), leaf("aacc01")]);
        // what is not a leaf directory by its name, or not a directory, has no time
        std::fs::create_dir_all(repo.join("data/12")).unwrap();
        std::os::unix::fs::symlink(repo.join("data/aa/bb"), repo.join("data/12/36")).unwrap();
        std::fs::write(repo.join("data/12/37"), b"").unwrap();
        std::fs::create_dir_all(repo.join("data/AA/BB")).unwrap();
        std::fs::create_dir_all(repo.join("data/aa/bbb")).unwrap();
        let again = s.leaf_times("data").unwrap().unwrap();
        assert_eq!((0..again.times.len()).filter(|i| again.times[*i].is_some()).collect::<Vec<_>>(), present);
        let mut names = s.list_leaf("data", 2, leaf("aabb01")).unwrap();
        names.sort();
        assert_eq!(names, ["aabb01", "aabb02"]);
        assert!(s.list_leaf("data", 2, 0x1234).unwrap().is_empty());
        // a removal changes the leaf's time, and setting the leaf's modification time back
        // afterwards (as `rsync -a` does to a directory it removed files from) takes nothing back
        let time_of = |s: &Store| s.leaf_times("data").unwrap().unwrap().times[leaf("aabb01")].unwrap();
        let tick = std::time::Duration::from_millis(20); // past the kernel's coarse clock's tick
        let before = time_of(&s);
        std::thread::sleep(tick);
        s.delete("data/aabb02", false).unwrap();
        let removed = time_of(&s);
        assert!(removed > before, "a removal changes the leaf's time");
        std::thread::sleep(tick);
        std::fs::File::open(repo.join("data/aa/bb")).unwrap().set_modified(before - std::time::Duration::from_secs(60)).unwrap();
        assert!(time_of(&s) > removed, "a leaf's time is not set back with its modification time");
        // which directories are above the leaves: not changed by a leaf made, nor by anything in
        // a leaf; changed when one of them is replaced by a copy whose leaves keep their times
        let tree = s.leaf_times("data").unwrap().unwrap().tree;
        assert_eq!(s.tree_identity("data").unwrap(), Some(tree));
        std::fs::create_dir_all(repo.join("data/aa/cd")).unwrap();
        s.store("data/aacc02", b"x").unwrap();
        assert_eq!(s.tree_identity("data").unwrap(), Some(tree), "a leaf made, an item stored");
        let copy = std::process::Command::new("cp").arg("-a").arg(repo.join("data/aa")).arg(repo.join("aa-copy")).status().unwrap();
        assert!(copy.success());
        let copied = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(repo.join("aa-copy/bb")).unwrap();
            std::time::UNIX_EPOCH + std::time::Duration::new(m.ctime() as u64, m.ctime_nsec() as u32)
        };
        std::thread::sleep(tick);
        std::fs::rename(repo.join("data/aa"), repo.join("aa-was")).unwrap();
        std::fs::rename(repo.join("aa-copy"), repo.join("data/aa")).unwrap();
        let swapped = s.leaf_times("data").unwrap().unwrap();
        assert_eq!(swapped.times[leaf("aabb01")], Some(copied), "the copy's leaves keep their times");
        assert_ne!(swapped.tree, tree);
        assert_eq!(s.tree_identity("data").unwrap(), Some(swapped.tree));
        std::fs::remove_dir_all(repo.join("data/aa")).unwrap();
        assert_eq!(s.leaf_times("data").unwrap().unwrap().times[leaf("aacc01")], None);
        let deep = Store::new(Box::new(PosixFs::new(repo.clone(), Durability::Barrier)), borg_levels(3), Permissions::for_mode(Mode::All), Durability::Barrier);
        assert!(deep.leaf_times("data").unwrap().is_none());
    }

    /// Data objects (and only they) can be decided by the store and written from other threads;
    /// a refused replace is the same permission error; the next barrier covers them; a backend
    /// without a shared writer says so.
    #[test]
    fn data_objects_can_be_written_later_from_other_threads_and_only_they() {
        let (_dir, repo) = new_posix_store();
        let open = |mode| posix_store(&repo, mode);
        let mut s = open(Mode::NoDelete);
        s.open().unwrap();
        // only data objects: anything else may need a barrier before it, so it is written in order
        for name in ["config/manifest", "archives/x", "locks/l", "keys/repokey"] {
            assert!(s.store_later(name).unwrap().is_none(), "{name}");
        }
        let writes: Vec<LaterWrite> = (0..8u8).map(|i| s.store_later(&format!("data/ccdd{i:02x}")).unwrap().unwrap()).collect();
        let again = s.store_later("data/ccdd03").unwrap().unwrap();
        std::thread::scope(|t| {
            for (i, w) in writes.iter().enumerate() {
                t.spawn(move || w.write(&[i as u8; 3]).unwrap());
            }
        });
        // a replace without W is refused by the writer as by the store itself
        assert!(matches!(again.write(b"other"), Err(Error::PermissionDenied { required: "W", op: "store", .. })));
        assert_eq!(s.load("data/ccdd03", 0, None, false).unwrap(), [3u8; 3]);
        assert_eq!(s.list("data/cc/dd", false).unwrap().len(), 8);
        // the session's next barrier covers what other threads wrote (a syncfs)
        s.barrier().unwrap();
        let mut ro = open(Mode::ReadOnly);
        ro.open().unwrap();
        assert!(matches!(ro.store_later("data/ccdd09"), Err(Error::PermissionDenied { .. })));
        // a backend that cannot write from other threads says so: the caller writes in order
        let (disk, _handle) = sim::SimDisk::new();
        let mut sim = Store::new(Box::new(disk), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Barrier);
        sim.create().unwrap();
        assert!(sim.store_later("data/ccdd0a").unwrap().is_none());
    }

    /// Without `W` (no-delete mode's `data/`), a new item is written and an existing one is
    /// never replaced — refused atomically by the file system, with the same error Python gives,
    /// the original intact and no temp file left. Without `w` either, nothing is written.
    #[test]
    fn items_are_never_replaced_without_w_permission() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let open = |mode| {
            let mut s = Store::new(Box::new(PosixFs::new(repo.clone(), Durability::Never)), borg_levels(2), Permissions::for_mode(mode), Durability::Never);
            s.open().map(|_| s)
        };
        let mut all = Store::new(Box::new(PosixFs::new(repo.clone(), Durability::Never)), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Never);
        all.create().unwrap();
        all.store("data/aabb01", b"first").unwrap();

        let mut s = open(Mode::NoDelete).unwrap();
        s.store("data/aabb02", b"new").unwrap();
        let denied = s.store("data/aabb01", b"second").unwrap_err();
        assert!(matches!(denied, Error::PermissionDenied { required: "W", op: "store", .. }), "{denied}");
        let denied = s.store_from("data/aabb01", 6, &mut &b"second"[..]).unwrap_err();
        assert!(matches!(denied, Error::PermissionDenied { required: "W", .. }), "{denied}");
        assert_eq!(s.load("data/aabb01", 0, None, false).unwrap(), b"first");
        // config/ has W in no-delete mode: replacing is allowed there
        all.store("config/manifest", b"m1").unwrap();
        s.store("config/manifest", b"m2").unwrap();
        assert_eq!(s.load("config/manifest", 0, None, false).unwrap(), b"m2");

        let mut ro = open(Mode::ReadOnly).unwrap();
        assert!(matches!(ro.store("data/aabb03", b"x").unwrap_err(), Error::PermissionDenied { required: "wW", .. }));
        assert!(matches!(ro.store("data/aabb01", b"x").unwrap_err(), Error::PermissionDenied { required: "W", .. }));

        let names: Vec<String> = all.list("data/aa/bb", false).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["aabb01", "aabb02"]);
        let leftovers: Vec<_> = std::fs::read_dir(repo.join("data/aa/bb")).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn listings_split_live_and_soft_deleted_items_and_honour_after() {
        let (disk, _h) = sim::SimDisk::new();
        let mut s = Store::new(Box::new(disk), borg_levels(2), Permissions::for_mode(Mode::All), Durability::Never);
        s.create().unwrap();
        for id in ["aa00", "aa11", "bb00", "cc00"] {
            s.store(&format!("data/{id}"), b"x").unwrap();
        }
        s.store("archives/01", b"a").unwrap();
        s.store("archives/02", b"b").unwrap();
        s.move_item("archives/02", None, true, false, false).unwrap();
        s.move_item("data/bb00", None, true, false, false).unwrap();
        let names = |v: Vec<ItemInfo>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(names(s.list("archives", false).unwrap()), ["01"]);
        assert_eq!(names(s.list("archives", true).unwrap()), ["02"]);
        assert_eq!(names(s.list("data", false).unwrap()), ["aa00", "aa11", "cc00"]);
        assert_eq!(names(s.list("data", true).unwrap()), ["bb00"]);
        assert_eq!(names(s.list_range("data", Some("aa00"), 10).unwrap()), ["aa11", "cc00"]);
        assert_eq!(names(s.list_range("data", Some("aa11"), 1).unwrap()), ["cc00"]);
        // the root lists the namespaces' items too (directories are walked, not reported)
        assert_eq!(s.list("", false).unwrap().len(), 4);
    }

    /// A staged value is readable where it waits and visible under no name; placed, it is the
    /// item; dropped, it leaves nothing. Placing it follows the permission table (without `W`
    /// an existing item is not replaced), and a stage that ends early leaves nothing either.
    #[test]
    fn staged_values_are_read_back_then_placed_or_dropped() {
        let (_dir, repo) = new_posix_store();
        let open = |mode| posix_store(&repo, mode);
        let mut s = open(Mode::All);
        s.open().unwrap();
        let value: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let leftovers = || -> Vec<String> {
            std::fs::read_dir(repo.join("cache")).map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
        };
        let staged = s.stage("cache/x", value.len() as u64, &mut &value[..]).unwrap();
        assert_eq!(staged.size(), 300_000);
        let mut piece = [0u8; 10];
        assert_eq!(staged.read_at(299_995, &mut piece).unwrap(), 5);
        assert_eq!(piece[..5], value[299_995..]);
        assert!(matches!(s.load("cache/x", 0, None, false), Err(Error::ObjectNotFound(_))));
        assert!(s.list("cache", false).unwrap().is_empty(), "a staged value is listed nowhere");
        drop(staged);
        assert!(leftovers().is_empty(), "{:?}", leftovers());
        let staged = s.stage("cache/x", value.len() as u64, &mut &value[..]).unwrap();
        assert!(s.clock_lag(&staged) < std::time::Duration::from_secs(1), "one clock here");
        if let StagedBody::File(file) = &staged.body {
            file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(30)).unwrap();
        }
        let lag = s.clock_lag(&staged);
        assert!(lag >= std::time::Duration::from_secs(30) && lag < std::time::Duration::from_secs(31), "{lag:?}");
        s.place(staged).unwrap();
        assert_eq!(s.load("cache/x", 0, None, false).unwrap(), value);
        assert_eq!(leftovers(), ["x"]);
        // the value ends early (the client vanished): nothing is left
        assert!(s.stage("cache/y", 400_000, &mut &value[..]).is_err());
        assert_eq!(leftovers(), ["x"]);
        // without W (archives/ in no-delete mode): a new item may be placed, an existing one
        // not replaced
        s.store("archives/x", b"old").unwrap();
        let mut nd = open(Mode::NoDelete);
        nd.open().unwrap();
        let staged = nd.stage("archives/x", 3, &mut &b"new"[..]).unwrap();
        assert!(matches!(nd.place(staged), Err(Error::PermissionDenied { required: "W", .. })));
        assert_eq!(nd.load("archives/x", 0, None, false).unwrap(), b"old");
        let staged = nd.stage("archives/z", 3, &mut &b"new"[..]).unwrap();
        nd.place(staged).unwrap();
        let archives: Vec<String> = std::fs::read_dir(repo.join("archives")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(archives.len(), 2, "{archives:?}");
        // read-only: refused before a byte is read
        let mut ro = open(Mode::ReadOnly);
        ro.open().unwrap();
        let mut untouched: &[u8] = b"abc";
        assert!(matches!(ro.stage("cache/w", 3, &mut untouched), Err(Error::PermissionDenied { .. })));
        assert_eq!(untouched, b"abc");
    }
}
