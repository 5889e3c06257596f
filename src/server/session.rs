//! One client's session: its open repository, its lock, and the method dispatch.
//!
//! Each method reads like the b21 server's: check the arguments, act on the repository, answer.
//! Only `negotiate`, `open` and `close` are callable before a repository is open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::CallError;
use crate::lock::Owner;
use crate::log::{Level, Log};
use crate::repository::{self, OpenOptions, Repository, WrittenKey};
use crate::rpc::{self, ListAnswer, Method, Reply, Request};
use crate::server::paths;
use crate::store::{Durability, Mode, Permissions};

/// The server's policy, shared by all sessions: what `borgd serve`'s options say.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--restrict-to-path`: repositories must lie in or below one of these.
    pub restrict_to_paths: Vec<PathBuf>,
    /// `--restrict-to-repository`: repositories must be exactly one of these.
    pub restrict_to_repositories: Vec<PathBuf>,
    /// `--permissions` (or `BORG_REPO_PERMISSIONS`).
    pub permissions: Mode,
    /// `--fsync`.
    pub durability: Durability,
    /// Large objects written with O_DIRECT (not `--no-direct-io`).
    pub direct_io: bool,
    /// `--put-writers`: threads per session writing small puts (0: in order, see `server::puts`).
    pub put_writers: usize,
    /// `--coalesce-us`: nap before reading more when a client trickles puts in (see
    /// `server::coalesce`; zero: never).
    pub coalesce: std::time::Duration,
    /// `BORG_STORE_DATA_LEVELS`: nesting depth of `data/`.
    pub data_levels: usize,
    /// Largest message accepted from a client, in bytes.
    pub max_message: usize,
    /// `--lock-wait`: used when a client's `open` names no lock wait.
    pub lock_wait: f64,
}

const LOGGER: &str = "borgd.server";
const TRACE: &str = "borg.debug.repository";

/// A put for the writer threads: its write decided now, its value, and the key under which
/// it is handed back once written (see [`Session::note_written`]).
pub type LaterPut<'r> = (crate::store::LaterWrite, &'r [u8], WrittenKey);

/// State of one client connection.
pub struct Session {
    cfg: Arc<Config>,
    repo: Option<Repository>,
    /// The path of the repository last opened, kept after it is closed (for socket mode's log).
    opened: Option<PathBuf>,
    log: Log,
    thread: i64,
}

impl Session {
    /// A new session; `thread` tells this session's locks apart from other sessions of this
    /// process (0 in stdio mode, unique and non-zero in socket mode).
    pub fn new(cfg: Arc<Config>, log: Log, thread: i64) -> Session {
        Session { cfg, repo: None, opened: None, log, thread }
    }

    /// The repository this session opened last (resolved), if it opened one.
    pub fn opened(&self) -> Option<&Path> {
        self.opened.as_deref()
    }

    /// The session's logger (the serve loop flushes it).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The server's policy this session follows.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Ends the session: closes the repository, making writes durable and releasing the lock.
    pub fn end(&mut self) {
        if let Some(repo) = self.repo.take() {
            if let Err(e) = repo.close(&self.log) {
                self.log.error(LOGGER, &format!("closing the repository failed: {e}"));
            }
        }
        self.log.flush();
    }

