//! borg's msgpack RPC: message types, the method table and how answers are encoded.
//!
//! Requests are maps `{"i": msgid, "m": method, "a": {named args}}`; answers are
//! `{"i": msgid, "r": result}` or an exception map (see [`wire`]); log records travel as
//! `{"l": {...}}` (see `crate::log`). Arguments are named, never positional; unknown ones are
//! ignored, as the client expects.

pub mod frame;
pub mod msgpack;
pub mod wire;

use msgpack::{encode, Value};

/// borg's version tuple for 2.0.0b21 (`parse_version`): beta is -3.
pub const SERVER_VERSION: [i64; 5] = [2, 0, 0, -3, 21];

/// Every method a borg 2.0.0b21 client may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `negotiate`: the first call: the client's version for ours.
    Negotiate,
    /// `open`: open (or create) a repository and take its lock.
    Open,
    /// `close`: give the lock back, everything durable first.
    Close,
    /// `info`: the repository's id and version.
    Info,
    /// `list`: ids and sizes of the data objects, in pages.
    List,
    /// `get`: one data object (or just its header and metadata).
    Get,
    /// `put`: store one data object.
    Put,
    /// `delete`: remove one data object.
    Delete,
    /// `check`: verify every data object (or a part), repair if asked.
    Check,
    /// `destroy`: delete the whole repository.
    Destroy,
    /// `save_key`: store the repokey.
    SaveKey,
    /// `load_key`: read the repokey.
    LoadKey,
    /// `break_lock`: remove every lock, stale or not.
    BreakLock,
    /// `get_manifest`: read `config/manifest`.
    GetManifest,
    /// `put_manifest`: write `config/manifest`.
    PutManifest,
    /// `store_list`: list a store namespace (`archives/`, `cache/`, ...).
    StoreList,
    /// `store_load`: read one store item.
    StoreLoad,
    /// `store_store`: write one store item (a chunk index is checked first).
    StoreStore,
    /// `store_delete`: remove one store item, or one soft-deleted (`deleted=True`).
    StoreDelete,
    /// `store_move`: rename, soft-delete or undelete one store item.
    StoreMove,
    /// `inject_exception`: the client's tests make the server raise on purpose.
    InjectException,
    /// `__len__`: in b21's method table, but its borg 2 repository has no such method: an error.
    Len,
}

impl Method {
    /// The method of a wire name; `None` for anything not in the b21 server's table.
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "negotiate" => Method::Negotiate,
            "open" => Method::Open,
            "close" => Method::Close,
            "info" => Method::Info,
            "list" => Method::List,
            "get" => Method::Get,
            "put" => Method::Put,
            "delete" => Method::Delete,
            "check" => Method::Check,
            "destroy" => Method::Destroy,
            "save_key" => Method::SaveKey,
            "load_key" => Method::LoadKey,
            "break_lock" => Method::BreakLock,
            "get_manifest" => Method::GetManifest,
            "put_manifest" => Method::PutManifest,
            "store_list" => Method::StoreList,
            "store_load" => Method::StoreLoad,
            "store_store" => Method::StoreStore,
            "store_delete" => Method::StoreDelete,
            "store_move" => Method::StoreMove,
            "inject_exception" => Method::InjectException,
            "__len__" => Method::Len,
            _ => return None,
        })
    }

    /// Whether the method may be called before a repository is open.
    pub fn allowed_before_open(self) -> bool {
        matches!(self, Method::Negotiate | Method::Open | Method::Close)
    }
}

/// A request that at least carried a usable message id (so it can be answered).
#[derive(Debug)]
pub struct Request<'a> {
    /// The id the answer must carry (the client matches answers by it).
    pub msgid: i64,
    /// The method's wire name, checked against the table at dispatch.
    pub method: &'a str,
    /// The named arguments.
    pub args: Args<'a>,
}

/// Why a message cannot be taken as a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not even a message id: the message cannot be answered, the connection must end.
    #[error("unexpected RPC data format from client: {0}")]
    Unanswerable(String),
    /// A message id, but no valid method or arguments: answered with an error.
    #[error("{why}")]
    Malformed {
        /// The id to answer with the error.
        msgid: i64,
        /// What is wrong with the request.
        why: String,
    },
}

