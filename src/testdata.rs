//! Deterministic, incompressible data: bytes that neither compress nor deduplicate away, for
//! the test suite and the benchmark (so both measure real storage work), and for the room a
//! store keeps in reserve (`store::room`, which must take real space).

/// `len` pseudo-random bytes (xorshift64) determined by `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut reader = Noise::new(seed, len as u64);
    // reading from memory cannot fail
    let _ = std::io::Read::read_to_end(&mut reader, &mut out);
    out
}

/// [`noise`] as a reader, for more than is worth holding in memory at once.
pub struct Noise {
    x: u64,
    /// The current word, and how much of it was read.
    word: [u8; 8],
    at: usize,
    left: u64,
}

impl Noise {
    /// The `len` bytes `noise(seed, len)` returns.
    pub fn new(seed: u64, len: u64) -> Noise {
        Noise { x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, word: [0; 8], at: 8, left: len }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x.to_le_bytes()
    }
}

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        let buf = &mut buf[..n];
        // what is left of the current word, then whole words, then part of a new one
        let rest = (8 - self.at).min(n);
        buf[..rest].copy_from_slice(&self.word[self.at..self.at + rest]);
        self.at += rest;
        let mut words = buf[rest..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            tail.copy_from_slice(&self.word[..tail.len()]);
            self.at = tail.len();
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn noise_is_deterministic_and_seed_dependent() {
        assert_eq!(super::noise(1, 1000), super::noise(1, 1000));
        assert_ne!(super::noise(1, 1000), super::noise(2, 1000));
        assert_eq!(super::noise(3, 13).len(), 13);
    }

    #[test]
    fn noise_read_in_any_pieces_is_the_same() {
        use std::io::Read;
        let whole = super::noise(5, 1003);
        let mut r = super::Noise::new(5, 1003);
        let mut got = Vec::new();
        let mut buf = [0u8; 29];
        for k in 1.. {
            let n = r.read(&mut buf[..k % 29 + 1]).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, whole);
        // the old generator's bytes: the first word of seed 1
        let x = 0x9E37_79B9_7F4A_7C15u64 | 1;
        let x = x ^ (x << 13);
        let x = x ^ (x >> 7);
        let x = x ^ (x << 17);
        assert_eq!(super::noise(1, 8), x.to_le_bytes());
    }
}
