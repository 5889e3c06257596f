//! The chunk-index cache file (`cache/chunks.<xxh64 hex>`) in borghash's `HashTableNT` v1 format.
//!
//! Clients merge every `cache/chunks.*` they find into their idea of which chunks exist, so a
//! full `check` writes a fresh one listing exactly the objects present. Layout:
//! `b"BORGHASH"`, u32 version 1, u32 metadata length (little endian), the metadata as Python's
//! `json.dumps` writes it, then per key 32 key bytes + flags u32 + size u32. The file's name is
//! the xxh64 (seed 3) of its bytes, which the client verifies before trusting it.

use super::trust;
use crate::store::{self, ReadAt};

/// Seed of the xxh64 that names a chunk-index file (`CHUNKINDEX_HASH_SEED`).
pub const HASH_SEED: u64 = 3;

/// The capacity borghash would have grown to holding `used` keys: it starts at 1000 and
/// doubles whenever more than half of it is used.
fn capacity_for(used: usize) -> usize {
    let mut capacity = 1000usize;
    while used > capacity / 2 {
        capacity *= 2;
    }
    capacity
}

/// The header (magic, version, metadata) of an index of `used` entries.
pub fn header(used: usize) -> Vec<u8> {
    let meta = format!(
        "{{\"key_size\": 32, \"value_size\": 8, \"byte_order\": \"little\", \"value_type_name\": \"ChunkIndexEntry\", \
\"value_type_fields\": [\"flags\", \"size\"], \"value_format_name\": \"ChunkIndexEntryFormatT\", \
\"value_format_fields\": [\"flags\", \"size\"], \"value_format\": [\"I\", \"I\"], \"capacity\": {}, \"used\": {}}}",
        capacity_for(used),
        used
    );
    let mut out = Vec::with_capacity(16 + meta.len());
    out.extend_from_slice(b"BORGHASH");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta.as_bytes());
    out
}

/// One entry: the key, then flags and size 0 (borg caches keys only).
pub fn entry(id: &[u8; 32]) -> [u8; ENTRY_SIZE] {
    let mut e = [0u8; ENTRY_SIZE];
    e[..32].copy_from_slice(id);
    e
}

/// Bytes per entry: 32 key bytes, u32 flags, u32 size.
pub const ENTRY_SIZE: usize = 40;

/// Serialises a chunk index holding `ids` (flags and size 0, as borg writes its cache).
pub fn serialize<'a>(ids: impl ExactSizeIterator<Item = &'a [u8; 32]>) -> Vec<u8> {
    let mut out = header(ids.len());
    for id in ids {
        out.extend_from_slice(&entry(id));
    }
    out
}

/// Why an uploaded chunk index is refused.
#[derive(Debug)]
pub enum Invalid {
    /// Not the borghash v1 format with 32-byte keys and 8-byte values.
    Format(String),
    /// The name does not carry the xxh64 (seed 3) of the contents.
    Name {
        /// The name the contents call for.
        expected: String,
    },
    /// It could not be read back from where it waits.
    Unreadable(store::Error),
}

impl From<store::Error> for Invalid {
    fn from(e: store::Error) -> Invalid {
        Invalid::Unreadable(e)
    }
}

/// Where a checked index keeps its entries: `count` of [`ENTRY_SIZE`] bytes from `entries_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of the first entry, past the header.
    pub entries_at: u64,
    /// How many entries (ids) the index holds.
    pub count: u64,
}

/// How much of an index is read at a time: an upload is checked in pieces of this size, never
/// held whole (a large repository's index is hundreds of MB). A multiple of [`ENTRY_SIZE`].
const PIECE: usize = ENTRY_SIZE * 26_214;

/// The longest metadata accepted (Python's is ~300 bytes).
const MAX_META: u64 = 64 * 1024;

