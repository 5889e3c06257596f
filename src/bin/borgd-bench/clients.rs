//! `clients`: several backup sessions at once through one socket-mode server.
//!
//! A backup host serves many clients. `borg serve --socket` serves its connections one after
//! the other (the others wait); `borgd serve --socket` serves each in a thread of its own. This
//! starts each server with `--socket=PATH` appended to its command, connects `--clients` sessions
//! to it at once, and has every session open a repository of its own and put `--puts` 1 KiB
//! objects with `--window` requests in flight, as the protocol benchmark's first phase does. It
//! measures, from the first connection to the last session's `close`: the wall time, the
//! server's CPU (all its threads), that per session, and the server's peak memory. All requests
//! are built before the clock starts, servers alternate between repetitions, and the table is the
//! median of `--reps` repetitions after `--warmup` ones (docs/BENCHMARKS.md, "Many clients at
//! once").

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{count, ensure_space, leaves_used, object, opt, parse_servers, print_runs, proc_cpu, proc_hwm, repetition, request, server_order, settle, Arg, Res, Run, Server, Space, BLOCK};

/// How long a server may take to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// `clients --server 'LABEL::CMD' [--server ...] [--clients N] [--puts N] [--window N] [--reps N]
/// [--warmup N] [--workdir DIR]`.
pub fn main(args: &[String]) -> Res<()> {
    let servers = parse_servers(args)?;
    if servers.is_empty() {
        return Err("give at least one --server 'LABEL::CMD' (a command that takes --socket=PATH)".into());
    }
    let clients = count(args, "--clients", 4)?.max(1);
    let puts = count(args, "--puts", 5_000)?;
    let window = count(args, "--window", 100)?.max(1);
    let reps = count(args, "--reps", 3)?.max(1);
    let warmup = count(args, "--warmup", 1)?;
    let root = std::path::PathBuf::from(opt(args, "--workdir").unwrap_or_else(|| format!("/var/tmp/borgd-bench-{}", std::process::id())));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    // each session's repository: its objects and the directories they create
    let per_session = Space { bytes: (puts as u64 + leaves_used(puts as u64) + 256 + 64) * BLOCK, inodes: puts as u64 + leaves_used(puts as u64) + 256 + 64 };
    ensure_space(&root, per_session.times((clients * servers.len() * (reps + warmup)) as u64))?;
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    for rep in 0..warmup + reps {
        let (label, keep) = repetition(rep, warmup);
        let order = server_order(rep, servers.len());
        for &si in &order {
            let dir = root.join(format!("rep{rep}-s{si}"));
            settle();
            let run = sessions_at_once(&servers[si].1, &dir, clients, puts, window).map_err(|e| format!("{}: {e}", servers[si].0))?;
            eprintln!(
                "{label} {}: {clients} sessions of {puts} puts in {:.2} s, server CPU {:.2} s, peak {:.1} MiB",
                servers[si].0, run["wall_s"], run["server_cpu_s"], run["peak_rss_mib"]
            );
            if keep {
                results[si].push(run);
            }
        }
    }
    let title = format!("{clients} sessions at once, {puts} puts of 1 KiB each (median of {reps}, min–max)");
    print_runs(&title, &servers, &results, &["wall_s", "puts_per_s", "server_cpu_s", "server_cpu_per_session_s", "peak_rss_mib"]);
    eprintln!("work directory (delete when done): {}", root.display());
    Ok(())
}

/// One repetition for one server: started on a socket in `dir`, `clients` sessions at once, stopped.
fn sessions_at_once(cmd: &[String], dir: &Path, clients: usize, puts: usize, window: usize) -> Res<Run> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
        // requests built before the clock starts; ids follow `negotiate` (1) and `open` (2)
        let batches: Vec<Vec<Vec<u8>>> = (0..clients)
            .map(|c| {
                (0..puts)
                    .map(|i| {
                        let (oid, data) = object(((c as u64) << 32) | i as u64, 1024);
                        request(3 + i as i64, "put", &[("id", Arg::Bin(&oid)), ("data", Arg::Bin(&data))])
                    })
                    .collect()
            })
            .collect();
        let cpu0 = proc_cpu(pid);
        let t = Instant::now();
        std::thread::scope(|sc| {
            let sessions: Vec<_> = batches
                .iter()
                .enumerate()
                .map(|(c, reqs)| {
                    let socket = &socket;
                    sc.spawn(move || -> Res<()> {
                        let mut s = Server::connect(socket, pid)?;
                        s.call("negotiate", &[("client_data", Arg::Nil)])?;
                        let repo = dir.join(format!("repo{c}"));
                        s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(600))])?;
                        s.pipeline(reqs, window)?;
                        s.call("close", &[]).map(|_| ())
                    })
                })
                .collect();
            sessions.into_iter().try_for_each(|h| h.join().map_err(|_| "a session's thread panicked".to_string())?)
        })?;
        let wall = t.elapsed().as_secs_f64();
        let cpu = proc_cpu(pid).saturating_sub(cpu0).as_secs_f64();
        let mut run = Run::new();
        run.insert("wall_s", wall);
        run.insert("puts_per_s", (clients * puts) as f64 / wall);
        run.insert("server_cpu_s", cpu);
        run.insert("server_cpu_per_session_s", cpu / clients as f64);
        run.insert("peak_rss_mib", proc_hwm(pid) as f64 / 1024.0);
        Ok(run)
    });
    // stop the server however the sessions went (SIGTERM: both servers end cleanly on it)
    // SAFETY: kill with a child's pid we have not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
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
