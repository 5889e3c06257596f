//! The real borg 2.0.0b21 client over socket:// against `borgd serve --socket`: the repository
//! life cycle, many clients at once, shared/exclusive locks between clients, limits (and a flood of
//! connections over them), SIGTERM, and hostile connections beside a real client.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{cat, files_below, make_source, ok_args, slow_create, wait_for_file, Env, SocketServer};

#[test]
fn socket_lifecycle_mode_and_clean_stop() {
    let env = Env::new();
    let server = SocketServer::start(&env, &[]);
    let mode = std::fs::metadata(&server.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o770, "group members may connect");
    let pid_file = env.path("borgd.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), server.child.id().to_string());

    let repo = env.path("repo");
    let src = env.path("src");
    make_source(&src);
    let a = server.args(&repo);
    ok_args(&env, &cat(&a, &["repo-create", "-e", "repokey-aes-ocb"]));
    ok_args(&env, &cat(&a, &["create", "one", src.to_str().unwrap()]));
    assert!(ok_args(&env, &cat(&a, &["list", "one"])).contains("big.bin"));
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let args = cat(&a, &["extract", "one"]);
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(env.command(&v).current_dir(&out).status().unwrap().success());
    support::assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    ok_args(&env, &cat(&a, &["check"]));
    ok_args(&env, &cat(&a, &["repo-delete"]));
    assert!(!repo.join("config").exists());

    let (status, stderr) = server.stop();
    assert!(status.success(), "exit status {status}: {stderr}");
    assert!(stderr.contains("listening on socket"), "{stderr}");
    assert!(!env.path("borgd.sock").exists() && !pid_file.exists());
}

#[test]
fn eight_clients_back_up_at_once() {
    let env = Env::new();
    let server = SocketServer::start(&env, &[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("f{i}")), support::noise(i, 3_000_000)).unwrap();
    }
    std::thread::scope(|s| {
        for i in 0..8 {
            let (env, server, src) = (&env, &server, &src);
            s.spawn(move || {
                let a = server.args(&env.path(&format!("repo{i}")));
                ok_args(env, &cat(&a, &["repo-create", "-e", "none"]));
                ok_args(env, &cat(&a, &["create", "backup", src.to_str().unwrap()]));
            });
        }
    });
    for i in 0..8 {
        let repo = env.path(&format!("repo{i}"));
        ok_args(&env, &cat(&server.args(&repo), &["check"]));
        // and Python borg, locally, agrees
        env.ok(&["-r", repo.to_str().unwrap(), "check"]);
        assert!(files_below(&repo.join("locks")).is_empty());
    }
}

#[test]
fn shared_and_exclusive_locks_between_clients() {
    let env = Env::new();
    let server = SocketServer::start(&env, &[]);
    let repo = env.path("repo");
    let a = server.args(&repo);
    ok_args(&env, &cat(&a, &["repo-create", "-e", "none"]));
    let src = support::one_file_source(&env, b"data");
    ok_args(&env, &cat(&a, &["create", "first", src.to_str().unwrap()]));

    // a create (shared lock) in progress does not stop a list (shared lock)
    let mut create = slow_create(&env, &a, "running", Duration::from_secs(4));
    wait_for_file(&repo.join("locks"));
    let repo_args: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(support::archive_names(&env, &repo_args), ["first"]);
    assert!(create.wait().unwrap().success());

    // an exclusive holder (with-lock) makes compact (exclusive) give up after --lock-wait ...
    let holder_args = cat(&a, &["with-lock", "sleep", "6"]);
    let v: Vec<&str> = holder_args.iter().map(String::as_str).collect();
    let mut holder = env.command(&v).spawn().unwrap();
    wait_for_file(&repo.join("locks"));
    let denied = cat(&a, &["--lock-wait", "1", "compact"]);
    let v: Vec<&str> = denied.iter().map(String::as_str).collect();
    let text = env.fails(&v);
    assert!(text.contains("Failed to create/acquire the lock"), "{text}");
    // ... and wait for it when the wait is long enough
    let waited = std::time::Instant::now();
    ok_args(&env, &cat(&a, &["--lock-wait", "30", "compact"]));
    assert!(holder.try_wait().unwrap().is_some(), "compact ran only after the exclusive holder finished");
    assert!(waited.elapsed() > Duration::from_secs(1));
    assert!(holder.wait().unwrap().success());
    assert!(files_below(&repo.join("locks")).is_empty());
}

