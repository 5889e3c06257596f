//! The file system's own cost of a `borg create` session, for the `e2e` figures: the objects a
//! server stored in that session, received from a pipe (fed by another thread, as the client
//! feeds a server) and put in place the cheapest atomic ways we know — small ones as unnamed files
//! linked into place, large ones written around the page cache (`O_DIRECT`) to a temp file renamed
//! into place. That is what any server keeping borg's layout must do for the session, with no
//! RPC, no threads of its own and no waiting for a client: its CPU is the floor of a server's
//! `create` CPU, measured in the same run.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use super::{making_dir, no_unnamed_files, put_renamed, put_unnamed, temp_path, Res};

/// Objects at least this large are written around the page cache: borgd's own threshold (a
/// backup's large chunks; borg's chunker's minimum).
const DIRECT_FROM: usize = borgd::store::DIRECT_FROM as usize;

/// Alignment of direct writes (memory, offset, length).
const ALIGN: usize = 4096;

/// One object as stored: its name in the store (`data/xx/yy/<id>`) and its bytes.
pub struct StoredObject {
    name: String,
    data: Vec<u8>,
}

/// Reads every object under `repo/data` (a repository a server has just filled), in a fixed
/// pseudo-random order: ids arrive at a server in no particular order, and a sorted replay would
/// find its directories warmer than a server does.
pub fn load(repo: &Path) -> Res<Vec<StoredObject>> {
    let mut out = Vec::new();
    let data = repo.join("data");
    let entries = |dir: &Path| -> Res<Vec<std::fs::DirEntry>> {
        let mut v: Vec<_> = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.collect::<Result<_, _>>().map_err(|e| format!("{}: {e}", dir.display()))?;
        v.sort_by_key(|e| e.file_name());
        Ok(v)
    };
    for top in entries(&data)? {
        for leaf in entries(&top.path())? {
            for file in entries(&leaf.path())? {
                let path = file.path();
                let rel = path.strip_prefix(repo).map_err(|e| e.to_string())?.to_str().ok_or("object name not UTF-8")?.to_string();
                if rel.len() != "data/xx/yy/".len() + 64 {
                    return Err(format!("{}: not an object of a borg 2 repository", path.display()));
                }
                out.push(StoredObject { name: rel, data: std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))? });
            }
        }
    }
    // Fisher–Yates with a fixed xorshift: the same order in every repetition
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..out.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.swap(i, (x % (i as u64 + 1)) as usize);
    }
    Ok(out)
}

/// Total bytes of `objects`.
pub fn bytes(objects: &[StoredObject]) -> u64 {
    objects.iter().map(|o| o.data.len() as u64).sum()
}

