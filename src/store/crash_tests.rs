//! Crash-consistency properties of the [`Store`] durability policy, on the simulated disk.
//!
//! Random sequences of borg-like operations (data puts, archive/manifest/cache writes that
//! reference data, soft delete, undelete, hard delete, deletes of unreferenced data, closes) run
//! through the real `Store`; then the disk crashes into many possible outcomes. In every outcome,
//! every referencing item that survived must only reference data that also survived.

use proptest::prelude::*;

use super::sim::{Files, SimDisk, SimHandle};
use super::{borg_levels, nest, Durability, Mode, Permissions, Store};

#[derive(Debug, Clone)]
enum Action {
    Put(u8),
    Archive(u8, Vec<u8>),
    Manifest(Vec<u8>),
    Cache(u8),
    DeleteData(u8),
    SoftDelete(u8),
    Undelete(u8),
    HardDelete(u8),
    DeleteCache(u8),
    Close,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..12).prop_map(Action::Put),
        2 => (0u8..4, proptest::collection::vec(0u8..12, 0..4)).prop_map(|(a, r)| Action::Archive(a, r)),
        1 => proptest::collection::vec(0u8..12, 0..3).prop_map(Action::Manifest),
        1 => (0u8..2).prop_map(Action::Cache),
        2 => (0u8..12).prop_map(Action::DeleteData),
        1 => (0u8..4).prop_map(Action::SoftDelete),
        1 => (0u8..4).prop_map(Action::Undelete),
        1 => (0u8..4).prop_map(Action::HardDelete),
        1 => (0u8..2).prop_map(Action::DeleteCache),
        1 => Just(Action::Close),
    ]
}

fn data_id(i: u8) -> String {
    format!("{i:064x}")
}

fn data_name(id: &str) -> String {
    nest(&format!("data/{id}"), 2, None)
}

fn is_referencing(name: &str) -> bool {
    name.starts_with("archives/") || name.starts_with("config/manifest") || name.starts_with("cache/")
}

/// (referencing item, data id it references) for every reference on this disk.
fn references(files: &Files) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, content) in files {
        if is_referencing(name) {
            for id in String::from_utf8_lossy(content).split(',').filter(|s| !s.is_empty()) {
                out.push((name.clone(), id.to_string()));
            }
        }
    }
    out
}

fn dangling(files: &Files) -> Vec<(String, String)> {
    references(files).into_iter().filter(|(_, id)| !files.contains_key(&data_name(id))).collect()
}

fn new_store(durability: Durability) -> (Store, SimHandle) {
    let (disk, h) = SimDisk::new();
    let mut s = Store::new(Box::new(disk), borg_levels(2), Permissions::for_mode(Mode::All), durability);
    s.create().unwrap();
    (s, h)
}

fn live_data(h: &SimHandle) -> Vec<String> {
    h.live().keys().filter_map(|k| k.strip_prefix("data/").and_then(|r| r.rsplit('/').next()).map(str::to_string)).collect()
}

/// Runs one action the way a correct borg client would (only deleting unreferenced data).
fn run(store: &mut Store, h: &SimHandle, action: &Action) {
    let refs_to = |wanted: &[u8]| -> Vec<u8> {
        let live = live_data(h);
        let mut ids: Vec<String> = wanted.iter().map(|i| data_id(*i)).filter(|id| live.contains(id)).collect();
        ids.dedup();
        ids.join(",").into_bytes()
    };
    let exists = |name: &str| h.live().contains_key(name);
    match action {
        Action::Put(i) => store.store(&format!("data/{}", data_id(*i)), b"chunk").unwrap(),
        Action::Archive(a, r) => store.store(&format!("archives/{a:02x}"), &refs_to(r)).unwrap(),
        Action::Manifest(r) => store.store("config/manifest", &refs_to(r)).unwrap(),
        Action::Cache(c) => {
            let all: Vec<u8> = (0..12).collect();
            store.store(&format!("cache/chunks.{c}"), &refs_to(&all)).unwrap()
        }
        Action::DeleteData(i) => {
            let id = data_id(*i);
            let referenced = references(&h.live()).iter().any(|(_, r)| *r == id);
            if exists(&data_name(&id)) && !referenced {
                store.delete(&format!("data/{id}"), false).unwrap();
            }
        }
        Action::SoftDelete(a) => {
            let name = format!("archives/{a:02x}");
            if exists(&name) && !exists(&format!("{name}.del")) {
                store.move_item(&name, None, true, false, false).unwrap();
            }
        }
        Action::Undelete(a) => {
            let name = format!("archives/{a:02x}");
            if exists(&format!("{name}.del")) && !exists(&name) {
                store.move_item(&name, None, false, true, false).unwrap();
            }
        }
        Action::HardDelete(a) => {
            let name = format!("archives/{a:02x}");
            if exists(&format!("{name}.del")) {
                store.delete(&name, true).unwrap();
            }
        }
        Action::DeleteCache(c) => {
            let name = format!("cache/chunks.{c}");
            if exists(&name) {
                store.delete(&name, false).unwrap();
            }
        }
        Action::Close => store.barrier().unwrap(),
    }
}

