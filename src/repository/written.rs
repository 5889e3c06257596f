//! The objects this session has put itself, so that checking the chunk index a backup uploads
//! needs no look-up for them.
//!
//! borg 2.0.0b21 uploads, at the end of a backup (and every few minutes of a long one), an
//! index of the chunks it *added* — the ids it has just put. Before storing it, borgd checks
//! that every listed object exists (see `Repository::store_store`), one look-up each: 4% of a
//! `borg create` session's server CPU in the benchmark, for objects the session itself has just
//! written. Those are remembered here instead, when the session wrote them (not when its writer
//! threads did: those are looked up as before), and forgotten the moment anything in the
//! session deletes data. A put that failed is never recorded, so the index of a backup whose
//! puts failed is still refused.
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

fn key(id: &[u8; 32]) -> u128 {
    let mut half = [0u8; 16];
    half.copy_from_slice(&id[..16]);
    u128::from_be_bytes(half)
}

impl Written {
    /// The object `id` was put (and the put succeeded).
    pub fn record(&mut self, id: &[u8]) {
        let Ok(id) = <&[u8; 32]>::try_from(id) else { return };
        if self.ids.len() < CAP {
            self.ids.push(key(id));
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
        if self.ids.is_empty() {
            return;
        }
        if !self.sorted {
            self.ids.sort_unstable();
            self.ids.dedup();
            self.sorted = true;
        }
        ids.retain(|id| self.ids.binary_search(&key(id)).is_err());
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
