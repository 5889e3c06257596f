//! borgd-bench: measures repository servers (borgd, Python `borg serve`) the way a borg client
//! loads them, speaking the client's protocol itself so the client side is never the bottleneck.
//!
//! ```text
//! borgd-bench protocol --server 'borgd::target/release/borgd serve' --server 'python::/venv/bin/borg serve'
//! borgd-bench e2e --borg /venv/bin/borg --server 'borgd::target/release/borgd' --server 'python::/venv/bin/borg'
//! borgd-bench measure --out FILE -- CMD...   (runs CMD, writes its CPU time, waits, peak RSS)
//! borgd-bench feed --gap-us N FILE          (a recorded client stream, one request every N µs)
//! borgd-bench feed --paced FILE             (... at the pace it was recorded with, see `tap`)
//! borgd-bench tap FILE                      (stdin to stdout, recording the stream and its pace)
//! borgd-bench compare record DIR --borg CLIENT SOURCE...   (one backup through borgd, recorded)
//! borgd-bench compare run DIR [--paced | --gap-us N] --server 'old::...' --server 'new::...'
//! borgd-bench neighbour spin | stream:MIB | stream-nt:MIB  (keeps a CPU busy, for scripts/beside.sh)
//! borgd-bench crud --borg /venv/bin/borg --server 'borgd::target/release/borgd' --server ...
//!                                           (the client's own `borg benchmark crud` through each)
//! borgd-bench clients --clients N --server 'borgd::target/release/borgd serve' --server ...
//!                                           (N sessions at once through one socket-mode server,
//!                                            or --stdio-server: a server process each;
//!                                            --replay DIR: the session `compare record` recorded)
//! ```
//!
//! Per repetition (servers alternate, every run gets a fresh directory, nothing is deleted until
//! the end): start-up (spawn, negotiate, create, close); then a "backup" session: 20 000 puts of
//! 1 KiB with 100 in flight, 2 000 puts of 64 KiB, gets of those (100 in flight) with and without
//! `read_data`, close (where borgd's default `--fsync=barrier` makes it all durable); then a
//! "check" session, as `borg check` is: `list` of all ids and a full `check`. Peak RSS of both.
//! Then 20 000 more 1 KiB puts in a session on the same repository once all its `data/xx/yy`
//! directories exist ("established": as any repository past a few hundred thousand objects), and a
//! `list` of all its ids, every leaf directory read. (`--no-established` skips both.) A plain
//! temp-file+rename loop writing the same 1 KiB objects into the same nested layout (fresh, and
//! established) gives the file system's own limit for comparison, and the same loop with unnamed
//! files linked into place (`O_TMPFILE`, as borgd writes small objects) the floor of any server
//! that puts whole files in place atomically. Medians and spreads are printed as a markdown table
//! with ratios against the last server given. `e2e` likewise replays the objects of each
//! repetition's `borg create` — received from a pipe and put in place, no RPC (see `replay`) — for
//! the floor of a server's `create` CPU; and feeds the first `create` session's recorded stream to
//! every server in each repetition, once as fast as it reads and once at the pace the client had
//! sent it (see `pace`): the session's cost without the client beside the server, and with its idle
//! periods. After the extract it runs the next night's backup (the data set again, a tenth new),
//! and with `--sshd` the client reaches the servers through a real sshd (`borgd::testsshd`).
//!
//! Method, built in: `--warmup N` (default 1) repetitions run first and are not counted; every
//! timed step starts after a `sync`, so no server pays for another's writeback; a run refuses to
//! start without the disk space and inodes it will need (it deletes nothing: see
//! docs/BENCHMARKS.md for why, and for what deleting does to this machine's next minutes).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use borgd::repository::repoobj::Header;
use borgd::rpc::frame::{FrameReader, Input};
use borgd::rpc::msgpack::{self, Value};
use borgd::rpc::{encode_request as request, ArgValue as Arg};
use borgd::testdata::noise;
use borgd::testsshd::Sshd;

mod clients;
mod compare;
mod crud;
mod index;
mod neighbour;
mod pace;
mod patient;
mod replay;
mod stats;

use patient::Patient;
use stats::{fmt, Spread};

type Res<T> = Result<T, String>;

/// A session with a server under test, talking msgpack over its stdin/stdout (a server of its
/// own) or over a unix-socket connection (one of a socket-mode server's sessions).
struct Server {
    /// The server process, when the session is its stdin/stdout.
    child: Option<Child>,
    /// The process serving the session (for its CPU clock and peak memory).
    pid: u32,
    stdin: Box<dyn Write + Send>,
    reader: FrameReader<Box<dyn Input + Send>>,
    next_id: i64,
    answer_bytes: u64,
}

impl Server {
    fn start(cmd: &[String], cwd: &Path) -> Res<Server> {
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start {cmd:?}: {e}"))?;
        let limit = patient::stall_limit()?;
        let stdin = Patient::new(child.stdin.take().ok_or("no stdin")?, limit).map_err(|e| e.to_string())?;
        let stdout = Patient::new(child.stdout.take().ok_or("no stdout")?, limit).map_err(|e| e.to_string())?;
        let pid = child.id();
        Ok(Server { child: Some(child), pid, stdin: Box::new(stdin), reader: FrameReader::new(Box::new(stdout), 1 << 30), next_id: 0, answer_bytes: 0 })
    }

    /// A session with the socket-mode server `pid` listening on `socket`.
    fn connect(socket: &Path, pid: u32) -> Res<Server> {
        let limit = patient::stall_limit()?;
        let stream = UnixStream::connect(socket).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
        // one file description: both ends are non-blocking through `Patient`
        let writer = Patient::new(stream.try_clone().map_err(|e| e.to_string())?, limit).map_err(|e| e.to_string())?;
        let stream = Patient::new(stream, limit).map_err(|e| e.to_string())?;
        Ok(Server { child: None, pid, stdin: Box::new(writer), reader: FrameReader::new(Box::new(stream), 1 << 30), next_id: 0, answer_bytes: 0 })
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether this is a connection to a socket-mode server (not a process of its own).
    fn is_socket(&self) -> bool {
        self.child.is_none()
    }

    /// Reads the next answer (skipping log records); returns its msgid and whether it failed.
    fn answer(&mut self) -> Res<(i64, Option<String>, Vec<u8>)> {
        read_answer(&mut self.reader, true, &mut self.answer_bytes)
    }

    fn call(&mut self, method: &str, args: &[(&str, Arg<'_>)]) -> Res<Vec<u8>> {
        self.next_id += 1;
        let req = request(self.next_id, method, args);
        self.stdin.write_all(&req).map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let (id, err, frame) = self.answer()?;
        if id != self.next_id {
            return Err(format!("answer {id} to request {}", self.next_id));
        }
        match err {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(frame),
        }
    }

    /// Sends prepared requests with at most `window` unanswered; returns total answer bytes.
    /// Requests are written by a second thread, so neither side can block the other when both
    /// pipes are full (many requests in flight, large answers).
    fn pipeline(&mut self, reqs: &[Vec<u8>], window: usize) -> Res<u64> {
        use std::sync::{Condvar, Mutex};
        let answered = Mutex::new(0usize);
        let more = Condvar::new();
        let start_bytes = self.answer_bytes;
        let Server { stdin, reader, answer_bytes, .. } = self;
        let result = std::thread::scope(|sc| -> Res<()> {
            let writer = sc.spawn(|| -> Res<()> {
                for (i, r) in reqs.iter().enumerate() {
                    let mut done = answered.lock().map_err(|_| "lock")?;
                    while i >= *done + window {
                        done = more.wait(done).map_err(|_| "lock")?;
                    }
                    drop(done);
                    stdin.write_all(r).map_err(|e| e.to_string())?;
                    if i + 1 == reqs.len() || i + 1 >= *answered.lock().map_err(|_| "lock")? + window {
                        stdin.flush().map_err(|e| e.to_string())?;
                    }
                }
                stdin.flush().map_err(|e| e.to_string())
            });
            for _ in 0..reqs.len() {
                let (_, err, _) = read_answer(reader, false, answer_bytes)?;
                if let Some(e) = err {
                    return Err(e);
                }
                *answered.lock().map_err(|_| "lock")? += 1;
                more.notify_one();
            }
            writer.join().map_err(|_| "writer thread panicked".to_string())?
        });
        result?;
        self.next_id += reqs.len() as i64;
        Ok(self.answer_bytes - start_bytes)
    }

    /// Closes the session; the peak RSS is the server's own VmHWM, read after `close` was
    /// answered (wait4's maxrss would include the forked copy of this big benchmark process).
    fn close(mut self) -> Res<Rusage> {
        self.call("close", &[])?;
        let hwm = proc_hwm(self.pid());
        drop(self.stdin);
        let mut child = self.child.ok_or("a socket session has no process of its own to wait for")?;
        wait_rusage(&mut child).map(|(ru, _)| Rusage { maxrss_kib: hwm, ..ru })
    }
}

/// Reads the next answer from a server (skipping log records): its msgid, its error if it
/// failed, and (with `keep`) its bytes; counts answer bytes.
fn read_answer(reader: &mut FrameReader<Box<dyn Input + Send>>, keep: bool, answer_bytes: &mut u64) -> Res<(i64, Option<String>, Vec<u8>)> {
        loop {
            let n = loop {
                if let Some(n) = reader.buffered_frame().map_err(|e| e.to_string())? {
                    break n;
                }
                if !reader.fill().map_err(|e| e.to_string())? {
                    return Err("server closed the connection".into());
                }
            };
            let (id, err, is_log) = {
                let v = msgpack::parse(reader.frame(n)).map_err(|e| e.to_string())?;
                let id = match v.get("i") {
                    Some(Value::Int(i)) => *i as i64,
                    _ => -1,
                };
                let err = match (v.get("exception_class"), v.get("exception_short")) {
                    (Some(Value::Str(c)), Some(Value::Array(s))) => Some(format!("{c}: {:?}", s.first())),
                    (Some(Value::Str(c)), _) => Some(c.to_string()),
                    _ => None,
                };
                (id, err, v.get("l").is_some())
            };
            if is_log {
                reader.consume(n);
                continue;
            }
            if id < 0 {
                return Err("answer without id".into());
            }
            let frame = if keep { reader.frame(n).to_vec() } else { Vec::new() };
            reader.consume(n);
            *answer_bytes += n as u64;
            return Ok((id, err, frame));
        }
    }

/// A `timeval` from rusage as a duration.
fn timeval(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000)
}

/// CPU time and peak RSS of a finished child, from wait4.
#[derive(Debug, Clone, Copy, Default)]
struct Rusage {
    cpu: Duration,
    maxrss_kib: u64,
    /// Voluntary context switches: how often the server slept, waiting for its client, the
    /// disk or a nap. On the benchmark machine each costs CPU after it (docs/BENCHMARKS.md).
    waits: u64,
}

/// Waits for a child; returns its resource usage and exit code.
fn wait_rusage(child: &mut Child) -> Res<(Rusage, i32)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pid of our child, valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let rusage = Rusage { cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime), maxrss_kib: ru.ru_maxrss as u64, waits: ru.ru_nvcsw as u64 };
    Ok((rusage, code))
}