/// Fills `buf` from `offset` (short only at the end of `data`); how many bytes it got.
fn read_full(data: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<usize, store::Error> {
    let mut got = 0;
    while got < buf.len() {
        let n = data.read_at(offset + got as u64, &mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Checks a serialised index's format (header, metadata, entry count against its length).
fn layout(data: &dyn ReadAt) -> Result<Layout, Invalid> {
    let bad = |why: &str| Invalid::Format(why.to_string());
    let mut head = [0u8; 16];
    if read_full(data, 0, &mut head)? < 16 || &head[..8] != b"BORGHASH" {
        return Err(bad("no BORGHASH header"));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != 1 {
        return Err(Invalid::Format(format!("unsupported version {version}")));
    }
    let meta_len = u64::from(u32::from_le_bytes([head[12], head[13], head[14], head[15]]));
    if meta_len > MAX_META || 16 + meta_len > data.size() {
        return Err(bad("metadata truncated"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    read_full(data, 16, &mut meta)?;
    let meta: serde_json::Value = serde_json::from_slice(&meta).map_err(|e| Invalid::Format(format!("metadata: {e}")))?;
    if meta["key_size"] != 32 || meta["value_size"] != 8 {
        return Err(bad("not a chunk index (key size 32, value size 8)"));
    }
    let count = meta["used"].as_u64().ok_or_else(|| bad("no entry count"))?;
    let entries_at = 16 + meta_len;
    let present = data.size() - entries_at;
    if count.checked_mul(ENTRY_SIZE as u64) != Some(present) {
        return Err(Invalid::Format(format!("{count} entries announced, {present} bytes of entries present")));
    }
    Ok(Layout { entries_at, count })
}

/// How many entries a stored index announces (checking its format, not its name): what a
/// cached index without a note (see `trust`) counts.
pub fn entry_count(data: &dyn ReadAt) -> Result<u64, Invalid> {
    Ok(layout(data)?.count)
}

/// Checks an uploaded `cache/chunks.<hash>`: its format, and that its name is its hash; reads
/// it in pieces, wherever it is, and sums its ids up on the way (see [`trust::Digest`]).
pub fn validate_upload(name: &str, data: &dyn ReadAt) -> Result<(Layout, trust::Digest), Invalid> {
    let layout = layout(data)?;
    let mut hasher = xxhash_rust::xxh64::Xxh64::new(HASH_SEED);
    let mut digest = trust::Digest::default();
    let mut head = vec![0u8; layout.entries_at as usize];
    read_full(data, 0, &mut head)?;
    hasher.update(&head);
    // the entries in pieces of whole entries
    let mut buf = vec![0u8; PIECE.min((data.size() - layout.entries_at) as usize)];
    let mut at = layout.entries_at;
    while at < data.size() {
        let n = read_full(data, at, &mut buf)?;
        if n == 0 || n % ENTRY_SIZE != 0 {
            return Err(Invalid::Format("shorter than its size".into()));
        }
        hasher.update(&buf[..n]);
        buf[..n].chunks_exact(ENTRY_SIZE).filter_map(|e| e.first_chunk::<32>()).for_each(|id| digest.add(id));
        at += n as u64;
    }
    let expected = format!("cache/chunks.{:016x}", hasher.digest());
    if name != expected {
        return Err(Invalid::Name { expected });
    }
    Ok((layout, digest))
}

/// Reads the entries of a checked index ([`validate_upload`]) a piece at a time.
pub struct Entries<'a> {
    data: &'a dyn ReadAt,
    at: u64,
    end: u64,
    buf: Vec<u8>,
}

impl<'a> Entries<'a> {
    /// From the first entry.
    pub fn new(data: &'a dyn ReadAt, layout: Layout) -> Entries<'a> {
        let end = layout.entries_at + layout.count * ENTRY_SIZE as u64;
        Entries { data, at: layout.entries_at, end, buf: Vec::new() }
    }

    /// The next piece's keys, or `None` at the end.
    pub fn next_piece(&mut self) -> Result<Option<impl Iterator<Item = &[u8; 32]>>, store::Error> {
        let want = (self.end - self.at).min(PIECE as u64) as usize;
        if want == 0 {
            return Ok(None);
        }
        self.buf.resize(want, 0);
        let got = read_full(self.data, self.at, &mut self.buf)?;
        if got < want {
            return Err(store::Error::Io {
                op: "read back",
                path: "cache/chunks".into(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the index shrank while it was read"),
            });
        }
        self.at += want as u64;
        Ok(Some(self.buf.chunks_exact(ENTRY_SIZE).filter_map(|e| e.first_chunk::<32>())))
    }
}

/// The store name of a serialised index: `cache/chunks.<xxh64(seed 3) hex>`.
pub fn cache_name(data: &[u8]) -> String {
    format!("cache/chunks.{:016x}", xxhash_rust::xxh64::xxh64(data, HASH_SEED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_index_is_byte_identical_to_python() {
        // produced by borg 2.0.0b21: ChunkIndex().write(f)
        let data = serialize(std::iter::empty());
        let expected = b"BORGHASH\x01\x00\x00\x00\x19\x01\x00\x00{\"key_size\": 32, \"value_size\": 8, \"byte_order\": \"little\", \"value_type_name\": \"ChunkIndexEntry\", \"value_type_fields\": [\"flags\", \"size\"], \"value_format_name\": \"ChunkIndexEntryFormatT\", \"value_format_fields\": [\"flags\", \"size\"], \"value_format\": [\"I\", \"I\"], \"capacity\": 1000, \"used\": 0}";
        assert_eq!(data, expected.to_vec());
        assert_eq!(cache_name(&data), "cache/chunks.a283591f50db914c");
    }

    #[test]
    fn uploads_are_parsed_and_checked() {
        let ids = [[7u8; 32], [9u8; 32]];
        let data = serialize(ids.iter());
        let (layout, digest) = validate_upload(&cache_name(&data), &data).unwrap();
        assert_eq!(keys(&data, layout), ids.to_vec());
        let mut expected = trust::Digest::default();
        ids.iter().for_each(|id| expected.add(id));
        assert_eq!(digest, expected);
        assert!(matches!(validate_upload("cache/chunks.0000000000000000", &data), Err(Invalid::Name { .. })));
        let mut short = data.clone();
        short.pop();
        assert!(matches!(validate_upload(&cache_name(&short), &short), Err(Invalid::Format(_))));
        let junk = b"not an index".to_vec();
        assert!(matches!(validate_upload(&cache_name(&junk), &junk), Err(Invalid::Format(_))));
    }

    fn keys(data: &Vec<u8>, layout: Layout) -> Vec<[u8; 32]> {
        let mut entries = Entries::new(data, layout);
        let mut out = Vec::new();
        while let Some(piece) = entries.next_piece().unwrap() {
            out.extend(piece.copied());
        }
        out
    }

    /// An index larger than a piece is hashed and read in pieces, every entry once, in order;
    /// its hash is the hash of the whole.
    #[test]
    fn a_long_index_is_read_in_pieces() {
        let ids: Vec<[u8; 32]> = (0..70_000u32).map(|i| std::array::from_fn(|k| (i >> (8 * (k % 3))) as u8 ^ k as u8)).collect();
        let data = serialize(ids.iter());
        assert!(data.len() > 2 * PIECE);
        let (layout, digest) = validate_upload(&cache_name(&data), &data).unwrap();
        assert_eq!(layout.count, 70_000);
        let mut expected = trust::Digest::default();
        ids.iter().for_each(|id| expected.add(id));
        assert_eq!(digest, expected, "every id summed once, across pieces");
        assert_eq!(keys(&data, layout), ids);
        let mut flipped = data.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(validate_upload(&cache_name(&data), &flipped), Err(Invalid::Name { .. })));
    }

    #[test]
    fn capacity_grows_like_borghash() {
        for (used, cap) in [(0, 1000), (500, 1000), (501, 2000), (1001, 4000), (5000, 16000), (100000, 256000)] {
            assert_eq!(capacity_for(used), cap, "{used}");
        }
        let ids = [[7u8; 32], [9u8; 32]];
        let data = serialize(ids.iter());
        assert_eq!(data.len(), 16 + 0x119 + 80);
    }
}
