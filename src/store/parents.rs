//! Open descriptors of the directories that hold leaf directories (`data/ab` above `data/ab/cd`),
//! and of theirs (`data`), kept for the life of an open store so that writing an object opens
//! one name, not a path.
//!
//! Why: every object goes into `data/xx/yy/`, a directory that must be opened beneath the
//! repository without following symlinks (see [`super::beneath`]) and, in a young repository,
//! created first. Opened from the root that is a three-component `openat2` (failing when `yy` is
//! new), a second one for `data/xx`, then `mkdirat` and an `openat` — the two `openat2` walks
//! and the extra descriptor were 9% of a fresh repository's 1 KiB put CPU (perf, `--put-writers
//! 0`). With `data/xx` held open, the same put is `openat(xx, "yy")`, plus `mkdirat` when it
//! is missing: single names, each refused if it is a symlink, so the guarantee is unchanged.
//! There are at most 256 such directories per namespace level (and one above them), reused by
//! every put.
//!
//! What a held descriptor does not follow: a directory renamed away while the store is open
//! keeps receiving this store's objects (as the root itself does). Only someone who can already
//! write to both places can move it, so that reaches nothing new — but the objects are not in
//! the repository, where Python's server, which opens every path anew, would have put them
//! into the replacement. So before anything can reference a session's objects (an archive, a
//! chunk index taking them on trust) the repository asks whether each held directory is still
//! the one at its name ([`Parents::moved_away`]: two calls when `data/` has not changed since
//! before they were opened, else a `fstat` and a `fstatat` for each, ~0.5 ms for 257), and
//! refuses what would reference them if one is not. One deleted meanwhile is noticed (creating
//! in it fails with `ENOENT`), forgotten and opened afresh.
//!
//! In a young repository most objects need a new leaf directory (the first ~65 000 objects
//! spread over 65 536 of them), so there the leaf is made first and opened after — an `EEXIST`
//! when it was there after all — instead of an open failing first. Which of the two comes first
//! follows what recent puts found (a score, shared by the writer threads); an established
//! repository keeps opening first.
//!
//! Descriptors are a process-wide resource (socket mode serves many sessions in one process):
//! all caches together hold at most a quarter of the open-file limit; beyond that a store opens
//! from the root as before.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::beneath::Dir;
use crate::fasthash::FastBuild;

/// Descriptors held by all [`Parents`] of this process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many descriptors all caches together may hold: a quarter of the soft open-file limit.
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        // SAFETY: rl is plain data filled by the kernel.
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to an rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return 0;
        }
        usize::try_from(rl.rlim_cur / 4).unwrap_or(usize::MAX)
    })
}

/// The held parent directories of one open store (shared with its writer threads).
#[derive(Default)]
pub struct Parents {
    open: Mutex<HashMap<Box<str>, Arc<Dir>, FastBuild>>,
    /// Tests: a process budget of this many descriptors instead of [`budget`].
    #[cfg(test)]
    budget: Option<usize>,
    /// Recent leaves made minus recent leaves found, within ±[`YOUTH_RANGE`]: above zero,
    /// leaves are made before they are opened.
    youth: AtomicI32,
    /// When the oldest descriptor held now was opened (nanoseconds since the epoch, taken before
    /// the open; 0 when none is held): a directory whose entries have not changed since holds
    /// every held child at its name (see [`Parents::moved_away`]).
    oldest_hold: AtomicU64,
}

/// How far [`Parents::youth`] counts either way (how many puts it takes to change course).
const YOUTH_RANGE: i32 = 32;

