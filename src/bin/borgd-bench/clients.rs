//! `clients`: several backup sessions at once, through one socket-mode server or a server each.
//!
//! A backup host serves many clients. `borg serve --socket` serves its connections one after the
//! other (the others wait); `borgd serve --socket` serves each in a thread of its own; over ssh,
//! every client gets a `serve` process of its own. This starts each `--server` with
//! `--socket=PATH` appended to its command and connects `--clients` sessions to it at once, or
//! starts each `--stdio-server` once per session, all at once, each talking over its
//! stdin/stdout as ssh would start it; every session works on a repository of its own: either
//! put `--puts` 1 KiB objects with `--window` requests in flight, as the protocol benchmark's
//! first phase does, or (`--replay DIR`) send the real `borg create` session that `compare
//! record` recorded in DIR — into a copy of the repository as it was before that backup, as fast
//! as the server reads or (`--paced`) at the pace the client had sent it. It measures, from the
//! first connection (or start) to the last session's end: the wall time, the server's CPU (all
//! its threads; for `--stdio-server`, all its processes, start-up included), that per session,
//! and the server's peak memory (for `--stdio-server`, its processes' peaks added up: what the
//! sessions hold at most at once); a replayed session must leave as many objects as the recorded
//! one did. All requests are built (and repositories copied) before the clock starts, servers
//! alternate between repetitions, and the table is the median of `--reps` repetitions after
//! `--warmup` ones (docs/BENCHMARKS.md, "Many clients at once").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use borgd::rpc::frame::{FrameReader, Input};
use borgd::rpc::msgpack::{self, Value};

use super::compare::RecordingDir;
use super::pace::{self, Piece};
use super::patient;
use super::{copy_tree, count, count_objects, distinct_labels, ensure_space, leaves_used, object, opt, parse_servers_given, print_runs, proc_cpu, proc_hwm, read_answer, repetition, request, server_order, settle, wait_rusage, Arg, Res, Run, Rusage, Server, Space, BLOCK};

/// How a server serves several sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One process on a unix socket (`--socket=PATH`), every session a connection to it.
    Socket,
    /// A process per session over its stdin/stdout, as ssh starts `borg serve`.
    Stdio,
}

/// How long a server may take to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a socket-mode server may take to exit after SIGTERM before it is killed (one that
/// stalled may never exit; a healthy one takes milliseconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every session does.
enum Work {
    /// `puts` 1 KiB objects, `window` requests in flight.
    Puts { puts: usize, window: usize },
    /// The recorded `borg create` session.
    Replay(Recorded),
}

/// A `compare record` directory's `borg create` session, ready to be sent into other
/// repositories than the one it was recorded with.
struct Recorded {
    stream: Vec<u8>,
    /// Where the recorded `open` request names its repository: the offset of the encoded
    /// `"path"` key, and the path.
    path_at: usize,
    path: String,
    /// The id of the stream's last request (the client's `close`): its answer ends the session.
    /// (Python's socket server keeps a finished session's connection open until the next one.)
    last_id: i64,
    /// The client's pace, with `--paced`.
    pieces: Option<Vec<Piece>>,
    /// The repository before the backup (each session gets a copy), and what the backup stored.
    before: PathBuf,
    objects: usize,
    space: Space,
}

impl Recorded {
    fn load(dir: &Path, paced: bool) -> Res<Recorded> {
        let RecordingDir { stream: file, before, recorded } = RecordingDir::open(dir)?;
        let stream = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let (path_at, path, last_id) = scan(&stream).map_err(|e| format!("{}: {e}", file.display()))?;
        let pieces = if paced { Some(pace::load(&file, stream.len())?) } else { None };
        Ok(Recorded { path_at, path, last_id, pieces, before, objects: count_objects(&recorded), space: Space::of_tree(&recorded)?, stream })
    }

    /// The session's stream with its `open` naming `repo` instead, and its pieces to match.
    fn for_repository(&self, repo: &str) -> Res<(Vec<u8>, Option<Vec<Piece>>)> {
        let (old, new) = (path_pair(&self.path), path_pair(repo));
        let mut stream = Vec::with_capacity(self.stream.len() + new.len());
        stream.extend_from_slice(&self.stream[..self.path_at]);
        stream.extend_from_slice(&new);
        stream.extend_from_slice(&self.stream[self.path_at + old.len()..]);
        let pieces = match &self.pieces {
            None => None,
            Some(pieces) => {
                // the piece the path starts in carries the difference
                let mut pieces = pieces.clone();
                let mut end = 0;
                let p = pieces.iter_mut().find(|p| {
                    end += p.len;
                    end > self.path_at
                });
                let p = p.ok_or("the recorded pace ends before the open request")?;
                p.len = (p.len + new.len()).checked_sub(old.len()).filter(|&n| n > 0).ok_or("the recorded open request spans pieces too short to rename its repository")?;
                Some(pieces)
            }
        };
        Ok((stream, pieces))
    }
}