/// CPU time of a running process so far, all its threads (living or ended): the process's CPU
/// clock (`clock_getcpuclockid`, nanoseconds), or where that cannot be read, the clock ticks in
/// /proc (10 ms steps, which showed in every per-phase CPU figure before).
fn proc_cpu(pid: u32) -> Duration {
    let mut clk: libc::clockid_t = 0;
    // SAFETY: clk is a valid out-pointer.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clk) } == 0 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid out-pointer; clk came from clock_getcpuclockid.
        if unsafe { libc::clock_gettime(clk, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    proc_cpu_ticks(pid)
}

/// [`proc_cpu`] from the clock ticks in /proc/PID/stat.
fn proc_cpu_ticks(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // fields after ")" start at index 0 = state (field 3); utime is field 14, stime 15
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let t = ticks(11) + ticks(12);
    Duration::from_micros(t * 1_000_000 / hz)
}

/// Peak resident memory of a running process so far (VmHWM), in KiB.
fn proc_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// A valid RepoObj of about `size` bytes and its id.
fn object(seed: u64, size: usize) -> ([u8; 32], Vec<u8>) {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&seed.to_be_bytes());
    id[8..16].copy_from_slice(&xxhash_rust::xxh64::xxh64(&seed.to_le_bytes(), 1).to_le_bytes());
    id[16..24].copy_from_slice(&xxhash_rust::xxh64::xxh64(&seed.to_le_bytes(), 2).to_le_bytes());
    id[24..].copy_from_slice(&xxhash_rust::xxh64::xxh64(&seed.to_le_bytes(), 3).to_le_bytes());
    // spread ids over the nesting directories like real (hash) ids
    id[0] = (xxhash_rust::xxh64::xxh64(&seed.to_le_bytes(), 4) & 0xff) as u8;
    id[1] = (xxhash_rust::xxh64::xxh64(&seed.to_le_bytes(), 5) & 0xff) as u8;
    let meta = noise(seed ^ 0xabc, 64);
    (id, Header::wrap(&meta, &noise(seed, size.saturating_sub(64 + 24))))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Metric name → value for one run of one server.
type Run = BTreeMap<&'static str, f64>;

struct Config {
    small: usize,
    large: usize,
    window: usize,
    /// Whether to measure puts into an established repository (`--no-established` skips it:
    /// creating its 65 792 directories, and deleting them afterwards, is most of a small run).
    established: bool,
}

fn startup(cmd: &[String], dir: &Path) -> Res<(f64, Rusage)> {
    let t = Instant::now();
    let mut s = Server::start(cmd, dir)?;
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    let repo = dir.join("startup-repo");
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(10))])?;
    let ru = s.close()?;
    Ok((t.elapsed().as_secs_f64(), ru))
}

/// Runs prepared requests through the server; returns (wall seconds, server CPU seconds, answer
/// bytes).
fn timed_pipeline(s: &mut Server, reqs: &[Vec<u8>], window: usize) -> Res<(f64, f64, u64)> {
    let cpu0 = proc_cpu(s.pid());
    let t = Instant::now();
    let bytes = s.pipeline(reqs, window)?;
    Ok((t.elapsed().as_secs_f64(), proc_cpu(s.pid()).saturating_sub(cpu0).as_secs_f64(), bytes))
}

fn workload(cmd: &[String], dir: &Path, cfg: &Config) -> Res<Run> {
    let mut run = Run::new();
    let (t, ru) = startup(cmd, dir)?;
    run.insert("startup_s", t);
    run.insert("startup_cpu_s", ru.cpu.as_secs_f64());

    let mut s = Server::start(cmd, dir)?;
    let pid = s.pid();
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    let repo = dir.join("repo");
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(10))])?;
    run.insert("rss_after_open_mib", proc_hwm(pid) as f64 / 1024.0);

    // all requests are built before the clock starts: the load generator must not compete
    // with the server for the machine's two cores while it is measured.
    let prepare = |first_id: i64, n: usize, f: &dyn Fn(usize, i64) -> Vec<u8>| -> Vec<Vec<u8>> { (0..n).map(|i| f(i, first_id + 1 + i as i64)).collect() };
    let base = 1_000_000u64;

    // 1 KiB puts
    let reqs = prepare(s.next_id, cfg.small, &|i, id| {
        let (oid, data) = object(i as u64, 1024);
        request(id, "put", &[("id", Arg::Bin(&oid)), ("data", Arg::Bin(&data))])
    });
    let (el, cpu, _) = timed_pipeline(&mut s, &reqs, cfg.window)?;
    drop(reqs);
    run.insert("put1k_s", el);
    run.insert("put1k_per_s", cfg.small as f64 / el);
    run.insert("put1k_cpu_s", cpu);
    run.insert("rss_after_put1k_mib", proc_hwm(pid) as f64 / 1024.0);

    // 64 KiB puts
    let reqs = prepare(s.next_id, cfg.large, &|i, id| {
        let (oid, data) = object(base + i as u64, 65536);
        request(id, "put", &[("id", Arg::Bin(&oid)), ("data", Arg::Bin(&data))])
    });
    let (el, cpu, _) = timed_pipeline(&mut s, &reqs, cfg.window)?;
    drop(reqs);
    run.insert("put64k_mb_per_s", (cfg.large * 65536) as f64 / el / 1e6);
    run.insert("put64k_cpu_s", cpu);

    // gets, full and metadata only
    for (name, read_data, cpu_name) in [("get64k_mb_per_s", true, "get64k_cpu_s"), ("getmeta_per_s", false, "getmeta_cpu_s")] {
        let reqs = prepare(s.next_id, cfg.large, &|i, id| {
            let (oid, _) = object(base + i as u64, 0);
            request(id, "get", &[("id", Arg::Bin(&oid)), ("read_data", Arg::Bool(read_data)), ("raise_missing", Arg::Bool(true))])
        });
        let (el, cpu, bytes) = timed_pipeline(&mut s, &reqs, cfg.window)?;
        run.insert(name, if read_data { bytes as f64 / el / 1e6 } else { cfg.large as f64 / el });
        run.insert(cpu_name, cpu);
    }
    run.insert("rss_after_get_mib", proc_hwm(pid) as f64 / 1024.0);
    // the backup session ends: with --fsync=barrier this is where its writes become durable
    let t = Instant::now();
    let ru1 = s.close()?;
    run.insert("close_after_puts_s", t.elapsed().as_secs_f64());

    // a new session, as `borg check` is: list all ids, then a full check
    let mut s = Server::start(cmd, dir)?;
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(false)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(10))])?;

    let (wall, cpu, cpu1) = list_all(&mut s, cfg.small + cfg.large)?;
    run.insert("list_s", wall);
    run.insert("list_cpu_s", cpu);

    let t = Instant::now();
    let frame = s.call("check", &[("repair", Arg::Bool(false)), ("max_duration", Arg::Int(0))])?;
    if msgpack::parse(&frame).map_err(|e| e.to_string())?.get("r") != Some(&Value::Bool(true)) {
        return Err("check found errors".into());
    }
    run.insert("check_s", t.elapsed().as_secs_f64());
    run.insert("check_cpu_s", proc_cpu(s.pid()).saturating_sub(cpu1).as_secs_f64());

    let ru2 = s.close()?;
    run.insert("rss_check_session_mib", ru2.maxrss_kib as f64 / 1024.0);
    run.insert("peak_rss_mib", ru1.maxrss_kib.max(ru2.maxrss_kib) as f64 / 1024.0);
    run.insert("total_cpu_s", (ru1.cpu + ru2.cpu).as_secs_f64());

    if !cfg.established {
        return Ok(run);
    }
    // 1 KiB puts into an established repository: one whose 65 536 data/xx/yy directories all
    // exist, as in any repository past a few hundred thousand objects (or one borgstore's
    // create_levels made). The fresh repository above creates a directory for most puts.
    precreate_data_dirs(&repo)?;
    settle();
    let mut s = Server::start(cmd, dir)?;
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(false)), ("exclusive", Arg::Bool(false)), ("lock_wait", Arg::Int(10))])?;
    let reqs = prepare(s.next_id, cfg.small, &|i, id| {
        let (oid, data) = object(WARM_SEEDS + i as u64, 1024);
        request(id, "put", &[("id", Arg::Bin(&oid)), ("data", Arg::Bin(&data))])
    });
    let (el, cpu, _) = timed_pipeline(&mut s, &reqs, cfg.window)?;
    drop(reqs);
    run.insert("put1k_established_per_s", cfg.small as f64 / el);
    run.insert("put1k_established_cpu_s", cpu);
    // and listed: every leaf directory read (the fresh repository's list reads only those its
    // objects made)
    let (wall, cpu, _) = list_all(&mut s, 2 * cfg.small + cfg.large)?;
    run.insert("list_established_s", wall);
    run.insert("list_established_cpu_s", cpu);
    s.close()?;
    Ok(run)
}

