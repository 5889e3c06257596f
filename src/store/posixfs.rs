//! The posix file system backend: one file per item below a base directory.
//!
//! The base directory is opened once; every item is then reached beneath that descriptor without
//! following symlinks (see [`super::beneath`]), so nothing outside the repository can be touched.
//!
//! Every write goes to a temp file (`<name>.<random>.tmp`) in the target directory and is renamed
//! into place, so a half-written item is never visible under its name; temp names end in `.tmp`,
//! which is never a valid item name, so listings never show them. Values held in memory and
//! written through the page cache (small objects, the common case) are written as an unnamed
//! file (`O_TMPFILE`) and linked into place instead, where the kernel and the file system allow:
//! the same guarantee for less file-system work (each store learns whether its file system does).
//! Files are created 0600 and directories 0777 minus the umask, as Python borgstore does.
//!
//! Durability: with `durable` the file is fsynced before the rename (or link) and its directory
//! after it.
//! Otherwise (data objects in barrier mode) the file and every directory whose entries changed are
//! remembered and fsynced by the next [`Backend::barrier`].

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::beneath::Dir;
use super::direct::DirectWriter;
use super::parents::Parents;
use super::{name, Backend, Detail, Durability, Error, ItemInfo, Object, StagedBody, Subdirectory, WriteOptions};

/// A store kept as files below `base`.
pub struct PosixFs {
    base: PathBuf,
    root: Option<Arc<Dir>>,
    /// Held descriptors of the directories above leaf directories (see [`super::parents`]).
    parents: Arc<Parents>,
    track_dirty: bool,
    dirty_files: Vec<String>,
    dirty_dirs: BTreeSet<String>,
    /// More changes than [`SYNCFS_ABOVE`] since the last barrier: the next barrier is a
    /// `syncfs`, so individual names are no longer kept (memory stays flat however many puts).
    dirty_overflow: bool,
    /// Large objects are written around the page cache.
    direct: DirectWriter,
    /// Whether this store's file system makes unnamed files (`O_TMPFILE`): true until it has
    /// refused one. Kept per store, as the direct writer's refusal is: one socket-mode process
    /// serves repositories on several file systems, and one without unnamed files (NFS, say)
    /// must not send the others' small objects the dearer way of temp file + rename.
    unnamed: Arc<AtomicBool>,
    /// `create` made the base directory (it did not exist): undoing the creation may remove it.
    created_base: bool,
    /// `locks/`, held open from the first lock record written: a lock is then released with
    /// no descriptor to open (a socket-mode process at its descriptor limit still releases it;
    /// its record names a live process, so nobody else would remove it for 30 minutes).
    locks: Option<Dir>,
}

/// The directory of lock records (see [`PosixFs::locks`]).
const LOCKS: &str = "locks";

/// Above this many dirty files and directories a barrier uses one `syncfs` instead of fsyncing
/// each; below it, per-item fsyncs avoid flushing other users' data on a shared file system.
const SYNCFS_ABOVE: usize = 16;

/// Objects at least this large start their writeback right away in barrier mode when they could
/// not be written directly (see [`super::direct`]): the ones that would have been, borg's chunks
/// (512 KiB – 8 MiB by default). Smaller ones wait for the barrier's `syncfs`: starting writeback
/// for each 64 KiB object cost 20% of put throughput in the benchmark.
const WRITE_BEHIND_FROM: u64 = super::direct::DIRECT_FROM;

/// The temp file name for `file`: `file.<token>.tmp`, the token unique enough for temp files
/// (which are created with O_EXCL anyway): a random per-process prefix drawn once, plus a
/// counter — no syscall and no formatting machinery per write.
fn temp_name(file: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_err() {
            // no randomness source: pid and time still differ between writers
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            b = (t ^ u64::from(std::process::id()) << 32).to_le_bytes();
        }
        u64::from_le_bytes(b)
    });
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = String::with_capacity(file.len() + 1 + 32 + name::TMP_SUFFIX.len());
    tmp.push_str(file);
    tmp.push('.');
    name::push_hex(&mut tmp, &prefix.to_be_bytes());
    name::push_hex(&mut tmp, &counter.to_be_bytes());
    tmp.push_str(name::TMP_SUFFIX);
    tmp
}