/// `"path"` and `path`, msgpack-encoded as in a request's argument map.
fn path_pair(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::encode::str(&mut out, "path");
    msgpack::encode::str(&mut out, path);
    out
}

/// Reads a recorded client stream: where its `open` request's `"path"` argument starts, the
/// path, and the id of its last request. (A msgpack map's entries are not counted in bytes, so
/// one string can be swapped for another of any length.)
fn scan(stream: &[u8]) -> Res<(usize, String, i64)> {
    let (mut at, mut open, mut last_id) = (0, None, None);
    while at < stream.len() {
        let len = msgpack::check(&stream[at..], stream.len() - at).map_err(|e| format!("byte {at}: not a whole msgpack message: {e}"))?;
        let msg = &stream[at..at + len];
        let v = msgpack::parse(msg).map_err(|e| format!("byte {at}: {e}"))?;
        last_id = match v.get("i") {
            Some(Value::Int(i)) => i64::try_from(*i).ok(),
            _ => None,
        };
        if open.is_none() && v.get("m") == Some(&Value::Str("open")) {
            let Some(Value::Str(path)) = v.get("a").and_then(|a| a.get("path")) else {
                return Err(format!("byte {at}: an open request without a path"));
            };
            let pair = path_pair(path);
            let mut hits = msg.windows(pair.len()).enumerate().filter(|(_, w)| *w == pair.as_slice()).map(|(i, _)| i);
            open = match (hits.next(), hits.next()) {
                (Some(i), None) => Some((at + i, path.to_string())),
                _ => return Err(format!("byte {at}: the open request's path is not where it can be replaced")),
            };
        }
        at += len;
    }
    let (path_at, path) = open.ok_or("no open request in the stream")?;
    Ok((path_at, path, last_id.ok_or("the stream does not end with a request")?))
}

/// `clients --server 'LABEL::CMD' | --stdio-server 'LABEL::CMD' [...] [--clients N] [--puts N]
/// [--window N] [--replay DIR [--paced]] [--reps N] [--warmup N] [--workdir DIR]`.
pub fn main(args: &[String]) -> Res<()> {
    let given = parse_servers_given(args, &["--server", "--stdio-server"])?;
    if given.is_empty() {
        return Err("give at least one --server 'LABEL::CMD' (a command that takes --socket=PATH) or --stdio-server 'LABEL::CMD'".into());
    }
    let modes: Vec<Mode> = given.iter().map(|(_, _, flag)| if *flag == 0 { Mode::Socket } else { Mode::Stdio }).collect();
    let servers: Vec<(String, Vec<String>)> = given.into_iter().map(|(l, c, _)| (l, c)).collect();
    distinct_labels(&servers)?;
    let clients = count(args, "--clients", 4)?.max(1);
    let paced = args.iter().any(|a| a == "--paced");
    let work = match opt(args, "--replay") {
        Some(dir) => Work::Replay(Recorded::load(Path::new(&dir), paced)?),
        None if paced => return Err("--paced replays a recording: give --replay DIR".into()),
        None => Work::Puts { puts: count(args, "--puts", 5_000)?, window: count(args, "--window", 100)?.max(1) },
    };
    let reps = count(args, "--reps", 3)?.max(1);
    let warmup = count(args, "--warmup", 1)?;
    let root = PathBuf::from(opt(args, "--workdir").unwrap_or_else(|| format!("/var/tmp/borgd-bench-{}", std::process::id())));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    // replayed sessions name their repositories by absolute path
    let root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    // each session's repository: its objects and the directories they create
    let per_session = match &work {
        Work::Puts { puts, .. } => {
            let n = *puts as u64 + leaves_used(*puts as u64) + 256 + 64;
            Space { bytes: n * BLOCK, inodes: n }
        }
        Work::Replay(rec) => rec.space,
    };
    ensure_space(&root, per_session.times((clients * servers.len() * (reps + warmup)) as u64))?;
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    for rep in 0..warmup + reps {
        let (label, keep) = repetition(rep, warmup);
        let order = server_order(rep, servers.len());
        for &si in &order {
            let dir = root.join(format!("rep{rep}-s{si}"));
            let run = sessions_at_once(&servers[si].1, modes[si], &dir, clients, &work).map_err(|e| format!("{}: {e}", servers[si].0))?;
            eprintln!("{label} {}: {clients} sessions in {:.2} s, server CPU {:.2} s, peak {:.1} MiB", servers[si].0, run["wall_s"], run["server_cpu_s"], run["peak_rss_mib"]);
            if keep {
                results[si].push(run);
            }
        }
    }
    let (title, rate) = match &work {
        Work::Puts { puts, .. } => (format!("{clients} sessions at once, {puts} puts of 1 KiB each"), "puts_per_s"),
        Work::Replay(rec) => {
            let how = if rec.pieces.is_some() { "at the client's pace" } else { "as fast as the server reads" };
            (format!("{clients} × the recorded `borg create` session at once ({} objects, {:.0} MB), {how}", rec.objects, rec.stream.len() as f64 / 1e6), "mb_per_s")
        }
    };
    let title = format!("{title} (median of {reps}, min–max)");
    print_runs(&title, &servers, &results, &["wall_s", rate, "server_cpu_s", "server_cpu_per_session_s", "peak_rss_mib"]);
    eprintln!("work directory (delete when done): {}", root.display());
    Ok(())
}

