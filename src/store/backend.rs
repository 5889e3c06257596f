//! The contract every storage backend fulfils (Python borgstore's `backends/_base.py`): flat,
//! already nested and validated names, whole items written atomically, listings of one
//! directory. Everything a [`Store`] adds on top — nesting, soft deletion,
//! permissions, the durability policy — lives in `store`, so each backend gets it for free.

use std::io;

use super::posixfs::TempFile;
use super::Error;
#[cfg(doc)]
use super::{LeafTimes, Store};

/// How a backend writes an item.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// On stable storage (file and directory) before returning.
    pub durable: bool,
    /// An existing item may be replaced. If not, storing over one fails with
    /// [`Error::ItemExists`] and changes nothing — decided atomically by the backend, so a
    /// permission mode without `W` costs no look-up per write and has no check-then-write race.
    pub replace: bool,
    /// Set for items named by their contents (data objects) where `replace` is false: an
    /// existing one this test finds damaged is replaced all the same — a repair, not an
    /// overwrite — and an intact one is kept (made durable) and the write succeeds: what it would
    /// store is there already. (A power cut can leave a backup's objects outside every chunk
    /// index, or names without their data; the next backup uploads them again, and a mode
    /// without `W` would refuse it for good.) Looked at only when the item exists, so the usual
    /// write costs nothing more.
    pub content_addressed: Option<DamageTest>,
}

impl WriteOptions {
    /// Options that replace an existing item, or keep it, without a damage test.
    pub fn plain(durable: bool, replace: bool) -> WriteOptions {
        WriteOptions { durable, replace, content_addressed: None }
    }
}

/// Whether an existing item, read from the start (its length given), is damaged: the store's
/// owner knows what its items must look like (see [`Store::content_addressed_data`]).
pub type DamageTest = fn(&mut dyn io::Read, u64) -> bool;

/// What `list` and `info` report about an item (borgstore's `ItemInfo`, in its field order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemInfo {
    /// The item's name within its namespace.
    pub name: String,
    /// Whether it is there (`info` of a missing name says no).
    pub exists: bool,
    /// Its size in bytes (0 for directories, and where [`Detail::Names`] was asked).
    pub size: u64,
    /// Whether it is a directory (a nesting level).
    pub directory: bool,
}

/// What a listing must report of each item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Names, kinds and sizes.
    Sizes,
    /// Names and kinds; sizes may be 0. A walk that only compares names (an uploaded chunk
    /// index against `data/`, `check`'s batches) then costs no `stat` per file.
    Names,
}

/// An item's contents, ready to send: an open file (sent without passing through memory) or,
/// from backends that have no files, the bytes.
#[derive(Debug)]
pub enum Object {
    /// The open file and its length.
    File(std::fs::File, u64),
    /// The bytes themselves.
    Bytes(Vec<u8>),
}

