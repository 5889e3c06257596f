//! Hostile clients: raw msgpack sent straight to `borgd serve`, for everything a real borg client
//! never sends (or never sends on demand, such as hundreds of puts and a read of one of them in
//! a single write). Each case must get a clear error answer or a clean disconnect — never a panic,
//! never a file touched outside the allowed tree, never a lock left behind — and the repository
//! must still pass Python borg's own `borg check` afterwards.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use borgd::rpc::msgpack::{self, encode, Value};
use borgd::rpc::ArgValue as Arg;
use support::{files_below, Env};

struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    buf: Vec<u8>,
    next_id: i64,
}

impl Raw {
    fn start(args: &[&str]) -> Raw {
        let mut child = Command::new(env!("CARGO_BIN_EXE_borgd"))
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        Raw { child, stdin, stdout, buf: Vec::new(), next_id: 0 }
    }

    fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(bytes)?;
        w.flush()
    }

    fn request(&mut self, method: &str, args: &[(&str, Arg<'_>)]) -> Vec<u8> {
        self.next_id += 1;
        borgd::rpc::encode_request(self.next_id, method, args)
    }

    /// Reads the next non-log message; `None` when the server closed the connection.
    fn read_answer(&mut self) -> Option<Vec<u8>> {
        loop {
            match msgpack::check(&self.buf, 1 << 30) {
                Ok(n) => {
                    let msg: Vec<u8> = self.buf.drain(..n).collect();
                    if msgpack::parse(&msg).unwrap().get("l").is_some() {
                        continue; // a log record
                    }
                    return Some(msg);
                }
                Err(msgpack::DecodeError::Incomplete { .. }) => {
                    let mut chunk = [0u8; 65536];
                    let n = self.stdout.read(&mut chunk).unwrap();
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => panic!("server sent invalid msgpack: {e}"),
            }
        }
    }

    /// Calls and returns `Ok(result bytes)` or `Err((exception class, exception_short))`.
    fn call(&mut self, method: &str, args: &[(&str, Arg<'_>)]) -> Result<Vec<u8>, (String, String)> {
        let req = self.request(method, args);
        self.send_raw(&req).unwrap();
        let answer = self.read_answer().expect("an answer");
        let v = msgpack::parse(&answer).unwrap();
        assert_eq!(v.get("i"), Some(&Value::Int(i128::from(self.next_id))));
        if let Some(Value::Str(class)) = v.get("exception_class") {
            let short = match v.get("exception_short") {
                Some(Value::Array(a)) => a.iter().map(|x| if let Value::Str(s) = x { s.to_string() } else { String::new() }).collect::<Vec<_>>().join("\n"),
                _ => String::new(),
            };
            assert_eq!(v.get("exception_trace").map(|t| matches!(t, Value::Bool(_))), Some(true));
            return Err((class.to_string(), short));
        }
        Ok(answer)
    }

    fn error_class(&mut self, method: &str, args: &[(&str, Arg<'_>)]) -> String {
        match self.call(method, args) {
            Ok(_) => panic!("{method} unexpectedly succeeded"),
            Err((class, short)) => {
                assert!(!short.is_empty(), "{class} without a message");
                class
            }
        }
    }

    /// Closes our side and waits; returns (exit success, stderr).
    fn finish(mut self) -> (bool, String) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        let _ = self.stdout.read_to_end(&mut rest);
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!err.contains("panicked"), "borgd panicked: {err}");
        (status.success(), err)
    }
}

fn setup() -> (Env, PathBuf, PathBuf, PathBuf) {
    let env = Env::new();
    let allowed = env.path("allowed");
    let outside = env.path("outside");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(outside.join("config")).unwrap();
    std::fs::write(outside.join("config/manifest"), b"not yours").unwrap();
    let repo = allowed.join("repo");
    // made locally by Python borg, so Python's full `borg check` can judge it afterwards
    env.ok(&["-r", repo.to_str().unwrap(), "repo-create", "-e", "none"]);
    (env, allowed, outside, repo)
}

fn open(raw: &mut Raw, repo: &Path) {
    raw.call("negotiate", &[("client_data", Arg::Str("hostile"))]).unwrap();
    raw.call("open", &[("path", Arg::Str(repo.to_str().unwrap())), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(1))])
        .unwrap_or_else(|e| panic!("open {}: {e:?}", repo.display()));
}

fn assert_outside_untouched(outside: &Path) {
    let files = files_below(outside);
    assert_eq!(files, vec![outside.join("config/manifest")], "something was written outside");
    assert_eq!(std::fs::read(outside.join("config/manifest")).unwrap(), b"not yours");
}

#[test]
fn hostile_paths_and_names_get_clear_errors_and_touch_nothing_outside() {
    let (env, allowed, outside, repo) = setup();
    let mut raw = Raw::start(&["--restrict-to-path", allowed.to_str().unwrap()]);
    // methods before open, unknown methods
    assert_eq!(raw.error_class("get", &[("id", Arg::Bin(&[0; 32]))]), "InvalidRPCMethod");
    assert_eq!(raw.error_class("rm_rf", &[]), "InvalidRPCMethod");
    // paths out of the allowed tree: .., symlinks, siblings sharing a prefix
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    for p in [format!("{}/../outside", allowed.display()), format!("{}/link", allowed.display()), format!("{}bar", allowed.display()), "/".to_string()] {
        assert_eq!(raw.error_class("open", &[("path", Arg::Str(&p)), ("create", Arg::Bool(true))]), "PathNotAllowed", "{p}");
    }
    open(&mut raw, &repo);
    // store names a client must never be able to use
    let long = "config/".to_string() + &"x".repeat(100);
    for name in ["/etc/passwd", "../outside/config/manifest", "config/../../outside", "config/a b", "config\\x", "config/Manifest", "config/x.tmp", "locks/x.hid", long.as_str(), "nonamespace", ""] {
        let class = raw.error_class("store_store", &[("name", Arg::Str(name)), ("value", Arg::Bin(b"evil"))]);
        assert_eq!(class, "ValueError", "{name:?}");
        let class = raw.error_class("store_load", &[("name", Arg::Str(name))]);
        assert!(class == "ValueError", "{name:?}: {class}");
    }
    // wrong argument types and missing arguments
    assert_eq!(raw.error_class("get", &[("id", Arg::Str("not bytes"))]), "TypeError");
    assert_eq!(raw.error_class("put", &[("id", Arg::Bin(&[1; 32]))]), "TypeError");
    assert_eq!(raw.error_class("list", &[("limit", Arg::Int(-5))]), "TypeError");
    assert_eq!(raw.error_class("get", &[("id", Arg::Bin(&[1; 5]))]), "IntegrityError");
    // put above MAX_DATA_SIZE
    let big = vec![0u8; 20_971_480];
    assert_eq!(raw.error_class("put", &[("id", Arg::Bin(&[2; 32])), ("data", Arg::Bin(&big))]), "IntegrityError");
    // a symlink swapped in after open leads nowhere
    std::fs::rename(repo.join("config"), env.path("config-moved")).unwrap();
    std::os::unix::fs::symlink(outside.join("config"), repo.join("config")).unwrap();
    let class = raw.error_class("get_manifest", &[]);
    assert_ne!(class, "NoManifestError", "must not look through the symlink");
    raw.error_class("put_manifest", &[("data", Arg::Bin(b"planted"))]);
    raw.error_class("store_move", &[("name", Arg::Str("config/manifest")), ("new_name", Arg::Str("data/x"))]);
    assert_outside_untouched(&outside);
    raw.call("close", &[]).unwrap();
    let (ok, err) = raw.finish();
    assert!(ok, "{err}");
    assert!(files_below(&repo.join("locks")).is_empty());
    std::fs::remove_file(repo.join("config")).unwrap();
    std::fs::rename(env.path("config-moved"), repo.join("config")).unwrap();
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn malformed_messages_end_the_session_cleanly_and_release_the_lock() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("reserved byte", vec![0xc1]),
        ("a non-map message", { let mut v = Vec::new(); encode::array(&mut v, 2); encode::int(&mut v, 1); encode::int(&mut v, 2); v }),
        ("a map without id", { let mut v = Vec::new(); encode::map(&mut v, 1); encode::str(&mut v, "m"); encode::str(&mut v, "close"); v }),
        ("an ext type", vec![0xd4, 0x01, 0x02]),
        ("invalid utf-8 in a str", vec![0xa2, 0xff, 0xfe]),
        ("gigabytes announced", vec![0xc6, 0xff, 0xff, 0xff, 0xf0, 1, 2, 3]),
        ("nesting bomb", vec![0x91; 10_000]),
    ];
    let (env, _allowed, _outside, repo) = setup();
    for (what, bytes) in cases {
        let mut raw = Raw::start(&[]);
        open(&mut raw, &repo);
        assert!(!files_below(&repo.join("locks")).is_empty());
        let _ = raw.send_raw(&bytes);
        assert!(raw.read_answer().is_none(), "{what}: the server hangs up");
        let (ok, err) = raw.finish();
        assert!(!ok, "{what}: a protocol violation is an error exit");
        assert!(err.contains("borgd:"), "{what}: a clear message on stderr: {err}");
        assert!(files_below(&repo.join("locks")).is_empty(), "{what}: lock released");
    }
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn malformed_but_answerable_requests_get_errors() {
    let (_env, _allowed, _outside, repo) = setup();
    let mut raw = Raw::start(&[]);
    // a method that is not a str, arguments that are not a map
    let mut v = Vec::new();
    encode::map(&mut v, 2);
    encode::str(&mut v, "i");
    encode::int(&mut v, 77);
    encode::str(&mut v, "m");
    encode::int(&mut v, 5);
    raw.send_raw(&v).unwrap();
    let answer = raw.read_answer().unwrap();
    let a = msgpack::parse(&answer).unwrap();
    assert_eq!(a.get("i"), Some(&Value::Int(77)));
    assert_eq!(a.get("exception_class"), Some(&Value::Str("TypeError")));
    let mut v = Vec::new();
    encode::map(&mut v, 3);
    encode::str(&mut v, "i");
    encode::int(&mut v, 78);
    encode::str(&mut v, "m");
    encode::str(&mut v, "open");
    encode::str(&mut v, "a");
    encode::array(&mut v, 0);
    raw.send_raw(&v).unwrap();
    let answer = raw.read_answer().unwrap();
    assert_eq!(msgpack::parse(&answer).unwrap().get("exception_class"), Some(&Value::Str("TypeError")));
    // still usable afterwards
    open(&mut raw, &repo);
    assert_eq!(raw.error_class("open", &[("path", Arg::Str(repo.to_str().unwrap())), ("create", Arg::Bool(true))]), "AlreadyExists");
    open(&mut raw, &repo);
    raw.call("close", &[]).unwrap();
    assert!(raw.finish().0);
}

/// The head of a request whose last argument is a binary of `len` bytes (the bytes follow).
fn head_of(raw: &mut Raw, method: &str, args: &[(&str, &str)], last: &str, len: usize) -> Vec<u8> {
    let mut head = Vec::new();
    raw.next_id += 1;
    encode::map(&mut head, 3);
    encode::str(&mut head, "i");
    encode::int(&mut head, raw.next_id);
    encode::str(&mut head, "m");
    encode::str(&mut head, method);
    encode::str(&mut head, "a");
    encode::map(&mut head, args.len() + 1);
    for (k, v) in args {
        encode::str(&mut head, k);
        encode::str(&mut head, v);
    }
    encode::str(&mut head, last);
    encode::bin_header(&mut head, len);
    head
}

/// The server's peak resident memory so far, in KiB.
fn peak_kib(raw: &Raw) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{}/status", raw.child.id()))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
}

#[test]
fn memory_stays_bounded_by_the_message_limit() {
    let (_env, _allowed, _outside, repo) = setup();
    let mut raw = Raw::start(&["--max-message-mib", "4"]);
    open(&mut raw, &repo);
    // a 64 MiB message borgd does not stream (a manifest) is refused as soon as its header
    // arrives, not buffered
    let head = head_of(&mut raw, "put_manifest", &[], "data", 64 << 20);
    raw.send_raw(&head).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut sent = 0;
    for _ in 0..64 {
        if raw.send_raw(&chunk).is_err() {
            break; // the server hung up, as it should
        }
        sent += 1;
    }
    let hwm_kib = peak_kib(&raw);
    let (ok, err) = raw.finish();
    assert!(!ok && err.contains("exceeds the limit"), "{err}");
    if let Some(kib) = hwm_kib {
        assert!(kib < 32 * 1024, "peak RSS {kib} KiB after {sent} MiB sent: memory must stay bounded");
    }
    assert!(files_below(&repo.join("locks")).is_empty());
}

/// `store_store` values larger than the message limit are streamed to disk, as Python's server
/// accepts them (up to 4 GiB), and never held in memory: an item is stored as it arrives; a
/// chunk index is received into a temp file and checked there — one listing objects that are
/// not in the repository is refused, leaving nothing behind.
#[test]
fn large_store_store_values_are_streamed_not_held() {
    let (env, _allowed, _outside, repo) = setup();
    let mut raw = Raw::start(&["--max-message-mib", "4"]);
    open(&mut raw, &repo);
    let value: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    let head = head_of(&mut raw, "store_store", &[("name", "cache/large")], "value", value.len());
    raw.send_raw(&head).unwrap();
    raw.send_raw(&value).unwrap();
    let answer = raw.read_answer().expect("an answer");
    assert_eq!(msgpack::parse(&answer).unwrap().get("r"), Some(&Value::Nil));
    assert!(std::fs::read(repo.join("cache/large")).unwrap() == value, "stored as sent");
    let loaded = raw.call("store_load", &[("name", Arg::Str("cache/large"))]).unwrap();
    assert!(msgpack::parse(&loaded).unwrap().get("r") == Some(&Value::Bin(&value)), "loaded as stored");

    // a chunk index of 1.5 million ids (60 MB) none of which the repository holds
    let ids: Vec<[u8; 32]> = (0..1_500_000u32).map(|i| std::array::from_fn(|k| (i.wrapping_mul(2_654_435_761) >> (8 * (k % 4))) as u8 ^ k as u8)).collect();
    let index = borgd::repository::chunkindex::serialize(ids.iter());
    let name = borgd::repository::chunkindex::cache_name(&index);
    drop(ids);
    let head = head_of(&mut raw, "store_store", &[("name", &name)], "value", index.len());
    raw.send_raw(&head).unwrap();
    raw.send_raw(&index).unwrap();
    let answer = raw.read_answer().expect("an answer");
    let v = msgpack::parse(&answer).unwrap();
    let text = format!("{v:?}");
    assert!(text.contains("1500000 objects that are not in the repository"), "{text}");
    let hwm_kib = peak_kib(&raw);
    raw.call("close", &[]).unwrap();
    assert!(raw.finish().0);
    if let Some(kib) = hwm_kib {
        // buffers, the ids of one pass (8 MiB) and the read pieces; not the 48 or 60 MB
        assert!(kib < 24 * 1024, "peak RSS {kib} KiB: large values must not be held in memory");
    }
    assert!(!repo.join("cache").join(name.trim_start_matches("cache/")).exists(), "refused, not stored");
    assert!(!files_below(&repo).iter().any(|p| p.to_string_lossy().ends_with(".tmp")), "no temp file left");
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// Answers that grow with the repository are built with bounded memory: a `list` of every id
/// (no limit: the b21 client asks for pages of 100 000) and a `store_list` of all of `data`
/// (the client lists only small namespaces) are encoded into a temp file past a bound, and
/// are the same answers as the held ones: the list is the client's pages put together.
#[test]
fn listings_of_a_whole_large_repository_are_answered_with_bounded_memory() {
    let dir = tempfile::Builder::new().prefix("borgd-hostile-").tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let repo = dir.path().join("repo");
    let mut raw = Raw::start(&[]);
    raw.call("negotiate", &[("client_data", Arg::Str("hostile"))]).unwrap();
    raw.call("open", &[("path", Arg::Str(repo.to_str().unwrap())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true))]).unwrap();
    // 150 000 objects, planted as empty files (a listing reads only names and sizes)
    let mut ids: Vec<[u8; 32]> = (0..150_000u64).map(|i| std::array::from_fn(|k| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (8 * (k % 8))) as u8 ^ k as u8)).collect();
    for id in &ids {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let d = repo.join("data").join(&hex[..2]).join(&hex[2..4]);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::File::create(d.join(&hex)).unwrap();
    }
    ids.sort();
    let listed = |answer: &[u8]| -> Vec<Vec<u8>> {
        let Some(Value::Array(items)) = msgpack::parse(answer).unwrap().get("r").cloned() else { panic!("not a list") };
        items.iter().map(|i| match i {
            Value::Array(pair) => match pair[0] {
                Value::Bin(b) => b.to_vec(),
                Value::Str(s) => s.as_bytes().to_vec(),
                _ => panic!("bad item"),
            },
            _ => panic!("bad item"),
        }).collect()
    };
    let all = listed(&raw.call("list", &[]).unwrap());
    assert_eq!(all.len(), 150_000);
    assert!(all.iter().zip(&ids).all(|(a, b)| a[..] == b[..]), "every id, in order");
    let first = listed(&raw.call("list", &[("limit", Arg::Int(100_000))]).unwrap());
    let rest = listed(&raw.call("list", &[("limit", Arg::Int(100_000)), ("marker", Arg::Bin(first.last().unwrap()))]).unwrap());
    assert_eq!((first.len(), rest.len()), (100_000, 50_000));
    assert!(first.iter().chain(&rest).eq(all.iter()), "the same as the client's pages");
    let names = listed(&raw.call("store_list", &[("name", Arg::Str("data"))]).unwrap());
    assert_eq!(names.len(), 150_000);
    assert!(names.iter().zip(&ids).all(|(n, id)| n == &id.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()));
    let hwm_kib = peak_kib(&raw);
    raw.call("close", &[]).unwrap();
    assert!(raw.finish().0);
    if let Some(kib) = hwm_kib {
        // 12.3 MiB, most of it a client page of 100 000 ids (held: it is what the b21 client
        // asks for); 32 MiB with every answer held whole
        assert!(kib < 20 * 1024, "peak RSS {kib} KiB: a long listing must not be held in memory");
    }
}

#[test]
fn client_vanishing_mid_message_releases_the_lock_and_leaves_a_checkable_repo() {
    let (env, _allowed, _outside, repo) = setup();
    // a buffered put; a streamed put; streamed store_stores of an item and of a chunk index
    // (received into a temp file to be checked)
    let index = borgd::repository::chunkindex::serialize([[9u8; 32]; 60_000].iter());
    let index_name = borgd::repository::chunkindex::cache_name(&index);
    let large = vec![1u8; 2_000_000];
    let cases: [(&str, &[(&str, Arg<'_>)]); 4] = [
        ("put", &[("id", Arg::Bin(&[3; 32])), ("data", Arg::Bin(&large[..100_000]))]),
        ("put", &[("id", Arg::Bin(&[4; 32])), ("data", Arg::Bin(&large))]),
        ("store_store", &[("name", Arg::Str("cache/x")), ("value", Arg::Bin(&large))]),
        ("store_store", &[("name", Arg::Str(&index_name)), ("value", Arg::Bin(&index))]),
    ];
    for (method, args) in cases {
        let mut raw = Raw::start(&[]);
        open(&mut raw, &repo);
        let full = raw.request(method, args);
        raw.send_raw(&full[..full.len() / 2]).unwrap();
        let (ok, err) = raw.finish();
        assert!(!ok && err.contains("in the middle of a message"), "{method}: {err}");
        assert!(files_below(&repo.join("locks")).is_empty(), "{method}: lock left");
        let left: Vec<_> = files_below(&repo).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
        assert!(left.is_empty(), "{method}: {left:?}");
    }
    assert!(!repo.join("cache/x").exists() && !repo.join(&index_name).exists(), "nothing half-received is stored");
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn streamed_puts_fail_cleanly_and_keep_the_stream_in_step() {
    let (env, _allowed, _outside, repo) = setup();
    // over MAX_DATA_SIZE but within the message limit: answered with an error after the data is
    // drained, and the next request works
    let mut raw = Raw::start(&[]);
    open(&mut raw, &repo);
    let big = vec![5u8; 20_971_480];
    assert_eq!(raw.error_class("put", &[("id", Arg::Bin(&[4; 32])), ("data", Arg::Bin(&big))]), "IntegrityError");
    let obj = borgd::repository::repoobj::Header::wrap(b"m", &vec![6u8; 3_000_000]);
    raw.call("put", &[("id", Arg::Bin(&[5; 32])), ("data", Arg::Bin(&obj))]).unwrap();
    let got = raw.call("get", &[("id", Arg::Bin(&[5; 32]))]).unwrap();
    assert!(got.ends_with(&obj), "a streamed put stores exactly what was sent");
    // streaming starts at 512 KiB messages (the objects written directly): one just below the
    // direct-write size whose message is above it, and one a little larger
    let overhead = borgd::repository::repoobj::Header::wrap(b"m", &[]).len();
    for (i, len) in [borgd::store::DIRECT_FROM as usize - 20 - overhead, 700_000].into_iter().enumerate() {
        let obj = borgd::repository::repoobj::Header::wrap(b"m", &vec![i as u8 + 1; len]);
        let id = [20 + i as u8; 32];
        raw.call("put", &[("id", Arg::Bin(&id)), ("data", Arg::Bin(&obj))]).unwrap();
        let got = raw.call("get", &[("id", Arg::Bin(&id))]).unwrap();
        assert!(got.ends_with(&obj), "{} bytes: a streamed put stores exactly what was sent", obj.len());
    }
    raw.call("close", &[]).unwrap();
    assert!(raw.finish().0);
    // denied by the permission mode: the data is drained, the answer names the denial
    let mut raw = Raw::start(&["--permissions=read-only"]);
    open(&mut raw, &repo);
    assert_eq!(raw.error_class("put", &[("id", Arg::Bin(&[7; 32])), ("data", Arg::Bin(&obj))]), "PathPermissionDenied");
    raw.call("get", &[("id", Arg::Bin(&[5; 32]))]).unwrap();
    raw.call("close", &[]).unwrap();
    assert!(raw.finish().0);
    // a client vanishing halfway through a large put: no temp file, no lock, a clean repository
    let mut raw = Raw::start(&[]);
    open(&mut raw, &repo);
    let full = raw.request("put", &[("id", Arg::Bin(&[8; 32])), ("data", Arg::Bin(&obj))]);
    raw.send_raw(&full[..full.len() / 2]).unwrap();
    let (ok, err) = raw.finish();
    assert!(!ok && err.contains("in the middle of a message"), "{err}");
    assert!(!files_below(&repo).iter().any(|p| p.to_string_lossy().ends_with(".tmp")));
    assert!(files_below(&repo.join("locks")).is_empty());
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn termination_signals_end_the_session_and_release_the_lock() {
    let (env, _allowed, _outside, repo) = setup();
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let mut raw = Raw::start(&[]);
        open(&mut raw, &repo);
        assert!(!files_below(&repo.join("locks")).is_empty());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(raw.child.id() as i32, sig) };
        assert!(raw.read_answer().is_none(), "signal {sig}: the server hangs up");
        let (ok, err) = raw.finish();
        assert!(ok, "signal {sig}: a clean exit: {err}");
        assert!(files_below(&repo.join("locks")).is_empty(), "signal {sig}: lock released");
    }
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// Small puts are written by a session's writer threads and answered as each is written; what a
/// client sends after them must see them all. One write carries 300 puts, a `get` of one of
/// them and a `list`; in no-delete mode a delete of one is refused, and a second put under the
/// id of an object already written (with other contents) keeps the object there: the writer
/// finds the name taken, and the object intact. Every msgid is answered exactly once, the `get`s
/// and `list` see every put, and Python's `borg check` passes afterwards.
#[test]
fn pipelined_puts_are_answered_once_each_and_seen_by_what_follows() {
    let (env, _allowed, _outside, repo) = setup();
    let mut raw = Raw::start(&["--permissions=no-delete"]);
    open(&mut raw, &repo);
    let objects: Vec<([u8; 32], Vec<u8>)> = (0..300u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[4] = 0xa5;
            (id, borgd::repository::repoobj::Header::wrap(b"m", &vec![i as u8; 100 + (i as usize % 7) * 1000]))
        })
        .collect();
    let mut batch = Vec::new();
    let first = raw.next_id + 1;
    for (id, obj) in &objects {
        batch.extend(raw.request("put", &[("id", Arg::Bin(id)), ("data", Arg::Bin(obj))]));
    }
    // no-delete mode: a delete is refused; a put whose name is taken keeps the intact object
    batch.extend(raw.request("delete", &[("id", Arg::Bin(&objects[7].0))]));
    let again = raw.next_id;
    let other = borgd::repository::repoobj::Header::wrap(b"other", b"not what is stored");
    batch.extend(raw.request("put", &[("id", Arg::Bin(&objects[8].0)), ("data", Arg::Bin(&other))]));
    batch.extend(raw.request("get", &[("id", Arg::Bin(&objects[8].0))]));
    let kept = raw.next_id;
    batch.extend(raw.request("get", &[("id", Arg::Bin(&objects[299].0))]));
    let get = raw.next_id;
    batch.extend(raw.request("list", &[("limit", Arg::Int(1000)), ("marker", Arg::Nil)]));
    let list = raw.next_id;
    raw.send_raw(&batch).unwrap();
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < (list - first + 1) as usize {
        let answer = raw.read_answer().expect("an answer for every request");
        let v = msgpack::parse(&answer).unwrap();
        let Some(Value::Int(i)) = v.get("i") else { panic!("answer without msgid") };
        let i = *i as i64;
        assert!((first..=list).contains(&i), "unexpected msgid {i}");
        let error = match v.get("exception_class") {
            Some(Value::Str(c)) => Some(c.to_string()),
            _ => None,
        };
        if i == get {
            assert!(answer.ends_with(&objects[299].1), "get sees the put before it");
        }
        if i == kept {
            assert!(answer.ends_with(&objects[8].1), "the intact object kept");
        }
        if i == list {
            let Some(Value::Array(items)) = v.get("r") else { panic!("list answer") };
            let listed = items.iter().filter(|it| matches!(it, Value::Array(p) if matches!(p.first(), Some(Value::Bin(b)) if b[4] == 0xa5))).count();
            assert_eq!(listed, 300, "list sees every put before it");
        }
        assert!(answered.insert(i, error).is_none(), "msgid {i} answered twice");
    }
    assert_eq!(answered[&again].as_deref(), Some("PathPermissionDenied"), "a delete in no-delete mode is refused");
    assert!(answered.iter().filter(|(i, _)| **i != again).all(|(_, e)| e.is_none()), "{answered:?}");
    raw.call("close", &[]).unwrap();
    assert!(raw.finish().0);
    assert!(!files_below(&repo).iter().any(|p| p.to_string_lossy().ends_with(".tmp")));
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// Mutated sessions: one whole session (negotiate, open with create, small puts, large puts that
/// are streamed and written directly, a get, a list, a delete, the key and the manifest, store
/// items written, listed, read, soft-deleted and back, a chunk index uploaded, a partial check,
/// close) damaged at a few places, 250 ways (flipped bits, bytes set to msgpack's type markers,
/// bytes cut out or put in, the stream cut short; a fixed seed, so a failure reproduces).
/// borgd, restricted to the test's directory (a mutated path must not make a repository
/// elsewhere), must end each session on its own — answering, refusing or hanging up, exit status
/// 0 or 2 — never panic or hang, and leave no lock behind. `BORGD_TEST_MUTANTS` and
/// `BORGD_TEST_MUTANT_SEED` run more, or others, by hand.
#[test]
fn mutated_sessions_never_panic_or_hang() {
    let count: usize = std::env::var("BORGD_TEST_MUTANTS").map_or(250, |v| v.parse().expect("BORGD_TEST_MUTANTS: a number"));
    let seed: u64 = std::env::var("BORGD_TEST_MUTANT_SEED").map_or(0x9E37_79B9_7F4A_7C15, |v| v.parse().expect("BORGD_TEST_MUTANT_SEED: a number"));
    assert!(seed != 0, "xorshift needs a seed other than 0");
    let env = Env::new();
    let dir = env.path("fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    let repo = dir.join("repo");
    let (mut session, mut starts) = (Vec::new(), Vec::new());
    let mut id = 0;
    let mut req = |method: &str, args: &[(&str, Arg<'_>)]| {
        id += 1;
        starts.push(session.len());
        session.extend(borgd::rpc::encode_request(id, method, args));
    };
    req("negotiate", &[("client_data", Arg::Str("fuzz"))]);
    req("open", &[("path", Arg::Str(repo.to_str().unwrap())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(1))]);
    for i in 0..12u64 {
        let size = if i % 4 == 3 { 600 * 1024 } else { 1000 + 77 * i as usize };
        req("put", &[("id", Arg::Bin(&[0x40 + i as u8; 32])), ("data", Arg::Bin(&support::noise(i, size)))]);
    }
    req("get", &[("id", Arg::Bin(&[0x40; 32])), ("read_data", Arg::Bool(true)), ("raise_missing", Arg::Bool(true))]);
    req("get", &[("id", Arg::Bin(&[0x43; 32])), ("read_data", Arg::Bool(false)), ("raise_missing", Arg::Bool(false))]);
    req("list", &[("limit", Arg::Int(100)), ("marker", Arg::Nil)]);
    req("list", &[("limit", Arg::Int(5)), ("marker", Arg::Bin(&[0x44; 32]))]);
    req("delete", &[("id", Arg::Bin(&[0x4b; 32]))]);
    req("info", &[]);
    req("save_key", &[("keydata", Arg::Bin(b"not really a key"))]);
    req("load_key", &[]);
    req("put_manifest", &[("data", Arg::Bin(&support::noise(99, 300)))]);
    req("get_manifest", &[]);
    let archive = format!("archives/{}", "ab".repeat(32));
    req("store_store", &[("name", Arg::Str(&archive)), ("value", Arg::Bin(b"an archive entry"))]);
    req("store_list", &[("name", Arg::Str("archives")), ("deleted", Arg::Bool(false))]);
    req("store_load", &[("name", Arg::Str(&archive))]);
    req("store_move", &[("name", Arg::Str(&archive)), ("delete", Arg::Bool(true))]);
    req("store_list", &[("name", Arg::Str("archives")), ("deleted", Arg::Bool(true))]);
    req("store_move", &[("name", Arg::Str(&archive)), ("undelete", Arg::Bool(true))]);
    let ids: Vec<[u8; 32]> = (0..11u8).map(|i| [0x40 + i; 32]).collect();
    let index = borgd::repository::chunkindex::serialize(ids.iter());
    let index_name = format!("cache/{}", borgd::repository::chunkindex::cache_name(&index));
    req("store_store", &[("name", Arg::Str(&index_name)), ("value", Arg::Bin(&index))]);
    req("store_delete", &[("name", Arg::Str(&index_name)), ("deleted", Arg::Bool(false))]);
    req("check", &[("repair", Arg::Bool(false)), ("max_duration", Arg::Int(1))]);
    req("__len__", &[]);
    req("close", &[]);
    // xorshift: the same mutants every run
    let mut state = seed;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let markers = [0x00, 0xff, 0xc0, 0xc1, 0xc4, 0xc6, 0xce, 0xcf, 0xd3, 0xdb, 0xdd, 0xdf, 0x80, 0x90];
    let mut exits = [0usize; 2];
    // mutant 0 is the session itself: it must work, and keep eleven of its twelve objects
    for m in 0..=count {
        let mut s = session.clone();
        for _ in 0..if m == 0 { 0 } else { [1, 1, 2, 4, 16][next(5)] } {
            if s.len() < 2 {
                break;
            }
            // mostly in a message's head (method, argument names, lengths), where parsing is
            let pos = match next(10) {
                0..=5 => (starts[next(starts.len())] + next(80)).min(s.len() - 1),
                6..=7 => next(s.len()),
                _ => next(s.len().min(4096)),
            };
            match next(20) {
                0..=7 => s[pos] ^= 1 << next(8),
                8..=11 => s[pos] = markers[next(markers.len())],
                12..=14 => drop(s.drain(pos..(pos + 1 + next(64)).min(s.len()))),
                15..=17 => s.splice(pos..pos, (0..1 + next(16)).map(|_| next(256) as u8)).for_each(drop),
                _ => s.truncate(pos),
            }
        }
        let _ = std::fs::remove_dir_all(&repo);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_borgd"))
            .args(["serve", "--restrict-to-path"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // fed from a thread: a server that stops reading must not block the test
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || drop(stdin.write_all(&s)));
        let Some(status) = support::wait_at_most(&mut child, std::time::Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("mutant {m}: borgd did not end within 20 s");
        };
        feeder.join().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!err.contains("panicked") && matches!(status.code(), Some(0 | 2)), "mutant {m}: {status}: {err}");
        if repo.join("locks").exists() {
            assert!(files_below(&repo.join("locks")).is_empty(), "mutant {m}: a lock was left");
        }
        if m == 0 {
            assert!(status.success() && files_below(&repo.join("data")).len() == 11, "the session itself failed: {err}");
            assert!(repo.join(&archive).exists() && !repo.join(&index_name).exists(), "the session's store calls did not take effect");
        }
        exits[usize::from(!status.success())] += 1;
    }
    eprintln!("{count} mutants (seed {seed}): {} sessions ended with exit 0, {} with 2", exits[0], exits[1]);
    // the mutants reach both ends: some sessions still complete, most are refused
    assert!(exits[0] > count / 12 && exits[1] > count * 2 / 5, "exit 0 / 2: {exits:?}");
}
