//! File system calls confined beneath one directory, never following symlinks.
//!
//! The repository directory is opened once (its path was resolved and checked against
//! `--restrict-to-*` when the client opened it); every later access resolves names relative to
//! that directory descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`. So a symlink
//! swapped into the repository after `open`, or the repository path itself being replaced, can
//! never lead a client outside the directory it was admitted to. Kernels without `openat2`
//! (before 5.6) get the same guarantee from a component-by-component `O_NOFOLLOW` walk.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::Subdirectory;

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive, so we declare the layout).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

/// Names shorter than this become C strings on the stack (all of a repository's do).
const SHORT_NAME: usize = 192;

/// A name as a NUL-terminated C string, kept on the stack when short: every put hands the kernel
/// three or four names, and a heap `CString` for each was 5% of a put's user-space instructions
/// (callgrind).
#[derive(Debug)]
enum CName {
    Short([u8; SHORT_NAME]),
    Long(CString),
}

impl CName {
    fn as_ptr(&self) -> *const libc::c_char {
        match self {
            CName::Short(b) => b.as_ptr().cast(),
            CName::Long(c) => c.as_ptr(),
        }
    }
}

fn cstr(s: &str) -> io::Result<CName> {
    let bytes = s.as_bytes();
    if bytes.len() < SHORT_NAME && !bytes.contains(&0) {
        let mut b = [0u8; SHORT_NAME];
        b[..bytes.len()].copy_from_slice(bytes);
        return Ok(CName::Short(b));
    }
    // long, or with a NUL inside (refused here)
    CString::new(s).map(CName::Long).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// The error for a symlink met on the way to `what`: said plainly, as a permission problem.
fn symlink_refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{what}: refusing to follow a symlink inside the repository"))
}

/// When a directory's entries last changed, by a time no program can set back: the later of its
/// status-change and modification times (see [`Subdirectory::changed`]).
fn changed(st: &libc::stat) -> std::time::SystemTime {
    let at = |secs: libc::time_t, nanos: i64| std::time::UNIX_EPOCH + std::time::Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
    at(st.st_ctime, st.st_ctime_nsec).max(at(st.st_mtime, st.st_mtime_nsec))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn openat_nofollow(dirfd: RawFd, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    loop {
        // SAFETY: c is a valid NUL-terminated string; the returned fd is owned by us.
        let r = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode as libc::c_uint) };
        match cvt(r) {
            // SAFETY: r is a fresh descriptor nobody else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens `rel` (a `/`-separated relative path, or "" for the directory itself) beneath `dirfd`.
fn open_beneath(dirfd: RawFd, rel: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    #[cfg(test)]
    if let Some(errno) = OPENS_FAIL_WITH.with(|c| c.get()) {
        return Err(io::Error::from_raw_os_error(errno));
    }
    let rel = if rel.is_empty() { "." } else { rel };
    let c = cstr(rel)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: pointers to a valid C string and a correctly laid out open_how of the size given.
        let r = unsafe { libc::syscall(libc::SYS_openat2, dirfd, c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
        if r >= 0 {
            // SAFETY: a fresh descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            // no openat2 (old kernel), or a seccomp filter that refuses it
            Some(libc::ENOSYS) | Some(libc::EPERM) => return walk(dirfd, rel, flags, mode),
            // a symlink on the way: say so plainly
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                return Err(symlink_refused(rel))
            }
            _ => return Err(e),
        }
    }
}

/// The fallback of [`open_beneath`]: one `openat(O_NOFOLLOW)` per component.
fn walk(dirfd: RawFd, rel: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{rel}: '..' is not allowed")));
    }
    let mut cur = openat_nofollow(dirfd, ".", libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let f = if last { flags } else { libc::O_DIRECTORY | libc::O_RDONLY };
        cur = openat_nofollow(cur.as_raw_fd(), part, f, if last { mode } else { 0 }).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                symlink_refused(rel)
            } else {
                e
            }
        })?;
    }
    Ok(cur)
}

/// What `fstatat(AT_SYMLINK_NOFOLLOW)` says about a directory entry.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub size: u64,
    pub is_dir: bool,
    pub is_symlink: bool,
}