    /// Executes one request.
    pub fn call(&mut self, req: &Request<'_>) -> Result<Reply, CallError> {
        let name = req.method;
        let method = Method::from_name(name).ok_or_else(|| CallError::InvalidRpcMethod(name.to_string()))?;
        if self.repo.is_none() && !method.allowed_before_open() {
            return Err(CallError::InvalidRpcMethod(name.to_string()));
        }
        let a = &req.args;
        let bad = |e| CallError::bad_arg(name, e);
        // per-object calls are traced only under --debug-topic=repository; the message is not
        // even formatted otherwise (this runs for every put and get)
        let logger = if matches!(method, Method::Get | Method::Put | Method::Delete | Method::List) { TRACE } else { LOGGER };
        if self.log.enabled(logger, Level::Debug) {
            self.log.debug(logger, &format!("rpc {name} (msgid {})", req.msgid));
        }
        if method == Method::Negotiate {
            return Ok(Reply::Version);
        }
        if method == Method::Open {
            return self.open(req);
        }
        if method == Method::Close {
            if let Some(repo) = self.repo.take() {
                repo.close(&self.log)?;
            }
            return Ok(Reply::Nil);
        }
        if method == Method::InjectException {
            return match injected(a.str("kind").map_err(bad)?) {
                Some(e) => Err(e),
                None => Ok(Reply::Nil),
            };
        }
        if method == Method::Destroy {
            let repo = self.repo.take().ok_or_else(|| CallError::InvalidRpcMethod(name.to_string()))?;
            repo.destroy(&self.log)?;
            return Ok(Reply::Nil);
        }
        let log = &self.log;
        let repo = self.repo.as_mut().ok_or_else(|| CallError::InvalidRpcMethod(name.to_string()))?;
        Ok(match method {
            Method::Info => {
                let (id, version) = repo.info(log)?;
                Reply::Info { id, version }
            }
            Method::List => {
                let limit = a.opt_uint("limit").map_err(bad)?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
                list_answer(repo, limit, a.opt_bytes("marker").map_err(bad)?, log)?
            }
            Method::Get => {
                let got = repo.get(
                    a.bytes("id").map_err(bad)?,
                    a.bool_or("read_data", true).map_err(bad)?,
                    a.bool_or("raise_missing", true).map_err(bad)?,
                    log,
                )?;
                got.map_or(Reply::Nil, Reply::Object)
            }
            Method::Put => {
                repo.put(a.bytes("id").map_err(bad)?, a.bytes("data").map_err(bad)?, log)?;
                Reply::Nil
            }
            Method::Delete => {
                repo.delete(a.bytes("id").map_err(bad)?, log)?;
                Reply::Nil
            }
            Method::Check => {
                let repair = a.bool_or("repair", false).map_err(bad)?;
                let max_duration = a.opt_seconds("max_duration").map_err(bad)?.unwrap_or(0.0);
                Reply::Bool(repo.check(repair, max_duration, log)?)
            }
            Method::SaveKey => {
                repo.save_key(a.bytes("keydata").map_err(bad)?, log)?;
                Reply::Nil
            }
            Method::LoadKey => Reply::Bytes(repo.load_key(log)?),
            Method::BreakLock => {
                repo.break_lock(log)?;
                Reply::Nil
            }
            Method::GetManifest => Reply::Bytes(repo.get_manifest(log)?),
            Method::PutManifest => {
                repo.put_manifest(a.bytes("data").map_err(bad)?, log)?;
                Reply::Nil
            }
            Method::StoreList => {
                let mut answer = ListAnswer::new(HELD_ITEMS, rpc::encode_item);
                let mut add = |info| answer.push(info).map_err(spool_error);
                repo.store_list_each(a.str("name").map_err(bad)?, a.bool_or("deleted", false).map_err(bad)?, &mut add, log)?;
                answer.finish(Reply::Items).map_err(|e| CallError::from(spool_error(e)))?
            }
            Method::StoreLoad => Reply::Object(repo.store_load(a.str("name").map_err(bad)?, log)?),
            Method::StoreStore => {
                repo.store_store(a.str("name").map_err(bad)?, a.bytes("value").map_err(bad)?, log)?;
                Reply::Nil
            }
            Method::StoreDelete => {
                repo.store_delete(a.str("name").map_err(bad)?, a.bool_or("deleted", false).map_err(bad)?, log)?;
                Reply::Nil
            }
            Method::StoreMove => {
                repo.store_move(
                    a.str("name").map_err(bad)?,
                    a.opt_str("new_name").map_err(bad)?,
                    a.bool_or("delete", false).map_err(bad)?,
                    a.bool_or("undelete", false).map_err(bad)?,
                    a.bool_or("deleted", false).map_err(bad)?,
                    log,
                )?;
                Reply::Nil
            }
            // borg 2's Repository has no __len__; Python answers AttributeError, we say so.
            Method::Len => return Err(CallError::Unsupported("__len__ is not supported by borg 2 repositories".into())),
            Method::Negotiate | Method::Open | Method::Close | Method::InjectException | Method::Destroy => {
                unreachable!("handled above")
            }
        })
    }

