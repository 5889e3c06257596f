//! A cheap hash for the small tables on every put's path.
//!
//! std's default hash (SipHash) resists hash flooding, which a table that grows with what a
//! client sends needs. The tables that use this one cannot grow so: the names of the puts a
//! session's writer threads have in hand (at most 64) and the held `data/xx` directories (at most
//! 256, names we make). Flooding them costs at most that many comparisons. With writer threads,
//! SipHash of those names was 7% of a 1 KiB put's user-space instructions (callgrind); this takes
//! eight bytes per multiply (the scheme of rustc's `FxHasher`).

use std::hash::{BuildHasherDefault, Hasher};

/// The hasher; use it through [`FastBuild`], and only for bounded tables (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

/// Builds [`FastHasher`]s: the `S` of a `HashMap`/`HashSet` that uses it.
pub type FastBuild = BuildHasherDefault<FastHasher>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
        // the length too: "ab" and "ab\0" pad to the same last word
        self.add(bytes.len() as u64);
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Names differing anywhere (first byte, last byte, length) hash apart, and a set keyed by
    /// them behaves as any set.
    #[test]
    fn object_names_hash_apart_and_sets_work() {
        use std::hash::BuildHasher;
        let name = "data/ab/cd/".to_string() + &"0123456789abcdef".repeat(4);
        let mut other = name.clone();
        other.replace_range(name.len() - 1.., "0");
        let h = |s: &str| FastBuild::default().hash_one(s);
        assert_ne!(h(&name), h(&other));
        assert_ne!(h(&name), h(&name[1..]));
        assert_ne!(h("data/ab"), h("data/ab\0"));
        let mut set: HashSet<String, FastBuild> = HashSet::default();
        for i in 0..1000 {
            assert!(set.insert(format!("data/{:02x}/{i:060x}", i % 256)));
        }
        assert!(set.contains(&format!("data/{:02x}/{:060x}", 7, 7)));
        assert!(!set.contains(&format!("data/{:02x}/{:060x}", 8, 7)));
        assert_eq!(set.len(), 1000);
    }
}
