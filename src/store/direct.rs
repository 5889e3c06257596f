//! Large objects are written around the page cache (`O_DIRECT`).
//!
//! Most of a backup's bytes arrive as borg's large chunks (512 KiB – 8 MiB), written once and
//! rarely read again soon. Written the usual way, each byte is copied into the page cache, whose
//! pages must be allocated, tracked dirty, written back and later reclaimed; on the benchmark
//! machine that costs 0.5–0.7 s of CPU per 200 MB, more than everything else a backup session
//! does. Written with `O_DIRECT` from an aligned buffer, the disk reads the bytes straight from
//! our buffer: 0.10–0.13 s for the same 200 MB, and faster in wall time too (docs/BENCHMARKS.md).
//! Two more things come with it: a backup no longer evicts the host's useful cache (thousands of
//! clients' backups pass through a backup host), and the data is already on the disk when the
//! barrier comes, so the barrier has little left to do.
//!
//! Durability is unchanged: direct writes can still sit in the disk's volatile cache and the
//! file's size and extents are journal metadata, so the barrier (`syncfs`, or `fsync` in
//! `--fsync=always` mode) is still what makes an object durable.
//!
//! `O_DIRECT` needs memory, file offset and length aligned to the device's block size (4 KiB is
//! enough for 512-byte and 4 KiB sectors). Whole blocks go directly; the last partial block is
//! written the usual way after switching the descriptor back. A file system that refuses
//! `O_DIRECT` (at open or at the first write) is remembered and written the usual way from then
//! on: direct I/O is an optimisation, never a requirement.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

/// Objects at least this large are written directly: borg's chunks of large files (its
/// chunker's minimum is 512 KiB). Smaller ones (metadata, small files) stay cached: they are
/// read back soon (archives, indexes) and their writes are too small to gain.
pub const DIRECT_FROM: u64 = 512 * 1024;

/// The alignment direct writes keep for memory, file offsets and lengths.
const ALIGN: usize = 4096;

/// Bytes per direct write (a multiple of [`ALIGN`]): the size of the pipe a client writes into
/// (borgd makes it 1 MiB), so one read can take all it holds. Each write waits for the disk; with
/// fewer than with 512 KiB pieces (~590 instead of ~750 waits per `create` session), a session
/// cost ~5% less CPU (paired medians 0.95–0.955 over 48 replays at the client's pace); 2 MiB
/// pieces saved no more (docs/BENCHMARKS.md).
const CHUNK: usize = 1024 * 1024;

/// Whether this file system takes direct writes, as far as we know yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Support {
    Unknown,
    Works,
    Refused,
    /// Switched off by the operator.
    Off,
}

/// Per-backend state for direct writes: what the file system said, and the aligned buffer
/// (allocated at the first large object, then kept: one per session, [`CHUNK`] bytes).
#[derive(Debug)]
pub struct DirectWriter {
    support: Support,
    buf: Vec<u8>,
}

impl Default for DirectWriter {
    fn default() -> Self {
        DirectWriter { support: Support::Unknown, buf: Vec::new() }
    }
}

/// Why writing a value failed: the operation ("receive" for the client's stream, "write" for
/// the disk) and the error.
pub type Failure = (&'static str, io::Error);

impl DirectWriter {
    /// Whether a value of `len` bytes should be opened with `O_DIRECT`.
    pub fn wants(&self, len: u64) -> bool {
        len >= DIRECT_FROM && matches!(self.support, Support::Unknown | Support::Works)
    }

    /// Opening with `O_DIRECT` failed with `EINVAL`: this file system does not take it.
    pub fn refused_at_open(&mut self) {
        self.support = Support::Refused;
    }

    /// `--no-direct-io`: every object goes through the page cache.
    pub fn disable(&mut self) {
        self.support = Support::Off;
    }

    /// Writes exactly `len` bytes from `src` to `f`, which was opened with `O_DIRECT`.
    pub fn write(&mut self, f: &mut File, src: &mut dyn Read, len: u64) -> Result<(), Failure> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK + ALIGN];
        }
        let start = self.buf.as_ptr().align_offset(ALIGN);
        let buf = &mut self.buf[start..start + CHUNK];
        let mut direct = true;
        let mut refused = false;
        let mut left = len;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let mut n = 0;
            while n < want {
                match src.read(&mut buf[n..want]) {
                    Ok(0) => return Err(("receive", io::Error::new(io::ErrorKind::UnexpectedEof, "the value ended early"))),
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(("receive", e)),
                }
            }
            left -= n as u64;
            // whole blocks directly; a partial last block (only ever at the end: CHUNK is
            // aligned) the usual way
            let whole = n & !(ALIGN - 1);
            if whole > 0 {
                refused |= write_all(f, &buf[..whole], &mut direct).map_err(|e| ("write", e))?;
            }
            if whole < n {
                if direct {
                    clear_direct(f).map_err(|e| ("write", e))?;
                    direct = false;
                }
                f.write_all(&buf[whole..n]).map_err(|e| ("write", e))?;
            }
        }
        self.support = if refused { Support::Refused } else { Support::Works };
        Ok(())
    }
}