#[test]
fn sigterm_ends_active_sessions_and_releases_locks() {
    let env = Env::new();
    let server = SocketServer::start(&env, &[]);
    let repo = env.path("repo");
    let a = server.args(&repo);
    ok_args(&env, &cat(&a, &["repo-create", "-e", "none"]));
    let mut create = slow_create(&env, &a, "interrupted", Duration::from_secs(30));
    wait_for_file(&repo.join("locks"));
    let (status, stderr) = server.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!create.wait().unwrap().success(), "the client notices its server went away");
    assert!(files_below(&repo.join("locks")).is_empty(), "no lock left behind");
    assert!(!env.path("borgd.sock").exists() && !env.path("borgd.pid").exists());
    // SIGHUP does no harm in socket mode
    let server = SocketServer::start(&env, &[]);
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    ok_args(&env, &cat(&server.args(&repo), &["check"]));
}

#[test]
fn connections_beyond_the_limit_get_a_clear_error() {
    let env = Env::new();
    let server = SocketServer::start(&env, &["--max-connections", "1"]);
    let repo = env.path("repo");
    let a = server.args(&repo);
    ok_args(&env, &cat(&a, &["repo-create", "-e", "none"]));
    // fed for 12 s: under the whole suite's load a client's start-up took longer than the 4 s
    // fed before, and the backup was over before the second client connected
    let mut create = slow_create(&env, &a, "busy", Duration::from_secs(12));
    wait_for_file(&repo.join("locks"));
    let busy = cat(&a, &["repo-list"]);
    let v: Vec<&str> = busy.iter().map(String::as_str).collect();
    let text = env.fails(&v);
    assert!(text.contains("server busy") && text.contains("--max-connections"), "{text}");
    assert!(create.wait().unwrap().success());
    ok_args(&env, &cat(&a, &["repo-list"]));

    // the server's log names each connection's process and user, and the repository it opened
    let (status, log) = server.stop();
    assert!(status.success(), "exit status {status}: {log}");
    // SAFETY: geteuid has no preconditions.
    let peer = format!("PID {}, UID {}", create.id(), unsafe { libc::geteuid() });
    let id_of = |line: &str| line.strip_prefix("borgd: accepted connection ")?.split(' ').next().map(str::to_string);
    let accepted = log.lines().find(|l| l.starts_with("borgd: accepted connection ") && l.ends_with(&format!(" from {peer}")));
    let id = accepted.and_then(id_of).unwrap_or_else(|| panic!("no connection accepted from {peer}:\n{log}"));
    let finished = format!("borgd: finished connection {id} ({peer}; repository {})", repo.display());
    assert!(log.lines().any(|l| l == finished), "no line {finished:?}:\n{log}");
    assert!(log.contains("borgd: refusing a connection from PID "), "{log}");
}

#[test]
fn bare_socket_option_uses_the_path_the_client_computes() {
    // BORG_BASE_DIR: both sides use $BORG_BASE_DIR/.cache/borg/borg.sock
    let env = Env::new();
    let base = env.path("base");
    let expected = base.join(".cache/borg/borg.sock");
    let server = SocketServer::start_at(&env, &expected, &["--socket"], &[], &[("BORG_BASE_DIR", base.to_str().unwrap())]);
    let repo = format!("socket://{}", env.path("repo").display());
    env.ok(&["--socket", "-r", &repo, "repo-create", "-e", "none"]);
    drop(server);

    // only XDG_RUNTIME_DIR (a private directory): $XDG_RUNTIME_DIR/borg/borg.sock
    let mut env = Env::new();
    let xdg = env.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = env.path("home");
    std::fs::create_dir(&home).unwrap();
    env.set_env("BORG_BASE_DIR", "");
    env.set_env("HOME", home.to_str().unwrap());
    env.set_env("XDG_RUNTIME_DIR", xdg.to_str().unwrap());
    let expected = xdg.join("borg/borg.sock");
    let _server = SocketServer::start_at(&env, &expected, &["--socket"], &[], &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())]);
    let repo = format!("socket://{}", env.path("repo").display());
    env.ok(&["--socket", "-r", &repo, "repo-create", "-e", "none"]);
}