/// How this process gives unnamed files their names (see [`Dir::link_unnamed`]): a property of
/// the kernel and its `/proc`, so learnt once, at the first object written. Whether a file system
/// makes unnamed files at all is its own property, learnt by each store (`posixfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum LinkMode {
    Unknown = 0,
    /// `linkat(fd, "", AT_EMPTY_PATH)`: Linux 6.10 and later, or with CAP_DAC_READ_SEARCH.
    EmptyPath,
    /// `linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW)`.
    Proc,
    /// Named temp files only.
    None,
}

static LINK_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(LinkMode::Unknown as u8);

#[cfg(test)]
thread_local! {
    /// Tests of the named-temp-file path set this on their thread.
    pub(crate) static NO_UNNAMED_FILES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests set this on their thread to make directories beneath it refuse unnamed files, as a
    /// file system without `O_TMPFILE` does (NFS, FAT, many FUSE file systems).
    pub(crate) static NO_TMPFILE_BENEATH: std::cell::RefCell<Option<std::path::PathBuf>> = const { std::cell::RefCell::new(None) };
    /// Tests set this on their thread to make every path opened beneath a directory fail with
    /// this errno (`EMFILE`: a process out of descriptors).
    pub(crate) static OPENS_FAIL_WITH: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
    /// Unnamed files this thread has created (tests: which way a write took).
    pub(crate) static UNNAMED_CREATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether a test made the directory `fd` refuse unnamed files (see `NO_TMPFILE_BENEATH`).
#[cfg(test)]
fn tmpfile_refused_in_test(fd: RawFd) -> bool {
    NO_TMPFILE_BENEATH.with(|p| {
        let Some(prefix) = p.borrow().clone() else { return false };
        std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|path| path.starts_with(prefix))
    })
}

fn link_mode() -> LinkMode {
    #[cfg(test)]
    if NO_UNNAMED_FILES.with(|c| c.get()) {
        return LinkMode::None;
    }
    match LINK_MODE.load(std::sync::atomic::Ordering::Relaxed) {
        x if x == LinkMode::EmptyPath as u8 => LinkMode::EmptyPath,
        x if x == LinkMode::Proc as u8 => LinkMode::Proc,
        x if x == LinkMode::None as u8 => LinkMode::None,
        _ => LinkMode::Unknown,
    }
}

/// Whether this process has named an unnamed file (tests: the fast path was taken).
#[cfg(test)]
pub(crate) fn unnamed_files_linked() -> bool {
    matches!(link_mode(), LinkMode::EmptyPath | LinkMode::Proc)
}

fn set_link_mode(m: LinkMode) {
    LINK_MODE.store(m as u8, std::sync::atomic::Ordering::Relaxed);
}

thread_local! {
    /// The `getdents64` buffer of this thread, zeroed once: listing a repository reads every one of
    /// its ~65 000 directories, and a fresh zeroed 32 KiB for each was two thirds of the
    /// instructions of a `check` session (callgrind, 5 000 objects).
    static DENTS: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 32 * 1024]);
}

/// A directory opened beneath the root; all its operations take plain names (no `/`).
pub struct Dir {
    fd: OwnedFd,
    /// Whether `entries` has read this descriptor (then it must rewind first).
    listed: std::sync::atomic::AtomicBool,
}

/// Whether `e` says there is no space: on the file system (`ENOSPC`) or in its owner's quota
/// (`EDQUOT`).
pub fn no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl Dir {
    fn from_fd(fd: OwnedFd) -> Dir {
        Dir { fd, listed: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Runs `op`, a call that makes a file, a directory or a name on this directory's file
    /// system, and once more after `syncfs` if it found no space. XFS counts the blocks it has
    /// promised to data written but not yet written back (delayed allocation) as used, and only
    /// its buffered writes wait for writeback when that leaves nothing free: a create, `mkdir`,
    /// link or rename fails at once with `ENOSPC`, with the space free a moment later. Seen:
    /// 70 000 small files made in a fresh 1 GiB XFS, a rename failed with 0 bytes free, and after
    /// a `sync` 581 MB were free and the rename went through; a backup of ~70 000 small chunks
    /// into a 700 MiB XFS took the free count down to 3 MB, and Python's server failed it with
    /// `ENOSPC` on a rename in both tries, 375 MB free afterwards. (ext4 and Btrfs wait and retry
    /// themselves.) A file system that is really full fails the second try as it did the first.
    /// XFS charges those promised blocks to the owner's quota too, so `EDQUOT` is treated alike
    /// (by analogy: this machine's kernel has no XFS quota support to show it).
    fn flushed_if_full<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if no_space(&e) => {
                // whatever syncfs says, the second try's answer is the one that counts
                // SAFETY: valid fd.
                unsafe { libc::syncfs(self.fd.as_raw_fd()) };
                op()
            }
            other => other,
        }
    }
}