/// Lists all ids as the client's `repo_lister` does (100 000 per call), checks that there are
/// `expected`; returns the wall time, the server's CPU time, and its CPU clock at the end (where
/// the next step's starts).
fn list_all(s: &mut Server, expected: usize) -> Res<(f64, f64, Duration)> {
    let t = Instant::now();
    let cpu0 = proc_cpu(s.pid());
    let mut marker: Option<Vec<u8>> = None;
    let mut total = 0usize;
    loop {
        let after = marker.as_deref().map_or(Arg::Nil, Arg::Bin);
        let frame = s.call("list", &[("limit", Arg::Int(100_000)), ("marker", after)])?;
        let v = msgpack::parse(&frame).map_err(|e| e.to_string())?;
        let Some(Value::Array(items)) = v.get("r") else { return Err("list: no result".into()) };
        total += items.len();
        match items.last() {
            Some(Value::Array(pair)) => match pair.first() {
                Some(Value::Bin(b)) => marker = Some(b.to_vec()),
                _ => return Err("list: bad item".into()),
            },
            _ => break,
        }
        if items.len() < 100_000 {
            break;
        }
    }
    if total != expected {
        return Err(format!("list returned {total} ids, expected {expected}"));
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu1 = proc_cpu(s.pid());
    Ok((wall, cpu1.saturating_sub(cpu0).as_secs_f64(), cpu1))
}

/// Seeds of the objects put into the established repository (disjoint from the others).
const WARM_SEEDS: u64 = 2_000_000;

/// Creates every `data/xx/yy` directory of a repository (untimed set-up).
fn precreate_data_dirs(repo: &Path) -> Res<()> {
    for a in 0..256 {
        let top = repo.join("data").join(format!("{a:02x}"));
        for b in 0..256 {
            match std::fs::create_dir_all(top.join(format!("{b:02x}"))) {
                Ok(()) => {}
                Err(e) => return Err(format!("creating data directories in {}: {e}", repo.display())),
            }
        }
    }
    Ok(())
}

/// Writes every dirty page out before a timed step (untimed): otherwise a server inherits the
/// writeback of what the previous one left unsynced (Python and `--fsync=never` leave hundreds of
/// MB), and the kernel's flusher competes with it for the two cores and the disk. Measured: a
/// run without this saw the reference loop's 64 KiB rate fall from 1 008 to 259–291 MB/s after
/// the first repetition.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Our own CPU time so far (user + system).
fn self_cpu() -> Duration {
    // SAFETY: rusage is plain data filled by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

/// How a reference loop puts each object in place.
#[derive(Clone, Copy)]
enum Placing {
    /// Temp file + rename: the issue's definition of the file system's limit.
    Rename,
    /// An unnamed file (`O_TMPFILE`) linked into place: the cheapest way to put a whole file in
    /// place atomically that we know of, and what borgd does for small objects — the floor for
    /// borgd's own puts.
    Unnamed,
}

/// Where `name` is written before it is renamed into place: `<name>.tmp`.
fn temp_path(name: &Path) -> PathBuf {
    let mut tmp = name.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `data` to a temp file beside `name` (mode 0600, as borgd creates files), then renames
/// it into place.
fn put_renamed(name: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_path(name);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?.write_all(data)?;
    std::fs::rename(&tmp, name)
}

/// Whether opening an unnamed file failed because there are none here: the file system has no
/// `O_TMPFILE` (or, `EISDIR`, the kernel does not know the flag).
fn no_unnamed_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL))
}

/// Runs `put`; when a directory on the way is missing, creates `dir` and its parents and runs it
/// once more (as a server does: it does not know in advance which directories exist).
fn making_dir(dir: &Path, put: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
    match put() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            put()
        }
        other => other,
    }
}

/// Writes `data` as an unnamed file in directory `d`, then links it as `name` there.
fn put_unnamed(d: &Path, name: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).mode(0o600).open(d)?;
    f.write_all(data)?;
    let to = std::ffi::CString::new(name.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: valid descriptor and C strings.
    if unsafe { libc::linkat(f.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_EMPTY_PATH) } == 0 {
        return Ok(());
    }
    // before Linux 6.10 only CAP_DAC_READ_SEARCH may link by descriptor: through /proc instead
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(std::io::Error::other)?;
    // SAFETY: valid C strings.
    if unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The file system's own limit: the same objects put into the same layout, no RPC at all,
/// `placing` says how. Returns (objects per second, CPU seconds).
fn reference_loop(dir: &Path, n: usize, size: usize, seed_base: u64, placing: Placing) -> Res<(f64, f64)> {
    let objects: Vec<([u8; 32], Vec<u8>)> = (0..n).map(|i| object(seed_base + i as u64, size)).collect();
    let cpu0 = self_cpu();
    let t = Instant::now();
    for (id, data) in &objects {
        let h = hex(id);
        let d = dir.join("data").join(&h[0..2]).join(&h[2..4]);
        let name = d.join(&h);
        let put = || match placing {
            Placing::Rename => put_renamed(&name, data),
            Placing::Unnamed => put_unnamed(&d, &name, data),
        };
        match making_dir(&d, put) {
            // no unnamed files here: there is no such floor, and the rest of the run stands
            Err(e) if matches!(placing, Placing::Unnamed) && no_unnamed_files(&e) => {
                eprintln!("unnamed files are not to be had in {}: {e}", dir.display());
                return Ok((f64::NAN, f64::NAN));
            }
            other => other.map_err(|e| format!("{}: {e}", name.display()))?,
        }
    }
    Ok((n as f64 / t.elapsed().as_secs_f64(), (self_cpu() - cpu0).as_secs_f64()))
}

/// The header of a results table: one column per server, then each one's ratio to the last.
fn print_header(title: &str, servers: &[(String, Vec<String>)]) {
    let last = servers.len() - 1;
    print!("| {title} |");
    for (l, _) in servers {
        print!(" {l} |");
    }
    for (l, _) in &servers[..last] {
        print!(" {l} / {} |", servers[last].0);
    }
    println!();
    println!("|{}", "---|".repeat(1 + servers.len() + last));
}

/// The head of a table of ratios taken repetition by repetition (`what` of each server over the
/// last server's in the same repetition): a column per server but the last.
fn print_paired_header(what: &str, servers: &[(String, Vec<String>)]) {
    let last = servers.len() - 1;
    print!("| per repetition: {what} / {}'s in the same repetition (median, min–max; 95% CI of the median) |", servers[last].0);
    for (l, _) in &servers[..last] {
        print!(" {l} |");
    }
    println!();
    println!("|{}", "---|".repeat(1 + last));
}

/// The median (min–max) of metric `m` over one server's runs.
fn spread(runs: &[Run], m: &str) -> Spread {
    Spread::of(&mut runs.iter().map(|r| r.get(m).copied().unwrap_or(f64::NAN)).collect::<Vec<f64>>())
}

/// A table of `metrics`: a column per server, then each server's median over the last one's.
fn print_runs(title: &str, servers: &[(String, Vec<String>)], results: &[Vec<Run>], metrics: &[&str]) {
    print_header(title, servers);
    let last = servers.len() - 1;
    for m in metrics {
        print!("| {m} |");
        for runs in results {
            print!(" {} |", spread(runs, m));
        }
        for runs in &results[..last] {
            print!(" {} |", fmt(spread(runs, m).median / spread(&results[last], m).median));
        }
        println!();
    }
}

fn parse_servers(args: &[String]) -> Res<Vec<(String, Vec<String>)>> {
    Ok(parse_servers_given(args, &["--server"])?.into_iter().map(|(l, c, _)| (l, c)).collect())
}

/// The servers given as `FLAG 'LABEL::CMD'` with any of `flags`, in the order given: label,
/// command words, and which of the flags.
fn parse_servers_given(args: &[String], flags: &[&str]) -> Res<Vec<(String, Vec<String>, usize)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(f) = flags.iter().position(|f| *f == args[i]) {
            let spec = args.get(i + 1).ok_or_else(|| format!("{} needs a value", flags[f]))?;
            let (label, cmd) = match spec.split_once("::") {
                Some((l, c)) => (l.to_string(), c.to_string()),
                None => (spec.clone(), spec.clone()),
            };
            let words = shlex::split(&cmd).ok_or_else(|| format!("cannot parse {cmd:?}"))?;
            if words.is_empty() {
                return Err(format!("empty {}", flags[f]));
            }
            out.push((label, words, f));
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Refuses two servers with one label (a label names a server's column, and its files).
fn distinct_labels(servers: &[(String, Vec<String>)]) -> Res<()> {
    match servers.iter().enumerate().find_map(|(i, (l, _))| servers[..i].iter().find(|(m, _)| m == l)) {
        Some((l, _)) => Err(format!("two servers labelled {l:?}: give each its own LABEL::")),
        None => Ok(()),
    }
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// The words of `args` that are not options (`--name value`, or a bare `flags` entry).
fn positional<'a>(args: &'a [String], flags: &[&str]) -> Vec<&'a String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if flags.contains(&args[i].as_str()) {
            i += 1;
        } else if args[i].starts_with("--") {
            i += 2;
        } else {
            out.push(&args[i]);
            i += 1;
        }
    }
    out
}