/// Hostile connections beside a real client: while 8 threads connect 25 times each and send
/// garbage (random bytes, a message cut short, gigabytes announced) or nothing, the real client
/// creates a repository, backs up and checks it through the same socket-mode server; the server
/// serves it all and still stops cleanly. (At most 8 hostile connections at once, under the
/// default limit of 64, so the client is never turned away for them.)
#[test]
fn hostile_connections_beside_a_real_client_disturb_nothing() {
    let env = Env::new();
    let server = SocketServer::start(&env, &[]);
    let src = env.path("src");
    make_source(&src);
    let repo = env.path("repo");
    let a = server.args(&repo);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let garbage = std::thread::scope(|s| {
        let hostile: Vec<_> = (0..8u64)
            .map(|t| {
                let (socket, stop) = (&server.socket, &stop);
                s.spawn(move || {
                    use std::io::Write;
                    let mut sent = 0;
                    for i in 0..25u64 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let Ok(mut c) = std::os::unix::net::UnixStream::connect(socket) else { continue };
                        let noise = support::noise(t * 100 + i, 1 + (i as usize * 397) % 5000);
                        let bytes: Vec<u8> = match i % 4 {
                            0 => noise,
                            1 => [&b"\x83\xa1i\x01\xa1m\xa9negotiate\xa1a"[..], &noise[..100.min(noise.len())]].concat(),
                            2 => [&[0xc6, 0xff, 0xff, 0xff, 0xf0][..], &noise].concat(),
                            _ => Vec::new(),
                        };
                        let _ = c.write_all(&bytes);
                        std::thread::sleep(Duration::from_millis(20));
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        ok_args(&env, &cat(&a, &["repo-create", "-e", "repokey-aes-ocb"]));
        ok_args(&env, &cat(&a, &["create", "one", src.to_str().unwrap()]));
        ok_args(&env, &cat(&a, &["check", "--verify-data"]));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hostile.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
    });
    assert!(garbage > 20, "only {garbage} hostile connections were made while the client worked");
    assert!(ok_args(&env, &cat(&a, &["list", "one"])).contains("big.bin"));
    let (status, stderr) = server.stop();
    assert!(status.success(), "exit status {status}: {stderr}");
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// A flood of connections over the limit costs a bounded number of threads: with one session held
/// open and `--max-connections 1`, 200 more connections that send nothing leave borgd with at most
/// 16 refusals under way (`REFUSALS_AT_ONCE`), every other one closed unanswered at once; once they
/// are gone it serves the real client as before. (A thread for each refused connection made thread
/// creation fail under a process limit, and the server panicked.)
#[test]
fn a_flood_of_connections_over_the_limit_costs_bounded_threads() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let env = Env::new();
    let server = SocketServer::start(&env, &["--max-connections", "1"]);
    let threads = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse::<usize>().unwrap()
    };
    // the start-up probe's connection is a session too, and the server may accept it only after
    // we connect (the probe only waited for the socket to take connections): hold a connection
    // the server answers as a session, not as busy, and wait until the probe's session is gone
    let started = std::time::Instant::now();
    let held = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no connection became a session");
        let c = UnixStream::connect(&server.socket).unwrap();
        (&c).write_all(b"\x83\xa1i\x01\xa1m\xa9negotiate\xa1a\x80").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = [0u8; 4096];
        let n = (&c).read(&mut answer).unwrap();
        if !String::from_utf8_lossy(&answer[..n]).contains("server busy") {
            break c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    while threads() > 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "the start-up probe's session never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let flood: Vec<UnixStream> = (0..200).map(|_| UnixStream::connect(&server.socket).unwrap()).collect();
    // wait until the server has turned every one away, closed or refusing
    let (mut most, mut closed) = (0, 0);
    while started.elapsed() < Duration::from_secs(15) {
        most = most.max(threads());
        closed = flood
            .iter()
            .filter(|&c| {
                c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                matches!((&*c).read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        if closed >= 200 - 16 {
            break;
        }
    }
    assert!(closed >= 200 - 16, "only {closed} of 200 connections over the limit were closed");
    assert!(most <= 2 + 16, "{most} threads with 200 connections over the limit");
    drop((flood, held));

    let repo = env.path("repo");
    let a = server.args(&repo);
    ok_args(&env, &cat(&a, &["repo-create", "-e", "none"]));
    let src = support::one_file_source(&env, "after the flood\n");
    ok_args(&env, &cat(&a, &["create", "a1", src.to_str().unwrap()]));
    let (status, stderr) = server.stop();
    assert!(status.success(), "exit status {status}: {stderr}");
    // counted, not logged one line each (at most one report a second, and one at the stop):
    // the 184 closed unanswered, all of them, in a few lines
    let reports: Vec<u64> = stderr.lines().filter_map(|l| l.strip_prefix("borgd: closed ")?.split(' ').next()?.parse().ok()).collect();
    assert!(!reports.is_empty() && reports.len() <= 5, "{} reports of connections closed unanswered:\n{stderr}", reports.len());
    assert_eq!(reports.iter().sum::<u64>(), 200 - 16, "{stderr}");
}