    /// A `put` to be written by the session's writer threads (see [`super::puts`]): checked and
    /// decided now, with its value; `None` if it is to be run in order by [`Session::call`]
    /// instead (large values, or a store that cannot write from other threads).
    pub fn put_later<'r>(&mut self, req: &Request<'r>) -> Result<Option<LaterPut<'r>>, CallError> {
        let Some(repo) = self.repo.as_mut() else { return Ok(None) };
        let bad = |e| CallError::bad_arg(req.method, e);
        let (id, data) = (req.args.bytes("id").map_err(bad)?, req.args.bytes("data").map_err(bad)?);
        if data.len() >= super::puts::LATER_BELOW {
            return Ok(None);
        }
        if self.log.enabled(TRACE, Level::Debug) {
            self.log.debug(TRACE, &format!("rpc put (msgid {}, written by a writer thread)", req.msgid));
        }
        Ok(repo.put_later(id, data.len(), &self.log)?.map(|(w, key)| (w, data, key)))
    }

    /// Puts written by the writer threads succeeded (see [`Repository::note_written`]).
    pub fn note_written(&mut self, keys: &[WrittenKey]) {
        if let Some(repo) = self.repo.as_mut() {
            repo.note_written(keys);
        }
    }

    /// A put written by a writer thread failed (see [`Repository::note_write_error`]).
    pub fn note_write_error(&mut self, error: String) {
        if let Some(repo) = self.repo.as_mut() {
            repo.note_write_error(error);
        }
    }

    /// A `put` whose data (`len` bytes) is read from `data` as it arrives instead of from the
    /// request; the request's own `data` argument is ignored.
    pub fn put_from(&mut self, req: &Request<'_>, len: u64, data: &mut dyn std::io::Read) -> Result<Reply, CallError> {
        let repo = self.repo.as_mut().ok_or_else(|| CallError::InvalidRpcMethod(req.method.to_string()))?;
        let id = req.args.bytes("id").map_err(|e| CallError::bad_arg(req.method, e))?;
        if self.log.enabled(TRACE, Level::Debug) {
            self.log.debug(TRACE, &format!("rpc put (msgid {}, {len} bytes streamed)", req.msgid));
        }
        repo.put_from(id, len, data, &self.log)?;
        Ok(Reply::Nil)
    }

    /// A `store_store` whose value (`len` bytes) is read from `data` as it arrives instead of
    /// from the request; the request's own `value` argument is ignored.
    pub fn store_store_from(&mut self, req: &Request<'_>, len: u64, data: &mut dyn std::io::Read) -> Result<Reply, CallError> {
        let repo = self.repo.as_mut().ok_or_else(|| CallError::InvalidRpcMethod(req.method.to_string()))?;
        let name = req.args.str("name").map_err(|e| CallError::bad_arg(req.method, e))?;
        if self.log.enabled(LOGGER, Level::Debug) {
            self.log.debug(LOGGER, &format!("rpc store_store (msgid {}, {len} bytes streamed)", req.msgid));
        }
        repo.store_store_from(name, len, data, &self.log)?;
        Ok(Reply::Nil)
    }

    fn open(&mut self, req: &Request<'_>) -> Result<Reply, CallError> {
        let a = &req.args;
        let bad = |e| CallError::bad_arg("open", e);
        let requested = a.str("path").map_err(bad)?;
        if a.bool_or("v1_or_v2", false).map_err(bad)? {
            return Err(CallError::Unsupported(
                "borgd serves borg 2 repositories only; borg 1.x repositories (v1_or_v2) are not supported yet".into(),
            ));
        }
        // a second open closes the first repository, as Python's server replaces it.
        if let Some(old) = self.repo.take() {
            old.close(&self.log)?;
        }
        self.log.debug(LOGGER, &format!("Resolving repository path {requested:?}"));
        let path = paths::resolve(requested).map_err(|e| CallError::PathNotAllowed(format!("{requested} ({e})")))?;
        self.log.debug(LOGGER, &format!("Resolved repository path to {:?}", path.display().to_string()));
        if !paths::admitted(&path, &self.cfg.restrict_to_paths, &self.cfg.restrict_to_repositories) {
            return Err(CallError::PathNotAllowed(path.display().to_string()));
        }
        let lock_wait = a.opt_seconds("lock_wait").map_err(bad)?.unwrap_or(self.cfg.lock_wait).max(0.0);
        let opts = OpenOptions {
            create: a.bool_or("create", false).map_err(bad)?,
            lock: a.bool_or("lock", true).map_err(bad)?,
            exclusive: a.bool_or("exclusive", false).map_err(bad)?,
            lock_wait: Duration::from_secs_f64(lock_wait.min(1e9)),
            permissions: Permissions::for_mode(self.cfg.permissions),
            durability: self.cfg.durability,
            direct_io: self.cfg.direct_io,
            data_levels: self.cfg.data_levels,
        };
        let repo = Repository::open(&path, &opts, Owner::current(self.thread), &self.log)?;
        let id = repo.id();
        self.repo = Some(repo);
        self.opened = Some(path);
        Ok(Reply::Bytes(id.to_vec()))
    }
}