/// The order `n` servers run in repetition `rep`: as given, then reversed, and so on, so that
/// none is always first after a quiet spell or always last in a slowing hour.
fn server_order(rep: usize, n: usize) -> Vec<usize> {
    if rep.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// `--gap-us N` (one request every N µs), if given.
fn gap_us(args: &[String]) -> Res<Option<Duration>> {
    opt(args, "--gap-us").map(|g| g.parse::<u64>().map(Duration::from_micros).map_err(|e| format!("--gap-us: {e}"))).transpose()
}

/// Repetition `rep` of a run with `warmup` uncounted ones first: its label, and whether it counts.
fn repetition(rep: usize, warmup: usize) -> (String, bool) {
    if rep < warmup {
        (format!("warm-up {rep}"), false)
    } else {
        (format!("rep {}", rep - warmup), true)
    }
}

/// `--NAME N`, or `default` when absent; a value that is not a number is an error.
fn count(args: &[String], name: &str, default: usize) -> Res<usize> {
    opt(args, name).map(|v| v.parse().map_err(|_| format!("{name}: a number, not {v:?}"))).transpose().map(|v| v.unwrap_or(default))
}

/// Disk blocks and inodes a run will leave behind (nothing is deleted until the last measurement).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Space {
    bytes: u64,
    inodes: u64,
}

/// Ext4's unit of allocation: a 1 KiB object or a directory with a few entries takes a block.
const BLOCK: u64 = 4096;

/// `data/xx/yy` directories of a borg 2 repository.
const DATA_DIRS: u64 = 256 + 256 * 256;

/// How many of the 65 536 leaf directories `objects` random ids create: the expected number
/// that get at least one.
fn leaves_used(objects: u64) -> u64 {
    (65_536.0 * (1.0 - (-(objects as f64) / 65_536.0).exp())) as u64
}

impl Space {
    /// One `protocol` workload (a server's, or the reference loop's, in one repetition): the
    /// fresh repository's objects and the directories they create, the 64 KiB objects, and the
    /// established repository's 65 792 directories and objects.
    fn protocol_workload(cfg: &Config) -> Space {
        let (small, large) = (cfg.small as u64, cfg.large as u64);
        let leaves = leaves_used(small);
        let large_blocks = (65_536 + 200u64).div_ceil(BLOCK);
        let established = if cfg.established { DATA_DIRS + small } else { 0 };
        Space {
            bytes: (small + leaves + 256) * BLOCK + large * large_blocks * BLOCK + established * BLOCK + (1 << 20),
            inodes: small + leaves + 256 + large + established + 100,
        }
    }

    /// What the unnamed-file reference loops add to a repetition: a fresh tree of 1 KiB objects
    /// (and the directories they create), and as many objects again in the established tree.
    fn unnamed_loops(cfg: &Config) -> Space {
        let small = cfg.small as u64;
        let files = if cfg.established { 2 * small } else { small };
        let leaves = leaves_used(small);
        Space { bytes: (files + leaves + 256) * BLOCK, inodes: files + leaves + 256 }
    }

    /// One `e2e` workload: the repository (the duplicate fifth stored once, then the next night's
    /// tenth) and the extracted copy.
    fn e2e_workload(data_bytes: u64, files: u64) -> Space {
        Space { bytes: data_bytes * 9 / 10 + data_bytes + (64 << 20), inodes: files * 3 + files / 10 + DATA_DIRS / 4 }
    }

    /// What the `e2e` reference adds to a repetition: a copy of one repository's objects.
    fn e2e_reference(data_bytes: u64, files: u64) -> Space {
        Space { bytes: data_bytes * 8 / 10 + (16 << 20), inodes: files + DATA_DIRS / 4 }
    }

    /// What a copy of the tree at `dir` takes: its files rounded up to whole blocks, a block per
    /// directory, an inode each (what every `compare` replay leaves behind).
    fn of_tree(dir: &Path) -> Res<Space> {
        let mut total = Space { bytes: BLOCK, inodes: 1 };
        for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            let md = e.metadata().map_err(|err| format!("{}: {err}", e.path().display()))?;
            total = total.plus(if md.is_dir() { Space::of_tree(&e.path())? } else { Space { bytes: md.len().div_ceil(BLOCK) * BLOCK, inodes: 1 } });
        }
        Ok(total)
    }

    fn times(self, n: u64) -> Space {
        Space { bytes: self.bytes * n, inodes: self.inodes * n }
    }

    fn plus(self, other: Space) -> Space {
        Space { bytes: self.bytes + other.bytes, inodes: self.inodes + other.inodes }
    }
}

/// Where a guest kernel says how large a free block must be before it is handed back to the host.
const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// Warns when this machine hands free memory back to its host (free page reporting on): new
/// memory's first touch then costs what the host happens to charge, and write-heavy figures swing
/// between repetitions (docs/BENCHMARKS.md, "Machine"; `scripts/bench-memory.sh hold` stops it).
fn warn_about_memory() {
    let Ok(order) = std::fs::read_to_string(PAGE_REPORTING_ORDER) else { return };
    // orders up to the buddy allocator's largest (10) are reported; above it, nothing is
    if order.trim().parse::<u32>().is_ok_and(|o| o <= 10) {
        eprintln!("borgd-bench: free page reporting is on (order {}): write-heavy figures will swing; run scripts/bench-memory.sh hold first", order.trim());
    }
}

/// Refuses to start a run that would fill the file system holding `dir` part way through (a
/// full disk ends the run and leaves the machine without space until the trees are deleted,
/// which takes longer than the run).
fn ensure_space(dir: &Path, need: Space) -> Res<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| format!("{}: path contains a NUL byte", dir.display()))?;
    // SAFETY: statvfs is plain data filled by the kernel; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!("{}: statvfs: {}", dir.display(), std::io::Error::last_os_error()));
    }
    let free = Space { bytes: st.f_bavail as u64 * st.f_frsize as u64, inodes: st.f_favail as u64 };
    let gb = |b: u64| b as f64 / 1e9;
    // file systems without inode limits (btrfs, tmpfs with nr_inodes=0) report 0
    let inodes_short = free.inodes > 0 && free.inodes < need.inodes;
    if free.bytes < need.bytes || inodes_short {
        return Err(format!(
            "not enough room in {}: about {:.1} GB and {} inodes needed, {:.1} GB and {} free (choose another file system, or fewer --reps / --warmup)",
            dir.display(),
            gb(need.bytes),
            need.inodes,
            gb(free.bytes),
            free.inodes
        ));
    }
    eprintln!("this run needs about {:.1} GB and {} inodes in {} ({:.1} GB free): delete it when done", gb(need.bytes), need.inodes, dir.display(), gb(free.bytes));
    Ok(())
}

