//! Borg 2 repository semantics on top of a [`Store`]: what `borg/repository.py` does.
//!
//! A repository is a store with `config/{readme,version,id}` (version 3), data objects under
//! `data/` named by the hex of their 32-byte id, `archives/`, `keys/repokey`, `config/manifest`,
//! a chunk-index cache under `cache/`, and locks under `locks/`. Every operation refreshes the
//! lock when due, exactly as Python's `_lock_refresh` does.

mod check;
mod index_check;
pub mod chunkindex;
pub mod repoobj;
pub mod trust;
mod written;

pub use written::Key as WrittenKey;

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::lock::{self, Lock, Owner};
use crate::log::Log;
use crate::store::{self, borg_levels, Backend, Durability, ItemInfo, Object, Permissions, PosixFs, Store};

/// The README every borg 2 repository has; a different text means "not a borg 2 repository".
pub const README: &str = "This is a Borg Backup repository.\nSee https://borgbackup.readthedocs.io/\n";
/// Largest `put` borg accepts (`MAX_DATA_SIZE`).
pub const MAX_DATA_SIZE: usize = 20_971_479;
/// The repository version borg 2 writes and accepts.
pub const VERSION: u32 = 3;
const LOGGER: &str = "borg.repository";

/// Repository failures; each maps to one exception class the client knows (see `rpc::wire`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `repo-create` where a repository (or anything else) already is.
    #[error("A repository already exists at {0}.")]
    AlreadyExists(String),
    /// Nothing at the path to open.
    #[error("Repository {0} does not exist.")]
    DoesNotExist(String),
    /// Something at the path, but not a borg 2 repository.
    #[error("{0} is not a valid repository. Check the repository config.")]
    InvalidRepository(String),
    /// A repository whose `config/` is unreadable or wrong (the path, and what is wrong).
    #[error("{0} does not have a valid config. Check the repository config [{1}].")]
    InvalidRepositoryConfig(String, String),
    /// The repository is inconsistent; `borg check` must look first.
    #[error("Inconsistency detected. Please run \"borg check {0}\".")]
    CheckNeeded(String),
    /// `get` of an id that is not there (the id in hex, and the repository).
    #[error("Object with key {0} not found in repository {1}.")]
    ObjectNotFound(String, String),
    /// An object or file whose bytes do not match what they claim (sizes, hashes, format).
    #[error("Data integrity error: {0}")]
    Integrity(String),
    /// `get_manifest` in a repository that has none yet.
    #[error("Repository has no manifest.")]
    NoManifest,
    /// A client tried to store what would reference objects that are not in the repository: a
    /// chunk-index cache that would make clients skip uploads, or an archive whose objects went
    /// with a directory moved away during the session.
    #[error("borgd refuses to store {name}: {why}")]
    Refused {
        /// The store name the client tried to write.
        name: String,
        /// What it would reference that is missing.
        why: String,
    },
    /// Taking, keeping or giving back the repository's lock failed.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// The store underneath failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// How to open a repository: the client's wishes (`open` arguments) and the server's policy.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `repo-create`: make the repository (the path must be missing or an empty directory).
    pub create: bool,
    /// Take a lock at all (the client's `open(lock=...)`).
    pub lock: bool,
    /// An exclusive lock instead of a shared one.
    pub exclusive: bool,
    /// How long to wait for a competing lock to go.
    pub lock_wait: Duration,
    /// What the session may read, write and delete (`--permissions`).
    pub permissions: Permissions,
    /// When writes are made durable (`--fsync`).
    pub durability: Durability,
    /// Large objects written around the page cache (see `store::PosixFs::with_direct_io`).
    pub direct_io: bool,
    /// Nesting levels of `data/` for a repository created now.
    pub data_levels: usize,
}

/// An open repository, holding its lock (if any) until [`Repository::close`].
pub struct Repository {
    store: Store,
    location: String,
    id: [u8; 32],
    version: u32,
    lock: Option<Lock>,
    /// The last write of this session that failed, named when we refuse a chunk index that
    /// lists what it did not write (the client reports that refusal, not the original error).
    last_write_error: Option<String>,
    /// Uploaded chunk indexes longer than this are checked with one walk of `data/` instead of
    /// a look-up per id (see [`index_check::CHUNK_INDEX_WALK_ABOVE`]; tests lower it).
    walk_above: usize,
    /// Ids per step of that walk ([`index_check::CHUNK_INDEX_WALK_BATCH`]; tests lower it).
    walk_batch: usize,
    /// Ids of an uploaded chunk index held at a time ([`index_check::CHUNK_INDEX_IDS_HELD`];
    /// tests lower it).
    ids_held: usize,
    /// Objects this session put itself: an uploaded chunk index of at most `walk_above` ids needs
    /// no look-up for them.
    written: written::Written,
    /// When this session opened the repository: every object it found or put was there after
    /// this moment (the time noted on a chunk index whose check took some of its own objects on
    /// trust, see `trust`).
    opened: SystemTime,
    /// This session put an object: before anything can reference its objects, whether they are
    /// still where it put them is looked at (see [`Repository::puts_moved_away`]).
    put_any: bool,
    /// Why they are not: a directory they were written to was moved away during the session.
    /// Kept for the rest of the session.
    puts_lost: Option<String>,
    /// This session makes the room kept in reserve (see `store::room`): it holds a lock and may
    /// write.
    keeps_room: bool,
    /// The room is short (or missing) after this session opened (a new repository's, or one
    /// space did not allow): its close makes it, from whatever space there is, as the close of
    /// one that gave room up does.
    room_short: bool,
    /// This session stored a chunk index: its close sizes the room's large piece again.
    stored_index: bool,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 * bytes.len());
    store::push_hex(&mut s, bytes);
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn not_found_or(e: store::Error, f: impl FnOnce() -> Error) -> Error {
    match e {
        store::Error::ObjectNotFound(_) => f(),
        // a file where a directory should be (e.g. a borg 1 repository's `config` file)
        store::Error::Io { ref source, .. } if source.raw_os_error() == Some(libc::ENOTDIR) => f(),
        other => other.into(),
    }
}