/// How many `store_list` items an answer holds in memory (~100 bytes each); a longer one is
/// spooled (see [`ListAnswer`]). The b21 client lists only `archives`, `cache` and `config`.
const HELD_ITEMS: usize = 10_000;

/// How many `list` ids an answer holds in memory (40 bytes each): the b21 client's page, so its
/// lists never touch a spool; a client asking for more (or for all) is answered from one.
const HELD_IDS: usize = 100_000;

fn spool_error(source: std::io::Error) -> crate::store::Error {
    crate::spool::error("spool the answer in", source)
}

/// `list(limit, marker)`: read from the repository a page of at most [`HELD_IDS`] at a time,
/// so an answer of any length is built with bounded memory.
fn list_answer(repo: &mut Repository, limit: Option<usize>, marker: Option<&[u8]>, log: &Log) -> Result<Reply, CallError> {
    let mut left = limit.unwrap_or(usize::MAX);
    let mut answer = ListAnswer::new(HELD_IDS, rpc::encode_id);
    let mut after: Option<[u8; 32]> = None;
    loop {
        let want = left.min(HELD_IDS);
        let page = repo.list(Some(want), after.as_ref().map(|a| &a[..]).or(marker), log)?;
        let got = page.len();
        left -= got;
        let last = got < want || left == 0;
        if last && after.is_none() {
            return Ok(Reply::Ids(page)); // one page: the client's usual answer, as it is
        }
        after = page.last().map(|(id, _)| *id);
        for item in page {
            answer.push(item).map_err(|e| CallError::from(spool_error(e)))?;
        }
        if last {
            break;
        }
    }
    answer.finish(Reply::Ids).map_err(|e| CallError::from(spool_error(e)))
}

/// The exceptions `inject_exception(kind)` raises, as in the b21 server; `None` for unknown kinds.
fn injected(kind: &str) -> Option<CallError> {
    let (s1, s2) = ("test string".to_string(), "test string2".to_string());
    Some(match kind {
        "DoesNotExist" => repository::Error::DoesNotExist(s1).into(),
        "AlreadyExists" => repository::Error::AlreadyExists(s1).into(),
        "CheckNeeded" => repository::Error::CheckNeeded(s1).into(),
        "IntegrityError" => repository::Error::Integrity(s1).into(),
        "PathNotAllowed" => CallError::PathNotAllowed("foo".into()),
        "ObjectNotFound" => repository::Error::ObjectNotFound(s1, s2).into(),
        "StoreObjectNotFound" => crate::store::Error::ObjectNotFound(s1).into(),
        "InvalidRPCMethod" => CallError::InvalidRpcMethod(s1),
        "divide" => CallError::ZeroDivision,
        _ => return None,
    })
}
