//! Borg 2 repository semantics on top of a [`Store`]: what `borg/repository.py` does.
//!
//! A repository is a store with `config/{readme,version,id}` (version 3), data objects under
//! `data/` named by the hex of their 32-byte id, `archives/`, `keys/repokey`, `config/manifest`,
//! a chunk-index cache under `cache/`, and locks under `locks/`. Every operation refreshes the
//! lock when due, exactly as Python's `_lock_refresh` does.

mod check;
pub mod chunkindex;
pub mod repoobj;

use std::path::Path;
use std::time::Duration;

use crate::lock::{self, Lock, Owner};
use crate::log::Log;
use crate::store::{self, borg_levels, Durability, ItemInfo, Permissions, PosixFs, Store};

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
    #[error("A repository already exists at {0}.")]
    AlreadyExists(String),
    #[error("Repository {0} does not exist.")]
    DoesNotExist(String),
    #[error("{0} is not a valid repository. Check the repository config.")]
    InvalidRepository(String),
    #[error("{0} does not have a valid config. Check the repository config [{1}].")]
    InvalidRepositoryConfig(String, String),
    #[error("Inconsistency detected. Please run \"borg check {0}\".")]
    CheckNeeded(String),
    #[error("Object with key {0} not found in repository {1}.")]
    ObjectNotFound(String, String),
    #[error("Data integrity error: {0}")]
    Integrity(String),
    #[error("Repository has no manifest.")]
    NoManifest,
    #[error(transparent)]
    Lock(#[from] lock::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// How to open a repository: the client's wishes (`open` arguments) and the server's policy.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub create: bool,
    pub lock: bool,
    pub exclusive: bool,
    pub lock_wait: Duration,
    pub permissions: Permissions,
    pub durability: Durability,
    pub data_levels: usize,
}

/// An open repository, holding its lock (if any) until [`Repository::close`].
pub struct Repository {
    store: Store,
    location: String,
    id: [u8; 32],
    version: u32,
    lock: Option<Lock>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        let location = path.display().to_string();
        let backend = Box::new(PosixFs::new(path.to_path_buf(), opts.durability));
        let mut store = Store::new(backend, borg_levels(opts.data_levels), opts.permissions.clone(), opts.durability);
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
        log.debug(LOGGER, &format!("opened repository {location} (id {}), lock: {}", hex(&id), match &lock {
            Some(l) if l.is_exclusive() => "exclusive",
            Some(_) => "shared",
            None => "none",
        }));
        Ok(Repository { store, location, id, version, lock })
    }

    fn create(store: &mut Store, location: &str, log: &Log) -> Result<(), Error> {
        store.create().map_err(|e| match e {
            store::Error::AlreadyExists(_) => Error::AlreadyExists(location.to_string()),
            other => other.into(),
        })?;
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| Error::Integrity(format!("no randomness for the repository id: {e}")))?;
        store.store("config/readme", README.as_bytes())?;
        store.store("config/version", VERSION.to_string().as_bytes())?;
        store.store("config/id", hex(&id).as_bytes())?;
        // an empty chunk index, so the first client need not list an empty data/ to build one.
        let index = chunkindex::serialize(std::iter::empty());
        store.store(&chunkindex::cache_name(&index), &index)?;
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
        Ok(format!("data/{}", hex(id)))
    }

    /// `list(limit, marker)`: up to `limit` `(id, stored size)` pairs with ids after `marker`.
    pub fn list(&mut self, limit: Option<usize>, marker: Option<&[u8]>, log: &Log) -> Result<Vec<([u8; 32], u64)>, Error> {
        self.refresh_lock(log)?;
        let after = marker.map(hex);
        let mut out = Vec::new();
        if limit == Some(0) {
            return Ok(out);
        }
        let walked = self.store.walk("data", after.as_deref(), &mut |info| {
            if let Some(id) = unhex32(&info.name) {
                out.push((id, info.size));
            }
            Ok(limit.is_none_or(|l| out.len() < l))
        });
        match walked {
            Ok(()) | Err(store::Error::ObjectNotFound(_)) => Ok(out),
            Err(e) => Err(e.into()),
        }
    }

    /// `get(id, read_data, raise_missing)`: the object, or (without `read_data`) just its header
    /// and metadata, reading no more of the file than that needs.
    pub fn get(&mut self, id: &[u8], read_data: bool, raise_missing: bool, log: &Log) -> Result<Option<Vec<u8>>, Error> {
        self.refresh_lock(log)?;
        let name = Self::data_name(id)?;
        let loaded = if read_data { self.store.load(&name, 0, None, false).map_err(Error::from) } else { self.load_meta(&name, id) };
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

    /// `put(id, data)`: stores an object (refusing more than [`MAX_DATA_SIZE`]).
    pub fn put(&mut self, id: &[u8], data: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        if data.len() > MAX_DATA_SIZE {
            return Err(Error::Integrity(format!("More than allowed put data [{} > {MAX_DATA_SIZE}]", data.len())));
        }
        let name = Self::data_name(id)?;
        self.store.store(&name, data)?;
        Ok(())
    }

    /// `delete(id)`.
    pub fn delete(&mut self, id: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        let name = Self::data_name(id)?;
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

    /// `store_list(name, deleted)`: an empty list if the namespace does not exist.
    pub fn store_list(&mut self, name: &str, deleted: bool, log: &Log) -> Result<Vec<ItemInfo>, Error> {
        self.refresh_lock(log)?;
        match self.store.list(name, deleted) {
            Ok(l) => Ok(l),
            Err(store::Error::ObjectNotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// `store_load(name)`.
    pub fn store_load(&mut self, name: &str, log: &Log) -> Result<Vec<u8>, Error> {
        self.refresh_lock(log)?;
        Ok(self.store.load(name, 0, None, false)?)
    }

    /// `store_store(name, value)`.
    pub fn store_store(&mut self, name: &str, value: &[u8], log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
        Ok(self.store.store(name, value)?)
    }

    /// `store_delete(name, deleted)`.
    pub fn store_delete(&mut self, name: &str, deleted: bool, log: &Log) -> Result<(), Error> {
        self.refresh_lock(log)?;
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
        Ok(self.store.move_item(name, new_name, delete, undelete, deleted)?)
    }
}
