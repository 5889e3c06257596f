//! A simulated disk for tests: an in-memory [`Backend`] that knows which writes were made
//! durable, can "crash", and can fail operations with a chosen errno.
//!
//! Crash model: everything made durable by a [`Backend::barrier`] survives; after it, each
//! operation that was asked to be durable survives, and each other write, rename or delete
//! independently survives or is lost (the kernel may or may not have written it back). A crash
//! outcome replays that history in order with the choices given. Dropping every unsynced
//! operation is one outcome; keeping an archive but losing the data it references is another.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use super::{Backend, Detail, Error, ItemInfo, WriteOptions};

/// One change to the simulated disk.
#[derive(Debug, Clone)]
enum Op {
    Store(String, Vec<u8>),
    Delete(String),
    Rename(String, String),
}

/// File contents by nested name; directories are implied by names.
pub type Files = BTreeMap<String, Vec<u8>>;

fn apply(files: &mut Files, op: &Op) {
    match op {
        Op::Store(n, v) => {
            files.insert(n.clone(), v.clone());
        }
        Op::Delete(n) => {
            files.remove(n);
        }
        Op::Rename(a, b) => {
            if let Some(v) = files.remove(a) {
                files.insert(b.clone(), v);
            }
        }
    }
}

/// A fault to inject: the next operation of kind `op` on a name starting with `prefix` fails.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The kind of operation that fails (the backend method's name).
    pub op: &'static str,
    /// Which names it fails for.
    pub prefix: String,
    /// The error it fails with.
    pub errno: i32,
}

/// Shared handle to inspect and steer a [`SimDisk`] after it was boxed into a `Store`.
#[derive(Clone, Default)]
pub struct SimHandle(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    live: Files,
    /// State as of the last barrier (all of it durable).
    base: Files,
    /// Operations since the last barrier, with whether each was made durable.
    history: Vec<(Op, bool)>,
    faults: Vec<Fault>,
    exists: bool,
    /// Bytes the files may take in all (a full disk, a quota); `None`: unlimited.
    space: Option<usize>,
}

impl SimHandle {
    /// The files a reader sees now.
    pub fn live(&self) -> Files {
        self.0.lock().map(|i| i.live.clone()).unwrap_or_default()
    }

    /// The disk after a crash now: unsynced operations survive where `keep` says so.
    pub fn crash(&self, keep: &mut dyn FnMut() -> bool) -> Files {
        let inner = self.0.lock().expect("sim lock");
        let mut files = inner.base.clone();
        for (op, durable) in &inner.history {
            if *durable || keep() {
                apply(&mut files, op);
            }
        }
        files
    }

    /// Puts a file on the disk behind the store's back (a crashed writer's temp file, say).
    pub fn plant(&self, name: &str, value: &[u8]) {
        if let Ok(mut i) = self.0.lock() {
            i.live.insert(name.to_string(), value.to_vec());
        }
    }

    /// Limits the bytes all files may take to `space` (a full disk, an owner's quota): a store
    /// that would take more fails with `EDQUOT`. `None` lifts the limit.
    pub fn limit_space(&self, space: Option<usize>) {
        if let Ok(mut i) = self.0.lock() {
            i.space = space;
        }
    }

    /// The bytes all files take now.
    pub fn used(&self) -> usize {
        self.0.lock().map(|i| i.live.values().map(Vec::len).sum()).unwrap_or(0)
    }

    /// Makes the next matching operation fail with `errno`.
    pub fn inject(&self, op: &'static str, prefix: &str, errno: i32) {
        if let Ok(mut i) = self.0.lock() {
            i.faults.push(Fault { op, prefix: prefix.to_string(), errno });
        }
    }
}

/// The simulated disk backend.
pub struct SimDisk {
    h: SimHandle,
}

impl SimDisk {
    /// A new, not yet created disk and a handle to it.
    pub fn new() -> (SimDisk, SimHandle) {
        let h = SimHandle::default();
        (SimDisk { h: h.clone() }, h)
    }

    /// Another backend on the same disk (a later session's).
    pub fn again(h: &SimHandle) -> SimDisk {
        SimDisk { h: h.clone() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.h.0.lock().expect("sim lock");
        f(&mut guard)
    }

    fn fault(inner: &mut Inner, op: &'static str, name: &str) -> Result<(), Error> {
        if let Some(i) = inner.faults.iter().position(|f| f.op == op && name.starts_with(&f.prefix)) {
            let f = inner.faults.remove(i);
            return Err(Error::Io { op, path: name.into(), source: io::Error::from_raw_os_error(f.errno) });
        }
        Ok(())
    }

    /// `EDQUOT` if `len` more bytes under `name` would not fit in the disk's space (see
    /// [`SimHandle::limit_space`]); `replacing`: they take the place of what `name` holds.
    fn room_for(inner: &Inner, name: &str, len: u64, replacing: bool) -> Result<(), Error> {
        let used: usize = inner.live.iter().filter(|(k, _)| !replacing || k.as_str() != name).map(|(_, v)| v.len()).sum();
        match inner.space {
            Some(space) if used as u64 + len > space as u64 => Err(Error::Io { op: "write", path: name.into(), source: io::Error::from_raw_os_error(libc::EDQUOT) }),
            _ => Ok(()),
        }
    }

    fn record(inner: &mut Inner, op: Op, durable: bool) {
        apply(&mut inner.live, &op);
        inner.history.push((op, durable));
    }
}

impl Backend for SimDisk {
    fn create(&mut self) -> Result<(), Error> {
        self.with(|i| {
            if i.exists && !i.live.is_empty() {
                return Err(Error::AlreadyExists("sim".into()));
            }
            i.exists = true;
            Ok(())
        })
    }