/// What one session sends: pipelined puts after opening a repository, or a recorded stream.
enum Plan {
    Puts { repo: PathBuf, reqs: Vec<Vec<u8>>, window: usize },
    Stream { stream: Vec<u8>, pieces: Option<Vec<Piece>>, last_id: i64 },
}

/// Everything `clients` sessions will send, built (and their repositories copied) in `dir`
/// before the clock starts.
fn plans(work: &Work, dir: &Path, clients: usize) -> Res<Vec<Plan>> {
    (0..clients)
        .map(|c| {
            let repo = dir.join(format!("repo{c}"));
            Ok(match work {
                // ids follow `negotiate` (1) and `open` (2)
                Work::Puts { puts, window } => Plan::Puts {
                    reqs: (0..*puts)
                        .map(|i| {
                            let (oid, data) = object(((c as u64) << 32) | i as u64, 1024);
                            request(3 + i as i64, "put", &[("id", Arg::Bin(&oid)), ("data", Arg::Bin(&data))])
                        })
                        .collect(),
                    repo,
                    window: *window,
                },
                Work::Replay(rec) => {
                    copy_tree(&rec.before, &repo)?;
                    let (stream, pieces) = rec.for_repository(&repo.display().to_string())?;
                    Plan::Stream { stream, pieces, last_id: rec.last_id }
                }
            })
        })
        .collect()
}

/// One session's work over its own connection to the socket-mode server `pid`.
fn socket_session(socket: &Path, pid: u32, plan: &Plan) -> Res<()> {
    match plan {
        Plan::Puts { repo, reqs, window } => put_session(Server::connect(socket, pid)?, repo, reqs, *window).map(drop),
        Plan::Stream { stream, pieces, last_id } => {
            // the connection closes when both its halves are dropped
            let Server { mut stdin, reader, .. } = Server::connect(socket, pid)?;
            send_stream(&mut stdin, reader, stream, pieces.as_deref(), *last_id)
        }
    }
}

/// One session with a server process of its own (`cmd`, started in `dir`) over its stdin and
/// stdout: its CPU (start-up included) and its peak memory.
fn stdio_session(cmd: &[String], dir: &Path, plan: &Plan) -> Res<Rusage> {
    match plan {
        Plan::Puts { repo, reqs, window } => put_session(Server::start(cmd, dir)?, repo, reqs, *window),
        Plan::Stream { stream, pieces, last_id } => {
            let Server { child, pid, mut stdin, reader, .. } = Server::start(cmd, dir)?;
            let mut child = child.ok_or("a server started for a session has a process")?;
            let sent = send_stream(&mut stdin, reader, stream, pieces.as_deref(), *last_id);
            // the server's own peak, read before it exits (see `Server::close`)
            let hwm = proc_hwm(pid);
            drop(stdin);
            if let Err(e) = sent {
                // a server that stalled will not exit on its own
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            let (ru, code) = wait_rusage(&mut child)?;
            if code != 0 {
                return Err(format!("the server exited with status {code}"));
            }
            Ok(Rusage { maxrss_kib: hwm, ..ru })
        }
    }
}

/// Opens (creates) `repo` in session `s`, puts `reqs` with `window` in flight, closes.
fn put_session(mut s: Server, repo: &Path, reqs: &[Vec<u8>], window: usize) -> Res<Rusage> {
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(600))])?;
    s.pipeline(reqs, window)?;
    if s.is_socket() {
        s.call("close", &[]).map(|_| Rusage::default())
    } else {
        s.close()
    }
}

