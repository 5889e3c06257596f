//! Deterministic, incompressible data: bytes that neither compress nor deduplicate away, for
//! the test suite and the benchmark (so both measure real storage work), and for the room a
//! store keeps in reserve (`store::room`, which must take real space).

/// `len` pseudo-random bytes (xorshift64) determined by `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn noise_is_deterministic_and_seed_dependent() {
        assert_eq!(super::noise(1, 1000), super::noise(1, 1000));
        assert_ne!(super::noise(1, 1000), super::noise(2, 1000));
        assert_eq!(super::noise(3, 13).len(), 13);
    }
}