impl Dir {
    /// The root itself: opens `path` (which must not be a symlink in its last component).
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: valid C string; the fd becomes ours.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) })?;
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Dir::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A subdirectory `rel` ("" for this directory) beneath this one.
    pub fn dir(&self, rel: &str) -> io::Result<Dir> {
        Ok(Dir::from_fd(open_beneath(self.fd.as_raw_fd(), rel, libc::O_DIRECTORY | libc::O_RDONLY, 0)?))
    }

    /// A file `rel` beneath this directory, for reading.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        Ok(File::from(open_beneath(self.fd.as_raw_fd(), rel, libc::O_RDONLY, 0)?))
    }

    /// Opens directory `rel` beneath this one, creating it and any missing parents. Creation
    /// starts at the deepest existing parent (usually `data/xx` exists and only `yy` is new).
    /// `created` receives the directories (relative, "" for this one) that got a new entry.
    pub fn open_or_make_dir(&self, rel: &str, created: &mut Vec<String>) -> io::Result<Dir> {
        match self.dir(rel) {
            Ok(d) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => {}
            Err(e) => return Err(e),
        }
        let (parent_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = self.open_or_make_dir(parent_rel, created)?;
        // it was missing a moment ago: make it first (EEXIST if a concurrent writer made it)
        let (d, made) = parent.open_or_make_child(name, true)?;
        if made {
            created.push(parent_rel.to_string());
        }
        Ok(d)
    }

    /// Opens the subdirectory `name` (one name, no `/`) of this directory, creating it if
    /// missing; `true` with it when it was created now. A symlink there is refused, as beneath
    /// the root. `ENOENT` means this directory itself has been deleted. `make_first`: the
    /// caller expects it to be missing, so `mkdirat` comes before the open (an `EEXIST` instead
    /// of a failed open when it was not).
    pub fn open_or_make_child(&self, name: &str, make_first: bool) -> io::Result<(Dir, bool)> {
        let open = || {
            openat_nofollow(self.fd.as_raw_fd(), name, libc::O_DIRECTORY | libc::O_RDONLY, 0).map(Dir::from_fd).map_err(|e| {
                // a symlink with O_NOFOLLOW | O_DIRECTORY: ENOTDIR (the directory check comes
                // first), ELOOP without it; say which
                let symlink = match e.raw_os_error() {
                    Some(libc::ELOOP) => true,
                    Some(libc::ENOTDIR) => matches!(self.stat(name), Ok(Some(st)) if st.is_symlink),
                    _ => false,
                };
                if symlink {
                    symlink_refused(name)
                } else {
                    e
                }
            })
        };
        if !make_first {
            match open() {
                Ok(d) => return Ok((d, false)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let c = cstr(name)?;
        // SAFETY: valid directory fd and C string.
        let made = match self.flushed_if_full(|| cvt(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o777) })) {
            Ok(_) => true,
            // there already (or a concurrent writer made it)
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(e),
        };
        Ok((open()?, made))
    }

    /// Creates a new file `name` (fails if it exists), mode 0600.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        Ok(File::from(self.flushed_if_full(|| openat_nofollow(self.fd.as_raw_fd(), name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600))?))
    }

    /// [`create_new`](Self::create_new), also open for reading (a value read back before it is
    /// put in place).
    pub fn create_new_rw(&self, name: &str) -> io::Result<File> {
        Ok(File::from(self.flushed_if_full(|| openat_nofollow(self.fd.as_raw_fd(), name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600))?))
    }

    /// Allocates the first `len` bytes of `file`, a new file in this directory, before they
    /// are written (`posix_fallocate`), so that a file system without the space (or an owner
    /// without the quota) says so before the caller has read what it would write. `Err` only
    /// for lack of space. Where the file system cannot allocate ahead (`EOPNOTSUPP`: ext2 and
    /// ext3, NFS before 4.2, many FUSE file systems), glibc writes a byte into each block
    /// instead, which allocates them as well on a file system that writes in place. ZFS 2.0 and
    /// later only checks that the space is free (openzfs/zfs#10408), which is all this needs:
    /// copy-on-write could not keep an allocation anyway.
    pub fn reserve(&self, file: &File, len: u64) -> io::Result<()> {
        let Ok(len) = libc::off_t::try_from(len) else { return Ok(()) };
        if len == 0 {
            return Ok(());
        }
        let allocated = self.flushed_if_full(|| {
            // SAFETY: posix_fallocate on a descriptor `file` owns; it only allocates (or writes
            // zero bytes into a file this process just made, none of whose bytes are written yet).
            match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
                0 => Ok(()),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        });
        match allocated {
            Err(e) if no_space(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// [`create_new`](Self::create_new) with `O_DIRECT` (see `store::direct`). On `EINVAL` the
    /// file system refuses direct I/O — and may have created the file all the same.
    pub fn create_new_direct(&self, name: &str) -> io::Result<File> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_DIRECT;
        Ok(File::from(self.flushed_if_full(|| openat_nofollow(self.fd.as_raw_fd(), name, flags, 0o600))?))
    }

    /// Creates an unnamed regular file in this directory (`O_TMPFILE`), to be given its name
    /// by [`link_unnamed`](Self::link_unnamed) once it is complete: no temp name to insert into
    /// the directory and take out again, so a small object costs the file system less than temp
    /// file + rename (C loop, 20 000 1 KiB objects into existing directories: 0.52–0.58 s
    /// against 0.61–0.64 s of CPU). `None` where the file system or the kernel cannot (the
    /// caller then uses a named temp file). A file system that cannot is not remembered here:
    /// one process serves repositories on several, and the store that met it remembers it.
    pub fn create_unnamed(&self) -> io::Result<Option<File>> {
        if link_mode() == LinkMode::None {
            return Ok(None);
        }
        #[cfg(test)]
        if tmpfile_refused_in_test(self.fd.as_raw_fd()) {
            return Ok(None);
        }
        match self.flushed_if_full(|| openat_nofollow(self.fd.as_raw_fd(), ".", libc::O_TMPFILE | libc::O_WRONLY, 0o600)) {
            Ok(fd) => {
                #[cfg(test)]
                UNNAMED_CREATED.with(|c| c.set(c.get() + 1));
                Ok(Some(File::from(fd)))
            }
            // no O_TMPFILE here (EISDIR: a kernel that does not know the flag)
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives `file`, from [`create_unnamed`](Self::create_unnamed) on this directory, the name
    /// `name` here. Never replaces: `EEXIST` if the name is taken. `Ok(false)` if this kernel
    /// lets us name no unnamed file (nothing happened; the caller writes a named temp file).
    pub fn link_unnamed(&self, file: &File, name: &str) -> io::Result<bool> {
        self.flushed_if_full(|| self.link_unnamed_once(file, name))
    }

    /// [`link_unnamed`](Self::link_unnamed), one try.
    fn link_unnamed_once(&self, file: &File, name: &str) -> io::Result<bool> {
        let c = cstr(name)?;
        let mode = link_mode();
        if matches!(mode, LinkMode::Unknown | LinkMode::EmptyPath) {
            // SAFETY: valid descriptors and C strings.
            match cvt(unsafe { libc::linkat(file.as_raw_fd(), c"".as_ptr(), self.fd.as_raw_fd(), c.as_ptr(), libc::AT_EMPTY_PATH) }) {
                Ok(_) => {
                    set_link_mode(LinkMode::EmptyPath);
                    return Ok(true);
                }
                // before Linux 6.10 only CAP_DAC_READ_SEARCH may: try /proc
                Err(e) if mode == LinkMode::Unknown && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {}
                Err(e) => return Err(e),
            }
        }
        let proc = cstr(&format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        // SAFETY: valid descriptor and C strings.
        match cvt(unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), self.fd.as_raw_fd(), c.as_ptr(), libc::AT_SYMLINK_FOLLOW) }) {
            Ok(_) => {
                set_link_mode(LinkMode::Proc);
                Ok(true)
            }
            // no /proc either
            Err(e) if mode == LinkMode::Unknown && e.raw_os_error() == Some(libc::ENOENT) => {
                set_link_mode(LinkMode::None);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Renames `from` in this directory to `to` in `target` (replacing it).
    pub fn rename(&self, from: &str, target: &Dir, to: &str) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid directory fds and C strings.
        self.flushed_if_full(|| cvt(unsafe { libc::renameat(self.fd.as_raw_fd(), f.as_ptr(), target.fd.as_raw_fd(), t.as_ptr()) })).map(|_| ())
    }

    /// Like [`rename`](Self::rename), but fails with `EEXIST` instead of replacing `to`
    /// (atomically: `renameat2(RENAME_NOREPLACE)`). `EINVAL`: this file system cannot.
    pub fn rename_noreplace(&self, from: &str, target: &Dir, to: &str) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let (from_fd, to_fd) = (self.fd.as_raw_fd(), target.fd.as_raw_fd());
        // SAFETY: valid directory fds and C strings.
        self.flushed_if_full(|| cvt(unsafe { libc::renameat2(from_fd, f.as_ptr(), to_fd, t.as_ptr(), libc::RENAME_NOREPLACE) })).map(|_| ())
    }

    /// Removes the file (or symlink) `name`.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid directory fd and C string.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// `lstat` of an entry; `None` if it does not exist.
    pub fn stat(&self, name: &str) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        // SAFETY: st is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and stat buffer.
        match cvt(unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
            Ok(_) => Ok(Some(Stat {
                size: st.st_size as u64,
                is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                is_symlink: st.st_mode & libc::S_IFMT == libc::S_IFLNK,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All entries (but `.` and `..`), unsorted. Directory entries carry their type
    /// (`getdents64`'s `d_type`), so only regular files need an `lstat` (for their size).
    pub fn entries(&self) -> io::Result<Vec<(String, Stat)>> {
        self.entries_with(true)
    }

    /// [`entries`](Self::entries); without `sizes` regular files are reported with size 0 and
    /// cost no `lstat` (a walk that needs only names: a million objects, a million `lstat`s).
    pub fn entries_with(&self, sizes: bool) -> io::Result<Vec<(String, Stat)>> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid fd; rewinding lets a Dir be listed more than once.
        if self.listed.swap(true, std::sync::atomic::Ordering::Relaxed) && unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        DENTS.with_borrow_mut(|buf| self.read_entries(fd, buf, sizes))
    }

    /// [`entries_with`](Self::entries_with) with the thread's `getdents64` buffer.
    fn read_entries(&self, fd: RawFd, buf: &mut [u8], sizes: bool) -> io::Result<Vec<(String, Stat)>> {
        let mut out = Vec::new();
        loop {
            // SAFETY: buf is writable for its length; the kernel fills whole records.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                if reclen == 0 || off + reclen > n as usize {
                    return Err(io::Error::other("malformed directory entry"));
                }
                let d_type = buf[off + 18];
                let name_bytes = &buf[off + 19..off + reclen];
                let name_len = name_bytes.iter().position(|b| *b == 0).unwrap_or(name_bytes.len());
                off += reclen;
                let Ok(name) = std::str::from_utf8(&name_bytes[..name_len]) else { continue };
                if name == "." || name == ".." {
                    continue;
                }
                let st = match d_type {
                    libc::DT_DIR => Stat { size: 0, is_dir: true, is_symlink: false },
                    libc::DT_LNK => Stat { size: 0, is_dir: false, is_symlink: true },
                    libc::DT_REG if !sizes => Stat { size: 0, is_dir: false, is_symlink: false },
                    // regular files need their size; unknown types (some file systems) a full lstat
                    _ => match self.stat(name)? {
                        Some(st) => st,
                        None => continue, // removed meanwhile
                    },
                };
                out.push((name.to_string(), st));
            }
        }
        Ok(out)
    }

    /// When each of the subdirectories `names` last changed (an entry made, removed or renamed
    /// in it) and its inode number ([`Subdirectory`]), one `lstat` each, `None` for a name that
    /// is missing or not a directory: which leaf directories of `data/` changed since a chunk
    /// index was checked, and whether the directories above them are still the same (see
    /// `repository::trust`). The time is the later of the status-change and modification times:
    /// every change of an entry sets both, but only the modification time can be set back
    /// (`rsync -a`, `cp -a` and `tar` restore a directory's after filling it, which would hide
    /// what they removed there), and the kernel sets the status-change time to now when it is;
    /// the modification time for a file system that keeps no status-change time of its own.
    pub fn subdirectories(&self, names: &[&str]) -> io::Result<Vec<Option<Subdirectory>>> {
        names.iter().map(|name| Ok(self.child_status(name)?.map(|((_, ino), changed)| Subdirectory { changed, id: ino }))).collect()
    }

    /// Which directory this descriptor is (device, inode): a held descriptor keeps naming the
    /// directory it was opened on, wherever that is moved, so this tells whether it is still
    /// the one at its name (see [`Dir::child_identity`]).
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        // SAFETY: st is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and stat buffer.
        cvt(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Which directory the entry `name` is (device, inode), never following a symlink; `None`
    /// if it is missing or not a directory.
    pub fn child_identity(&self, name: &str) -> io::Result<Option<(u64, u64)>> {
        Ok(self.child_status(name)?.map(|(identity, _)| identity))
    }

    /// [`Dir::child_identity`], and when an entry was last made, removed or renamed in it (as
    /// [`Dir::subdirectories`] tells it).
    pub fn child_status(&self, name: &str) -> io::Result<Option<((u64, u64), std::time::SystemTime)>> {
        let c = cstr(name)?;
        // SAFETY: st is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and stat buffer.
        match cvt(unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
            Ok(_) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(Some(((st.st_dev, st.st_ino), changed(&st)))),
            Ok(_) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// fsync of the directory (makes entry changes durable).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: valid fd.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(|_| ())
    }

    /// `syncfs`: makes everything written to this directory's file system durable, in one call
    /// (errors of earlier writeback are reported, Linux 5.8+).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        // SAFETY: valid fd.
        cvt(unsafe { libc::syncfs(self.fd.as_raw_fd()) }).map(|_| ())
    }

    /// Removes the directory `name` and the directories below it that hold nothing but empty
    /// directories; a directory with a file anywhere below it stays, with that file. Never
    /// follows symlinks.
    pub fn remove_empty_tree(&self, name: &str) -> io::Result<()> {
        let sub = Dir::from_fd(openat_nofollow(self.fd.as_raw_fd(), name, libc::O_DIRECTORY | libc::O_RDONLY, 0)?);
        for (n, st) in sub.entries()? {
            if st.is_dir {
                sub.remove_empty_tree(&n)?;
            }
        }
        let c = cstr(name)?;
        // SAFETY: valid fd and C string. The kernel removes only an empty directory.
        match cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) }) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes `name` and, if it is a directory, everything below it, never following symlinks.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        match self.stat(name)? {
            None => Ok(()),
            Some(st) if st.is_dir => {
                let sub = Dir::from_fd(openat_nofollow(self.fd.as_raw_fd(), name, libc::O_DIRECTORY | libc::O_RDONLY, 0)?);
                for (n, _) in sub.entries()? {
                    sub.remove_tree(&n)?;
                }
                let c = cstr(name)?;
                // SAFETY: valid fd and C string.
                cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
            }
            Some(_) => self.unlink(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names short and long reach the kernel whole and NUL-terminated; a NUL inside is refused.
    #[test]
    fn names_become_c_strings_on_the_stack_or_the_heap() {
        // SAFETY: cstr's pointers are to NUL-terminated bytes that live as long as the CName.
        let text = |c: &CName| unsafe { std::ffi::CStr::from_ptr(c.as_ptr()) }.to_str().unwrap().to_string();
        let short = "data/ab/cd/".to_string() + &"ab".repeat(32);
        assert!(matches!(cstr(&short).unwrap(), CName::Short(_)));
        assert_eq!(text(&cstr(&short).unwrap()), short);
        let edge = "x".repeat(SHORT_NAME - 1);
        assert_eq!(text(&cstr(&edge).unwrap()), edge);
        let long = "y".repeat(SHORT_NAME);
        assert!(matches!(cstr(&long).unwrap(), CName::Long(_)));
        assert_eq!(text(&cstr(&long).unwrap()), long);
        assert_eq!(cstr("a\0b").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(text(&cstr("").unwrap()), "");
    }

    /// A call that finds no space (on the file system or in the quota) is tried once more (after
    /// `syncfs`), and only that: a second `ENOSPC` or `EDQUOT` is the answer, as is any other
    /// error at once.
    #[test]
    fn a_full_file_system_gets_one_more_try_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let root = Dir::open_root(dir.path()).unwrap();
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let full = || io::Error::from_raw_os_error(errno);
            let mut calls = 0;
            let r = root.flushed_if_full(|| {
                calls += 1;
                if calls == 1 { Err(full()) } else { Ok(calls) }
            });
            assert_eq!(r.unwrap(), 2);
            let mut calls = 0;
            let r: io::Result<()> = root.flushed_if_full(|| {
                calls += 1;
                Err(full())
            });
            assert_eq!((r.unwrap_err().raw_os_error(), calls), (Some(errno), 2));
        }
        let mut calls = 0;
        let r: io::Result<()> = root.flushed_if_full(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EIO))
        });
        assert_eq!((r.unwrap_err().raw_os_error(), calls), (Some(libc::EIO), 1));
    }

    /// An unnamed file gets its name only when linked, never takes a name already there, and
    /// leaves nothing behind when dropped unnamed.
    #[test]
    fn unnamed_files_appear_only_when_linked_and_never_over_a_name() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let root = Dir::open_root(dir.path()).unwrap();
        let Some(mut f) = root.create_unnamed().unwrap() else {
            eprintln!("no O_TMPFILE on this file system: nothing to test");
            return;
        };
        f.write_all(b"whole").unwrap();
        assert!(root.entries().unwrap().is_empty(), "an unnamed file is in no directory");
        assert!(root.link_unnamed(&f, "obj").unwrap());
        assert_eq!(std::fs::read(dir.path().join("obj")).unwrap(), b"whole");
        let mut g = root.create_unnamed().unwrap().unwrap();
        g.write_all(b"other").unwrap();
        assert_eq!(root.link_unnamed(&g, "obj").unwrap_err().raw_os_error(), Some(libc::EEXIST));
        drop(g);
        assert_eq!(std::fs::read(dir.path().join("obj")).unwrap(), b"whole");
        let names: Vec<_> = root.entries().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["obj"]);
    }

    #[test]
    fn symlinks_inside_are_refused_and_parents_created() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = Dir::open_root(dir.path()).unwrap();
        let mut created = Vec::new();
        root.open_or_make_dir("data/ab/cd", &mut created).unwrap();
        assert_eq!(created, ["", "data", "data/ab"]);
        created.clear();
        root.open_or_make_dir("data/ab/ef", &mut created).unwrap();
        assert_eq!(created, ["data/ab"], "only the missing tail is created");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("data/ab/evil")).unwrap();
        let e = root.open_file("data/ab/evil/secret").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(root.open_file("../etc/passwd").is_err());
        assert!(root.dir("data/ab/evil").is_err());
        // the fallback walk refuses the same
        assert!(walk(root.fd.as_raw_fd(), "data/ab/evil/secret", libc::O_RDONLY, 0).is_err());
        assert!(walk(root.fd.as_raw_fd(), "data/ab", libc::O_DIRECTORY | libc::O_RDONLY, 0).is_ok());
        let st = root.dir("data/ab").unwrap().stat("evil").unwrap().unwrap();
        assert!(st.is_symlink && !st.is_dir);
        // remove_tree deletes the link, not what it points to
        root.remove_tree("data").unwrap();
        assert!(outside.path().join("secret").exists());
        assert!(root.entries().unwrap().is_empty());
    }
}