    fn destroy(&mut self) -> Result<(), Error> {
        self.with(|i| {
            for n in i.live.keys().cloned().collect::<Vec<_>>() {
                Self::record(i, Op::Delete(n), true);
            }
            i.exists = false;
            Ok(())
        })
    }

    fn open(&mut self) -> Result<(), Error> {
        self.with(|i| if i.exists { Ok(()) } else { Err(Error::DoesNotExist("sim".into())) })
    }

    fn info(&self, name: &str) -> Result<ItemInfo, Error> {
        self.with(|i| {
            Self::fault(i, "info", name)?;
            let file = name.rsplit('/').next().unwrap_or(name).to_string();
            if let Some(v) = i.live.get(name) {
                return Ok(ItemInfo { name: file, exists: true, size: v.len() as u64, directory: false });
            }
            let dir = i.live.keys().any(|k| k.starts_with(&format!("{name}/")));
            Ok(ItemInfo { name: file, exists: dir, size: 0, directory: dir })
        })
    }

    fn load(&self, name: &str, offset: u64, size: Option<usize>) -> Result<Vec<u8>, Error> {
        self.with(|i| {
            Self::fault(i, "load", name)?;
            let v = i.live.get(name).ok_or_else(|| Error::ObjectNotFound(name.to_string()))?;
            let start = (offset as usize).min(v.len());
            let end = size.map_or(v.len(), |s| (start + s).min(v.len()));
            Ok(v[start..end].to_vec())
        })
    }

    fn store(&mut self, name: &str, value: &[u8], how: WriteOptions) -> Result<(), Error> {
        let durable = how.durable;
        self.with(|i| {
            Self::fault(i, "store", name)?;
            if let Some(v) = i.live.get(name).filter(|_| !how.replace) {
                match how.content_addressed {
                    Some(damaged) if damaged(&mut &v[..], v.len() as u64) => {} // replaced
                    Some(_) => return Ok(()),                                   // kept
                    None => return Err(Error::ItemExists(name.to_string())),
                }
            }
            Self::room_for(i, name, value.len() as u64, true)?;
            Self::record(i, Op::Store(name.to_string(), value.to_vec()), durable);
            Ok(())
        })
    }

    fn stage(&mut self, name: &str, len: u64, src: &mut dyn std::io::Read, _how: WriteOptions) -> Result<super::StagedBody, Error> {
        // staged in memory, but failing as a disk would: by fault, or for want of space
        self.with(|i| {
            Self::fault(i, "stage", name)?;
            // staged beside its target, not over it
            Self::room_for(i, name, len, false)
        })?;
        super::backend::receive(name, len, src).map(super::StagedBody::Memory)
    }

    fn delete(&mut self, name: &str, durable: bool) -> Result<(), Error> {
        self.with(|i| {
            Self::fault(i, "delete", name)?;
            if !i.live.contains_key(name) {
                return Err(Error::ObjectNotFound(name.to_string()));
            }
            Self::record(i, Op::Delete(name.to_string()), durable);
            Ok(())
        })
    }

    fn rename(&mut self, from: &str, to: &str, durable: bool) -> Result<(), Error> {
        self.with(|i| {
            Self::fault(i, "rename", from)?;
            if !i.live.contains_key(from) {
                return Err(Error::ObjectNotFound(from.to_string()));
            }
            Self::record(i, Op::Rename(from.to_string(), to.to_string()), durable);
            Ok(())
        })
    }

    fn list(&self, name: &str, _detail: Detail) -> Result<Vec<ItemInfo>, Error> {
        self.with(|i| {
            let prefix = if name.is_empty() { String::new() } else { format!("{name}/") };
            let mut out: BTreeMap<String, ItemInfo> = BTreeMap::new();
            for (k, v) in i.live.range(prefix.clone()..) {
                let Some(rest) = k.strip_prefix(&prefix) else { break };
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        out.entry(dir.to_string()).or_insert(ItemInfo { name: dir.to_string(), exists: true, size: 0, directory: true });
                    }
                    // like every backend, hide names that are not valid (temp files in progress)
                    None if super::name::validate(rest).is_ok() => {
                        out.insert(rest.to_string(), ItemInfo { name: rest.to_string(), exists: true, size: v.len() as u64, directory: false });
                    }
                    None => {}
                }
            }
            if out.is_empty() && !name.is_empty() {
                return Err(Error::ObjectNotFound(name.to_string()));
            }
            Ok(out.into_values().collect())
        })
    }

    fn barrier(&mut self) -> Result<(), Error> {
        self.with(|i| {
            Self::fault(i, "barrier", "")?;
            i.base = i.live.clone();
            i.history.clear();
            Ok(())
        })
    }

    fn remove_temp_files(&mut self) -> Result<Vec<String>, Error> {
        self.with(|i| {
            let tmp: Vec<String> = i.live.keys().filter(|k| k.ends_with(super::name::TMP_SUFFIX)).cloned().collect();
            for t in &tmp {
                Self::record(i, Op::Delete(t.clone()), false);
            }
            Ok(tmp)
        })
    }

    fn describe(&self) -> String {
        "sim://disk".into()
    }
}