/// Sends a recorded stream (at once, or in its `pieces` at their moments) while its answers are
/// read (and dropped) beside it, as the client does, up to the answer to request `last_id`.
fn send_stream(out: &mut impl Write, mut answers: FrameReader<Box<dyn Input + Send>>, stream: &[u8], pieces: Option<&[Piece]>, last_id: i64) -> Res<()> {
    let drain = std::thread::spawn(move || -> Res<()> {
        let mut bytes = 0;
        while read_answer(&mut answers, false, &mut bytes)?.0 != last_id {}
        Ok(())
    });
    let sent = match pieces {
        None => out.write_all(stream),
        Some(p) => pace::feed_paced(stream, p, out),
    };
    let sent = sent.map_err(|e| format!("sending the recorded session: {e}"));
    // a server that fails the session closes its end: the writing stops with an error and the
    // answers end; one that stalls without closing fails both after the stall limit (`patient`)
    let drained = drain.join().map_err(|_| "the answer reader panicked".to_string())?;
    sent?;
    drained.map_err(|e| format!("reading the answers: {e}"))
}

/// One repetition for one server: `clients` sessions at once in `dir`, through one socket-mode
/// process (started, then stopped) or a process each.
fn sessions_at_once(cmd: &[String], mode: Mode, dir: &Path, clients: usize, work: &Work) -> Res<Run> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plans = plans(work, dir, clients)?;
    settle();
    let (wall, cpu, peak_kib) = match mode {
        Mode::Socket => through_socket(cmd, dir, &plans)?,
        Mode::Stdio => {
            let t = Instant::now();
            let used: Vec<Rusage> = std::thread::scope(|sc| {
                let sessions: Vec<_> = plans.iter().map(|plan| sc.spawn(|| stdio_session(cmd, dir, plan))).collect();
                sessions.into_iter().map(|h| h.join().map_err(|_| "a session's thread panicked".to_string())?).collect::<Res<Vec<Rusage>>>()
            })?;
            let wall = t.elapsed().as_secs_f64();
            (wall, used.iter().map(|u| u.cpu.as_secs_f64()).sum(), used.iter().map(|u| u.maxrss_kib).sum())
        }
    };
    let mut run = Run::new();
    run.insert("wall_s", wall);
    match work {
        Work::Puts { puts, .. } => run.insert("puts_per_s", (clients * puts) as f64 / wall),
        Work::Replay(rec) => run.insert("mb_per_s", (clients * rec.stream.len()) as f64 / 1e6 / wall),
    };
    run.insert("server_cpu_s", cpu);
    run.insert("server_cpu_per_session_s", cpu / clients as f64);
    run.insert("peak_rss_mib", peak_kib as f64 / 1024.0);
    if let Work::Replay(rec) = work {
        for c in 0..clients {
            let stored = count_objects(&dir.join(format!("repo{c}")));
            if stored != rec.objects {
                return Err(format!("session {c} stored {stored} objects, the recorded one {}", rec.objects));
            }
        }
    }
    Ok(run)
}

/// The sessions' `plans` at once through one socket-mode server started in `dir`, stopped
/// afterwards: wall time, the server's CPU, its peak memory (KiB).
fn through_socket(cmd: &[String], dir: &Path, plans: &[Plan]) -> Res<(f64, f64, u64)> {
    let socket = dir.join("server.sock");
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg(format!("--socket={}", socket.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start {cmd:?}: {e}"))?;
    let pid = child.id();
    let result = listening(&socket, &log_path, &mut child).and_then(|()| {
        let cpu0 = proc_cpu(pid);
        let t = Instant::now();
        std::thread::scope(|sc| {
            let sessions: Vec<_> = plans.iter().map(|plan| sc.spawn(|| socket_session(&socket, pid, plan))).collect();
            sessions.into_iter().try_for_each(|h| h.join().map_err(|_| "a session's thread panicked".to_string())?)
        })?;
        Ok((t.elapsed().as_secs_f64(), proc_cpu(pid).saturating_sub(cpu0).as_secs_f64(), proc_hwm(pid)))
    });
    // stop the server however the sessions went (SIGTERM: both servers end cleanly on it; one
    // that stalled may not, and is killed after a while)
    // SAFETY: kill with a child's pid we have not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    // SAFETY: as above (`wait_bounded` reaps the child only after `stop` has run).
    let _ = patient::wait_bounded(&mut child, STOP_TIMEOUT, || unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    });
    result
}

/// Waits until the server accepts connections on `socket` (a first connection, closed at once),
/// or fails with what the server said (its `log`) if it exits first.
fn listening(socket: &Path, log: &Path, child: &mut std::process::Child) -> Res<()> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("the server exited ({status}) before listening on {}: {}", socket.display(), said.trim()));
        }
        if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if started.elapsed() > LISTEN_TIMEOUT {
            return Err(format!("the server did not listen on {} within {:?}", socket.display(), LISTEN_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
