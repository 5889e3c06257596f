//! The chunk-index cache file (`cache/chunks.<xxh64 hex>`) in borghash's `HashTableNT` v1 format.
//!
//! Clients merge every `cache/chunks.*` they find into their idea of which chunks exist, so a
//! full `check` writes a fresh one listing exactly the objects present. Layout:
//! `b"BORGHASH"`, u32 version 1, u32 metadata length (little endian), the metadata as Python's
//! `json.dumps` writes it, then per key 32 key bytes + flags u32 + size u32. The file's name is
//! the xxh64 (seed 3) of its bytes, which the client verifies before trusting it.

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
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not the borghash v1 format with 32-byte keys and 8-byte values.
    Format(String),
    /// The name does not carry the xxh64 (seed 3) of the contents.
    Name { expected: String },
}

/// The keys of a serialised chunk index, after checking its format.
pub fn parse_keys(data: &[u8]) -> Result<Vec<[u8; 32]>, Invalid> {
    let bad = |why: &str| Invalid::Format(why.to_string());
    if data.len() < 16 || &data[..8] != b"BORGHASH" {
        return Err(bad("no BORGHASH header"));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != 1 {
        return Err(Invalid::Format(format!("unsupported version {version}")));
    }
    let meta_len = u32::from_le_bytes([data[12], data[13], data[14], data[15]]) as usize;
    let meta = data.get(16..16 + meta_len).ok_or_else(|| bad("metadata truncated"))?;
    let meta: serde_json::Value = serde_json::from_slice(meta).map_err(|e| Invalid::Format(format!("metadata: {e}")))?;
    if meta["key_size"] != 32 || meta["value_size"] != 8 {
        return Err(bad("not a chunk index (key size 32, value size 8)"));
    }
    let used = meta["used"].as_u64().ok_or_else(|| bad("no entry count"))? as usize;
    let entries = &data[16 + meta_len..];
    if entries.len() != used.saturating_mul(40) {
        return Err(Invalid::Format(format!("{used} entries announced, {} bytes of entries present", entries.len())));
    }
    Ok(entries
        .chunks_exact(40)
        .map(|e| {
            let mut k = [0u8; 32];
            k.copy_from_slice(&e[..32]);
            k
        })
        .collect())
}

/// Checks an uploaded `cache/chunks.<hash>`: its format, and that its name is its hash.
pub fn validate_upload(name: &str, data: &[u8]) -> Result<Vec<[u8; 32]>, Invalid> {
    let expected = cache_name(data);
    if name != expected {
        return Err(Invalid::Name { expected });
    }
    parse_keys(data)
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
        assert_eq!(validate_upload(&cache_name(&data), &data).unwrap(), ids.to_vec());
        assert!(matches!(validate_upload("cache/chunks.0000000000000000", &data), Err(Invalid::Name { .. })));
        let mut short = data.clone();
        short.pop();
        assert!(matches!(validate_upload(&cache_name(&short), &short), Err(Invalid::Format(_))));
        let junk = b"not an index".to_vec();
        assert!(matches!(validate_upload(&cache_name(&junk), &junk), Err(Invalid::Format(_))));
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