fn xorshift(seed: u64) -> impl FnMut() -> bool {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x & 1 == 1
    }
}

fn check_all_crash_outcomes(durability: Durability, actions: &[Action], seed: u64) -> Result<(), TestCaseError> {
    let (mut store, h) = new_store(durability);
    for a in actions {
        run(&mut store, &h, a);
        prop_assert!(dangling(&h.live()).is_empty(), "the live state itself must be consistent");
    }
    // all-dropped, all-kept and many random outcomes
    for s in 0..16u64 {
        let mut keep: Box<dyn FnMut() -> bool> = match s {
            0 => Box::new(|| false),
            1 => Box::new(|| true),
            _ => Box::new(xorshift(seed.wrapping_add(s.wrapping_mul(0x9E37_79B9)))),
        };
        let crashed = h.crash(&mut keep);
        let bad = dangling(&crashed);
        prop_assert!(bad.is_empty(), "after a crash, {bad:?} reference lost data (outcome {s})");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn barrier_mode_never_leaves_dangling_references(actions in proptest::collection::vec(action(), 1..40), seed in any::<u64>()) {
        check_all_crash_outcomes(Durability::Barrier, &actions, seed)?;
    }

    #[test]
    fn always_mode_never_leaves_dangling_references(actions in proptest::collection::vec(action(), 1..40), seed in any::<u64>()) {
        check_all_crash_outcomes(Durability::Always, &actions, seed)?;
    }
}

#[test]
fn never_mode_can_lose_referenced_data() {
    // the negative control: Python's behaviour. The archive reached the disk, its data did not.
    let (mut store, h) = new_store(Durability::Never);
    run(&mut store, &h, &Action::Put(1));
    run(&mut store, &h, &Action::Archive(0, vec![1]));
    let mut ops = 0;
    let crashed = h.crash(&mut || {
        ops += 1;
        ops == 2 // keep only the second unsynced operation: the archive
    });
    assert_eq!(dangling(&crashed), vec![("archives/00".to_string(), data_id(1))]);
    // the same sequence in barrier mode survives that crash
    let (mut store, h) = new_store(Durability::Barrier);
    run(&mut store, &h, &Action::Put(1));
    run(&mut store, &h, &Action::Archive(0, vec![1]));
    assert!(dangling(&h.crash(&mut || false)).is_empty());
    assert!(h.crash(&mut || false).contains_key(&data_name(&data_id(1))), "the barrier made the data durable");
}

#[test]
fn injected_faults_surface_as_errors_naming_the_operation() {
    let (mut store, h) = new_store(Durability::Barrier);
    h.inject("store", "data/", libc::ENOSPC);
    let e = store.store(&format!("data/{}", data_id(1)), b"x").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("store") && msg.contains("No space left on device"), "{msg}");
    assert!(h.live().is_empty(), "nothing partial is visible");
    h.inject("barrier", "", libc::EIO);
    let e = store.store("config/manifest", b"m").unwrap_err();
    assert!(e.to_string().contains("Input/output error"), "{e}");
    assert!(!h.live().contains_key("config/manifest"), "no reference is written when its data could not be made durable");
}