/// A value to write: in memory, or arriving on a stream.
enum Source<'a> {
    Slice(&'a [u8]),
    Stream(&'a mut dyn Read, u64),
}

/// Copies exactly `len` bytes of a stream (a large put arriving from the client) to the file
/// through a small buffer.
fn copy_exactly(src: &mut dyn Read, dst: &mut std::fs::File, len: u64) -> Result<(), (&'static str, io::Error)> {
    let mut buf = vec![0u8; (len as usize).min(128 * 1024)];
    let mut left = len;
    while left > 0 {
        let step = left.min(buf.len() as u64) as usize;
        let n = match src.read(&mut buf[..step]) {
            Ok(0) => return Err(("receive", io::Error::new(io::ErrorKind::UnexpectedEof, "the value ended early"))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(("receive", e)),
        };
        dst.write_all(&buf[..n]).map_err(|e| ("write", e))?;
        left -= n as u64;
    }
    Ok(())
}

/// `data/ab/cd/abcd` → (`data/ab/cd`, `abcd`); a name without `/` lives in the root ("").
fn split(name: &str) -> (&str, &str) {
    name.rsplit_once('/').unwrap_or(("", name))
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// The process (or the system) has no descriptor left to open another file.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn io_err(base: &Path, op: &'static str, name: &str, source: io::Error) -> Error {
    Error::Io { op, path: if name.is_empty() { base.to_path_buf() } else { base.join(name) }, source }
}

/// Where an open store's items are written: its root descriptor, the parent directories it
/// holds open, whether its file system makes unnamed files, and its path (for error messages) —
/// what a session's writes and its writer threads' share.
#[derive(Clone, Copy)]
struct Tree<'a> {
    root: &'a Dir,
    parents: &'a Parents,
    unnamed: &'a AtomicBool,
    base: &'a Path,
}

/// Opens directory `dir` beneath the tree's root, creating it and its missing parents; with
/// `durable` the parents that were created are fsynced, otherwise they are returned for the
/// caller's next barrier.
fn make_dir(tree: Tree<'_>, dir: &str, durable: bool) -> Result<(Dir, Vec<String>), Error> {
    let mut created = Vec::new();
    let d = tree.parents.open_or_make_dir(tree.root, dir, &mut created).map_err(|e| io_err(tree.base, "create directory", dir, e))?;
    if durable {
        for parent in created.drain(..) {
            tree.root.dir(&parent).and_then(|d| d.sync()).map_err(|e| io_err(tree.base, "fsync directory", &parent, e))?;
        }
    }
    Ok((d, created))
}

/// Writes a value held in memory as an unnamed file in `dir`, named `file` once complete (see
/// `Dir::create_unnamed`): a reader never sees half an object, as with temp file + rename.
/// Without `how.replace` an existing `file` is an `EEXIST` error, atomically; with it, the new
/// file takes a temp name and is renamed over the old one. `Ok(false)`: unnamed files are not
/// to be had here (`unnamed` is cleared when the file system refuses one), nothing was written.
fn write_unnamed(dir: &Dir, unnamed: &AtomicBool, file: &str, v: &[u8], how: WriteOptions) -> Result<bool, (&'static str, io::Error)> {
    if !unnamed.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let Some(mut f) = dir.create_unnamed().map_err(|e| ("write", e))? else {
        unnamed.store(false, Ordering::Relaxed);
        return Ok(false);
    };
    f.write_all(v).map_err(|e| ("write", e))?;
    if how.durable {
        f.sync_all().map_err(|e| ("fsync", e))?;
    }
    match dir.link_unnamed(&f, file) {
        Ok(linked) => Ok(linked),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match taken(dir, file, how) {
            Taken::Replace => {
                let tmp = temp_name(file);
                if !dir.link_unnamed(&f, &tmp).map_err(|e| ("rename", e))? {
                    return Ok(false);
                }
                dir.rename(&tmp, dir, file).map_err(|e| {
                    let _ = dir.unlink(&tmp);
                    ("rename", e)
                })?;
                Ok(true)
            }
            Taken::Keep => Ok(true),
            Taken::Refuse => Err(("rename", e)),
        },
        Err(e) => Err(("rename", e)),
    }
}

/// The write itself, shared by a session's own writes and its [`SharedWriter`]'s: the target
/// directory opened (created with its missing parents), the value put in place whole — as an
/// unnamed file linked into place ([`write_unnamed`]) when it is in memory and not written
/// directly, else as a temp file renamed into place ([`write_named`]). With `how.durable` the
/// file, its directory and any directory created for it are fsynced; otherwise the directories
/// created are returned for the caller's next barrier (see [`make_dir`]). `direct_writer`
/// (absent for shared writers, which only take small objects) writes large values around the
/// page cache; `write_behind` starts writeback of large values written through it.
fn write_beneath(
    tree: Tree<'_>,
    name: &str,
    src: Source<'_>,
    how: WriteOptions,
    direct_writer: Option<&mut DirectWriter>,
    write_behind: bool,
) -> Result<Vec<String>, Error> {
    let (dir_name, file) = split(name);
    let (dir, created) = make_dir(tree, dir_name, how.durable)?;
    let len = match &src {
        Source::Slice(v) => v.len() as u64,
        Source::Stream(_, len) => *len,
    };
    let direct_writer = direct_writer.filter(|w| w.wants(len));
    let placed = match src {
        Source::Slice(v) if direct_writer.is_none() => match write_unnamed(&dir, tree.unnamed, file, v, how) {
            Ok(false) => write_named(&dir, file, Source::Slice(v), len, how, None, write_behind),
            other => other.map(drop),
        },
        src => write_named(&dir, file, src, len, how, direct_writer, write_behind),
    };
    match placed {
        Err(("rename", e)) if !how.replace && e.raw_os_error() == Some(libc::EEXIST) => return Err(Error::ItemExists(name.to_string())),
        Err((op, e)) => return Err(io_err(tree.base, op, name, e)),
        Ok(()) => {}
    }
    if how.durable {
        dir.sync().map_err(|e| io_err(tree.base, "fsync directory", dir_name, e))?;
    }
    Ok(created)
}

/// Puts a value in place as a temp file in `dir` renamed to `file` (see [`write_beneath`]);
/// the temp file is removed again if that fails. Without `how.replace` an existing `file` is a
/// `("rename", EEXIST)` error.
fn write_named(
    dir: &Dir,
    file: &str,
    src: Source<'_>,
    len: u64,
    how: WriteOptions,
    mut writer: Option<&mut DirectWriter>,
    write_behind: bool,
) -> Result<(), (&'static str, io::Error)> {
    let tmp = temp_name(file);
    let mut direct = writer.is_some();
    let opened = if direct {
        match dir.create_new_direct(&tmp) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // this file system does not do O_DIRECT (the file may exist all the same)
                if let Some(w) = writer.take() {
                    w.refused_at_open();
                }
                direct = false;
                let _ = dir.unlink(&tmp);
                dir.create_new(&tmp)
            }
            other => other,
        }
    } else {
        dir.create_new(&tmp)
    };
    let written = opened.map_err(|e| ("write", e)).and_then(|mut f| {
        match (src, writer) {
            (Source::Slice(mut v), Some(w)) if direct => w.write(&mut f, &mut v, len)?,
            (Source::Stream(r, len), Some(w)) if direct => w.write(&mut f, r, len)?,
            (Source::Slice(v), _) => f.write_all(v).map_err(|e| ("write", e))?,
            (Source::Stream(r, len), _) => copy_exactly(r, &mut f, len)?,
        }
        if how.durable {
            f.sync_all().map_err(|e| ("fsync", e))?;
        } else if write_behind && !direct && len >= WRITE_BEHIND_FROM {
            // start writing large objects to disk now, without waiting: the next barrier
            // then finds little left to do, and disk I/O overlaps the client's work.
            // SAFETY: valid descriptor; SYNC_FILE_RANGE_WRITE only initiates writeback.
            unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
        Ok(())
    });
    let renamed = written.and_then(|()| {
        match rename_into_place(dir, &tmp, file, how.replace) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match taken(dir, file, how) {
                Taken::Replace => dir.rename(&tmp, dir, file),
                Taken::Keep => dir.unlink(&tmp),
                Taken::Refuse => Err(e),
            },
            other => other,
        }
        .map_err(|e| ("rename", e))
    });
    if renamed.is_err() {
        let _ = dir.unlink(&tmp);
    }
    renamed
}

