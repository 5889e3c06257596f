//! The posix file system backend: one file per item below a base directory.
//!
//! Every write goes to a temp file (`<name>.<random>.tmp`) in the target directory and is renamed
//! into place, so a half-written item is never visible under its name; temp names end in `.tmp`,
//! which is never a valid item name, so listings never show them. Files are created 0600 and
//! directories 0777 minus the umask, as Python borgstore does.
//!
//! Durability: with `durable` the file is fsynced before the rename and its directory after it.
//! Otherwise (data objects in barrier mode) the file and every directory whose entries changed are
//! remembered and fsynced by the next [`Backend::barrier`].

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{name, Backend, Durability, Error, ItemInfo};

/// A store kept as files below `base`.
pub struct PosixFs {
    base: PathBuf,
    track_dirty: bool,
    dirty_files: Vec<PathBuf>,
    dirty_dirs: BTreeSet<PathBuf>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

fn random_hex() -> String {
    let mut b = [0u8; 6];
    // getrandom only fails when the OS has no randomness source at all; a time-based name is
    // still unique enough for a temp file (it is created with O_EXCL).
    if getrandom::fill(&mut b).is_err() {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b.copy_from_slice(&n.to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err("fsync directory", dir))
}

impl PosixFs {
    /// A backend for the directory `base` (which need not exist yet: `create` makes it).
    pub fn new(base: PathBuf, durability: Durability) -> PosixFs {
        PosixFs { base, track_dirty: durability == Durability::Barrier, dirty_files: Vec::new(), dirty_dirs: BTreeSet::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        if name.is_empty() {
            self.base.clone()
        } else {
            self.base.join(name)
        }
    }

    /// Creates missing directories up to `dir`, remembering (or syncing) the parents they
    /// were added to.
    fn make_dirs(&mut self, dir: &Path, durable: bool) -> Result<(), Error> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() && d != self.base {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        for m in missing.iter().rev() {
            if let Some(parent) = m.parent() {
                if durable {
                    fsync_dir(parent)?;
                } else if self.track_dirty {
                    self.dirty_dirs.insert(parent.to_path_buf());
                }
            }
        }
        Ok(())
    }

    fn write_temp(dir: &Path, file_name: &str, value: &[u8], durable: bool) -> io::Result<PathBuf> {
        let tmp = dir.join(format!("{file_name}.{}{}", random_hex(), name::TMP_SUFFIX));
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let written = f.write_all(value).and_then(|_| if durable { f.sync_all() } else { Ok(()) });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    fn note_dirty(&mut self, file: Option<PathBuf>, dir: &Path) {
        if self.track_dirty {
            if let Some(f) = file {
                self.dirty_files.push(f);
            }
            self.dirty_dirs.insert(dir.to_path_buf());
        }
    }
}

impl Backend for PosixFs {
    fn create(&mut self) -> Result<(), Error> {
        fs::create_dir_all(&self.base).map_err(io_err("create directory", &self.base))?;
        let mut entries = fs::read_dir(&self.base).map_err(io_err("list", &self.base))?;
        if entries.next().is_some() {
            return Err(Error::AlreadyExists(self.base.clone()));
        }
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), Error> {
        if !self.base.is_dir() {
            return Err(Error::DoesNotExist(self.base.clone()));
        }
        // remove the contents; the base directory itself may stay if we lack the right to
        // remove it (create accepts an existing empty directory).
        for entry in fs::read_dir(&self.base).map_err(io_err("list", &self.base))? {
            let entry = entry.map_err(io_err("list", &self.base))?;
            let p = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let r = if is_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(io_err("remove", &p))?;
        }
        let _ = fs::remove_dir(&self.base);
        self.dirty_files.clear();
        self.dirty_dirs.clear();
        if let Some(parent) = self.base.parent() {
            let _ = fsync_dir(parent);
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), Error> {
        if self.base.is_dir() {
            Ok(())
        } else {
            Err(Error::DoesNotExist(self.base.clone()))
        }
    }

    fn info(&self, name: &str) -> Result<ItemInfo, Error> {
        let path = self.path(name);
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match fs::metadata(&path) {
            Ok(md) => Ok(ItemInfo { name: file_name, exists: true, size: md.len(), directory: md.is_dir() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(ItemInfo { name: file_name, exists: false, size: 0, directory: false })
            }
            Err(e) => Err(Error::Io { op: "stat", path, source: e }),
        }
    }

    fn load(&self, name: &str, offset: u64, size: Option<usize>) -> Result<Vec<u8>, Error> {
        let path = self.path(name);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::ObjectNotFound(name.to_string())),
            Err(e) => return Err(Error::Io { op: "open", path, source: e }),
        };
        if offset > 0 {
            f.seek(SeekFrom::Start(offset)).map_err(io_err("seek", &path))?;
        }
        let mut buf = Vec::new();
        match size {
            Some(n) => {
                buf.reserve(n);
                f.take(n as u64).read_to_end(&mut buf).map_err(io_err("read", &path))?;
            }
            None => {
                if let Ok(md) = f.metadata() {
                    buf.reserve(md.len() as usize);
                }
                f.read_to_end(&mut buf).map_err(io_err("read", &path))?;
            }
        }
        Ok(buf)
    }

    fn store(&mut self, name: &str, value: &[u8], durable: bool) -> Result<(), Error> {
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.base).to_path_buf();
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = match Self::write_temp(&dir, &file_name, value, durable) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.make_dirs(&dir, durable)?;
                Self::write_temp(&dir, &file_name, value, durable).map_err(io_err("write", &path))?
            }
            Err(e) => return Err(Error::Io { op: "write", path, source: e }),
        };
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io { op: "rename", path, source: e });
        }
        if durable {
            fsync_dir(&dir)?;
        } else {
            self.note_dirty(Some(path), &dir);
        }
        Ok(())
    }

    fn delete(&mut self, name: &str, durable: bool) -> Result<(), Error> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::ObjectNotFound(name.to_string())),
            Err(e) => return Err(Error::Io { op: "delete", path, source: e }),
        }
        let dir = path.parent().unwrap_or(&self.base).to_path_buf();
        if durable {
            fsync_dir(&dir)?;
        } else {
            self.note_dirty(None, &dir);
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str, durable: bool) -> Result<(), Error> {
        let (src, dst) = (self.path(from), self.path(to));
        let dst_dir = dst.parent().unwrap_or(&self.base).to_path_buf();
        let src_dir = src.parent().unwrap_or(&self.base).to_path_buf();
        let mut result = fs::rename(&src, &dst);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) && src.exists() {
            self.make_dirs(&dst_dir, durable)?;
            result = fs::rename(&src, &dst);
        }
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::ObjectNotFound(from.to_string())),
            Err(e) => return Err(Error::Io { op: "rename", path: src, source: e }),
        }
        if durable {
            fsync_dir(&dst_dir)?;
            if src_dir != dst_dir {
                fsync_dir(&src_dir)?;
            }
        } else {
            self.note_dirty(None, &dst_dir);
            self.note_dirty(None, &src_dir);
        }
        Ok(())
    }

    fn list(&self, name: &str) -> Result<Vec<ItemInfo>, Error> {
        let path = self.path(name);
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::ObjectNotFound(name.to_string())),
            Err(e) => return Err(Error::Io { op: "list", path, source: e }),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err("list", &path))?;
            let Ok(file_name) = entry.file_name().into_string() else { continue };
            if name::validate(&file_name).is_err() {
                continue; // a temp file in progress, or not ours
            }
            // symlinks are never created by borg: do not follow them out of the store.
            let md = match entry.metadata() {
                Ok(md) if !md.file_type().is_symlink() => md,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Io { op: "stat", path: entry.path(), source: e }),
            };
            out.push(ItemInfo { name: file_name, exists: true, size: md.len(), directory: md.is_dir() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn barrier(&mut self) -> Result<(), Error> {
        for f in std::mem::take(&mut self.dirty_files) {
            match File::open(&f) {
                Ok(file) => file.sync_all().map_err(io_err("fsync", &f))?,
                // deleted or renamed since: its directory entry change is synced below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { op: "fsync", path: f, source: e }),
            }
        }
        // deepest directories first, so new subdirectories are durable before their parents
        // point at them.
        for d in std::mem::take(&mut self.dirty_dirs).iter().rev() {
            match fsync_dir(d) {
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file://{}", self.base.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_temp_files_are_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = PosixFs::new(dir.path().join("repo"), Durability::Barrier);
        fs.create().unwrap();
        fs.store("data/ab/cd/abcd", b"hello", false).unwrap();
        std::fs::write(dir.path().join("repo/data/ab/cd/xyz.123.tmp"), b"partial").unwrap();
        let names: Vec<_> = fs.list("data/ab/cd").unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["abcd"]);
        assert_eq!(fs.load("data/ab/cd/abcd", 1, Some(3)).unwrap(), b"ell");
        assert!(!fs.dirty_files.is_empty());
        fs.barrier().unwrap();
        assert!(fs.dirty_files.is_empty() && fs.dirty_dirs.is_empty());
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
    }
}