fn protocol(args: &[String]) -> Res<()> {
    let servers = parse_servers(args)?;
    if servers.is_empty() {
        return Err("give at least one --server 'LABEL::CMD'".into());
    }
    let reps = count(args, "--reps", 5)?.max(1);
    let warmup = count(args, "--warmup", 1)?;
    let cfg = Config { small: count(args, "--small", 20_000)?, large: count(args, "--large", 2_000)?, window: count(args, "--window", 100)?.max(1), established: !args.iter().any(|a| a == "--no-established") };
    let root = PathBuf::from(opt(args, "--workdir").unwrap_or_else(|| format!("/var/tmp/borgd-bench-{}", std::process::id())));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    warn_about_memory();
    ensure_space(&root, Space::protocol_workload(&cfg).times((servers.len() + 1) as u64).plus(Space::unnamed_loops(&cfg)).times((reps + warmup) as u64))?;
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    // per repetition, for temp file + rename: 1 KiB/s, 1 KiB CPU s, 64 KiB MB/s; 1 KiB/s and CPU s
    // in an established repository; then 1 KiB/s and CPU s, fresh and established, for unnamed files
    let mut reference: Vec<[f64; 9]> = Vec::new();
    for rep in 0..warmup + reps {
        // warm-up repetitions run everything and keep nothing: the first server after a quiet
        // spell (or a cache drop) pays for reading the file system's metadata back in.
        let (label, keep) = repetition(rep, warmup);
        // alternate the order of servers between repetitions
        let order = server_order(rep, servers.len());
        for &si in &order {
            let dir = root.join(format!("rep{rep}-s{si}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            settle();
            let run = workload(&servers[si].1, &dir, &cfg).map_err(|e| format!("{}: {e}", servers[si].0))?;
            eprintln!("{label} {}: put1k {:.0}/s, put64k {:.1} MB/s, peak {:.1} MiB", servers[si].0, run["put1k_per_s"], run["put64k_mb_per_s"], run["peak_rss_mib"]);
            if keep {
                results[si].push(run);
            }
        }
        let dir = root.join(format!("rep{rep}-reference"));
        settle();
        let (small_rate, small_cpu) = reference_loop(&dir, cfg.small, 1024, 0, Placing::Rename)?;
        let (large_rate, _) = reference_loop(&dir, cfg.large, 65536, 1_000_000, Placing::Rename)?;
        settle();
        let (unnamed_rate, unnamed_cpu) = reference_loop(&root.join(format!("rep{rep}-reference-unnamed")), cfg.small, 1024, 0, Placing::Unnamed)?;
        let (mut warm_rate, mut warm_cpu, mut warm_unnamed_rate, mut warm_unnamed_cpu) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
        if cfg.established {
            let warm = root.join(format!("rep{rep}-reference-established"));
            precreate_data_dirs(&warm)?;
            settle();
            (warm_rate, warm_cpu) = reference_loop(&warm, cfg.small, 1024, WARM_SEEDS, Placing::Rename)?;
            settle();
            // other objects into the same (established) directories
            (warm_unnamed_rate, warm_unnamed_cpu) = reference_loop(&warm, cfg.small, 1024, WARM_SEEDS + cfg.small as u64, Placing::Unnamed)?;
        }
        eprintln!(
            "{label} reference loop: {small_rate:.0}/s 1 KiB ({small_cpu:.2} s CPU), {:.0} MB/s 64 KiB; established repository {warm_rate:.0}/s 1 KiB ({warm_cpu:.2} s CPU); \
             unnamed files {unnamed_rate:.0}/s ({unnamed_cpu:.2} s CPU), established {warm_unnamed_rate:.0}/s ({warm_unnamed_cpu:.2} s CPU)",
            large_rate * 65536.0 / 1e6
        );
        if keep {
            reference.push([small_rate, small_cpu, large_rate * 65536.0 / 1e6, warm_rate, warm_cpu, unnamed_rate, unnamed_cpu, warm_unnamed_rate, warm_unnamed_cpu]);
        }
    }
    let metrics: Vec<&'static str> = results[0][0].keys().copied().collect();
    print_runs(&format!("metric (median of {reps}, min–max)"), &servers, &results, &metrics);
    let stat = |si: usize, m: &str| spread(&results[si], m);
    let column = |i: usize| Spread::of(&mut reference.iter().map(|r| r[i]).collect::<Vec<f64>>());
    println!();
    println!("| reference loops (no RPC), same run | median (min–max) |");
    println!("|---|---|");
    let rows = [
        "temp file + rename: 1 KiB objects per second",
        "temp file + rename: 1 KiB CPU seconds",
        "temp file + rename: 64 KiB MB per second",
        "temp file + rename: 1 KiB objects per second, established repository",
        "temp file + rename: 1 KiB CPU seconds, established repository",
        "unnamed file + link: 1 KiB objects per second",
        "unnamed file + link: 1 KiB CPU seconds",
        "unnamed file + link: 1 KiB objects per second, established repository",
        "unnamed file + link: 1 KiB CPU seconds, established repository",
    ];
    for (i, label) in rows.iter().enumerate() {
        println!("| {label} | {} |", column(i));
    }
    for (si, (l, _)) in servers.iter().enumerate() {
        println!("| {l}: 1 KiB put rate / temp-file loop | {} |", fmt(stat(si, "put1k_per_s").median / column(0).median));
        println!("| {l}: 1 KiB put CPU / temp-file loop CPU | {} |", fmt(stat(si, "put1k_cpu_s").median / column(1).median));
        println!("| {l}: 1 KiB put CPU / unnamed-file loop CPU | {} |", fmt(stat(si, "put1k_cpu_s").median / column(6).median));
        println!("| {l}: established 1 KiB put rate / temp-file loop | {} |", fmt(stat(si, "put1k_established_per_s").median / column(3).median));
        println!("| {l}: established 1 KiB put CPU / temp-file loop CPU | {} |", fmt(stat(si, "put1k_established_cpu_s").median / column(4).median));
        println!("| {l}: established 1 KiB put CPU / unnamed-file loop CPU | {} |", fmt(stat(si, "put1k_established_cpu_s").median / column(8).median));
    }
    eprintln!("work directory (delete when done): {}", root.display());
    Ok(())
}

/// `measure --out FILE -- CMD...`: runs CMD with our stdio, then appends its CPU time and
/// voluntary context switches (wait4) and peak RSS (VmHWM, polled: wait4's maxrss would include
/// our own pages; growth after the last look is missed) to FILE as a JSON line; exits with CMD's
/// status. Used as the BORG_REMOTE_PATH wrapper in `e2e`. While CMD runs, `FILE.pid` names this
/// process, and CMD is killed when this process dies: so the benchmark can stop a stalled server
/// it did not start itself (one under sshd; see [`Client::run`]).
fn measure(args: &[String]) -> Res<i32> {
    let out = opt(args, "--out").ok_or("measure needs --out FILE")?;
    let dash = args.iter().position(|a| a == "--").ok_or("measure needs -- CMD")?;
    let cmd = &args[dash + 1..];
    if cmd.is_empty() {
        return Err("measure needs a command".into());
    }
    let pid_file = pid_file(Path::new(&out));
    std::fs::write(&pid_file, std::process::id().to_string()).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let t = Instant::now();
    let mut child = patient::dies_with_us(&mut Command::new(&cmd[0])).args(&cmd[1..]).spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let pid = child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            // every millisecond at first, so a session of a few milliseconds is seen after its
            // exec; then every 10 (VmHWM keeps the peak between looks). Before the exec the
            // child is still a copy of us: its figures are ours, not CMD's.
            let me = std::env::current_exe().ok();
            let exec_done = || std::fs::read_link(format!("/proc/{pid}/exe")).ok() != me;
            for look in 0u32.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if exec_done() {
                    peak.fetch_max(proc_hwm(pid), std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(if look < 20 { 1 } else { 10 }));
            }
        })
    };
    let (ru, code) = wait_rusage(&mut child)?;
    // nothing to stop now (and the pid may be another process's soon)
    let _ = std::fs::remove_file(&pid_file);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = poller.join();
    let line = format!(
        "{{\"cpu_s\": {:.6}, \"peak_rss_kib\": {}, \"wall_s\": {:.6}, \"waits\": {}}}\n",
        ru.cpu.as_secs_f64(),
        peak.load(std::sync::atomic::Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
        ru.waits
    );
    std::fs::OpenOptions::new().create(true).append(true).open(&out).and_then(|mut f| f.write_all(line.as_bytes())).map_err(|e| e.to_string())?;
    Ok(code)
}

/// Where `measure --out OUT` names itself while its command runs.
fn pid_file(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".pid");
    PathBuf::from(name)
}