/// How long before the oldest held descriptor was opened a directory must have last changed for
/// [`Parents::moved_away`] to trust its time: file times come from the kernel's coarse clock,
/// a tick behind, or from a network file system's server, whose clock may lag ours (2 s, as
/// the notes of checked chunk indexes spare).
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl Parents {
    /// Opens directory `rel` beneath `root` (see [`Dir::open_or_make_dir`], whose contract this
    /// keeps: missing directories are created, `created` receives the directories that got a new
    /// entry), through the held descriptor of its parent.
    pub fn open_or_make_dir(&self, root: &Dir, rel: &str, created: &mut Vec<String>) -> io::Result<Dir> {
        let Some((parent_rel, leaf)) = rel.rsplit_once('/') else {
            // a directory in the root (a flat namespace): one name already
            return root.open_or_make_dir(rel, created);
        };
        // twice: a held parent deleted meanwhile is forgotten, then opened afresh; none held
        // (the budget is spent): from the root at once
        for _ in 0..2 {
            let Some(parent) = self.parent(root, parent_rel, created)? else { break };
            if let Some((d, made)) = self.child_of_held(&parent, parent_rel, leaf, created)? {
                let step = if made { 1 } else { -1 };
                let _ = self.youth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |y| Some((y + step).clamp(-YOUTH_RANGE, YOUTH_RANGE)));
                return Ok(d);
            }
        }
        root.open_or_make_dir(rel, created)
    }

    /// Directory `name` in `parent`, the held directory `up`, opened or made (made first while
    /// the repository is young), and whether it was made; `created` gets `up` then. `Ok(None)`
    /// when the held descriptor names a directory deleted meanwhile (then it is forgotten).
    fn child_of_held(&self, parent: &Dir, up: &str, name: &str, created: &mut Vec<String>) -> io::Result<Option<(Dir, bool)>> {
        match parent.open_or_make_child(name, self.youth.load(Ordering::Relaxed) > 0) {
            Ok((d, made)) => {
                if made {
                    created.push(up.to_string());
                }
                Ok(Some((d, made)))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.forget(up);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The held descriptor of `rel`, opened (and created) now if needed; `None` when the
    /// process's budget of held descriptors is spent.
    fn parent(&self, root: &Dir, rel: &str, created: &mut Vec<String>) -> io::Result<Option<Arc<Dir>>> {
        if let Some(d) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(rel) {
            return Ok(Some(Arc::clone(d)));
        }
        #[cfg(test)]
        let budget = self.budget.unwrap_or_else(budget);
        #[cfg(not(test))]
        let budget = budget();
        if HELD.fetch_add(1, Ordering::Relaxed) >= budget {
            HELD.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
        // opened without the lock (it may take the lock again for `rel`'s own parent); a
        // writer thread that held it meanwhile wins, ours is closed
        let opening = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos().max(1) as u64);
        let d = match self.open_for_holding(root, rel, created) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                HELD.fetch_sub(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open.get(rel) {
            HELD.fetch_sub(1, Ordering::Relaxed);
            return Ok(Some(Arc::clone(held)));
        }
        open.insert(rel.into(), Arc::clone(&d));
        // the first held since none was: under the lock, as `moved_away` resets it
        if self.oldest_hold.load(Ordering::Relaxed) == 0 {
            self.oldest_hold.store(opening, Ordering::Relaxed);
        }
        Ok(Some(d))
    }

    /// Opens directory `rel`, creating what is missing, to be held: beneath its own held parent
    /// when it has one (`data/ab` beneath `data`: one name, made first while the repository is
    /// young, instead of a walk from the root that fails first — two of the `openat2` calls of
    /// each of a new repository's first 256 objects), else from the root.
    fn open_for_holding(&self, root: &Dir, rel: &str, created: &mut Vec<String>) -> io::Result<Dir> {
        if let Some((up, name)) = rel.rsplit_once('/') {
            if let Some(parent) = self.parent(root, up, created)? {
                if let Some((d, _)) = self.child_of_held(&parent, up, name, created)? {
                    return Ok(d);
                }
            }
        }
        root.open_or_make_dir(rel, created)
    }

    /// The held directories no longer at their names (moved away, or replaced by another,
    /// since they were opened), shallowest first, one beneath another left out; all are
    /// forgotten, so that the next put opens what is there now. What this store wrote through
    /// them since is in the directory moved away, not here.
    pub fn moved_away(&self, root: &Dir) -> io::Result<Vec<String>> {
        // held throughout (a few hundred look-ups): no writer thread is writing when it is asked
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if self.unchanged_since_held(&open, root)? {
            return Ok(Vec::new());
        }
        let mut order: Vec<&str> = open.keys().map(|k| &**k).collect();
        order.sort_unstable_by_key(|rel| (rel.matches('/').count(), *rel));
        let (mut moved, mut reported): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for rel in order {
            // beneath one moved: gone with it, not reported again
            if moved.iter().any(|m| rel.strip_prefix(m.as_str()).is_some_and(|rest| rest.starts_with('/'))) {
                moved.push(rel.to_string());
                continue;
            }
            let now = match rel.rsplit_once('/') {
                None => root.child_identity(rel)?,
                // its parent was looked at before it (shallower), and is where it was
                Some((up, name)) => match open.get(up) {
                    Some(parent) => parent.child_identity(name)?,
                    None => match root.dir(up) {
                        Ok(parent) => parent.child_identity(name)?,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                        Err(e) => return Err(e),
                    },
                },
            };
            if now != Some(open[rel].identity()?) {
                reported.push(rel.to_string());
                moved.push(rel.to_string());
            }
        }
        for rel in &moved {
            if open.remove(rel.as_str()).is_some() {
                HELD.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if open.is_empty() {
            self.oldest_hold.store(0, Ordering::Relaxed);
        }
        Ok(reported)
    }

    /// The cheap answer of [`Parents::moved_away`], ~4 calls instead of one per held
    /// directory: every held directory is a top one (`data`) or a child of a held top one, each
    /// top one is still at its name, and its entries last changed well before the oldest held
    /// descriptor was opened (its status-change time, which a rename in it sets and no program
    /// can set back; [`SETTLED`] spared for coarse or lagging file-system clocks). Then no held
    /// child can have been moved. Established repositories take it; one whose `data/xx` this
    /// session made looks at each.
    fn unchanged_since_held(&self, open: &HashMap<Box<str>, Arc<Dir>, FastBuild>, root: &Dir) -> io::Result<bool> {
        let oldest = self.oldest_hold.load(Ordering::Relaxed);
        if oldest == 0 {
            return Ok(true); // nothing held
        }
        let Some(before) = (std::time::UNIX_EPOCH + std::time::Duration::from_nanos(oldest)).checked_sub(SETTLED) else { return Ok(false) };
        for rel in open.keys() {
            let top = rel.split_once('/').map_or(&**rel, |(top, _)| top);
            if rel.matches('/').count() > 1 || !open.contains_key(top) {
                return Ok(false);
            }
        }
        for (rel, dir) in open.iter().filter(|(rel, _)| !rel.contains('/')) {
            match root.child_status(rel)? {
                Some((identity, changed)) if identity == dir.identity()? && changed < before => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    fn forget(&self, rel: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.remove(rel).is_some() {
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
        if open.is_empty() {
            self.oldest_hold.store(0, Ordering::Relaxed);
        }
    }

    /// Closes every held descriptor: the store removed directories (destroy).
    pub fn clear(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        HELD.fetch_sub(open.len(), Ordering::Relaxed);
        open.clear();
        self.oldest_hold.store(0, Ordering::Relaxed);
    }
}

impl Drop for Parents {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, its descriptor and no held parents yet.
    fn fresh() -> (tempfile::TempDir, Dir, Parents) {
        let dir = tempfile::tempdir().unwrap();
        let root = Dir::open_root(dir.path()).unwrap();
        (dir, root, Parents::default())
    }

    #[test]
    fn leaves_are_made_beneath_held_parents_and_symlinks_refused() {
        let (dir, root, parents) = fresh();
        let outside = tempfile::tempdir().unwrap();
        let mut created = Vec::new();
        parents.open_or_make_dir(&root, "data/ab/cd", &mut created).unwrap();
        assert_eq!(created, ["", "data", "data/ab"]);
        created.clear();
        parents.open_or_make_dir(&root, "data/ab/ef", &mut created).unwrap();
        assert_eq!(created, ["data/ab"], "only the leaf is new");
        created.clear();
        parents.open_or_make_dir(&root, "data/ab/ef", &mut created).unwrap();
        assert!(created.is_empty());
        assert_eq!(parents.open.lock().unwrap().len(), 2, "held: data/ab and data");
        // a second parent is made beneath the held data
        parents.open_or_make_dir(&root, "data/ef/01", &mut created).unwrap();
        assert_eq!(created, ["data", "data/ef"]);
        assert_eq!(parents.open.lock().unwrap().len(), 3);
        created.clear();
        // a flat namespace needs none
        parents.open_or_make_dir(&root, "config", &mut created).unwrap();
        assert_eq!(created, [""]);
        assert_eq!(parents.open.lock().unwrap().len(), 3);

        // a symlink as the leaf is refused, not followed
        std::os::unix::fs::symlink(outside.path(), dir.path().join("data/ab/11")).unwrap();
        let e = parents.open_or_make_dir(&root, "data/ab/11", &mut created).err().expect("a symlink is refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// Whichever comes first, making or opening, a leaf is made exactly when it is missing, is
    /// reported as made only then, and a symlink is refused.
    #[test]
    fn making_first_or_opening_first_give_the_same_directories() {
        let (dir, root, parents) = fresh();
        let mut created = Vec::new();
        // a young repository: every leaf new, so the score turns to making first
        for i in 0..40 {
            created.clear();
            parents.open_or_make_dir(&root, &format!("data/ab/{i:02x}"), &mut created).unwrap();
            assert_eq!(created.last().map(String::as_str), Some("data/ab"), "leaf {i} made");
        }
        assert_eq!(parents.youth.load(Ordering::Relaxed), YOUTH_RANGE);
        // existing leaves while making first: found, not reported as made
        for i in 0..40 {
            created.clear();
            parents.open_or_make_dir(&root, &format!("data/ab/{i:02x}"), &mut created).unwrap();
            assert!(created.is_empty(), "leaf {i} existed");
        }
        assert!(parents.youth.load(Ordering::Relaxed) < 0, "course changed to opening first");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("data/ab/ff")).unwrap();
        parents.youth.store(YOUTH_RANGE, Ordering::Relaxed);
        let e = parents.open_or_make_dir(&root, "data/ab/ff", &mut created).err().expect("a symlink is refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    /// With the process's budget of descriptors spent, directories are opened from the root as
    /// before: the same directories, the same 'created' reports, nothing held.
    #[test]
    fn beyond_the_budget_nothing_is_held_and_everything_still_works() {
        let (dir, root, mut parents) = fresh();
        parents.budget = Some(0);
        let mut created = Vec::new();
        parents.open_or_make_dir(&root, "data/ab/cd", &mut created).unwrap();
        assert_eq!(created, ["", "data", "data/ab"]);
        created.clear();
        parents.open_or_make_dir(&root, "data/ab/ef", &mut created).unwrap();
        assert_eq!(created, ["data/ab"]);
        assert!(dir.path().join("data/ab/ef").is_dir());
        assert!(parents.open.lock().unwrap().is_empty(), "no descriptor held");
    }

    #[test]
    fn a_held_parent_deleted_meanwhile_is_opened_afresh() {
        let (dir, root, parents) = fresh();
        let mut created = Vec::new();
        parents.open_or_make_dir(&root, "data/ab/cd", &mut created).unwrap();
        // another process deletes the tree (our descriptor now names a dead directory)
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        created.clear();
        parents.open_or_make_dir(&root, "data/ab/cd", &mut created).unwrap();
        assert!(dir.path().join("data/ab/cd").is_dir(), "made again where it belongs");
        assert_eq!(created, ["", "data", "data/ab"]);
        parents.clear();
        assert!(parents.open.lock().unwrap().is_empty());
    }

    /// A held directory moved away or replaced is found and let go, and the next put opens
    /// what is at the name now; a change below it (a new leaf) is no move, and a directory
    /// beneath a moved one is not reported again.
    #[test]
    fn held_directories_moved_away_are_found_and_let_go() {
        let (dir, root, parents) = fresh();
        let mut created = Vec::new();
        for leaf in ["data/ab/cd", "data/ef/01"] {
            parents.open_or_make_dir(&root, leaf, &mut created).unwrap();
        }
        parents.open_or_make_dir(&root, "data/ab/ce", &mut created).unwrap();
        assert!(parents.moved_away(&root).unwrap().is_empty());
        // data/ab replaced by a copy of itself: the held one is the copy's original
        let p = |rel: &str| dir.path().join(rel);
        std::fs::rename(p("data/ab"), p("ab-moved")).unwrap();
        std::fs::create_dir_all(p("data/ab/cd")).unwrap();
        assert_eq!(parents.moved_away(&root).unwrap(), ["data/ab"]);
        assert_eq!(parents.open.lock().unwrap().len(), 2, "held: data and data/ef");
        parents.open_or_make_dir(&root, "data/ab/99", &mut created).unwrap();
        assert!(p("data/ab/99").is_dir() && !p("ab-moved/99").exists(), "opened where the name leads now");
        assert!(parents.moved_away(&root).unwrap().is_empty());
        // data/ itself moved away, then gone: data/ reported, everything held let go
        std::fs::rename(p("data"), p("data-moved")).unwrap();
        assert_eq!(parents.moved_away(&root).unwrap(), ["data"]);
        assert!(parents.open.lock().unwrap().is_empty());
        parents.open_or_make_dir(&root, "data/ef/02", &mut created).unwrap();
        assert!(p("data/ef/02").is_dir() && !p("data-moved/ef/02").exists());
    }

    /// In a repository whose `data/` last changed before its directories were held, the cheap
    /// answer is taken — and a `data/xx` replaced afterwards still changes `data/`, so it is
    /// found all the same.
    #[test]
    fn an_established_tree_is_answered_cheaply_and_a_move_still_found() {
        let (dir, root, _) = fresh();
        let mut created = Vec::new();
        for b in 0..=255u8 {
            root.open_or_make_dir(&format!("data/{b:02x}/00"), &mut created).unwrap();
        }
        std::thread::sleep(SETTLED + std::time::Duration::from_millis(100));
        let parents = Parents::default();
        for b in 0..=255u8 {
            parents.open_or_make_dir(&root, &format!("data/{b:02x}/01"), &mut created).unwrap();
        }
        assert!(parents.unchanged_since_held(&parents.open.lock().unwrap(), &root).unwrap());
        assert!(parents.moved_away(&root).unwrap().is_empty());
        std::fs::rename(dir.path().join("data/7f"), dir.path().join("7f-moved")).unwrap();
        std::fs::create_dir(dir.path().join("data/7f")).unwrap();
        assert!(!parents.unchanged_since_held(&parents.open.lock().unwrap(), &root).unwrap());
        assert_eq!(parents.moved_away(&root).unwrap(), ["data/7f"]);
    }
}