/// The storage contract a backend fulfils; names are already nested and validated. Reads
/// (`&self`) may run concurrently (check verifies objects on several threads).
pub trait Backend: Send + Sync {
    /// Creates the store's base (an existing empty directory is fine).
    fn create(&mut self) -> Result<(), Error>;
    /// Removes the store and everything in it.
    fn destroy(&mut self) -> Result<(), Error>;
    /// Checks that the store exists.
    fn open(&mut self) -> Result<(), Error>;
    /// Size and kind of one item; `exists == false` if it is not there.
    fn info(&self, name: &str) -> Result<ItemInfo, Error>;
    /// Reads `size` bytes (all if `None`) from `offset`.
    fn load(&self, name: &str, offset: u64, size: Option<usize>) -> Result<Vec<u8>, Error>;
    /// The whole item for sending; backends with files return the open file.
    fn read_object(&self, name: &str) -> Result<Object, Error> {
        self.load(name, 0, None).map(Object::Bytes)
    }
    /// Writes an item atomically (never visible half-written), as `how` says.
    fn store(&mut self, name: &str, value: &[u8], how: WriteOptions) -> Result<(), Error>;
    /// Like [`Backend::store`], with the `len` bytes of the value read from `src` as they arrive.
    fn store_from(&mut self, name: &str, len: u64, src: &mut dyn std::io::Read, how: WriteOptions) -> Result<(), Error> {
        let value = receive(name, len, src)?;
        self.store(name, &value, how)
    }
    /// Receives a value of `len` bytes from `src` into a place of its own, visible under no
    /// name, to be read back and then put in place under `name` by [`Backend::place`] (or
    /// dropped, which leaves nothing). Backends without files hold it in memory.
    fn stage(&mut self, name: &str, len: u64, src: &mut dyn std::io::Read, how: WriteOptions) -> Result<StagedBody, Error> {
        let _ = how;
        receive(name, len, src).map(StagedBody::Memory)
    }
    /// Puts a value [`Backend::stage`] received in place under `name`, as `how` says. A body
    /// that failed to be placed can be placed again (the store tries again once it has made
    /// room, see `store::room`); dropped, it leaves nothing.
    fn place(&mut self, name: &str, body: &mut StagedBody, how: WriteOptions) -> Result<(), Error> {
        match body {
            StagedBody::Memory(value) => self.store(name, value, how),
            StagedBody::File(file) => {
                let len = file.size();
                let mut value = file.reader().map_err(|e| Error::Io { op: "read back", path: name.into(), source: e })?;
                self.store_from(name, len, &mut value, how)
            }
        }
    }
    /// Deletes an item.
    fn delete(&mut self, name: &str, durable: bool) -> Result<(), Error>;
    /// Makes the space of what was just deleted count as free, where the file system counts it
    /// later: a Btrfs quota group counts a deleted file as used until its transaction commits.
    /// What giving up room needs (see `store::room`).
    fn free_deleted_space(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// Attaches `note` to a staged value (see [`Backend::stage`]) so that it stays with the item
    /// it becomes, and with nothing else: a rewrite, a replacement or a copy of the item has no
    /// note. What a repository remembers about contents it checked (see `repository::trust`);
    /// `false` where the backend keeps none, which costs only the re-checking.
    fn note_staged(&mut self, _name: &str, _body: &StagedBody, _note: &[u8]) -> Result<bool, Error> {
        Ok(false)
    }
    /// The note attached to an item (see [`Backend::note_staged`]); `None` without one.
    fn note(&self, _name: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
    /// When a staged value's file was last written, by the file system's clock; `None` where
    /// there is no file. What tells how far that clock lags this process's (see
    /// [`Store::clock_lag`]).
    fn staged_time(&self, _body: &StagedBody) -> Option<std::time::SystemTime> {
        None
    }
    /// Each of the subdirectories `names` of `dir` (see [`Subdirectory`]), `None` for a name
    /// that is missing or not a directory; `None` in all where the backend cannot tell.
    fn subdirectories(&self, _dir: &str, _names: &[&str]) -> Result<Option<Vec<Option<Subdirectory>>>, Error> {
        Ok(None)
    }
    /// Renames an item, replacing the target.
    fn rename(&mut self, from: &str, to: &str, durable: bool) -> Result<(), Error>;
    /// Lists a directory non-recursively, sorted by name, hiding invalid names (temp files);
    /// with [`Detail::Names`] files' sizes may be reported as 0.
    fn list(&self, name: &str, detail: Detail) -> Result<Vec<ItemInfo>, Error>;
    /// Makes every write since the last barrier durable.
    fn barrier(&mut self) -> Result<(), Error>;
    /// Removes temp files a crashed writer left behind; returns their names. Only safe while
    /// nobody else writes (the caller holds the exclusive lock).
    fn remove_temp_files(&mut self) -> Result<Vec<String>, Error>;
    /// Undoes what [`Backend::create`] made, as far as it is empty: directories with nothing in
    /// them, and the base if `create` made it (a base that existed before stays). Never removes
    /// an item. (A backend without directories has nothing to do.)
    fn remove_empty(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// Closes the descriptors the backend holds for speed (directories kept open between
    /// writes), so that a session ending short of descriptors has them for what follows; the
    /// directory of lock records stays open (the lock's release needs it, see `posixfs`).
    fn close_held_directories(&mut self) {}
    /// The directories this backend holds open that are no longer at their names (moved
    /// away or replaced since they were opened; `""` for the store's own directory): what was
    /// written through them since is not in the store. They are let go, so later writes go
    /// where the names lead now. A backend that holds none: nothing.
    fn held_directories_moved(&mut self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
    /// Human-readable location, used in lock and error messages.
    fn describe(&self) -> String;
    /// How long a new item may take to show up in other clients' listings. A locker waits this
    /// long after writing its lock before re-checking for competing ones (borg's
    /// `race_recheck_delay`). Python waits 0.01 s on every store and suggests ≥ 1 s for remote
    /// ones; the default here is Python's.
    fn visibility_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(10)
    }
    /// A writer other threads can use while this backend stays with its session, so a session
    /// can have several small objects written at once (their file-system waits overlap);
    /// `None` if this backend cannot write from other threads (then writes stay in order).
    fn shared_writer(&self) -> Option<std::sync::Arc<dyn ItemWriter>> {
        None
    }
    /// Items were written through [`Backend::shared_writer`]: the next barrier must cover them
    /// (they are not itemised).
    fn note_shared_write(&mut self) {}
}

/// The `len` bytes of a value arriving on `src`, in memory (for backends without files); a
/// value that ends early is an error, as a backend with files finds it.
pub(super) fn receive(name: &str, len: u64, src: &mut dyn std::io::Read) -> Result<Vec<u8>, Error> {
    let mut value = Vec::with_capacity(len.min(1 << 20) as usize);
    io::Read::read_to_end(&mut io::Read::take(src, len), &mut value).map_err(|e| Error::Io { op: "receive", path: name.into(), source: e })?;
    if (value.len() as u64) < len {
        return Err(Error::Io { op: "receive", path: name.into(), source: io::Error::new(io::ErrorKind::UnexpectedEof, "the value ended early") });
    }
    Ok(value)
}

/// Writes items from any thread (see [`Backend::shared_writer`]); names are nested and
/// validated, permissions decided by the [`Store`] that handed out the write.
pub trait ItemWriter: Send + Sync {
    /// As [`Backend::store`].
    fn write(&self, name: &str, value: &[u8], how: WriteOptions) -> Result<(), Error>;
}

/// A directory as [`Backend::subdirectories`] finds it, for [`LeafTimes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subdirectory {
    /// When an entry was last made, removed or renamed in it, by a time no program can set back
    /// (a status-change time, see `beneath::Dir::subdirectories`).
    pub changed: std::time::SystemTime,
    /// Which directory it is (an inode number): one moved in whole from elsewhere is another,
    /// though it changed nothing in itself or below.
    pub id: u64,
}

/// Where a staged value waits: in memory (backends without files), or in a temp file.
pub enum StagedBody {
    /// The bytes, held.
    Memory(Vec<u8>),
    /// The temp file they were written to.
    File(TempFile),
}