/// CPU time of the calling thread (the feeding thread's is not the server's work).
fn thread_cpu() -> f64 {
    // SAFETY: timespec is plain data filled by the kernel.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// A buffer of at least `len` bytes starting on an [`ALIGN`] boundary, touched once (so the
/// timed loop does not pay for its first touch).
struct Aligned {
    buf: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![1u8; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Aligned { buf, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[self.start..self.start + len]
    }
}

/// Puts `data` in place as `name` through a temp file written with `O_DIRECT` (whole blocks;
/// the tail after switching it off), renamed into place. Falls back to an ordinary write where
/// the file system refuses `O_DIRECT`.
fn put_direct(name: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(name);
    let open = |direct: bool| std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(if direct { libc::O_DIRECT } else { 0 }).open(&tmp);
    let (mut f, direct) = match open(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let _ = std::fs::remove_file(&tmp);
            (open(false)?, false)
        }
        other => (other?, true),
    };
    let whole = if direct { data.len() & !(ALIGN - 1) } else { data.len() };
    f.write_all(&data[..whole])?;
    if whole < data.len() {
        // SAFETY: fcntl on a descriptor we own; clearing O_DIRECT for the partial last block.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
        f.write_all(&data[whole..])?;
    }
    drop(f);
    std::fs::rename(&tmp, name)
}

/// Puts one received object in place, creating its directories on the first miss.
fn place(dst: &Path, name: &str, data: &[u8]) -> Res<()> {
    let (leaf, _) = name.rsplit_once('/').ok_or("object name without a directory")?;
    let dir = dst.join(leaf);
    let target = dst.join(name);
    let put = || {
        if data.len() >= DIRECT_FROM {
            return put_direct(&target, data);
        }
        match put_unnamed(&dir, &target, data) {
            // no unnamed files here: a named temp file then
            Err(e) if no_unnamed_files(&e) => put_renamed(&target, data),
            other => other,
        }
    };
    making_dir(&dir, put).map_err(|e| format!("{name}: {e}"))
}

/// Receives `objects` from a pipe fed by another thread and puts each into a fresh tree below
/// `dst` (see the module docs). Returns (CPU seconds of the receiving thread, wall seconds).
pub fn replay(objects: &[StoredObject], dst: &Path) -> Res<(f64, f64)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: two fresh descriptors nobody else owns.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // as borgd enlarges its stdin pipe
    borgd::server::enlarge_pipe(&rx);
    let mut rx = std::fs::File::from(rx);
    let mut tx = std::fs::File::from(tx);
    std::fs::create_dir_all(dst.join("data")).map_err(|e| format!("{}: {e}", dst.display()))?;
    let largest = objects.iter().map(|o| o.data.len()).max().unwrap_or(0);
    let mut big = Aligned::new(largest);
    let mut small = vec![1u8; DIRECT_FROM];
    std::thread::scope(|s| {
        let feeder = s.spawn(move || -> std::io::Result<()> {
            for o in objects {
                tx.write_all(&o.data)?;
            }
            Ok(())
        });
        let cpu0 = thread_cpu();
        let t = Instant::now();
        for o in objects {
            let len = o.data.len();
            let buf = if len >= DIRECT_FROM { big.get(len) } else { &mut small[..len] };
            rx.read_exact(buf).map_err(|e| format!("receive {}: {e}", o.name))?;
            place(dst, &o.name, buf)?;
        }
        let measured = (thread_cpu() - cpu0, t.elapsed().as_secs_f64());
        feeder.join().map_err(|_| "the feeding thread panicked".to_string())?.map_err(|e| format!("feed: {e}"))?;
        Ok(measured)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_objects_arrive_whole_in_the_same_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        // small ones, one exactly at the direct threshold, one large with a partial last block
        let sizes = [0usize, 1, 1024, 40_000, DIRECT_FROM, 3 * DIRECT_FROM + 123];
        for (i, &n) in sizes.iter().enumerate() {
            let id = format!("{:02x}{:062x}", i * 37, i);
            let dir = src.join("data").join(&id[0..2]).join(&id[2..4]);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(&id), (0..n).map(|k| (k * 7 + i) as u8).collect::<Vec<u8>>()).unwrap();
        }
        let objects = load(&src).unwrap();
        assert_eq!(objects.len(), sizes.len());
        assert_eq!(bytes(&objects), sizes.iter().map(|&n| n as u64).sum::<u64>());
        let dst = tmp.path().join("dst");
        let (cpu, wall) = replay(&objects, &dst).unwrap();
        assert!(cpu >= 0.0 && wall > 0.0);
        for o in &objects {
            assert_eq!(std::fs::read(dst.join(&o.name)).unwrap(), std::fs::read(src.join(&o.name)).unwrap(), "{}", o.name);
        }
        let leftovers: Vec<_> = walk(&dst).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_tree_that_is_not_a_borg_2_repository_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("data/00/00")).unwrap();
        std::fs::write(tmp.path().join("data/00/00/short"), b"x").unwrap();
        assert!(load(tmp.path()).err().unwrap_or_default().contains("not an object"));
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