/// `feed --gap-us N FILE`: writes a recorded client stream (msgpack requests, as `tap` and
/// `compare record` keep them) to stdout one request at a time, the next one due
/// N microseconds after the one before. A replay fed this way models a client that sends a
/// message, then works for a while: the server handles each one alone after sleeping (see
/// docs/BENCHMARKS.md, "A live session's waits"). With 0 every request is still its own write.
/// `feed --paced FILE`: in the pieces and at the moments recorded beside it (see [`tap`]).
fn feed(args: &[String]) -> Res<i32> {
    let paced = args.iter().any(|a| a == "--paced");
    let gap = gap_us(args)?;
    let files = positional(args, &["--paced"]);
    let ([path], false) = (files.as_slice(), paced == gap.is_some()) else { return Err("feed needs --gap-us N or --paced, and one FILE".into()) };
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    // the descriptor itself: `Stdout` would split a message at its newline bytes
    let mut out = stdio_file(std::os::fd::AsFd::as_fd(&std::io::stdout()), "stdout")?;
    let pieces = match gap {
        None => pace::load(Path::new(path), data.len())?,
        Some(gap) => pace::per_message(&data, gap).map_err(|e| format!("{path}: {e}"))?,
    };
    pace::feed_paced(&data, &pieces, &mut out).map_err(|e| format!("stdout: {e}"))?;
    Ok(0)
}

/// A standard descriptor as a `File` of its own: unbuffered, written as given (`Stdout` splits
/// writes at newline bytes).
fn stdio_file(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> Res<std::fs::File> {
    fd.try_clone_to_owned().map(std::fs::File::from).map_err(|e| format!("{name}: {e}"))
}

/// `tap FILE`: passes stdin to stdout, keeping a copy in FILE and when each piece came in
/// FILE.pace (see [`pace`]): the recorder between a real client and its server.
fn tap(args: &[String]) -> Res<i32> {
    let [path] = args else { return Err("tap needs one FILE".into()) };
    let input = stdio_file(std::os::fd::AsFd::as_fd(&std::io::stdin()), "stdin")?;
    let output = stdio_file(std::os::fd::AsFd::as_fd(&std::io::stdout()), "stdout")?;
    // pipes as large as the server makes its own, so the client can get as far ahead as without
    // the tap
    borgd::server::enlarge_pipe(&input);
    borgd::server::enlarge_pipe(&output);
    pace::tap(input, output, Path::new(path))?;
    Ok(0)
}

/// What is new by the next night's backup: a tenth of the data set's size again, in small and
/// large files alike (incompressible, never seen before), beside the unchanged data set.
fn make_new_files(dir: &Path, bytes: u64) -> Res<u64> {
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut total = 0u64;
    let mut i = 0u64;
    while total < bytes {
        // a tenth of the new bytes in small files of 1–32 KiB, the rest in files of up to 16 MiB
        let size = if total < bytes / 10 {
            small_file_size(i, 10)
        } else {
            (16usize << 20).min((bytes - total) as usize)
        };
        std::fs::write(dir.join(format!("n{i:05}")), noise(2_000_000 + i, size)).map_err(io)?;
        total += size as u64;
        i += 1;
    }
    Ok(total)
}

/// The size of the `i`th small file of a data set: 1–32 KiB, spread by a hash seeded `seed` (each
/// data set its own seed, so that no two share a size pattern).
fn small_file_size(i: u64, seed: u64) -> usize {
    1024 + (xxhash_rust::xxh64::xxh64(&i.to_le_bytes(), seed) % (31 * 1024)) as usize
}

/// The end-to-end data set: small files, large files and duplicate content (incompressible).
fn make_dataset(dir: &Path, mb: usize) -> Res<u64> {
    let io = |e: std::io::Error| e.to_string();
    std::fs::create_dir_all(dir.join("small")).map_err(io)?;
    std::fs::create_dir_all(dir.join("large")).map_err(io)?;
    std::fs::create_dir_all(dir.join("dup")).map_err(io)?;
    let budget = (mb as u64) << 20;
    let mut total = 0u64;
    let mut i = 0u64;
    // ~10% small files of 1–32 KiB
    while total < budget / 10 {
        let size = small_file_size(i, 9);
        std::fs::write(dir.join(format!("small/f{i:05}")), noise(i, size)).map_err(io)?;
        total += size as u64;
        i += 1;
    }
    // ~20% the same 4 MiB content many times (deduplicated by borg)
    let dup = noise(424_242, 4 << 20);
    let mut j = 0;
    while total < budget * 3 / 10 {
        std::fs::write(dir.join(format!("dup/copy{j:03}")), &dup).map_err(io)?;
        total += dup.len() as u64;
        j += 1;
    }
    // the rest in 16 MiB files
    let mut k = 0u64;
    while total < budget {
        let size = (16usize << 20).min((budget - total) as usize);
        std::fs::write(dir.join(format!("large/big{k:03}")), noise(1_000_000 + k, size)).map_err(io)?;
        total += size as u64;
        k += 1;
    }
    Ok(total)
}

/// One server session as `measure` saw it.
#[derive(Debug, Clone, Copy)]
struct Session {
    cpu_s: f64,
    peak_mib: f64,
    /// Voluntary context switches (see [`Rusage::waits`]).
    waits: f64,
}

fn read_measurements(path: &Path) -> Vec<Session> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Session { cpu_s: field(&v, "cpu_s"), peak_mib: field(&v, "peak_rss_kib") / 1024.0, waits: field(&v, "waits") })
        .collect()
}

/// One real `create` session kept for replaying (see [`replay_session`]): the client's request
/// stream as the first server received it (read once, fed from memory to every replay), the
/// repository as it was before the backup, where the stream expects it, and how many objects
/// the backup stored.
struct Recording {
    stream: Vec<u8>,
    before: PathBuf,
    repo: PathBuf,
    objects: usize,
}

/// Objects below `repo/data`.
fn count_objects(repo: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()).unwrap_or(0)
    }
    walk(&repo.join("data"))
}

/// `cp -a FROM TO`.
fn copy_tree(from: &Path, to: &Path) -> Res<()> {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().map_err(|e| format!("cp: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {}: {st}", from.display(), to.display()))
    }
}

/// Feeds the recorded `create` session through a pipe into `SERVER serve` (answers discarded),
/// into a fresh copy of the repository as it was before the backup (the previous replay's is
/// renamed to `aside`: deleting it would slow the next file creations, see `bench-fs.sh`), and
/// returns the server's session as `measure` saw it. The same requests as the live session, with
/// no client beside the server; with `pace`, in the pieces and at the moments the client had sent
/// them (see `pace`), else as fast as the server reads.
fn replay_session(me: &Path, rec: &Recording, cmd: &[String], out: &Path, aside: &Path, pace: Option<&[pace::Piece]>) -> Res<Session> {
    if rec.repo.exists() {
        std::fs::rename(&rec.repo, aside).map_err(|e| format!("{}: {e}", rec.repo.display()))?;
    }
    copy_tree(&rec.before, &rec.repo)?;
    settle();
    let mut child = Command::new(me)
        .args(["measure", "--out"])
        .arg(out)
        .arg("--")
        .arg(&cmd[0])
        .arg("serve")
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    let mut stdin = Patient::new(child.stdin.take().ok_or("no stdin")?, patient::stall_limit()?).map_err(|e| e.to_string())?;
    let fed = match pace {
        None => stdin.write_all(&rec.stream),
        Some(pieces) => pace::feed_paced(&rec.stream, pieces, &mut stdin),
    };
    drop(stdin);
    if let Err(e) = fed {
        // a server that stalled will not exit: stop waiting for it (`measure` goes, and the
        // server, its child, dies with it: `patient::dies_with_us`)
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{}: feeding the recorded session: {e}", cmd[0]));
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("{}: replayed session failed: {st}", cmd[0]));
    }
    let stored = count_objects(&rec.repo);
    if stored != rec.objects {
        return Err(format!("{}: the replayed session stored {stored} objects, the recorded one {}", cmd[0], rec.objects));
    }
    read_measurements(out).last().copied().ok_or_else(|| format!("{}: no measurement", cmd[0]))
}

/// The client's key with `e2e --sshd`: no forced command, so that the client names the server to
/// start (`BORG_REMOTE_PATH`), as with the rsh shim.
const SSH_KEY: &str = "client_key";

/// The real borg client, set up to back up into `DIR/repo` through one server: over the rsh shim
/// (as ssh would start it, on this machine) or a real sshd, with its own base directory and no
/// encryption.
struct Client<'a> {
    borg: &'a Path,
    repo: String,
    rsh: String,
    wrapper: PathBuf,
    /// While this file exists, naming a path, the server's input is recorded there (a file, not
    /// the environment: sshd passes none of the client's on).
    record_flag: PathBuf,
    base: PathBuf,
    /// Where the client's notes go (read back when it fails).
    notes: PathBuf,
    /// The benchmark's executable and where `measure` names itself while a session runs: to stop
    /// a stalled server the client cannot (see [`Client::run`]).
    me: PathBuf,
    server_pid: Option<PathBuf>,
}