impl<'a> Request<'a> {
    /// Interprets a decoded message.
    pub fn from_value(v: Value<'a>) -> Result<Request<'a>, RequestError> {
        let Value::Map(entries) = v else {
            return Err(RequestError::Unanswerable(format!("expected a map, got {}", v.type_name())));
        };
        let mut msgid = None;
        let mut method = None;
        let mut args = None;
        for (k, val) in entries {
            match k {
                Value::Str("i") => msgid = Some(val),
                Value::Str("m") => method = Some(val),
                Value::Str("a") => args = Some(val),
                _ => {}
            }
        }
        let msgid = match msgid {
            Some(Value::Int(i)) => i64::try_from(i).map_err(|_| RequestError::Unanswerable("message id out of range".into()))?,
            Some(other) => return Err(RequestError::Unanswerable(format!("message id must be an int, got {}", other.type_name()))),
            None => return Err(RequestError::Unanswerable("message has no id (\"i\")".into())),
        };
        let method = match method {
            Some(Value::Str(m)) => m,
            Some(other) => return Err(RequestError::Malformed { msgid, why: format!("method name must be a str, got {}", other.type_name()) }),
            None => return Err(RequestError::Malformed { msgid, why: "message has no method (\"m\")".into() }),
        };
        let args = match args {
            Some(Value::Map(entries)) => {
                let mut named = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    match k {
                        Value::Str(name) => named.push((name, v)),
                        other => {
                            return Err(RequestError::Malformed { msgid, why: format!("argument names must be str, got {}", other.type_name()) })
                        }
                    }
                }
                Args(named)
            }
            None | Some(Value::Nil) => Args(Vec::new()),
            Some(other) => return Err(RequestError::Malformed { msgid, why: format!("arguments must be a map, got {}", other.type_name()) }),
        };
        Ok(Request { msgid, method, args })
    }
}

/// A wrongly typed or missing argument.
#[derive(Debug, thiserror::Error)]
#[error("argument '{name}' {why}")]
pub struct ArgError {
    /// The argument's name.
    pub name: &'static str,
    /// What is wrong with it (missing, or its type).
    pub why: String,
}

/// Named arguments of a request, with typed accessors that name the argument on error.
#[derive(Debug, Default)]
pub struct Args<'a>(Vec<(&'a str, Value<'a>)>);

impl<'a> Args<'a> {
    fn get(&self, name: &str) -> Option<&Value<'a>> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    fn wrong(name: &'static str, want: &str, got: &Value<'_>) -> ArgError {
        ArgError { name, why: format!("must be {want}, got {}", got.type_name()) }
    }

    /// A required binary argument.
    pub fn bytes(&self, name: &'static str) -> Result<&'a [u8], ArgError> {
        match self.get(name) {
            Some(Value::Bin(b)) => Ok(b),
            Some(other) => Err(Self::wrong(name, "bytes", other)),
            None => Err(ArgError { name, why: "is missing".into() }),
        }
    }

    /// An optional binary argument (`None` also for nil).
    pub fn opt_bytes(&self, name: &'static str) -> Result<Option<&'a [u8]>, ArgError> {
        match self.get(name) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Bin(b)) => Ok(Some(b)),
            Some(other) => Err(Self::wrong(name, "bytes or None", other)),
        }
    }

    /// A required string argument (a path may also come as bytes, as Python allows).
    pub fn str(&self, name: &'static str) -> Result<&'a str, ArgError> {
        match self.opt_str(name)? {
            Some(s) => Ok(s),
            None => Err(ArgError { name, why: "is missing".into() }),
        }
    }

    /// An optional string argument.
    pub fn opt_str(&self, name: &'static str) -> Result<Option<&'a str>, ArgError> {
        match self.get(name) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(Value::Bin(b)) => std::str::from_utf8(b).map(Some).map_err(|_| ArgError { name, why: "is not valid utf-8".into() }),
            Some(other) => Err(Self::wrong(name, "str", other)),
        }
    }

    /// A boolean argument with Python truthiness for nil and ints.
    pub fn bool_or(&self, name: &'static str, default: bool) -> Result<bool, ArgError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Nil) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Int(i)) => Ok(*i != 0),
            Some(other) => Err(Self::wrong(name, "bool", other)),
        }
    }

    /// An optional non-negative integer argument.
    pub fn opt_uint(&self, name: &'static str) -> Result<Option<u64>, ArgError> {
        match self.get(name) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Int(i)) => u64::try_from(*i).map(Some).map_err(|_| ArgError { name, why: "must not be negative".into() }),
            Some(other) => Err(Self::wrong(name, "int", other)),
        }
    }

    /// An optional number of seconds (int or float).
    pub fn opt_seconds(&self, name: &'static str) -> Result<Option<f64>, ArgError> {
        match self.get(name) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i as f64)),
            Some(Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(other) => Err(Self::wrong(name, "a number of seconds", other)),
        }
    }

    /// The raw value of an argument (for `negotiate`'s free-form client data).
    pub fn raw(&self, name: &str) -> Option<&Value<'a>> {
        self.get(name)
    }
}