impl Repository {
    /// Opens (and with `create`, first creates) the repository at `path`, then takes the lock.
    pub fn open(path: &Path, opts: &OpenOptions, owner: Owner, log: &Log) -> Result<Repository, Error> {
        let backend = Box::new(PosixFs::new(path.to_path_buf(), opts.durability).with_direct_io(opts.direct_io));
        Self::open_backend(backend, path.display().to_string(), opts, owner, log)
    }

    /// [`Repository::open`] on any backend (tests put the simulated disk here).
    pub fn open_backend(backend: Box<dyn Backend>, location: String, opts: &OpenOptions, owner: Owner, log: &Log) -> Result<Repository, Error> {
        let opened = SystemTime::now();
        let mut store = Store::new(backend, borg_levels(opts.data_levels), opts.permissions.clone(), opts.durability);
        // where the mode forbids overwriting, a put of an object that exists replaces it if it is
        // damaged and keeps it if not (a power cut can leave a backup's objects outside every
        // chunk index, or names without their data; the client's next upload must succeed)
        store.content_addressed_data(repoobj::damaged);
        if opts.create {
            Self::create(&mut store, &location, log)?;
        }
        store.open().map_err(|e| match e {
            store::Error::DoesNotExist(_) => Error::DoesNotExist(location.clone()),
            other => other.into(),
        })?;
        let readme = store.load("config/readme", 0, None, false).map_err(|e| not_found_or(e, || Error::DoesNotExist(location.clone())))?;
        if readme != README.as_bytes() {
            return Err(Error::InvalidRepository(location));
        }
        let invalid_config = |why: String| Error::InvalidRepositoryConfig(location.clone(), why);
        let version_raw = store.load("config/version", 0, None, false).map_err(|e| not_found_or(e, || invalid_config("config/version is missing".into())))?;
        let version: u32 = std::str::from_utf8(&version_raw)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| invalid_config("config/version is not a number".into()))?;
        if version != VERSION {
            return Err(invalid_config(format!("repository version {version} is not supported by this borg version")));
        }
        let id_raw = store.load("config/id", 0, None, false).map_err(|e| not_found_or(e, || invalid_config("config/id is missing".into())))?;
        let id = std::str::from_utf8(&id_raw).ok().and_then(unhex32).ok_or_else(|| invalid_config("config/id is not 64 hex digits".into()))?;
        // lock only after making sure there is a supported repository here.
        let lock = if opts.lock { Some(Lock::acquire(&mut store, opts.exclusive, opts.lock_wait, owner, log)?) } else { None };
        // the room kept in reserve (see `store::room`), if short: a read-only session uses it,
        // but writes none
        let keeps_room = lock.is_some() && opts.permissions.mode() != store::Mode::ReadOnly;
        let mut room_short = false;
        if let Some(why) = store.room_given() {
            log.warning(LOGGER, &format!(
                "borgd: the repository {location} is full ({why}); it was opened with room borgd keeps in reserve. \
                 New data is refused until space is freed: borg delete or borg prune, then borg compact."
            ));
        } else if keeps_room {
            room_short = Self::room_short(&store, log);
            if room_short && !opts.create {
                // a repository borgd did not make (Python borg's), or one whose room was lost:
                // made now, before this session (a backup, say) can fill the disk, and so once
                // per repository; its close tries again what space did not allow. A new
                // repository's is made at its close, after the barrier, so that creating one
                // never waits for the room to be durable.
                Self::keep_room(&mut store, log);
                room_short = Self::room_short(&store, log);
            }
        }
        log.debug(LOGGER, &format!("opened repository {location} (id {}), lock: {}", hex(&id), match &lock {
            Some(l) if l.is_exclusive() => "exclusive",
            Some(_) => "shared",
            None => "none",
        }));
        Ok(Repository { store, location, id, version, lock, last_write_error: None, walk_above: index_check::CHUNK_INDEX_WALK_ABOVE, walk_batch: index_check::CHUNK_INDEX_WALK_BATCH, ids_held: index_check::CHUNK_INDEX_IDS_HELD, written: written::Written::default(), opened, put_any: false, puts_lost: None, keeps_room, room_short, stored_index: false })
    }

    /// Makes the room kept in reserve as far as space allows (see `store::room`); a failure only
    /// leaves it short, for a later session to make.
    fn keep_room(store: &mut Store, log: &Log) {
        match store.keep_room() {
            Ok(made) => log.debug(LOGGER, &format!("made {made} pieces of room kept in reserve")),
            Err(e) => log.debug(LOGGER, &format!("could not make room kept in reserve: {e}")),
        }
    }

    /// Whether the room kept in reserve is short (a session then makes it; see `store::room`).
    fn room_short(store: &Store, log: &Log) -> bool {
        match store.room_whole() {
            Ok(whole) => !whole,
            Err(e) => {
                log.debug(LOGGER, &format!("could not look at the room kept in reserve: {e}"));
                true // close tries to make it
            }
        }
    }

    fn create(store: &mut Store, location: &str, log: &Log) -> Result<(), Error> {
        store.create().map_err(|e| match e {
            store::Error::AlreadyExists(_) => Error::AlreadyExists(location.to_string()),
            other => other.into(),
        })?;
        // an empty chunk index, so the first client need not list an empty data/ to build one.
        let index = chunkindex::serialize(std::iter::empty());
        let index_name = chunkindex::cache_name(&index);
        let mut written: Vec<&str> = Vec::new();
        let mut fill = |store: &mut Store| -> Result<(), Error> {
            let mut id = [0u8; 32];
            getrandom::fill(&mut id).map_err(|e| Error::Integrity(format!("no randomness for the repository id: {e}")))?;
            // the readme last: until it is there, `open` finds no repository here, so nobody
            // can start using one this creation may still undo
            let (version, id) = (VERSION.to_string(), hex(&id));
            let items: [(&str, &[u8]); 4] =
                [(&index_name, &index), ("config/version", version.as_bytes()), ("config/id", id.as_bytes()), ("config/readme", README.as_bytes())];
            for (name, value) in items {
                store.store(name, value)?;
                written.push(name);
            }
            Ok(())
        };
        if let Err(e) = fill(store) {
            // a half-made repository would be "already there" to repo-create and missing to
            // every other command: take back what this creation made
            store.undo_create(&written);
            return Err(e);
        }
        log.info(LOGGER, &format!("created repository {location}"));
        Ok(())
    }

    /// The repository id (returned by `open`).
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Releases the lock after making all writes durable; the repository is closed either way.
    pub fn close(mut self, log: &Log) -> Result<(), Error> {
        let synced = self.store.barrier();
        if self.keeps_room && (self.room_short || self.store.room_given().is_some() || self.stored_index) {
            // after the barrier: the room need not be durable, and this session's data did not
            // wait for it; what the session freed makes the room again, as far as it goes, and
            // its large piece follows the cached chunk indexes
            Self::keep_room(&mut self.store, log);
        }
        // nothing more is written: what the store holds open goes before the lock is released
        self.store.close_held_directories();
        let released = match self.lock.take() {
            Some(lock) => lock.release(&mut self.store, log),
            None => Ok(()),
        };
        synced?;
        released?;
        Ok(())
    }

    fn refresh_lock(&mut self, log: &Log) -> Result<(), Error> {
        if let Some(lock) = &mut self.lock {
            lock.refresh(&mut self.store, log)?;
        }
        Ok(())
    }

    /// `info()`: id and version; also refreshes the lock (borg with-lock relies on that).
    pub fn info(&mut self, log: &Log) -> Result<([u8; 32], u32), Error> {
        self.refresh_lock(log)?;
        Ok((self.id, self.version))
    }

    fn data_name(id: &[u8]) -> Result<String, Error> {
        if id.len() != 32 {
            return Err(Error::Integrity(format!("object id must be 32 bytes, got {}", id.len())));
        }
        let mut name = String::with_capacity(5 + 64);
        name.push_str("data/");
        store::push_hex(&mut name, id);
        Ok(name)
    }

    /// `list(limit, marker)`: up to `limit` `(id, stored size)` pairs with ids after `marker`.
    pub fn list(&mut self, limit: Option<usize>, marker: Option<&[u8]>, log: &Log) -> Result<Vec<([u8; 32], u64)>, Error> {
        self.refresh_lock(log)?;
        let after = marker.map(hex);
        let compact = |info: ItemInfo| Some((unhex32(&info.name)?, info.size));
        match self.store.list_range_map("data", after.as_deref(), limit.unwrap_or(usize::MAX), store::Detail::Sizes, &compact) {
            Ok(items) => Ok(items),
            Err(store::Error::ObjectNotFound(_)) => Ok(Vec::new()), // no data/ yet
            Err(e) => Err(e.into()),
        }
    }

    /// `get(id, read_data, raise_missing)`: the object (as an open file where possible, so it
    /// is sent without being read into memory), or (without `read_data`) just its header and
    /// metadata, reading no more of the file than that needs.
    pub fn get(&mut self, id: &[u8], read_data: bool, raise_missing: bool, log: &Log) -> Result<Option<Object>, Error> {
        self.refresh_lock(log)?;
        let name = Self::data_name(id)?;
        let loaded = if read_data {
            self.store.read_object(&name).map_err(Error::from)
        } else {
            self.load_meta(&name, id).map(Object::Bytes)
        };
        match loaded {
            Ok(obj) => Ok(Some(obj)),
            Err(Error::Store(store::Error::ObjectNotFound(_))) if !raise_missing => Ok(None),
            Err(Error::Store(store::Error::ObjectNotFound(_))) => Err(Error::ObjectNotFound(hex(id), self.location.clone())),
            Err(e) => Err(e),
        }
    }

    fn load_meta(&self, name: &str, id: &[u8]) -> Result<Vec<u8>, Error> {
        let hdr_size = repoobj::HEADER_SIZE;
        let extra = 1024 - hdr_size;
        let mut obj = self.store.load(name, 0, Some(hdr_size + extra), false)?;
        let Some(header) = repoobj::Header::parse(&obj) else {
            return Err(Error::Integrity(format!(
                "Object too small [id {}]: expected {hdr_size}, got {} bytes",
                hex(id),
                obj.len()
            )));
        };
        let meta_size = header.meta_size as usize;
        if meta_size > extra {
            obj = self.store.load(name, 0, Some(hdr_size + meta_size), false)?;
        }
        if obj.len() < hdr_size + meta_size {
            return Err(Error::Integrity(format!(
                "Object too small [id {}]: expected {meta_size}, got {} bytes",
                hex(id),
                obj.len() - hdr_size
            )));
        }
        obj.truncate(hdr_size + meta_size);
        Ok(obj)
    }

    /// What every kind of put checks first (the lock still ours, the size within Python's
    /// limit); the object's name.
    fn prepare_put(&mut self, id: &[u8], len: u64, log: &Log) -> Result<String, Error> {
        self.refresh_lock(log)?;
        if len > MAX_DATA_SIZE as u64 {
            return Err(Error::Integrity(format!("More than allowed put data [{len} > {MAX_DATA_SIZE}]")));
        }
        Self::data_name(id)
    }

    /// `put(id, data)`: stores an object (refusing more than [`MAX_DATA_SIZE`]). Where the mode
    /// forbids overwriting, an existing object is replaced if it does not verify and kept if it
    /// does (`repoobj::damaged`, given to the store as it opens).
    pub fn put(&mut self, id: &[u8], data: &[u8], log: &Log) -> Result<(), Error> {
        let name = self.prepare_put(id, data.len() as u64, log)?;
        self.store.store(&name, data).inspect_err(|e| self.last_write_error = Some(e.to_string()))?;
        self.written.record(id);
        self.put_any = true;
        Ok(())
    }

    /// `put`, checked and decided now, written by the caller later (see [`store::LaterWrite`]);
    /// `None` when the store cannot write from another thread: then use [`Repository::put`].
    /// With it, the key under which to hand the object back once written
    /// ([`Repository::note_written`]).
    pub fn put_later(&mut self, id: &[u8], len: usize, log: &Log) -> Result<Option<(store::LaterWrite, WrittenKey)>, Error> {
        let name = self.prepare_put(id, len as u64, log)?;
        let Some(key) = written::key(id) else { return Ok(None) };
        Ok(self.store.store_later(&name)?.map(|w| (w, key)))
    }

    /// Objects written elsewhere for this session ([`Repository::put_later`]) are in place: their
    /// listing in an uploaded chunk index needs no look-up.
    pub fn note_written(&mut self, keys: &[WrittenKey]) {
        self.written.record_keys(keys);
        self.put_any |= !keys.is_empty();
    }

    /// A write carried out for this repository elsewhere (a [`Repository::put_later`]) failed.
    pub fn note_write_error(&mut self, error: String) {
        self.last_write_error = Some(error);
    }

    /// `put` with the `len` data bytes read from `src` as they arrive (a large put is never held
    /// whole in memory). The caller drains whatever is left unread if this fails.
    pub fn put_from(&mut self, id: &[u8], len: u64, src: &mut dyn std::io::Read, log: &Log) -> Result<(), Error> {
        let name = self.prepare_put(id, len, log)?;
        self.store.store_from(&name, len, src).inspect_err(|e| self.last_write_error = Some(e.to_string()))?;
        self.written.record(id);
        self.put_any = true;
        Ok(())
    }

    /// `delete(id)`.
    pub fn delete(&mut self, id: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        let name = Self::data_name(id)?;
        self.written.forget_all();
        self.store.delete(&name, false).map_err(|e| not_found_or(e, || Error::ObjectNotFound(hex(id), self.location.clone())))
    }

    /// `destroy()`: releases the lock and removes the repository entirely.
    pub fn destroy(mut self, log: &Log) -> Result<(), Error> {
        if let Some(lock) = self.lock.take() {
            lock.release(&mut self.store, log)?;
        }
        self.store.destroy()?;
        log.info(LOGGER, &format!("destroyed repository {}", self.location));
        Ok(())
    }

    /// `save_key(keydata)`: an empty key means "no repokey".
    pub fn save_key(&mut self, keydata: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        Ok(self.store.store("keys/repokey", keydata)?)
    }

    /// `load_key()`.
    pub fn load_key(&mut self, log: &Log) -> Result<Vec<u8>, Error> {
        self.refresh_lock(log)?;
        Ok(self.store.load("keys/repokey", 0, None, false)?)
    }

    /// `break_lock()`: removes every lock, ours included.
    pub fn break_lock(&mut self, log: &Log) -> Result<(), Error> {
        Lock::break_all(&mut self.store, log)?;
        Ok(())
    }

    /// `get_manifest()`.
    pub fn get_manifest(&mut self, log: &Log) -> Result<Vec<u8>, Error> {
        self.refresh_lock(log)?;
        self.store.load("config/manifest", 0, None, false).map_err(|e| not_found_or(e, || Error::NoManifest))
    }

    /// `put_manifest(data)`.
    pub fn put_manifest(&mut self, data: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        Ok(self.store.store("config/manifest", data)?)
    }

    /// `store_list(name, deleted)`, each item handed to `visit` as it is found (a namespace can
    /// hold millions); nothing if the namespace does not exist.
    pub fn store_list_each(&mut self, name: &str, deleted: bool, visit: &mut dyn FnMut(ItemInfo) -> Result<(), store::Error>, log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        match self.store.list_each(name, deleted, visit) {
            Ok(()) | Err(store::Error::ObjectNotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `store_load(name)`: the item's file, sent as it is (an index of a large repository is
    /// hundreds of MB; it never passes through memory).
    pub fn store_load(&mut self, name: &str, log: &Log) -> Result<store::Object, Error> {
        self.refresh_lock(log)?;
        Ok(self.store.read_object(name)?)
    }

    /// `store_store(name, value)`. A chunk-index cache (`cache/chunks.*`) is stored only if it is
    /// well-formed, named by its hash, and lists only objects that exist: clients trust it to
    /// skip uploads, and borg 2.0.0b21 uploads one even after a failed backup, listing objects
    /// whose puts failed — storing that would make the next backup reference missing chunks
    /// (see `index_check`).
    pub fn store_store(&mut self, name: &str, value: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        if !name.starts_with("cache/chunks.") {
            self.refuse_archive_of_lost_puts(name, log)?;
            return Ok(self.store.store(name, value)?);
        }
        let note = self.check_chunk_index(name, &value, log)?;
        self.store_noted(name, value, note, log)?;
        self.stored_index = true;
        Ok(())
    }

    /// [`Repository::store_store`] with the `len` bytes of the value read from `src` as they
    /// arrive: a chunk index is received into a temp file, checked there, then put in place;
    /// anything else is written as it arrives. The caller drains what is left unread on failure.
    pub fn store_store_from(&mut self, name: &str, len: u64, src: &mut dyn std::io::Read, log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        if !name.starts_with("cache/chunks.") {
            self.refuse_archive_of_lost_puts(name, log)?;
            return Ok(self.store.store_from(name, len, src)?);
        }
        let staged = self.store.stage(name, len, src)?;
        // before the check: measured after it, the lag would include the check's duration and
        // date the note back by as much (on a busy host, seconds of the backup's last puts then
        // looked for again the next night)
        let lag = self.store.clock_lag(&staged);
        let note = self.check_chunk_index(name, &staged, log)?;
        self.place_noted(staged, note, lag, log)?;
        self.stored_index = true;
        Ok(())
    }

    /// Why the objects this session put are not all where it put them, if they are not: a
    /// directory it holds open to write into (`data/xx`, `data`, the repository's own) was moved
    /// away or replaced since it was opened, and what the session wrote through it went along
    /// (see `store::Backend::held_directories_moved`; Python's server, which opens every path
    /// anew, writes into the replacement). Looked at only once the session has put something,
    /// and remembered: its own objects are no longer taken on trust, and the reason is what a
    /// refused chunk index or archive names.
    fn puts_moved_away(&mut self, log: &Log) -> Result<Option<String>, Error> {
        if self.puts_lost.is_none() && self.put_any {
            let moved = self.store.held_directories_moved()?;
            if !moved.is_empty() {
                let which: Vec<String> =
                    moved.iter().map(|m| if m.is_empty() { "the repository's directory".to_string() } else { format!("{m}/") }).collect();
                let why = format!(
                    "{} was moved away or replaced while this session was writing objects into it; \
                     the objects it wrote there went with it and are not in the repository",
                    which.join(", ")
                );
                log.warning(LOGGER, &format!("{}: {why}", self.location));
                self.written.forget_all();
                self.last_write_error = Some(why.clone());
                self.puts_lost = Some(why);
            }
        }
        Ok(self.puts_lost.clone())
    }

    /// Refuses to store an archive (`archives/*`) when objects this session put went with a
    /// directory moved away: it would reference them ([`Repository::puts_moved_away`]).
    fn refuse_archive_of_lost_puts(&mut self, name: &str, log: &Log) -> Result<(), Error> {
        if !name.starts_with("archives/") {
            return Ok(());
        }
        match self.puts_moved_away(log)? {
            Some(why) => Err(Error::Refused {
                name: name.to_string(),
                why: format!("{why}. Repeat the backup"),
            }),
            None => Ok(()),
        }
    }

    /// `store_delete(name, deleted)`.
    pub fn store_delete(&mut self, name: &str, deleted: bool, log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        self.written.forget_all();
        Ok(self.store.delete(name, deleted)?)
    }

    /// `store_move(name, new_name, delete, undelete, deleted)`.
    pub fn store_move(
        &mut self,
        name: &str,
        new_name: Option<&str>,
        delete: bool,
        undelete: bool,
        deleted: bool,
        log: &Log,
    ) -> Result<(), Error> {
        self.refresh_lock(log)?;
        self.written.forget_all();
        Ok(self.store.move_item(name, new_name, delete, undelete, deleted)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CallError;
    use crate::rpc::wire::Exception;
    use crate::store::sim::SimDisk;
    use crate::store::Mode;

    #[test]
    fn object_names_are_lower_case_hex_of_the_id() {
        let id: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let name = Repository::data_name(&id).unwrap();
        let expected: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(name, format!("data/{expected}"));
        assert_eq!(unhex32(&name[5..]), Some(id));
        assert!(Repository::data_name(&id[..31]).is_err());
    }

    /// A new repository on a simulated disk, its handle (faults, planted files) and a silent log.
    pub(super) fn sim_repo() -> (Repository, crate::store::sim::SimHandle, Log) {
        let (disk, h) = SimDisk::new();
        let log = Log::silent();
        let repo = Repository::open_backend(Box::new(disk), "sim".into(), &opts(true), Owner::current(0), &log).unwrap();
        (repo, h, log)
    }

    /// A directory for a repository on the real file system (`repo` in it, not made yet), and a
    /// silent log.
    pub(super) fn on_disk() -> (tempfile::TempDir, std::path::PathBuf, Log) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        (dir, path, Log::silent())
    }

    pub(super) fn opts(create: bool) -> OpenOptions {
        OpenOptions {
            create,
            lock: true,
            exclusive: true,
            lock_wait: Duration::from_secs(1),
            permissions: Permissions::for_mode(Mode::All),
            durability: Durability::Barrier,
            direct_io: true,
            data_levels: 2,
        }
    }

    #[test]
    fn disk_faults_reach_the_client_clearly_and_the_lock_is_still_released() {
        let (mut repo, h, log) = sim_repo();
        let obj = repoobj::Header::wrap(b"m", b"d");
        for errno in [libc::ENOSPC, libc::EIO, libc::EROFS, libc::EACCES] {
            h.inject("store", "data/", errno);
            let e = CallError::from(repo.put(&[7; 32], &obj, &log).unwrap_err());
            let x = Exception::from(&e);
            let expected = std::io::Error::from_raw_os_error(errno).to_string();
            assert_eq!(x.class, "OSError");
            assert!(x.message.contains(&expected) && x.message.contains("data/07"), "{}", x.message);
        }
        assert!(!h.live().keys().any(|k| k.starts_with("data/")), "no partial object");
        repo.put(&[7; 32], &obj, &log).unwrap(); // space freed: the same put succeeds
        repo.close(&log).unwrap();
        assert!(!h.live().keys().any(|k| k.starts_with("locks/")), "lock released");
    }

    /// A repository at its quota (every byte used) still opens — its lock takes room borgd
    /// keeps in reserve — reads and deletes, and refuses new data with a message that says what
    /// to do; its close makes the room again from what the session freed, and the next session
    /// puts as before. A read-only session makes no room.
    #[test]
    fn a_full_repository_opens_reads_and_frees_space_but_takes_no_new_data() {
        let (mut repo, h, log) = sim_repo();
        let pieces = |h: &crate::store::sim::SimHandle| h.live().keys().filter(|k| k.ends_with(".hid")).count();
        let big = repoobj::Header::wrap(b"m", &vec![5u8; 300 * 1024]);
        repo.put(&[1; 32], &big, &log).unwrap();
        repo.close(&log).unwrap();
        assert_eq!(pieces(&h), 4, "a new repository has its room once its first session closes");
        h.limit_space(Some(h.used()));

        let again = || Repository::open_backend(Box::new(SimDisk::again(&h)), "sim".into(), &opts(false), Owner::current(0), &log);
        let mut repo = again().expect("a full repository opens");
        assert_eq!(pieces(&h), 3);
        let e = CallError::from(repo.put(&[2; 32], &repoobj::Header::wrap(b"m", b"d"), &log).unwrap_err());
        let x = Exception::from(&e);
        assert_eq!(x.class, "Error");
        assert!(x.message.contains("repository is full") && x.message.contains("borg compact"), "{}", x.message);
        assert!(repo.get(&[1; 32], true, true, &log).unwrap().is_some());
        repo.delete(&[1; 32], &log).unwrap();
        repo.close(&log).unwrap();
        assert_eq!(pieces(&h), 4, "the room made again from the space freed");
        assert!(!h.live().keys().any(|k| k.starts_with("locks/")), "lock released");

        let mut repo = again().unwrap();
        repo.put(&[2; 32], &repoobj::Header::wrap(b"m", b"d"), &log).unwrap();
        repo.close(&log).unwrap();

        // a read-only session takes room when it must, but never makes it
        h.limit_space(None);
        for i in 0..4 {
            Backend::delete(&mut SimDisk::again(&h), &format!("borgd-room.{i}.hid"), false).unwrap();
        }
        let ro = OpenOptions { permissions: Permissions::for_mode(Mode::ReadOnly), exclusive: false, ..opts(false) };
        let repo = Repository::open_backend(Box::new(SimDisk::again(&h)), "sim".into(), &ro, Owner::current(0), &log).unwrap();
        repo.close(&log).unwrap();
        assert_eq!(pieces(&h), 0);
    }

    /// A repository borgd did not make (Python borg's) has no room: the first session that
    /// opens it makes the room at once, before a backup can fill the disk. One opened with too
    /// little space for all of it makes what fits, and at its close the rest, from what the
    /// session freed.
    #[test]
    fn a_repository_without_room_gets_it_as_its_first_session_opens() {
        let (mut repo, h, log) = sim_repo();
        let pieces = |h: &crate::store::sim::SimHandle| h.live().iter().filter(|(k, _)| k.ends_with(".hid")).map(|(_, v)| v.len()).collect::<Vec<_>>();
        repo.put(&[1; 32], &repoobj::Header::wrap(b"m", &vec![5u8; 600 * 1024]), &log).unwrap();
        repo.close(&log).unwrap();
        let remove_room = |h: &crate::store::sim::SimHandle| {
            for i in 0..4 {
                Backend::delete(&mut SimDisk::again(h), &format!("borgd-room.{i}.hid"), false).unwrap();
            }
        };
        let again = || Repository::open_backend(Box::new(SimDisk::again(&h)), "sim".into(), &opts(false), Owner::current(0), &log);

        remove_room(&h);
        let repo = again().unwrap();
        assert_eq!(pieces(&h), [128 << 10; 4], "made as the session opened");
        repo.close(&log).unwrap();

        remove_room(&h);
        h.limit_space(Some(h.used() + (200 << 10)));
        let mut repo = again().unwrap();
        let made = pieces(&h);
        assert!(made.len() < 4 && made.iter().sum::<usize>() > 128 << 10, "what fits: {made:?}");
        repo.delete(&[1; 32], &log).unwrap();
        repo.close(&log).unwrap();
        assert_eq!(pieces(&h), [128 << 10; 4], "the rest made at close from what was freed");
    }

    /// A session out of file descriptors (every open fails with `EMFILE`) still makes its
    /// writes durable and releases its lock, shared or exclusive: the store holds `locks/` open
    /// and the lock deletes its record by name. A socket-mode session's record names a live
    /// process, so nobody else would remove it for 30 minutes.
    #[test]
    fn a_session_out_of_descriptors_still_releases_its_lock() {
        for exclusive in [false, true] {
            let (_dir, path, log) = on_disk();
            let mut repo = Repository::open(&path, &OpenOptions { exclusive, ..opts(true) }, Owner::current(5), &log).unwrap();
            repo.put(&[7; 32], &repoobj::Header::wrap(b"m", b"d"), &log).unwrap();
            store::OPENS_FAIL_WITH.with(|c| c.set(Some(libc::EMFILE)));
            let closed = repo.close(&log);
            store::OPENS_FAIL_WITH.with(|c| c.set(None));
            closed.unwrap();
            let left: Vec<_> = std::fs::read_dir(path.join("locks")).unwrap().collect();
            assert!(left.is_empty(), "exclusive {exclusive}: a lock record was left: {left:?}");
        }
    }

    /// A creation that fails part way takes back the items it wrote, wherever it failed, and
    /// the next creation succeeds.
    #[test]
    fn a_creation_that_fails_part_way_takes_back_what_it_wrote() {
        for failing in ["cache/", "config/version", "config/id", "config/readme"] {
            let (disk, h) = SimDisk::new();
            let log = Log::silent();
            h.inject("store", failing, libc::ENOSPC);
            let e = Repository::open_backend(Box::new(disk), "sim".into(), &opts(true), Owner::current(0), &log);
            assert!(e.is_err(), "{failing}: created all the same");
            assert!(h.live().is_empty(), "{failing}: left behind {:?}", h.live().keys().collect::<Vec<_>>());
            let repo = Repository::open_backend(Box::new(SimDisk::again(&h)), "sim".into(), &opts(true), Owner::current(0), &log).unwrap();
            repo.close(&log).unwrap();
        }
    }

    /// Objects put through a directory moved away during the session are not in the
    /// repository: the session's own objects are then looked up, not taken on trust, and an
    /// archive is refused with the reason — also when the repository's whole directory was
    /// replaced.
    #[test]
    fn puts_that_went_with_a_directory_moved_away_are_not_referenced() {
        let (dir, path, log) = on_disk();
        let obj = repoobj::Header::wrap(b"m", b"d");
        let mut repo = Repository::open(&path, &opts(true), Owner::current(5), &log).unwrap();
        repo.store_store("archives/00", b"", &log).unwrap();
        repo.put(&[1; 32], &obj, &log).unwrap();
        std::fs::rename(path.join("data"), dir.path().join("data-moved")).unwrap();
        std::fs::create_dir(path.join("data")).unwrap();
        repo.put(&[2; 32], &obj, &log).unwrap();
        let index = chunkindex::serialize([[1u8; 32], [2u8; 32]].iter());
        let e = repo.store_store(&chunkindex::cache_name(&index), &index, &log).unwrap_err().to_string();
        assert!(e.contains("2 objects that are not in the repository") && e.contains("data/ was moved away"), "{e}");
        let e = repo.store_store("archives/01", b"", &log).unwrap_err().to_string();
        assert!(e.contains("refuses to store archives/01: data/ was moved away"), "{e}");
        assert!(repo.store_store("archives/02", b"", &log).is_err(), "for the rest of the session");
        repo.close(&log).unwrap();
        // the repository's own directory replaced by a copy of itself
        let mut repo = Repository::open(&path, &opts(false), Owner::current(5), &log).unwrap();
        repo.put(&[3; 32], &obj, &log).unwrap();
        std::fs::rename(&path, dir.path().join("repo-moved")).unwrap();
        assert!(std::process::Command::new("cp").arg("-a").arg(dir.path().join("repo-moved")).arg(&path).status().unwrap().success());
        repo.put(&[4; 32], &obj, &log).unwrap();
        let e = repo.store_store("archives/03", b"", &log).unwrap_err().to_string();
        assert!(e.contains("the repository's directory was moved away"), "{e}");
        repo.close(&log).unwrap();
    }

    #[test]
    fn repair_removes_temp_files_that_list_never_shows() {
        let (mut repo, h, log) = sim_repo();
        let obj = repoobj::Header::wrap(b"m", b"d");
        repo.put(&[1; 32], &obj, &log).unwrap();
        h.plant(&format!("data/01/01/{}.abc123.tmp", hex(&[1; 32])), b"half");
        h.plant("config/manifest.ff00.tmp", b"half");
        let listed = repo.list(None, None, &log).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(repo.check(false, 0.0, &log).unwrap());
        assert_eq!(h.live().keys().filter(|k| k.ends_with(".tmp")).count(), 2, "plain check repairs nothing");
        assert!(repo.check(true, 0.0, &log).unwrap());
        assert_eq!(h.live().keys().filter(|k| k.ends_with(".tmp")).count(), 0);
        assert_eq!(repo.list(None, None, &log).unwrap().len(), 1);
    }

    /// A check, plain or repairing, writes a fresh index of the objects that verified only: a
    /// corrupt one a plain check keeps is not listed, so no client takes it for a stored chunk.
    #[test]
    fn a_check_leaves_corrupt_objects_out_of_the_fresh_index() {
        for repair in [false, true] {
            let (mut repo, h, log) = sim_repo();
            for i in 1..=3u8 {
                repo.put(&[i; 32], &repoobj::Header::wrap(b"m", &[i; 100]), &log).unwrap();
            }
            // object 2 as a power cut leaves it: its name written, its data not
            h.plant(&format!("data/02/02/{}", hex(&[2; 32])), b"");
            assert!(repo.check(repair, 0.0, &log).unwrap() == repair);
            let caches: Vec<_> = h.live().into_iter().filter(|(k, _)| k.starts_with("cache/chunks.")).collect();
            assert_eq!(caches.len(), 1);
            let index = &caches[0].1;
            assert_eq!(index.len(), 16 + 0x119 + 2 * 40, "repair {repair}: two entries");
            let listed = |id: &[u8; 32]| index.windows(32).any(|w| w == id);
            assert!(listed(&[1; 32]) && listed(&[3; 32]) && !listed(&[2; 32]), "repair {repair}");
            assert_eq!(h.live().contains_key(&format!("data/02/02/{}", hex(&[2; 32]))), !repair);
        }
    }

    /// Where the permission mode forbids overwriting (no-delete, write-only), a put of an object
    /// that exists replaces it if it is damaged — as a power cut leaves one: a name without its
    /// data — and keeps it if it is intact, succeeding either way (an object is named by its
    /// contents: the client stores what is there already; after a power cut it uploads again
    /// what no chunk index lists). On the simulated disk and on a real one (small objects linked
    /// unnamed, large ones written directly and streamed). Other items are still refused.
    #[test]
    fn a_put_of_a_taken_name_replaces_a_damaged_object_and_keeps_an_intact_one() {
        let small = repoobj::Header::wrap(b"m", &[7; 1000]);
        let large = repoobj::Header::wrap(b"m", &vec![9; 700 * 1024]);
        // another valid object under the same id: a kept object is not replaced by it
        let other = |obj: &[u8]| repoobj::Header::wrap(b"other", &obj[30..]);
        for mode in [Mode::NoDelete, Mode::WriteOnly] {
            let mode_opts = OpenOptions { permissions: Permissions::for_mode(mode), ..opts(false) };
            // the simulated disk
            let (repo, h, log) = sim_repo();
            repo.close(&log).unwrap();
            let mut repo = Repository::open_backend(Box::new(SimDisk::again(&h)), "sim".into(), &mode_opts, Owner::current(0), &log).unwrap();
            repo.put(&[1; 32], &small, &log).unwrap();
            let name = format!("data/01/01/{}", hex(&[1; 32]));
            repo.put(&[1; 32], &other(&small), &log).unwrap();
            assert_eq!(h.live()[&name], small, "{mode}: an intact object replaced");
            h.plant(&name, b"");
            repo.put(&[1; 32], &small, &log).unwrap();
            assert_eq!(h.live()[&name], small, "{mode}");
            // an archive entry is not named by its contents: still refused
            let archive = format!("archives/{}", "ab".repeat(32));
            repo.store_store(&archive, b"first", &log).unwrap();
            let e = repo.store_store(&archive, b"again", &log).unwrap_err();
            assert!(matches!(e, Error::Store(store::Error::PermissionDenied { .. })), "{mode}: {e}");
            repo.close(&log).unwrap();

            // a real disk: each way an object is written
            let (_dir, path, log) = on_disk();
            Repository::open(&path, &opts(true), Owner::current(0), &log).unwrap().close(&log).unwrap();
            let mut repo = Repository::open(&path, &mode_opts, Owner::current(0), &log).unwrap();
            for (i, obj, streamed) in [(1u8, &small, false), (2, &large, false), (3, &large, true)] {
                let put = |repo: &mut Repository, obj: &[u8]| {
                    if streamed {
                        repo.put_from(&[i; 32], obj.len() as u64, &mut &obj[..], &log)
                    } else {
                        repo.put(&[i; 32], obj, &log)
                    }
                };
                put(&mut repo, obj).unwrap();
                let file = path.join(format!("data/{:02x}/{:02x}/{}", i, i, hex(&[i; 32])));
                put(&mut repo, &other(obj)).unwrap_or_else(|e| panic!("{mode}, object {i} intact: {e}"));
                assert_eq!(&std::fs::read(&file).unwrap(), obj, "{mode}, object {i}: an intact object replaced");
                for damage in [0, obj.len() as u64 - 1] {
                    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(damage).unwrap();
                    put(&mut repo, obj).unwrap_or_else(|e| panic!("{mode}, object {i} cut to {damage}: {e}"));
                    assert_eq!(&std::fs::read(&file).unwrap(), obj, "{mode}, object {i}");
                }
                let leaf = file.parent().unwrap();
                assert_eq!(std::fs::read_dir(leaf).unwrap().count(), 1, "{mode}, object {i}: a temp file left");
            }
            repo.close(&log).unwrap();
        }
    }

    #[test]
    fn partial_check_resumes_where_it_stopped() {
        let (mut repo, h, log) = sim_repo();
        for i in 0..5u8 {
            repo.put(&[i; 32], &repoobj::Header::wrap(b"m", &[i]), &log).unwrap();
        }
        // a tiny max_duration stops after the first object and records where
        assert!(repo.check(false, 1e-9, &log).unwrap());
        let mark = String::from_utf8(h.live()["cache/last-key-checked"].clone()).unwrap();
        assert_eq!(mark, format!("data/{}", hex(&[0; 32])));
        assert!(repo.check(false, 1e-9, &log).unwrap());
        let mark = String::from_utf8(h.live()["cache/last-key-checked"].clone()).unwrap();
        assert_eq!(mark, format!("data/{}", hex(&[1; 32])));
        // a full check forgets the checkpoint and writes an index of all five objects
        assert!(repo.check(false, 0.0, &log).unwrap());
        assert!(!h.live().contains_key("cache/last-key-checked"));
        let caches: Vec<_> = h.live().into_iter().filter(|(k, _)| k.starts_with("cache/chunks.")).collect();
        assert_eq!(caches.len(), 1);
        assert_eq!(caches[0].1.len(), 16 + 0x119 + 5 * 40);
    }
}
