//! Records written to an unnamed temp file as they are found, for results that grow with the
//! repository: `check`'s fresh chunk index (40 bytes an object) and long list answers. Memory
//! stays bounded however many objects there are; the file goes with its last descriptor.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;

/// The error of a spool used to `purpose` (e.g. "spool the answer in"): it names the temp
/// directory, where the spool lives.
pub fn error(purpose: &'static str, source: io::Error) -> crate::store::Error {
    crate::store::Error::Io { op: purpose, path: std::env::temp_dir(), source }
}

/// A temp file of records, written through a buffer.
pub struct Spool {
    w: BufWriter<File>,
    count: usize,
    len: u64,
}

impl Spool {
    /// An empty spool in the system's temp directory: an unnamed file (`O_TMPFILE`), or where
    /// the file system cannot make one, a named file unlinked at once.
    pub fn new() -> io::Result<Spool> {
        let dir = std::env::temp_dir();
        let file = match OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).mode(0o600).open(&dir) {
            Ok(f) => f,
            Err(_) => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                let path = dir.join(format!("borgd-spool-{}-{nanos}", std::process::id()));
                let f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
                let _ = std::fs::remove_file(&path);
                f
            }
        };
        Ok(Spool { w: BufWriter::with_capacity(64 * 1024, file), count: 0, len: 0 })
    }

    /// Appends one record.
    pub fn push(&mut self, record: &[u8]) -> io::Result<()> {
        self.w.write_all(record)?;
        self.count += 1;
        self.len += record.len() as u64;
        Ok(())
    }

    /// The file (its position wherever writing left it), how many records and bytes it holds.
    pub fn finish(self) -> io::Result<(File, usize, u64)> {
        let (count, len) = (self.count, self.len);
        let file = self.w.into_inner().map_err(|e| e.into_error())?;
        Ok((file, count, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    #[test]
    fn records_come_back_in_order_and_are_counted() {
        let mut s = Spool::new().unwrap();
        for i in 0..100_000u32 {
            s.push(&i.to_le_bytes()).unwrap();
        }
        let (mut f, count, len) = s.finish().unwrap();
        assert_eq!((count, len), (100_000, 400_000));
        let mut back = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 400_000);
        assert!(back.chunks_exact(4).enumerate().all(|(i, c)| c == (i as u32).to_le_bytes()));
    }
}