impl<'a> Client<'a> {
    /// Writes `DIR/remote`, the executable the client starts as its server: `SERVER serve
    /// CLIENT-OPTIONS EXTRA-WORDS` (`cmd`), under `measure` when `measurements` is given, and
    /// with its input copied through `tap` to the path in `DIR/record-to` while that exists.
    /// Through `ssh` when given, else the rsh shim.
    fn new(borg: &'a Path, me: &Path, dir: &Path, cmd: &[String], measurements: Option<&Path>, ssh: Option<&Sshd>) -> Res<Client<'a>> {
        let wrapper = dir.join("remote");
        // the client runs `EXECUTABLE serve --its-options`; extra words of the server spec
        // (e.g. `--fsync=never`) go after those, where serve's options belong
        let extra: Vec<String> = cmd[1..].iter().map(|w| format!("'{w}'")).collect();
        let server = format!("'{}' \"$@\" {}", cmd[0], extra.join(" "));
        let run = match measurements {
            Some(m) => format!("'{}' measure --out '{}' -- {server}", me.display(), m.display()),
            None => server,
        };
        let record_flag = dir.join("record-to");
        let flag = record_flag.display();
        std::fs::write(&wrapper, format!("#!/bin/sh\n[ -f '{flag}' ] || exec {run}\n'{}' tap \"$(cat '{flag}')\" | {run}\n", me.display()))
            .map_err(|e| format!("{}: {e}", wrapper.display()))?;
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(|e| format!("{}: {e}", wrapper.display()))?;
        let repo = dir.join("repo");
        let (repo, rsh) = match ssh {
            Some(s) => (s.url(&repo), s.rsh(SSH_KEY)),
            None => (format!("ssh://localhost/{}", repo.display()), Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rsh-shim").display().to_string()),
        };
        Ok(Client { borg, repo, rsh, wrapper, record_flag, base: dir.join("base"), notes: dir.join("client-notes"), me: me.to_path_buf(), server_pid: measurements.map(pid_file) })
    }

    /// `borg -r REPO ARGS` in `cwd`, its output discarded (its notes shown only with a failure);
    /// with `record_to`, the server's input is recorded there with its pace (see `pace`).
    /// Returns the wall time. A run still going after the stall limit fails: the client (its
    /// process group: the rsh shim and a server under it) and the server `measure` names are
    /// killed, since a client waiting for a stalled server would wait for ever.
    fn run(&self, args: &[&str], cwd: &Path, record_to: Option<&Path>) -> Res<f64> {
        self.run_with(args, cwd, record_to, None)
    }

    /// As [`Client::run`], the client's standard output written to `stdout` (for a command
    /// whose output is the figure, as `benchmark crud`'s).
    fn run_keeping_output(&self, args: &[&str], cwd: &Path, stdout: &Path) -> Res<f64> {
        self.run_with(args, cwd, None, Some(stdout))
    }

    fn run_with(&self, args: &[&str], cwd: &Path, record_to: Option<&Path>, stdout: Option<&Path>) -> Res<f64> {
        let stdout = match stdout {
            Some(path) => Stdio::from(std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?),
            None => Stdio::null(),
        };
        match record_to {
            Some(to) => std::fs::write(&self.record_flag, to.as_os_str().as_encoded_bytes()).map_err(|e| format!("{}: {e}", self.record_flag.display()))?,
            None => drop(std::fs::remove_file(&self.record_flag)),
        }
        let limit = patient::stall_limit()?;
        let notes = std::fs::File::create(&self.notes).map_err(|e| format!("{}: {e}", self.notes.display()))?;
        let t = Instant::now();
        let mut child = Command::new(self.borg)
            .args(["-r", &self.repo])
            .args(args)
            .current_dir(cwd)
            .env("BORG_RSH", &self.rsh)
            .env("BORG_REMOTE_PATH", &self.wrapper)
            .env("BORG_BASE_DIR", &self.base)
            .env("BORG_PASSPHRASE", "bench")
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(notes)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.borg.display()))?;
        let group = child.id() as libc::pid_t;
        let waited = patient::wait_bounded(&mut child, limit, || {
            // SAFETY: kill with the process group of a child not reaped yet.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            // over ssh the server is not in that group: `measure`, and with it the server
            if let Some(pid) = self.server_pid.as_deref().and_then(|f| std::fs::read_to_string(f).ok()).and_then(|p| p.trim().parse::<libc::pid_t>().ok()) {
                if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == self.me) {
                    // SAFETY: kill with a pid that was `measure`'s a moment ago.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
        let wall = t.elapsed().as_secs_f64();
        if record_to.is_some() {
            let _ = std::fs::remove_file(&self.record_flag);
        }
        let (st, stopped) = waited.map_err(|e| format!("{}: {e}", self.borg.display()))?;
        if stopped {
            return Err(format!("borg {args:?} had not ended after {:.0} s: killed with its server (a stalled server? BORGD_BENCH_STALL_S sets the limit)", limit.as_secs_f64()));
        }
        if !st.success() {
            let notes = std::fs::read_to_string(&self.notes).unwrap_or_default();
            return Err(format!("borg {args:?} failed: {st}: {}", notes.trim()));
        }
        Ok(wall)
    }
}

/// `e2e --borg CLIENT --server 'LABEL::SERVER-EXECUTABLE' ... [--sshd]`: the real borg client
/// creates and extracts a generated data set through each server (over the rsh shim, as ssh
/// would; with `--sshd` over ssh through a real sshd on 127.0.0.1).
fn e2e(args: &[String]) -> Res<()> {
    let borg = PathBuf::from(opt(args, "--borg").ok_or("e2e needs --borg /path/to/borg (the 2.0.0b21 client)")?);
    let servers = parse_servers(args)?;
    if servers.is_empty() {
        return Err("give at least one --server 'LABEL::EXECUTABLE [SERVE OPTIONS]' (run as EXECUTABLE serve CLIENT-OPTIONS SERVE-OPTIONS)".into());
    }
    let reps = count(args, "--reps", 3)?.max(1);
    let warmup = count(args, "--warmup", 1)?;
    let mb = count(args, "--size-mb", 300)?.max(1);
    let root = PathBuf::from(opt(args, "--workdir").unwrap_or_else(|| format!("/var/tmp/borgd-e2e-{}", std::process::id())));
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // absolute: the repositories' ssh:// URLs are (a relative one would be taken from the
    // client's working directory, a different one per step)
    let root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    let data = (mb as u64) << 20;
    // the data set (once), then per workload its repository and its extracted copy
    let files = data / 10 / (16 * 1024) + data / (4 << 20) + 100;
    warn_about_memory();
    // per repetition: each server's workload and its two replays (at once, at the client's
    // pace), the reference; once: the recording
    let per_rep = Space::e2e_workload(data, files).plus(Space::e2e_reference(data, files).times(2)).times(servers.len() as u64).plus(Space::e2e_reference(data, files));
    ensure_space(&root, Space { bytes: data * 2 + data / 10, inodes: files + files / 10 }.plus(per_rep.times((reps + warmup) as u64)))?;
    let src = root.join("src");
    let bytes = make_dataset(&src, mb)?;
    eprintln!("data set: {:.0} MiB in {}", bytes as f64 / 1048576.0, src.display());
    let new = root.join("new");
    let new_bytes = make_new_files(&new, data / 10)?;
    eprintln!("new by the next night: {:.0} MiB in {}", new_bytes as f64 / 1048576.0, new.display());
    // the client's way to each server: the rsh shim (the client's pipe straight into the server),
    // or a real sshd, as deployed: the server then reads what sshd decrypted, in the pieces sshd
    // writes, with sshd working beside it (its CPU is not the server's, for either server)
    let sshd = if args.iter().any(|a| a == "--sshd") { Some(Sshd::start(&root.join("sshd"), &[(SSH_KEY, "restrict")])?) } else { None };
    let transport = if sshd.is_some() { "over ssh (a real sshd on 127.0.0.1)" } else { "over the rsh shim" };
    // per server, each counted repetition's figures
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    // the reference (see `replay`): the objects the first server stored, loaded once
    let mut stored: Option<Vec<replay::StoredObject>> = None;
    let mut reference: Vec<(f64, f64)> = Vec::new();
    // the first repetition's first server's create session, recorded for the replays
    let rec_dir = root.join("recording");
    // and when each piece of it arrived (see `pace`)
    let mut recording: Option<(Recording, Vec<pace::Piece>)> = None;
    for rep in 0..warmup + reps {
        let (rep_label, keep) = repetition(rep, warmup);
        let order = server_order(rep, servers.len());
        for &si in &order {
            let (label, cmd) = &servers[si];
            let dir = root.join(format!("rep{rep}-s{si}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let measurements = dir.join("server.jsonl");
            let client = Client::new(&borg, &me, &dir, cmd, Some(&measurements), sshd.as_ref())?;
            let record = recording.is_none() && si == order[0];
            let borg_run = |a: &[&str], cwd: &Path, record_to: Option<&Path>| client.run(a, cwd, record_to).map_err(|e| format!("{label}: {e}"));
            borg_run(&["repo-create", "-e", "none"], &dir, None)?;
            let stream = rec_dir.join("create.stream");
            if record {
                std::fs::create_dir_all(&rec_dir).map_err(|e| e.to_string())?;
                copy_tree(&dir.join("repo"), &rec_dir.join("repo-before"))?;
            }
            settle();
            let create = borg_run(&["create", "bench", src.to_str().unwrap_or_default()], &dir, record.then_some(stream.as_path()))?;
            let out = dir.join("extract");
            std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            settle();
            let extract = borg_run(&["extract", "bench"], &out, None)?;
            if record {
                let repo = dir.join("repo");
                let data = std::fs::read(&stream).map_err(|e| format!("{}: {e}", stream.display()))?;
                let pace = pace::load(&stream, data.len())?;
                recording = Some((Recording { stream: data, before: rec_dir.join("repo-before"), objects: count_objects(&repo), repo }, pace));
            }
            let same = Command::new("diff").arg("-rq").arg(&src).arg(out.join(src.strip_prefix("/").unwrap_or(&src))).status().map_err(|e| e.to_string())?;
            if !same.success() {
                return Err(format!("{label}: extracted data differs from the source"));
            }
            // the reference's objects: the first backup's, before the next night's join them
            if stored.is_none() {
                stored = Some(replay::load(&dir.join("repo"))?);
            }
            // the next night: the same archive series (so the client's files cache knows the
            // data set) with a tenth new
            settle();
            let nightly = borg_run(&["create", "bench", src.to_str().unwrap_or_default(), new.to_str().unwrap_or_default()], &dir, None)?;
            let m = read_measurements(&measurements); // repo-create, create, extract, nightly create
            if m.len() != 4 {
                return Err(format!("{label}: expected 4 measured server sessions, got {}", m.len()));
            }
            eprintln!(
                "{rep_label} {label}: create {create:.2} s (server CPU {:.2} s, {:.1} MiB), extract {extract:.2} s (server CPU {:.2} s), next night's create {nightly:.2} s (server CPU {:.3} s)",
                m[1].cpu_s, m[1].peak_mib, m[2].cpu_s, m[3].cpu_s
            );
            if !keep {
                continue;
            }
            results[si].push(Run::from([
                ("create_wall_s", create),
                ("create_server_cpu_s", m[1].cpu_s),
                ("create_server_peak_rss_mib", m[1].peak_mib),
                ("create_server_waits", m[1].waits),
                ("extract_wall_s", extract),
                ("extract_server_cpu_s", m[2].cpu_s),
                ("extract_server_peak_rss_mib", m[2].peak_mib),
                ("nightly_create_wall_s", nightly),
                ("nightly_create_server_cpu_s", m[3].cpu_s),
                ("nightly_create_server_peak_rss_mib", m[3].peak_mib),
            ]));
        }
        let Some(objects) = &stored else { return Err("no create session's objects were loaded".into()) };
        settle();
        let (cpu, wall) = replay::replay(objects, &root.join(format!("rep{rep}-reference")))?;
        eprintln!(
            "{rep_label} reference: {} objects ({:.0} MB) received and put in place: {cpu:.2} s CPU, {wall:.2} s",
            objects.len(),
            replay::bytes(objects) as f64 / 1e6
        );
        if keep {
            reference.push((cpu, wall));
        }
        let Some((rec, rec_pace)) = &recording else { return Err("no create session was recorded".into()) };
        for &si in &order {
            let (label, cmd) = &servers[si];
            let dir = root.join(format!("rep{rep}-s{si}"));
            let r = replay_session(&me, rec, cmd, &dir.join("replay.jsonl"), &dir.join("replayed"), None)?;
            let p = replay_session(&me, rec, cmd, &dir.join("paced.jsonl"), &dir.join("paced"), Some(rec_pace))?;
            eprintln!("{rep_label} {label}: the recorded create session replayed: server CPU {:.2} s; at its pace {:.2} s", r.cpu_s, p.cpu_s);
            // this repetition's run, pushed by the loop above
            if let Some(run) = results[si].last_mut().filter(|_| keep) {
                run.insert("create_replayed_server_cpu_s", r.cpu_s);
                run.insert("create_replayed_server_peak_rss_mib", r.peak_mib);
                run.insert("create_replayed_server_waits", r.waits);
                run.insert("create_paced_server_cpu_s", p.cpu_s);
                run.insert("create_paced_server_waits", p.waits);
            }
        }
    }
    let last = servers.len() - 1;
    // each server's CPU over the last one's, repetition by repetition: the machine's drift from
    // one repetition to the next moves it less
    let paired: Vec<(&str, Vec<Spread>)> = ["create_server_cpu_s", "create_paced_server_cpu_s", "create_replayed_server_cpu_s", "extract_server_cpu_s", "nightly_create_server_cpu_s"]
        .into_iter()
        .map(|m| (m, (0..last).map(|si| Spread::of(&mut results[si].iter().zip(&results[last]).map(|(a, b)| a.get(m).copied().unwrap_or(f64::NAN) / b.get(m).copied().unwrap_or(f64::NAN)).collect::<Vec<f64>>())).collect()))
        .collect();
    let metrics: Vec<&str> = results[0].first().map(|r| r.keys().copied().collect()).unwrap_or_default();
    print_runs(&format!("end to end, real borg client {transport} (median of {reps}, min–max)"), &servers, &results, &metrics);
    if last > 0 {
        println!();
        print_paired_header("server CPU", &servers);
        for (m, ratios) in &paired {
            print!("| {m} |");
            for spread in ratios {
                print!(" {} |", spread.with_ci());
            }
            println!();
        }
    }
    let cpu = Spread::of(&mut reference.iter().map(|r| r.0).collect::<Vec<f64>>());
    let wall = Spread::of(&mut reference.iter().map(|r| r.1).collect::<Vec<f64>>());
    println!();
    println!("| reference (no RPC), same run | median (min–max) |");
    println!("|---|---|");
    println!("| the create session's objects received from a pipe and put in place: CPU seconds | {cpu} |");
    println!("| the same: wall seconds | {wall} |");
    for ((l, _), runs) in servers.iter().zip(&results) {
        println!("| {l}: create server CPU / reference CPU | {} |", fmt(spread(runs, "create_server_cpu_s").median / cpu.median));
    }
    eprintln!("work directory (delete when done): {}", root.display());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("protocol") => protocol(&args[1..]).map(|_| 0),
        Some("measure") => measure(&args[1..]),
        Some("feed") => feed(&args[1..]),
        Some("tap") => tap(&args[1..]),
        Some("e2e") => e2e(&args[1..]).map(|_| 0),
        Some("compare") => compare::main(&args[1..]).map(|_| 0),
        Some("clients") => clients::main(&args[1..]).map(|_| 0),
        Some("crud") => crud::main(&args[1..]).map(|_| 0),
        Some("index") => index::main(&args[1..]).map(|_| 0),
        Some("neighbour") => neighbour::main(&args[1..]),
        _ => Err("usage: borgd-bench protocol --server 'LABEL::CMD' [--server ...] [--reps N] [--warmup N] [--small N] [--large N] [--window N] [--no-established] [--workdir DIR]\n       borgd-bench e2e --borg CLIENT --server 'LABEL::EXECUTABLE' [--server ...] [--reps N] [--warmup N] [--size-mb N] [--workdir DIR] [--sshd]\n       borgd-bench compare record DIR --borg CLIENT [--server EXECUTABLE] SOURCE...\n       borgd-bench compare run DIR [--reps N] [--warmup N] [--paced | --gap-us N] --server 'LABEL::EXECUTABLE' [--server ...]\n       borgd-bench clients --server | --stdio-server 'LABEL::CMD' [...] [--clients N] [--puts N] [--window N] [--replay DIR [--paced]] [--reps N] [--warmup N] [--workdir DIR]\n       borgd-bench crud --borg CLIENT --server 'LABEL::EXECUTABLE' [--server ...] [--reps N] [--warmup N] [--workdir DIR] [--data DIR] [--sshd]\n       borgd-bench index --server 'LABEL::CMD' [--server ...] [--objects N] [--reps N] [--warmup N] [--workdir DIR]\n       borgd-bench measure --out FILE -- CMD...\n       borgd-bench feed --gap-us N FILE | --paced FILE\n       borgd-bench tap FILE\n       borgd-bench neighbour spin | stream:MIB | stream-nt:MIB".into()),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("borgd-bench: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_words_skip_options_and_their_values() {
        let args: Vec<String> = ["DIR", "--reps", "3", "--paced", "--server", "a::x", "more"].map(String::from).to_vec();
        assert_eq!(positional(&args, &["--paced"]), ["DIR", "more"]);
    }
}