/// What a write does about the existing `file` it found in `dir`.
enum Taken {
    /// Put the new value in its place.
    Replace,
    /// Leave it: it is what the write would store (made durable here, as no barrier of this
    /// session knows of it).
    Keep,
    /// Fail: the name is taken.
    Refuse,
}

/// [`Taken`] for the existing `file` in `dir`: replaced with `replace`; else, for an item named by
/// its contents, replaced if its damage test finds it damaged and kept if not (read beneath
/// `dir`, never through a symlink); else refused.
fn taken(dir: &Dir, file: &str, how: WriteOptions) -> Taken {
    if how.replace {
        return Taken::Replace;
    }
    let Some(damaged) = how.content_addressed else { return Taken::Refuse };
    let Ok(mut existing) = dir.open_file(file) else { return Taken::Refuse };
    let Ok(meta) = existing.metadata() else { return Taken::Refuse };
    if !meta.is_file() {
        Taken::Refuse
    } else if damaged(&mut existing, meta.len()) {
        Taken::Replace
    } else if existing.sync_all().and_then(|()| dir.sync()).is_ok() {
        Taken::Keep
    } else {
        Taken::Refuse
    }
}

/// Renames temp file `tmp` in `dir` to `file`; without `replace` an existing `file` is an
/// `EEXIST` error (atomically where the file system can say so).
fn rename_into_place(dir: &Dir, tmp: &str, file: &str, replace: bool) -> io::Result<()> {
    if replace {
        return dir.rename(tmp, dir, file);
    }
    match dir.rename_noreplace(tmp, dir, file) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => match dir.stat(file)? {
            // no RENAME_NOREPLACE here: look, then rename (Python's check, and its race)
            Some(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            None => dir.rename(tmp, dir, file),
        },
        other => other,
    }
}

/// The extended attribute holding an item's note (see [`Backend::note_staged`]): the file's
/// identity (inode number, size, modification time), a space, then the note. The identity binds
/// the note to this very file as it was: a copy of the repository carries the attribute (`cp -a`,
/// `rsync -X`) but not the inode, so what was noted about the original is not believed of a copy
/// that may be incomplete; a file rewritten in place has another time.
const NOTE_ATTR: &std::ffi::CStr = c"user.borgd.note";

/// The longest note read back (notes are a line of text).
const NOTE_MAX: usize = 1024;

/// Whether an `*xattr` call failed because this file system (or its mount) keeps no user
/// attributes: then there are no notes, and nothing is wrong.
fn no_attributes(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES))
}

/// What a note is bound to (see [`NOTE_ATTR`]).
fn identity(file: &std::fs::File) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok(format!("{}:{}:{}.{:09}", m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Attaches `note` to `file` (see [`NOTE_ATTR`]); `false` where the file system keeps none.
fn set_note(file: &std::fs::File, note: &[u8]) -> io::Result<bool> {
    let mut value = format!("{} ", identity(file)?).into_bytes();
    value.extend_from_slice(note);
    // SAFETY: valid fd, C string and value buffer.
    if unsafe { libc::fsetxattr(file.as_raw_fd(), NOTE_ATTR.as_ptr(), value.as_ptr().cast(), value.len(), 0) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if no_attributes(&e) { Ok(false) } else { Err(e) }
}

/// The note attached to `file`, if it was attached to this very file as it is (see
/// [`NOTE_ATTR`]).
fn read_note(file: &std::fs::File) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; NOTE_MAX];
    // SAFETY: valid fd, C string and buffer of the length given.
    let n = unsafe { libc::fgetxattr(file.as_raw_fd(), NOTE_ATTR.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // no note, one too long to be ours, or no attributes at all
        return if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ERANGE)) || no_attributes(&e) { Ok(None) } else { Err(e) };
    }
    value.truncate(n as usize);
    let identity = identity(file)?;
    let ours = value.len() > identity.len() && value.starts_with(identity.as_bytes()) && value[identity.len()] == b' ';
    Ok(ours.then(|| value[identity.len() + 1..].to_vec()))
}

/// Rewrites the note of the file at `path` (its attribute `user.borgd.note`) with `edit`, which
/// is given the note and returns its new text, bound to the file as the old one was; `false` if
/// the file has no note of its own. For tests: what a note would say had the check behind it
/// run at another time (see `repository::trust::date_notes_later`); kept out of the docs.
#[doc(hidden)]
pub fn rewrite_note(path: &Path, edit: impl FnOnce(&[u8]) -> Vec<u8>) -> io::Result<bool> {
    let file = std::fs::File::open(path)?;
    let Some(note) = read_note(&file)? else { return Ok(false) };
    set_note(&file, &edit(&note))
}

/// A value received into a temp file beside its target and not yet renamed into place (see
/// [`super::Store::stage`]); removed again when dropped unplaced.
pub struct TempFile {
    dir: Dir,
    tmp: String,
    file: std::fs::File,
    len: u64,
    placed: bool,
}

impl TempFile {
    /// The value's length.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Reads from `offset` without moving anything (the file is read back in pieces).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }

    /// Sets the file's time as a file system with another clock would have (tests).
    #[cfg(test)]
    pub fn set_modified(&self, time: std::time::SystemTime) -> io::Result<()> {
        self.file.set_modified(time)
    }

