//! A client's stream with its pace: when each piece of it arrived.
//!
//! A recorded `borg create` stream fed to a server as fast as it reads costs the server 15–30%
//! less CPU than the live session did, with the same requests (docs/BENCHMARKS.md, "A live
//! session's waits"): live, the server idles between the client's writes, and on the benchmark
//! machine every idle period makes the work after it dearer. [`tap`] records, besides the bytes,
//! when each read of them returned and how much it got; [`feed_paced`] writes the same pieces at
//! the same moments. A server fed that way idles as it did live, without the client's CPU, its
//! file reading and its noise beside it — the live cost, repeatably.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One piece of a stream: when it arrived (from the first piece) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub at: Duration,
    pub len: usize,
}

/// Where the pace of the stream in `stream` is kept: beside it, `.pace` appended.
pub fn pace_path(stream: &Path) -> PathBuf {
    let mut p = stream.as_os_str().to_owned();
    p.push(".pace");
    PathBuf::from(p)
}

/// Copies `input` to `output` until the end of input, appending every byte to `stream` and one
/// line per read (`microseconds-since-the-first-read length`) to its pace file. Reads take what
/// the writer has written (up to 1 MiB), so each piece is about one write of the client's.
pub fn tap(mut input: impl Read, mut output: impl Write, stream: &Path) -> Result<(), String> {
    let open = |p: &Path| std::fs::File::create(p).map(std::io::BufWriter::new).map_err(|e| format!("{}: {e}", p.display()));
    let (mut data, mut pace) = (open(stream)?, open(&pace_path(stream))?);
    let mut buf = vec![0u8; 1 << 20];
    let mut first: Option<Instant> = None;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("stdin: {e}")),
        };
        let at = first.get_or_insert_with(Instant::now).elapsed();
        output.write_all(&buf[..n]).map_err(|e| format!("stdout: {e}"))?;
        data.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", stream.display()))?;
        writeln!(pace, "{} {n}", at.as_micros()).map_err(|e| format!("{}: {e}", stream.display()))?;
    }
    output.flush().map_err(|e| format!("stdout: {e}"))?;
    data.flush().and_then(|()| pace.flush()).map_err(|e| format!("{}: {e}", stream.display()))
}

/// The pace recorded beside `stream` (see [`tap`]), checked against the stream's length.
pub fn load(stream: &Path, len: usize) -> Result<Vec<Piece>, String> {
    let path = pace_path(stream);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pieces = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || format!("{}: line {}: not `MICROSECONDS LENGTH`: {line:?}", path.display(), i + 1);
        let (at, n) = line.split_once(' ').ok_or_else(bad)?;
        let at = Duration::from_micros(at.parse().map_err(|_| bad())?);
        pieces.push(Piece { at, len: n.parse().map_err(|_| bad())? });
    }
    let total: usize = pieces.iter().map(|p| p.len).sum();
    if total != len {
        return Err(format!("{}: the pieces add up to {total} bytes, the stream has {len}", path.display()));
    }
    Ok(pieces)
}

/// `data` (a client's stream) as one piece per request, each `gap` after the one before: a client
/// that sends a message, then works for a while (docs/BENCHMARKS.md, "A live session's waits").
/// Refuses a stream that does not split into whole msgpack messages.
pub fn per_message(data: &[u8], gap: Duration) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = borgd::rpc::msgpack::check(&data[pos..], data.len() - pos).map_err(|e| format!("byte {pos}: not a whole msgpack message: {e}"))?;
        let at = gap.saturating_mul(u32::try_from(pieces.len()).unwrap_or(u32::MAX));
        pieces.push(Piece { at, len });
        pos += len;
    }
    Ok(pieces)
}

/// Writes `data` to `out` in `pieces`, each at its moment (counted from now); a piece that is
/// late (the reader was slower than the client had been) goes at once.
pub fn feed_paced(data: &[u8], pieces: &[Piece], out: &mut impl Write) -> std::io::Result<()> {
    let start = Instant::now();
    let mut pos = 0;
    for p in pieces {
        if let Some(wait) = p.at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        out.write_all(&data[pos..pos + p.len])?;
        pos += p.len;
    }
    Ok(())
}
