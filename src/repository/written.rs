//! The objects this session has put itself, so that checking the chunk index a backup uploads
//! needs no look-up for them.
//!
//! borg 2.0.0b21 uploads, at the end of a backup (and every few minutes of a long one), an
//! index of the chunks it *added* — the ids it has just put. Before storing it, borgd checks
//! that every listed object exists (see `Repository::store_store`), one look-up each: 4% of a
//! `borg create` session's server CPU in the benchmark, for objects the session itself has just
//! written. Those are remembered here instead — written by the session or by its writer threads
//! (which hand back what they wrote successfully, see `server::puts`) — and forgotten the moment
//! anything in the session deletes data. A put that failed is never recorded, so the index of a
//! backup whose puts failed is still refused.
//!
//! Only an index of at most 65 536 ids takes them on trust (a night's new chunks, a small
//! backup's): a longer one looks them up with the rest, so that its note can date from its
//! check (see `repository::trust`).
//!
//! Memory stays bounded: at most [`CAP`] ids, 16 bytes each (the ids' first half: two distinct
//! ids of 256 random bits agree there with probability 2^-128); past that, ids are not recorded.

/// Ids recorded at most (1 MiB).
pub const CAP: usize = 65_536;

/// Objects put by this session and not deleted since (their ids' first 16 bytes).
#[derive(Debug, Default)]
pub struct Written {
    ids: Vec<u128>,
    sorted: bool,
}

/// How an object is remembered: its id's first 16 bytes.
pub type Key = u128;

/// The key of object `id` (`None` for what is not a 32-byte id).
pub fn key(id: &[u8]) -> Option<Key> {
    <&[u8; 32]>::try_from(id).ok().map(key_of)
}

fn key_of(id: &[u8; 32]) -> Key {
    let mut half = [0u8; 16];
    half.copy_from_slice(&id[..16]);
    u128::from_be_bytes(half)
}

impl Written {
    /// The object `id` was put (and the put succeeded).
    pub fn record(&mut self, id: &[u8]) {
        if let Some(k) = key(id) {
            self.record_keys(&[k]);
        }
    }

    /// The objects with these keys were put elsewhere for this session (its writer threads),
    /// successfully.
    pub fn record_keys(&mut self, keys: &[Key]) {
        let room = CAP.saturating_sub(self.ids.len());
        if room > 0 && !keys.is_empty() {
            self.ids.extend_from_slice(&keys[..keys.len().min(room)]);
            self.sorted = false;
        }
    }

    /// Something in this session deleted data: no recorded object is known to exist any more.
    pub fn forget_all(&mut self) {
        self.ids = Vec::new();
        self.sorted = true;
    }

    /// Drops from `ids` those recorded here (objects known to exist).
    pub fn remove_known(&mut self, ids: &mut Vec<[u8; 32]>) {
        if self.sort() {
            ids.retain(|id| self.ids.binary_search(&key_of(id)).is_err());
        }
    }

    /// How many of `ids` are recorded here (what [`Written::remove_known`] would drop).
    pub fn count_known(&mut self, ids: &[[u8; 32]]) -> usize {
        if !self.sort() {
            return 0;
        }
        ids.iter().filter(|id| self.ids.binary_search(&key_of(id)).is_ok()).count()
    }

    /// Sorts the recorded keys for searching; whether there are any.
    fn sort(&mut self) -> bool {
        if !self.sorted {
            self.ids.sort_unstable();
            self.ids.dedup();
            self.sorted = true;
        }
        !self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 32] {
        let mut id = [n; 32];
        id[31] = 0xee;
        id
    }

    #[test]
    fn recorded_ids_are_known_until_data_is_deleted() {
        let mut w = Written::default();
        w.record(&id(3));
        w.record(&id(1));
        w.record(&id(3));
        w.record(&[7u8; 5]); // not an id: ignored
        let mut ids = vec![id(1), id(2), id(3), id(4)];
        assert_eq!(w.count_known(&ids), 2);
        w.remove_known(&mut ids);
        assert_eq!(ids, vec![id(2), id(4)]);
        w.record(&id(2));
        w.remove_known(&mut ids);
        assert_eq!(ids, vec![id(4)], "recorded after a check: known at the next");
        w.forget_all();
        let mut ids = vec![id(1), id(2)];
        w.remove_known(&mut ids);
        assert_eq!(ids, vec![id(1), id(2)]);
    }

    #[test]
    fn keys_handed_back_count_as_recorded_up_to_the_cap() {
        let mut w = Written::default();
        w.record_keys(&[key(&id(5)).unwrap(), key(&id(6)).unwrap()]);
        let mut ids = vec![id(5), id(6), id(7)];
        w.remove_known(&mut ids);
        assert_eq!(ids, vec![id(7)]);
        let many: Vec<Key> = (0..CAP as u128 + 3).collect();
        w.record_keys(&many);
        assert_eq!(w.ids.len(), CAP);
    }

    #[test]
    fn at_most_cap_ids_are_recorded() {
        let mut w = Written::default();
        for i in 0..CAP as u32 + 10 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            w.record(&id);
        }
        assert_eq!(w.ids.len(), CAP);
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&(CAP as u32 + 5).to_be_bytes());
        let mut ids = vec![last];
        w.remove_known(&mut ids);
        assert_eq!(ids.len(), 1, "past the cap: looked up, not assumed");
    }
}