    /// The value from its start, as a stream (for backends that copy it into place).
    pub fn reader(&mut self) -> io::Result<impl Read + '_> {
        self.file.seek(SeekFrom::Start(0))?;
        Ok((&self.file).take(self.len))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = self.dir.unlink(&self.tmp);
        }
    }
}

/// Writes small items of one open store from other threads (see [`Backend::shared_writer`]):
/// the same write path ([`write_beneath`]), beneath the same directory descriptor.
struct SharedWriter {
    root: Arc<Dir>,
    parents: Arc<Parents>,
    unnamed: Arc<AtomicBool>,
    base: PathBuf,
}

impl super::ItemWriter for SharedWriter {
    fn write(&self, name: &str, value: &[u8], how: WriteOptions) -> Result<(), Error> {
        let tree = Tree { root: &self.root, parents: &self.parents, unnamed: &self.unnamed, base: &self.base };
        write_beneath(tree, name, Source::Slice(value), how, None, false).map(drop)
    }
}

impl PosixFs {
    /// Whether large objects are written with O_DIRECT (the default; see `store::direct`).
    pub fn with_direct_io(mut self, on: bool) -> PosixFs {
        if !on {
            self.direct.disable();
        }
        self
    }

    /// A backend for the directory `base` (which need not exist yet: `create` makes it).
    pub fn new(base: PathBuf, durability: Durability) -> PosixFs {
        PosixFs { base, root: None, parents: Arc::default(), track_dirty: durability == Durability::Barrier, dirty_files: Vec::new(), dirty_dirs: BTreeSet::new(), dirty_overflow: false, direct: DirectWriter::default(), unnamed: Arc::new(AtomicBool::new(true)), created_base: false, locks: None }
    }

    fn err(&self, op: &'static str, name: &str, source: io::Error) -> Error {
        io_err(&self.base, op, name, source)
    }

    /// Opens directory `dir`, creating it (and parents) if missing.
    fn dir_creating(&mut self, dir: &str, durable: bool) -> Result<Dir, Error> {
        let (d, created) = make_dir(Tree { root: self.root()?, parents: &self.parents, unnamed: &self.unnamed, base: &self.base }, dir, durable)?;
        for parent in created {
            self.note_dirty(None, &parent);
        }
        Ok(d)
    }

    fn root(&self) -> Result<&Dir, Error> {
        self.root.as_deref().ok_or_else(|| Error::DoesNotExist(self.base.clone()))
    }

    fn open_root(&mut self) -> Result<(), Error> {
        if self.root.is_none() {
            let base = self.base.clone();
            self.root = Some(Arc::new(Dir::open_root(&base).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => Error::DoesNotExist(base.clone()),
                _ => Error::Io { op: "open", path: base.clone(), source: e },
            })?));
        }
        Ok(())
    }

    /// Directory `dir`, opened beneath the root: if it (or a directory on its way) is missing,
    /// `item` is not found; any other failure is an `op` error on `item`.
    fn open_dir(&self, dir: &str, op: &'static str, item: &str) -> Result<Dir, Error> {
        self.root()?.dir(dir).map_err(|e| if not_found(&e) { Error::ObjectNotFound(item.to_string()) } else { self.err(op, item, e) })
    }

    /// An item's file, opened for reading; `None` if it, or a directory on its way, is missing.
    fn open_item(&self, name: &str) -> Result<Option<std::fs::File>, Error> {
        match self.root()?.open_file(name) {
            Ok(f) => Ok(Some(f)),
            Err(e) if not_found(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(self.err("open", name, e)),
        }
    }

    /// Writes an item as a temp file renamed into place (see the module docs), remembering for
    /// the next barrier what it changed.
    fn write_item(&mut self, name: &str, src: Source<'_>, how: WriteOptions) -> Result<(), Error> {
        let root = self.root.as_deref().ok_or_else(|| Error::DoesNotExist(self.base.clone()))?;
        let tree = Tree { root, parents: &self.parents, unnamed: &self.unnamed, base: &self.base };
        let created = write_beneath(tree, name, src, how, Some(&mut self.direct), self.track_dirty)?;
        if self.locks.is_none() && split(name).0 == LOCKS {
            self.locks = root.dir(LOCKS).ok();
        }
        if !how.durable {
            for parent in created {
                self.note_dirty(None, &parent);
            }
            self.note_dirty(Some(name), split(name).0);
        }
        Ok(())
    }

    /// Closes every directory held open (parents and `locks/`) before the tree is removed.
    fn drop_all_held(&mut self) {
        self.parents.clear();
        self.locks = None;
    }

    /// `syncfs` of the file system the store is on.
    fn sync_filesystem(&self) -> Result<(), Error> {
        self.root()?.sync_filesystem().map_err(|e| self.err("syncfs", "", e))
    }

    fn note_dirty(&mut self, file: Option<&str>, dir: &str) {
        if !self.track_dirty || self.dirty_overflow {
            return;
        }
        if let Some(f) = file {
            self.dirty_files.push(f.to_string());
        }
        self.dirty_dirs.insert(dir.to_string());
        if self.dirty_files.len() + self.dirty_dirs.len() > SYNCFS_ABOVE {
            self.dirty_overflow = true;
            self.dirty_files = Vec::new();
            self.dirty_dirs = BTreeSet::new();
        }
    }
}

impl Backend for PosixFs {
    fn create(&mut self) -> Result<(), Error> {
        let existed = std::fs::symlink_metadata(&self.base).is_ok();
        std::fs::create_dir_all(&self.base).map_err(|e| self.err("create directory", "", e))?;
        self.created_base = !existed;
        self.open_root()?;
        let root = self.root()?;
        if !root.entries().map_err(|e| self.err("list", "", e))?.is_empty() {
            return Err(Error::AlreadyExists(self.base.clone()));
        }
        if let Some(parent) = self.base.parent() {
            // make the new repository directory itself durable in its parent
            if let Ok(d) = Dir::open_root(parent) {
                let _ = d.sync();
            }
        }
        Ok(())
    }

    fn close_held_directories(&mut self) {
        self.parents.clear();
    }