/// An argument value of a request a client sends (the benchmark and the raw-protocol tests speak
/// the client's side of the protocol).
#[derive(Debug, Clone, Copy)]
pub enum ArgValue<'a> {
    /// A Python `str` (msgpack str).
    Str(&'a str),
    /// A Python `bytes` (msgpack bin).
    Bin(&'a [u8]),
    /// A Python `bool`.
    Bool(bool),
    /// A Python `int`.
    Int(i64),
    /// Python `None`.
    Nil,
}

/// Encodes a request `{"i": msgid, "m": method, "a": {named args}}` as the borg client does.
pub fn encode_request(msgid: i64, method: &str, args: &[(&str, ArgValue<'_>)]) -> Vec<u8> {
    let payload: usize = args.iter().map(|(_, a)| if let ArgValue::Bin(b) = a { b.len() } else { 16 }).sum();
    let mut out = Vec::with_capacity(64 + payload);
    encode::map(&mut out, 3);
    encode::str(&mut out, "i");
    encode::int(&mut out, msgid);
    encode::str(&mut out, "m");
    encode::str(&mut out, method);
    encode::str(&mut out, "a");
    encode::map(&mut out, args.len());
    for (k, v) in args {
        encode::str(&mut out, k);
        match v {
            ArgValue::Str(s) => encode::str(&mut out, s),
            ArgValue::Bin(b) => encode::bin(&mut out, b),
            ArgValue::Bool(b) => encode::bool(&mut out, *b),
            ArgValue::Int(i) => encode::int(&mut out, *i),
            ArgValue::Nil => encode::nil(&mut out),
        }
    }
    out
}

/// A successful result, in the shapes the b21 server returns.
#[derive(Debug)]
pub enum Reply {
    /// Python `None`.
    Nil,
    /// A Python `bool`.
    Bool(bool),
    /// A Python `bytes` (a key, a manifest, a store item).
    Bytes(Vec<u8>),
    /// `negotiate`: `{"server_version": (2, 0, 0, -3, 21)}`.
    Version,
    /// `info`: `{"id": bytes, "version": int}`.
    Info {
        /// The repository's id.
        id: [u8; 32],
        /// The repository's version (3 for borg 2).
        version: u32,
    },
    /// `list`: `[(id, size), ...]`.
    Ids(Vec<([u8; 32], u64)>),
    /// `store_list`: `[(name, exists, size, directory), ...]` (ItemInfo tuples).
    Items(Vec<crate::store::ItemInfo>),
    /// `get`: an object, possibly still in its file.
    Object(crate::store::Object),
    /// A list answer too long to hold (see [`ListAnswer`]): its `count` items, already
    /// encoded, in the first `len` bytes of a temp file.
    Spooled {
        /// How many items.
        count: usize,
        /// The temp file holding them, encoded.
        file: std::fs::File,
        /// How many of its bytes are theirs.
        len: u64,
    },
}

/// A list answer (`list`, `store_list`) built item by item: held in memory up to `held`
/// items, then encoded into a temp file ([`crate::spool`]) as the rest are found, so that a
/// listing of a whole large repository never is in memory at once. The b21 client asks for
/// `list` pages of 100 000 ids and lists only small namespaces with `store_list`; a client
/// asking for more gets the same answer, from a file.
pub struct ListAnswer<T> {
    held: Vec<T>,
    max_held: usize,
    spool: Option<crate::spool::Spool>,
    encode: fn(&T, &mut Vec<u8>),
    scratch: Vec<u8>,
}

impl<T> ListAnswer<T> {
    /// An empty answer that holds up to `max_held` items and encodes each with `encode`.
    pub fn new(max_held: usize, encode: fn(&T, &mut Vec<u8>)) -> ListAnswer<T> {
        ListAnswer { held: Vec::new(), max_held, spool: None, encode, scratch: Vec::new() }
    }

    /// Adds the next item.
    pub fn push(&mut self, item: T) -> std::io::Result<()> {
        let mut spool = match self.spool.take() {
            Some(spool) => spool,
            None if self.held.len() < self.max_held => {
                self.held.push(item);
                return Ok(());
            }
            None => {
                // the first item past the bound: what was held goes to the spool first
                let mut spool = crate::spool::Spool::new()?;
                for held in std::mem::take(&mut self.held) {
                    self.write(&mut spool, &held)?;
                }
                spool
            }
        };
        self.write(&mut spool, &item)?;
        self.spool = Some(spool);
        Ok(())
    }

    /// Encodes `item` into `spool`.
    fn write(&mut self, spool: &mut crate::spool::Spool, item: &T) -> std::io::Result<()> {
        self.scratch.clear();
        (self.encode)(item, &mut self.scratch);
        spool.push(&self.scratch)
    }

    /// The finished answer: the held items as `held` makes them a reply, or the spool.
    pub fn finish(self, held: fn(Vec<T>) -> Reply) -> std::io::Result<Reply> {
        match self.spool {
            None => Ok(held(self.held)),
            Some(spool) => {
                let (file, count, len) = spool.finish()?;
                Ok(Reply::Spooled { count, file, len })
            }
        }
    }
}

/// Encodes one `store_list` item: `(name, exists, size, directory)`.
pub fn encode_item(i: &crate::store::ItemInfo, out: &mut Vec<u8>) {
    encode::array(out, 4);
    encode::str(out, &i.name);
    encode::bool(out, i.exists);
    encode::uint(out, i.size);
    encode::bool(out, i.directory);
}

/// Encodes one `list` item: `(id, size)`.
pub fn encode_id(item: &([u8; 32], u64), out: &mut Vec<u8>) {
    encode::array(out, 2);
    encode::bin(out, &item.0);
    encode::uint(out, item.1);
}

/// What follows an encoded answer header: nothing, bytes, the contents of a file, or the items
/// of a `list` answer (encoded as they are written, never all at once).
pub enum Body<'r> {
    /// Nothing: the header was the whole answer.
    None,
    /// These bytes.
    Bytes(&'r [u8]),
    /// This many bytes of this file, from its current offset (sent with `sendfile`).
    File(&'r std::fs::File, u64),
    /// These `(id, size)` pairs, encoded as they are written.
    Ids(&'r [([u8; 32], u64)]),
}

/// Encodes `list` items (`(id, size)` pairs) — the part of a `list` answer after its header.
pub fn encode_ids(ids: &[([u8; 32], u64)], out: &mut Vec<u8>) {
    for item in ids {
        encode_id(item, out);
    }
}

/// Encodes `{"i": msgid, "r": ...}`; a binary result's bytes (or file) are returned as the
/// [`Body`] to send after the header, so they are never copied into the header buffer.
pub fn encode_reply<'r>(msgid: i64, reply: &'r Reply, out: &mut Vec<u8>) -> Body<'r> {
    encode::map(out, 2);
    encode::str(out, "i");
    encode::int(out, msgid);
    encode::str(out, "r");
    match reply {
        Reply::Nil => encode::nil(out),
        Reply::Bool(b) => encode::bool(out, *b),
        Reply::Bytes(b) | Reply::Object(crate::store::Object::Bytes(b)) => {
            encode::bin_header(out, b.len());
            return Body::Bytes(b);
        }
        Reply::Object(crate::store::Object::File(f, len)) => {
            encode::bin_header(out, *len as usize);
            return Body::File(f, *len);
        }
        Reply::Version => {
            encode::map(out, 1);
            encode::str(out, "server_version");
            encode::array(out, SERVER_VERSION.len());
            for v in SERVER_VERSION {
                encode::int(out, v);
            }
        }
        Reply::Info { id, version } => {
            encode::map(out, 2);
            encode::str(out, "id");
            encode::bin(out, id);
            encode::str(out, "version");
            encode::uint(out, u64::from(*version));
        }
        Reply::Ids(ids) => {
            encode::array(out, ids.len());
            return Body::Ids(ids);
        }
        Reply::Items(items) => {
            encode::array(out, items.len());
            for i in items {
                encode_item(i, out);
            }
        }
        Reply::Spooled { count, file, len } => {
            encode::array(out, *count);
            return Body::File(file, *len);
        }
    }
    Body::None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes an answer puts on the wire, its body read from its file where it has one.
    fn wire(reply: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        match encode_reply(7, reply, &mut out) {
            Body::None => {}
            Body::Bytes(b) => out.extend_from_slice(b),
            Body::Ids(ids) => encode_ids(ids, &mut out),
            Body::File(f, len) => {
                let mut body = vec![0u8; len as usize];
                std::os::unix::fs::FileExt::read_exact_at(f, &mut body, 0).unwrap();
                out.extend_from_slice(&body);
            }
        }
        out
    }

    /// A list answer past what it holds goes to a spool, and is the same answer on the wire.
    #[test]
    fn long_list_answers_are_spooled_and_the_same_on_the_wire() {
        let items: Vec<crate::store::ItemInfo> = (0..50).map(|i| crate::store::ItemInfo { name: format!("{i:064x}"), exists: true, size: i, directory: i % 7 == 0 }).collect();
        let ids: Vec<([u8; 32], u64)> = (0..50u8).map(|i| ([i; 32], u64::from(i) * 1000)).collect();
        for max_held in [0, 1, 49, 50, 1000] {
            let mut a = ListAnswer::new(max_held, encode_item);
            let mut b = ListAnswer::new(max_held, encode_id);
            for (item, id) in items.iter().zip(&ids) {
                a.push(item.clone()).unwrap();
                b.push(*id).unwrap();
            }
            let (a, b) = (a.finish(Reply::Items).unwrap(), b.finish(Reply::Ids).unwrap());
            assert_eq!(matches!(a, Reply::Spooled { .. }), max_held < 50, "held {max_held}");
            assert_eq!(matches!(b, Reply::Spooled { .. }), max_held < 50, "held {max_held}");
            assert_eq!(wire(&a), wire(&Reply::Items(items.clone())), "held {max_held}");
            assert_eq!(wire(&b), wire(&Reply::Ids(ids.clone())), "held {max_held}");
        }
    }

    fn request(bytes: &[u8]) -> Result<Request<'_>, RequestError> {
        Request::from_value(msgpack::parse(bytes).unwrap())
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let mut b = Vec::new();
        encode::array(&mut b, 0);
        assert!(matches!(request(&b), Err(RequestError::Unanswerable(_))));
        let mut b = Vec::new();
        encode::map(&mut b, 1);
        encode::str(&mut b, "m");
        encode::str(&mut b, "get");
        assert!(matches!(request(&b), Err(RequestError::Unanswerable(_))));
        let mut b = Vec::new();
        encode::map(&mut b, 2);
        encode::str(&mut b, "i");
        encode::int(&mut b, 3);
        encode::str(&mut b, "m");
        encode::int(&mut b, 5);
        assert!(matches!(request(&b), Err(RequestError::Malformed { msgid: 3, .. })));
        let mut b = Vec::new();
        encode::map(&mut b, 3);
        encode::str(&mut b, "i");
        encode::int(&mut b, 4);
        encode::str(&mut b, "m");
        encode::str(&mut b, "get");
        encode::str(&mut b, "a");
        encode::map(&mut b, 2);
        encode::str(&mut b, "id");
        encode::str(&mut b, "not bytes");
        encode::str(&mut b, "unknown_arg");
        encode::int(&mut b, 1);
        let r = request(&b).unwrap();
        assert_eq!((r.msgid, r.method), (4, "get"));
        assert!(r.args.bytes("id").is_err());
        assert!(r.args.bool_or("read_data", true).unwrap());
    }

    #[test]
    fn negotiate_reply_carries_the_b21_version_tuple() {
        let mut out = Vec::new();
        assert!(matches!(encode_reply(1, &Reply::Version, &mut out), Body::None));
        let v = msgpack::parse(&out).unwrap();
        let sv = v.get("r").unwrap().get("server_version").unwrap();
        assert_eq!(sv, &Value::Array(vec![Value::Int(2), Value::Int(0), Value::Int(0), Value::Int(-3), Value::Int(21)]));
    }
}
