//! The `RepoObj` header borg 2 puts in front of every data object.
//!
//! `<II8s8s`: meta size, data size (u32 little endian), xxh64 of the metadata, xxh64 of the data.
//! The server never has the key, but these sizes and checksums let it validate objects in
//! `check` and return just the metadata for `get(read_data=False)`.

/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 24;

/// A parsed object header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of (encrypted) metadata after the header.
    pub meta_size: u32,
    /// Bytes of (encrypted) data after the metadata.
    pub data_size: u32,
    /// xxh64 of the metadata bytes, as stored (big endian).
    pub meta_hash: [u8; 8],
    /// xxh64 of the data bytes, as stored (big endian).
    pub data_hash: [u8; 8],
}

impl Header {
    /// Parses the first [`HEADER_SIZE`] bytes; `None` if there are fewer.
    pub fn parse(obj: &[u8]) -> Option<Header> {
        let h = obj.get(..HEADER_SIZE)?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut meta_hash = [0u8; 8];
        let mut data_hash = [0u8; 8];
        meta_hash.copy_from_slice(&h[8..16]);
        data_hash.copy_from_slice(&h[16..24]);
        Some(Header { meta_size: u32_at(0), data_size: u32_at(4), meta_hash, data_hash })
    }

    /// Builds a valid object around `meta` and `data` (tests and the benchmark use it).
    pub fn wrap(meta: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + meta.len() + data.len());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&xxhash_rust::xxh64::xxh64(meta, 0).to_be_bytes());
        out.extend_from_slice(&xxhash_rust::xxh64::xxh64(data, 0).to_be_bytes());
        out.extend_from_slice(meta);
        out.extend_from_slice(data);
        out
    }
}

/// What is wrong with an object, in the words Python's `borg check` uses.
pub fn verify(obj: &[u8]) -> Vec<&'static str> {
    let mut problems = Vec::new();
    let Some(h) = Header::parse(obj) else {
        problems.push("too small.");
        return problems;
    };
    let body = &obj[HEADER_SIZE..];
    let meta_end = (h.meta_size as usize).min(body.len());
    let meta = &body[..meta_end];
    if meta.len() != h.meta_size as usize {
        problems.push("metadata size incorrect.");
    } else if xxhash_rust::xxh64::xxh64(meta, 0).to_be_bytes() != h.meta_hash {
        problems.push("metadata does not match checksum.");
    }
    let rest = &body[meta_end..];
    let data = &rest[..(h.data_size as usize).min(rest.len())];
    if data.len() != h.data_size as usize {
        problems.push("data size incorrect.");
    } else if xxhash_rust::xxh64::xxh64(data, 0).to_be_bytes() != h.data_hash {
        problems.push("data does not match checksum.");
    }
    problems
}

/// Whether the object read from `r` (`len` bytes) fails [`verify`] — a power cut can leave a
/// name without its data — read in pieces, so memory stays bounded whatever the object's size.
/// An object that cannot be read counts as damaged.
/// For [`crate::store::Store::content_addressed_data`].
pub fn damaged(r: &mut dyn std::io::Read, len: u64) -> bool {
    let mut head = [0u8; HEADER_SIZE];
    if len < HEADER_SIZE as u64 || r.read_exact(&mut head).is_err() {
        return true;
    }
    let Some(h) = Header::parse(&head) else { return true };
    if len < HEADER_SIZE as u64 + u64::from(h.meta_size) + u64::from(h.data_size) {
        return true;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut hash = |n: u32| -> Option<[u8; 8]> {
        let mut x = xxhash_rust::xxh64::Xxh64::new(0);
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(buf.len());
            r.read_exact(&mut buf[..k]).ok()?;
            x.update(&buf[..k]);
            left -= k;
        }
        Some(x.digest().to_be_bytes())
    };
    hash(h.meta_size) != Some(h.meta_hash) || hash(h.data_size) != Some(h.data_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_objects_verify_and_damage_is_named() {
        let obj = Header::wrap(b"meta", b"some data");
        assert!(verify(&obj).is_empty());
        let mut bad = obj.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&bad), ["data does not match checksum."]);
        assert_eq!(verify(&obj[..obj.len() - 1]), ["data size incorrect."]);
        assert_eq!(verify(&obj[..10]), ["too small."]);
        let mut badmeta = obj;
        badmeta[HEADER_SIZE] ^= 1;
        assert_eq!(verify(&badmeta), ["metadata does not match checksum."]);
    }

    /// `damaged`, reading in pieces, says what `verify` says of the whole object.
    #[test]
    fn damaged_agrees_with_verify() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let obj = Header::wrap(b"meta", &data);
        let mut variants: Vec<Vec<u8>> = vec![obj.clone(), Vec::new(), obj[..10].to_vec(), obj[..obj.len() - 1].to_vec()];
        for at in [HEADER_SIZE, HEADER_SIZE + 4, HEADER_SIZE + 4 + 70_000, obj.len() - 1, 3] {
            let mut v = obj.clone();
            v[at] ^= 0x10;
            variants.push(v);
        }
        variants.push([&obj[..], b"trailing"].concat()); // verify ignores what follows
        for (i, v) in variants.iter().enumerate() {
            assert_eq!(damaged(&mut &v[..], v.len() as u64), !verify(v).is_empty(), "variant {i}");
        }
        assert!(!damaged(&mut &obj[..], obj.len() as u64));
        assert!(damaged(&mut &obj[..], obj.len() as u64 - 1), "shorter than its header says");
    }
}