    fn held_directories_moved(&mut self) -> Result<Vec<String>, Error> {
        use std::os::unix::fs::MetadataExt;
        let Some(root) = self.root.clone() else { return Ok(Vec::new()) };
        // the directory at the repository's path now (never through a symlink in its last
        // component, as the root was opened)
        let here = match std::fs::symlink_metadata(&self.base) {
            Ok(m) if m.is_dir() => Some((m.dev(), m.ino())),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.err("look at", "", e)),
        };
        if here != Some(root.identity().map_err(|e| self.err("look at", "", e))?) {
            // the whole repository moved: every descriptor of this store follows the old one
            self.parents.clear();
            return Ok(vec![String::new()]);
        }
        self.parents.moved_away(&root).map_err(|e| self.err("look at", "data", e))
    }

    fn remove_empty(&mut self) -> Result<(), Error> {
        self.open_root()?;
        self.drop_all_held();
        let root = self.root()?;
        for (n, st) in root.entries().map_err(|e| self.err("list", "", e))? {
            if st.is_dir {
                root.remove_empty_tree(&n).map_err(|e| self.err("remove", &n, e))?;
            }
        }
        if self.created_base && root.entries().map_err(|e| self.err("list", "", e))?.is_empty() {
            self.root = None;
            // only if it is still empty (ENOTEMPTY otherwise: someone put something there)
            let _ = std::fs::remove_dir(&self.base);
        }
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), Error> {
        self.open_root()?;
        self.drop_all_held();
        let root = self.root()?;
        for (n, _) in root.entries().map_err(|e| self.err("list", "", e))? {
            root.remove_tree(&n).map_err(|e| self.err("remove", &n, e))?;
        }
        // the base directory itself may stay if we lack the right to remove it (create accepts
        // an existing empty directory); it is removed only if it is still the one we emptied.
        self.root = None;
        let _ = std::fs::remove_dir(&self.base);
        self.dirty_files.clear();
        self.dirty_dirs.clear();
        self.dirty_overflow = false;
        if let Some(parent) = self.base.parent() {
            if let Ok(d) = Dir::open_root(parent) {
                let _ = d.sync();
            }
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), Error> {
        self.open_root()
    }

    fn info(&self, name: &str) -> Result<ItemInfo, Error> {
        let (dir, file) = split(name);
        let absent = ItemInfo { name: file.to_string(), exists: false, size: 0, directory: false };
        let d = match self.root()?.dir(dir) {
            Ok(d) => d,
            Err(e) if not_found(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(absent),
            Err(e) => return Err(self.err("stat", name, e)),
        };
        match d.stat(file).map_err(|e| self.err("stat", name, e))? {
            None => Ok(absent),
            Some(st) => Ok(ItemInfo { name: file.to_string(), exists: true, size: st.size, directory: st.is_dir }),
        }
    }

    fn load(&self, name: &str, offset: u64, size: Option<usize>) -> Result<Vec<u8>, Error> {
        let mut f = self.open_item(name)?.ok_or_else(|| Error::ObjectNotFound(name.to_string()))?;
        // one fstat sizes the buffer; then read exactly that much (objects are immutable: a
        // concurrent replace is a rename, which does not change the inode we have open).
        let len = f.metadata().map_err(|e| self.err("stat", name, e))?.len();
        let want = len.saturating_sub(offset).min(size.map_or(u64::MAX, |s| s as u64)) as usize;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset)).map_err(|e| self.err("seek", name, e))?;
        }
        // reading into reserved (not zeroed) capacity; `take` ends the read at `want` bytes
        // without a further system call
        let mut buf = Vec::with_capacity(want);
        (&f).take(want as u64).read_to_end(&mut buf).map_err(|e| self.err("read", name, e))?;
        Ok(buf)
    }

    fn read_object(&self, name: &str) -> Result<Object, Error> {
        let f = self.open_item(name)?.ok_or_else(|| Error::ObjectNotFound(name.to_string()))?;
        let len = f.metadata().map_err(|e| self.err("stat", name, e))?.len();
        Ok(Object::File(f, len))
    }

    fn store(&mut self, name: &str, value: &[u8], how: WriteOptions) -> Result<(), Error> {
        self.write_item(name, Source::Slice(value), how)
    }

    fn store_from(&mut self, name: &str, len: u64, src: &mut dyn Read, how: WriteOptions) -> Result<(), Error> {
        self.write_item(name, Source::Stream(src, len), how)
    }
    fn stage(&mut self, name: &str, len: u64, src: &mut dyn Read, how: WriteOptions) -> Result<StagedBody, Error> {
        let (dir_name, file) = split(name);
        let dir = self.dir_creating(dir_name, how.durable)?;
        let tmp = temp_name(file);
        let file = dir.create_new_rw(&tmp).map_err(|e| self.err("write", name, e))?;
        // from here on the temp file goes again (when `staged` is dropped) unless it is placed
        let mut staged = TempFile { dir, tmp, file, len, placed: false };
        // before a byte is read: without the space, the value can still be staged again once
        // some is freed (see `Store::stage`)
        staged.dir.reserve(&staged.file, len).map_err(|e| self.err("reserve space for", name, e))?;
        copy_exactly(src, &mut staged.file, len).map_err(|(op, e)| self.err(op, name, e))?;
        Ok(StagedBody::File(staged))
    }

    fn place(&mut self, name: &str, body: &mut StagedBody, how: WriteOptions) -> Result<(), Error> {
        let staged = match body {
            StagedBody::Memory(value) => return self.store(name, value, how),
            StagedBody::File(staged) => staged,
        };
        let (dir_name, file) = split(name);
        if how.durable {
            staged.file.sync_all().map_err(|e| self.err("fsync", name, e))?;
        }
        // (placed already when only the directory's fsync failed, and this is a second try)
        if !staged.placed {
            match rename_into_place(&staged.dir, &staged.tmp, file, how.replace) {
                Err(e) if !how.replace && e.raw_os_error() == Some(libc::EEXIST) => return Err(Error::ItemExists(name.to_string())),
                Err(e) => return Err(self.err("rename", name, e)),
                Ok(()) => staged.placed = true,
            }
        }
        if how.durable {
            staged.dir.sync().map_err(|e| self.err("fsync directory", dir_name, e))?;
        } else {
            self.note_dirty(Some(name), dir_name);
        }
        Ok(())
    }

    fn note_staged(&mut self, name: &str, body: &StagedBody, note: &[u8]) -> Result<bool, Error> {
        match body {
            StagedBody::File(staged) => set_note(&staged.file, note).map_err(|e| self.err("note", name, e)),
            StagedBody::Memory(_) => Ok(false),
        }
    }

    fn staged_time(&self, body: &StagedBody) -> Option<std::time::SystemTime> {
        match body {
            StagedBody::File(staged) => staged.file.metadata().and_then(|m| m.modified()).ok(),
            StagedBody::Memory(_) => None,
        }
    }

    fn note(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(file) = self.open_item(name)? else { return Ok(None) };
        read_note(&file).map_err(|e| self.err("read the note of", name, e))
    }

    fn subdirectories(&self, dir: &str, names: &[&str]) -> Result<Option<Vec<Option<Subdirectory>>>, Error> {
        let d = self.open_dir(dir, "list", dir)?;
        d.subdirectories(names).map(Some).map_err(|e| self.err("list", dir, e))
    }

    fn delete(&mut self, name: &str, durable: bool) -> Result<(), Error> {
        let (dir_name, file) = split(name);
        let missing = || Error::ObjectNotFound(name.to_string());
        let opened;
        let dir = match &self.locks {
            Some(held) if dir_name == LOCKS => held,
            _ => {
                opened = self.open_dir(dir_name, "delete", name)?;
                &opened
            }
        };
        match dir.stat(file).map_err(|e| self.err("delete", name, e))? {
            None => return Err(missing()),
            Some(st) if st.is_dir => return Err(self.err("delete", name, io::Error::from_raw_os_error(libc::EISDIR))),
            Some(_) => dir.unlink(file).map_err(|e| if not_found(&e) { missing() } else { self.err("delete", name, e) })?,
        }
        if durable {
            dir.sync().map_err(|e| self.err("fsync directory", dir_name, e))?;
        } else {
            self.note_dirty(None, dir_name);
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str, durable: bool) -> Result<(), Error> {
        let (src_name, src_file) = split(from);
        let (dst_name, dst_file) = split(to);
        let src = self.open_dir(src_name, "rename", from)?;
        if src.stat(src_file).map_err(|e| self.err("rename", from, e))?.is_none() {
            return Err(Error::ObjectNotFound(from.to_string()));
        }
        let dst = self.dir_creating(dst_name, durable)?;
        src.rename(src_file, &dst, dst_file).map_err(|e| if not_found(&e) { Error::ObjectNotFound(from.to_string()) } else { self.err("rename", from, e) })?;
        if durable {
            dst.sync().map_err(|e| self.err("fsync directory", dst_name, e))?;
            if src_name != dst_name {
                src.sync().map_err(|e| self.err("fsync directory", src_name, e))?;
            }
        } else {
            self.note_dirty(None, dst_name);
            self.note_dirty(None, src_name);
        }
        Ok(())
    }

    fn list(&self, name: &str, detail: Detail) -> Result<Vec<ItemInfo>, Error> {
        let dir = self.open_dir(name, "list", name)?;
        let mut out: Vec<ItemInfo> = dir
            .entries_with(detail == Detail::Sizes)
            .map_err(|e| self.err("list", name, e))?
            .into_iter()
            // invalid names are temp files in progress or not ours; symlinks are never borg's
            .filter(|(n, st)| !st.is_symlink && name::validate(n).is_ok())
            .map(|(n, st)| ItemInfo { name: n, exists: true, size: st.size, directory: st.is_dir })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn free_deleted_space(&mut self) -> Result<(), Error> {
        self.sync_filesystem()
    }

    fn barrier(&mut self) -> Result<(), Error> {
        let files = std::mem::take(&mut self.dirty_files);
        let dirs = std::mem::take(&mut self.dirty_dirs);
        let overflow = std::mem::take(&mut self.dirty_overflow);
        let root = self.root()?;
        if overflow {
            // one syncfs instead of thousands of fsyncs (each a journal commit): measured
            // 0.37 s instead of 5.0 s for 20 000 small objects on the benchmark machine.
            return self.sync_filesystem();
        }
        // out of descriptors, one syncfs on the root's makes the same writes durable: a session
        // must not fail (and leave its lock behind) for want of a descriptor to fsync with
        let syncfs = || self.sync_filesystem();
        for f in &files {
            match root.open_file(f) {
                Ok(file) => file.sync_all().map_err(|e| self.err("fsync", f, e))?,
                // deleted or renamed since: its directory entry change is synced below.
                Err(e) if not_found(&e) => {}
                Err(e) if out_of_descriptors(&e) => return syncfs(),
                Err(e) => return Err(self.err("fsync", f, e)),
            }
        }
        // deepest directories first, so new subdirectories are durable before their parents
        // point at them.
        for d in dirs.iter().rev() {
            match root.dir(d) {
                Ok(dir) => dir.sync().map_err(|e| self.err("fsync directory", d, e))?,
                Err(e) if not_found(&e) => {}
                Err(e) if out_of_descriptors(&e) => return syncfs(),
                Err(e) => return Err(self.err("fsync directory", d, e)),
            }
        }
        Ok(())
    }

    fn remove_temp_files(&mut self) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(d) = dirs.pop() {
            let dir = self.root()?.dir(&d).map_err(|e| self.err("list", &d, e))?;
            for (n, st) in dir.entries().map_err(|e| self.err("list", &d, e))? {
                let rel = if d.is_empty() { n.clone() } else { format!("{d}/{n}") };
                if st.is_dir {
                    dirs.push(rel);
                } else if !st.is_symlink && n.ends_with(name::TMP_SUFFIX) {
                    dir.unlink(&n).map_err(|e| self.err("remove temp file", &rel, e))?;
                    self.note_dirty(None, &d);
                    removed.push(rel);
                }
            }
        }
        removed.sort();
        Ok(removed)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.base.display())
    }

    fn shared_writer(&self) -> Option<Arc<dyn super::ItemWriter>> {
        let root = self.root.clone()?;
        Some(Arc::new(SharedWriter { root, parents: Arc::clone(&self.parents), unnamed: Arc::clone(&self.unnamed), base: self.base.clone() }))
    }

    fn note_shared_write(&mut self) {
        // what other threads wrote is not itemised: the next barrier syncs the file system
        if self.track_dirty {
            self.dirty_overflow = true;
            self.dirty_files = Vec::new();
            self.dirty_dirs = BTreeSet::new();
        }
    }

    /// Zero: on a local file system a rename is visible to every listing that starts after it
    /// returned. Two lockers that each write, then list, cannot both miss the other (whoever
    /// wrote second lists after both records exist), so the re-check needs no wait. (Python's
    /// 0.01 s cost every borgd session 10 ms of its 15 ms start-up. A network file system with
    /// cached directory listings is not made safe by 10 ms either.)
    fn visibility_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: WriteOptions = WriteOptions { durable: false, replace: true, content_addressed: None };

    #[test]
    fn writes_are_atomic_and_temp_files_are_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = PosixFs::new(dir.path().join("repo"), Durability::Barrier);
        fs.create().unwrap();
        fs.store("data/ab/cd/abcd", b"hello", PLAIN).unwrap();
        std::fs::write(dir.path().join("repo/data/ab/cd/xyz.123.tmp"), b"partial").unwrap();
        let names: Vec<_> = fs.list("data/ab/cd", Detail::Sizes).unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["abcd"]);
        // a listing of names only reports the same items and kinds, sizes left at 0
        fs.store("data/ab/cd/abce", b"hello!", PLAIN).unwrap();
        std::fs::create_dir(dir.path().join("repo/data/ab/cd/ef")).unwrap();
        let sizes = fs.list("data/ab/cd", Detail::Sizes).unwrap();
        assert_eq!(sizes.iter().map(|i| (i.size, i.directory)).collect::<Vec<_>>(), [(5, false), (6, false), (0, true)]);
        let names = fs.list("data/ab/cd", Detail::Names).unwrap();
        assert_eq!(names.iter().map(|i| (&i.name, i.size, i.directory)).collect::<Vec<_>>(), sizes.iter().map(|i| (&i.name, 0, i.directory)).collect::<Vec<_>>());
        fs.delete("data/ab/cd/abce", false).unwrap();
        std::fs::remove_dir(dir.path().join("repo/data/ab/cd/ef")).unwrap();
        assert_eq!(fs.load("data/ab/cd/abcd", 1, Some(3)).unwrap(), b"ell");
        assert!(!fs.dirty_files.is_empty());
        fs.barrier().unwrap();
        assert!(fs.dirty_files.is_empty() && fs.dirty_dirs.is_empty());
        // many writes: names stop being kept, the next barrier syncs the whole file system
        for i in 0..100u32 {
            fs.store(&format!("data/{:02x}/00/{i:08x}", i % 7), b"x", PLAIN).unwrap();
        }
        assert!(fs.dirty_overflow && fs.dirty_files.is_empty() && fs.dirty_dirs.is_empty());
        fs.barrier().unwrap();
        assert!(!fs.dirty_overflow);
    }

    /// Small values go into place as unnamed files where the kernel allows, as named temp files
    /// elsewhere; both ways a new item appears whole, a replace replaces, a refused replace
    /// (no `W`) leaves the old value and says `ItemExists`, durable writes work, and no temp
    /// file is left in the directory.
    #[test]
    fn small_values_are_put_in_place_whole_with_and_without_unnamed_files() {
        for unnamed in [true, false] {
            super::super::beneath::NO_UNNAMED_FILES.with(|c| c.set(!unnamed));
            for durability in [Durability::Barrier, Durability::Always] {
                let dir = tempfile::tempdir().unwrap();
                let mut fs = PosixFs::new(dir.path().join("repo"), durability);
                fs.create().unwrap();
                let durable = durability == Durability::Always;
                let (plain, keep) = (WriteOptions::plain(durable, true), WriteOptions::plain(durable, false));
                fs.store("data/ab/cd/abcd", b"first", plain).unwrap();
                fs.store("data/ab/cd/abcd", b"second", plain).unwrap();
                assert!(matches!(fs.store("data/ab/cd/abcd", b"third", keep), Err(Error::ItemExists(_))));
                fs.store("data/ab/cd/abce", b"new", keep).unwrap();
                assert_eq!(fs.load("data/ab/cd/abcd", 0, None).unwrap(), b"second", "unnamed {unnamed}");
                assert_eq!(fs.load("data/ab/cd/abce", 0, None).unwrap(), b"new");
                let mut on_disk: Vec<_> = std::fs::read_dir(dir.path().join("repo/data/ab/cd")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
                on_disk.sort();
                assert_eq!(on_disk, ["abcd", "abce"], "unnamed {unnamed}, {durability:?}");
                assert_eq!(super::super::beneath::unnamed_files_linked(), unnamed, "the way taken");
                fs.barrier().unwrap();
            }
        }
        super::super::beneath::NO_UNNAMED_FILES.with(|c| c.set(false));
    }

    /// A file system without unnamed files is remembered by the store that met it, not by the
    /// process: a socket-mode server whose first repository is on such a file system still puts
    /// another repository's small objects in place as unnamed files.
    #[test]
    fn a_file_system_without_unnamed_files_sends_only_its_own_stores_the_named_way() {
        use super::super::beneath::{NO_TMPFILE_BENEATH, UNNAMED_CREATED};
        let dir = tempfile::tempdir().unwrap();
        if Dir::open_root(dir.path()).unwrap().create_unnamed().unwrap().is_none() {
            eprintln!("no unnamed files on this file system or kernel: nothing to test");
            return;
        }
        let (without, with) = (dir.path().join("nfs"), dir.path().join("local"));
        NO_TMPFILE_BENEATH.with(|p| *p.borrow_mut() = Some(without.clone()));
        let created = || UNNAMED_CREATED.with(|c| c.get());
        let plain = WriteOptions::plain(false, true);
        let mut first = PosixFs::new(without.join("repo"), Durability::Barrier);
        first.create().unwrap();
        let before = created();
        first.store("data/ab/cd/abcd", b"named", plain).unwrap();
        first.store("data/ab/cd/abce", b"named too", plain).unwrap();
        assert_eq!(created(), before, "the refusing file system made an unnamed file");
        assert_eq!(first.load("data/ab/cd/abcd", 0, None).unwrap(), b"named");
        let on_disk: Vec<_> = std::fs::read_dir(without.join("repo/data/ab/cd")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(on_disk.len(), 2, "temp files left: {on_disk:?}");

        let mut second = PosixFs::new(with.join("repo"), Durability::Barrier);
        second.create().unwrap();
        second.store("data/ab/cd/abcd", b"unnamed", plain).unwrap();
        assert_eq!(created(), before + 1, "the other file system's store took the named way too");
        assert_eq!(second.load("data/ab/cd/abcd", 0, None).unwrap(), b"unnamed");
        NO_TMPFILE_BENEATH.with(|p| *p.borrow_mut() = None);
    }

    /// Out of descriptors, a barrier makes its writes durable with one `syncfs` on the root's
    /// descriptor (open already) instead of failing for want of one to fsync each item with: a
    /// failed barrier fails the session, and its lock release then fails for the same reason.
    #[test]
    fn a_barrier_out_of_descriptors_falls_back_to_syncfs() {
        use super::super::beneath::OPENS_FAIL_WITH;
        let dir = tempfile::tempdir().unwrap();
        let mut fs = PosixFs::new(dir.path().join("repo"), Durability::Barrier);
        fs.create().unwrap();
        fs.store("locks/abcd", b"record", WriteOptions::plain(false, true)).unwrap();
        assert!(!fs.dirty_files.is_empty() && !fs.dirty_overflow, "nothing for the barrier to fsync item by item");
        OPENS_FAIL_WITH.with(|c| c.set(Some(libc::EMFILE)));
        let synced = fs.barrier();
        OPENS_FAIL_WITH.with(|c| c.set(None));
        synced.unwrap();
        assert!(fs.dirty_files.is_empty() && fs.dirty_dirs.is_empty());
    }

    #[test]
    fn temp_names_are_unique_and_never_valid_item_names() {
        let (a, b) = (temp_name("abcd"), temp_name("abcd"));
        assert_ne!(a, b);
        for t in [&a, &b] {
            let token = t.strip_prefix("abcd.").and_then(|r| r.strip_suffix(name::TMP_SUFFIX)).unwrap();
            assert!(token.len() > 16 && token.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{t}");
            assert!(name::validate(t).is_err(), "{t} would be listed");
        }
    }

    /// Large values (written with O_DIRECT unless switched off), from memory and streamed, with
    /// lengths that do and do not end on a block boundary, read back whole.
    #[test]
    fn large_values_arrive_whole_with_and_without_direct_io() {
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut fs = PosixFs::new(dir.path().join("repo"), Durability::Barrier).with_direct_io(direct);
            fs.create().unwrap();
            for (i, len) in [600_000usize, 1 << 20, 3_000_001].into_iter().enumerate() {
                let value: Vec<u8> = (0..len).map(|j| (j % 253) as u8 ^ i as u8).collect();
                fs.store(&format!("data/00/00/{i}a"), &value, PLAIN).unwrap();
                fs.store_from(&format!("data/00/00/{i}b"), len as u64, &mut &value[..], PLAIN).unwrap();
                for suffix in ["a", "b"] {
                    assert!(fs.load(&format!("data/00/00/{i}{suffix}"), 0, None).unwrap() == value, "length {len} ({suffix}, direct {direct})");
                }
            }
            if !direct {
                assert!(!fs.direct.wants(1 << 20));
            }
            fs.barrier().unwrap();
        }
    }

    #[test]
    fn create_refuses_non_empty_and_missing_items_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        let mut fs = PosixFs::new(dir.path().to_path_buf(), Durability::Never);
        assert!(matches!(fs.create(), Err(Error::AlreadyExists(_))));
        assert!(matches!(fs.load("config/nope", 0, None), Err(Error::ObjectNotFound(_))));
        assert!(matches!(fs.delete("config/nope", false), Err(Error::ObjectNotFound(_))));
        assert!(matches!(fs.rename("config/a", "config/b", false), Err(Error::ObjectNotFound(_))));
        assert!(matches!(PosixFs::new(dir.path().join("none"), Durability::Never).open(), Err(Error::DoesNotExist(_))));
    }

    #[test]
    fn a_symlink_swapped_in_after_open_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("config")).unwrap();
        std::fs::write(outside.path().join("config/secret"), b"outside").unwrap();
        let repo = dir.path().join("repo");
        let mut fs = PosixFs::new(repo.clone(), Durability::Never);
        fs.create().unwrap();
        fs.store("config/id", b"x", PLAIN).unwrap();
        // swap the config directory for a symlink out of the repository
        std::fs::remove_dir_all(repo.join("config")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("config"), repo.join("config")).unwrap();
        assert!(fs.load("config/secret", 0, None).is_err());
        assert!(fs.store("config/planted", b"x", PLAIN).is_err());
        assert!(!outside.path().join("config/planted").exists());
        assert!(fs.list("config", Detail::Sizes).is_err());
        // swap the whole repository path: we keep working on the directory we opened
        let moved = dir.path().join("moved");
        std::fs::rename(&repo, &moved).unwrap();
        std::os::unix::fs::symlink(outside.path(), &repo).unwrap();
        fs.store("keys/repokey", b"k", PLAIN).unwrap();
        assert!(moved.join("keys/repokey").exists() && !outside.path().join("keys").exists());
    }
}