/// `write_all` that falls back to ordinary writes if the kernel refuses a direct one (`EINVAL`:
/// alignment this device does not accept, or a file system that only checks at write time).
/// Returns whether it had to. A direct write takes its blocks at once, as a create does, so on
/// XFS it can find no space while space is only promised to data not yet written back: after
/// `ENOSPC` (or `EDQUOT`) it writes that back (`syncfs`) and tries once more (see
/// `Dir::flushed_if_full`).
fn write_all(f: &mut File, mut data: &[u8], direct: &mut bool) -> io::Result<bool> {
    let mut refused = false;
    let mut flushed = false;
    while !data.is_empty() {
        match f.write(data) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if !flushed && super::beneath::no_space(&e) => {
                flushed = true;
                // SAFETY: syncfs on a descriptor we own; the retry's answer is the one that counts.
                unsafe { libc::syncfs(f.as_raw_fd()) };
            }
            Err(e) if *direct && e.raw_os_error() == Some(libc::EINVAL) => {
                clear_direct(f)?;
                *direct = false;
                refused = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Switches `O_DIRECT` off for an open descriptor (for a last partial block, or after a refusal).
fn clear_direct(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::os::unix::fs::OpenOptionsExt;

    fn direct_file(dir: &std::path::Path, name: &str) -> Option<File> {
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).custom_flags(libc::O_DIRECT).open(dir.join(name)).ok()
    }

    /// Every length class: below one block, whole blocks, a partial last block, several chunks.
    #[test]
    fn values_of_any_length_arrive_whole() {
        let dir = tempfile::tempdir_in(std::env::var_os("BORGD_TEST_DIR").unwrap_or_else(|| "/var/tmp".into())).expect("temp dir");
        let mut w = DirectWriter::default();
        for (i, len) in [1usize, 4095, 4096, 4097, CHUNK, CHUNK + 1, 3 * CHUNK + 12345].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
            let Some(mut f) = direct_file(dir.path(), &format!("f{i}")) else {
                eprintln!("this file system refuses O_DIRECT at open; nothing to test here");
                return;
            };
            // a reader that hands out odd-sized pieces, as a pipe does
            struct Trickle<'a>(&'a [u8]);
            impl Read for Trickle<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    let n = b.len().min(self.0.len()).min(70_001);
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            w.write(&mut f, &mut Trickle(&data), len as u64).expect("write");
            let mut back = Vec::new();
            f.rewind().expect("seek");
            clear_direct(&f).expect("fcntl");
            f.read_to_end(&mut back).expect("read");
            assert!(back == data, "length {len}: content differs");
        }
        assert_eq!(w.support, Support::Works, "this file system took O_DIRECT at open but refused the writes");
    }

    /// A device that is always full (`/dev/full`) gets one more try after a write-back, then
    /// its `ENOSPC` is the answer (no endless retrying).
    #[test]
    fn a_write_that_finds_no_space_is_tried_once_more_then_fails() {
        let mut full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        let mut direct = false;
        let e = write_all(&mut full, &[7u8; 4096], &mut direct).expect_err("no space on /dev/full");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_stream_that_ends_early_is_a_receive_error() {
        let dir = tempfile::tempdir_in(std::env::var_os("BORGD_TEST_DIR").unwrap_or_else(|| "/var/tmp".into())).expect("temp dir");
        let Some(mut f) = direct_file(dir.path(), "short") else { return };
        let mut w = DirectWriter::default();
        let data = vec![1u8; 10_000];
        let (op, e) = w.write(&mut f, &mut &data[..], 20_000).expect_err("short stream");
        assert_eq!(op, "receive");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
