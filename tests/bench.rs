//! The benchmark a reader reruns (docs/BENCHMARKS.md) must still run: `borgd-bench protocol`,
//! scaled down, against the real `borgd`. It fails on its own if a `list` misses ids or `check`
//! finds a bad object; here every figure and reference loop must also be reported.

use std::process::Command;

mod support;

/// How many objects a repository holds (the files below its `data`).
fn objects_in(repo: &std::path::Path) -> usize {
    support::files_below(&repo.join("data")).len()
}

/// The first figure (the median) of `row` in a table `borgd-bench` printed.
fn figure(stdout: &str, row: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with(&format!("| {row} |"))).unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
    let cell = line.split('|').nth(2).unwrap().trim();
    cell.split_whitespace().next().unwrap().parse().unwrap_or_else(|_| panic!("{row}: {cell:?}"))
}

/// The established-repository phase included: its three trees of 65 792 directories go to
/// /dev/shm (memory), where making them takes a second and deleting them costs nothing, not to
/// the disk, where they would make this test ten times slower and their deletion the machine's
/// file creation slower for minutes.
#[test]
fn protocol_benchmark_runs_against_borgd_and_reports_every_figure() {
    let dir = tempfile::Builder::new().prefix("borgd-protocol-").tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let server = format!("borgd::{} serve", env!("CARGO_BIN_EXE_borgd"));
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .args(["protocol", "--reps", "1", "--warmup", "0", "--small", "300", "--large", "20", "--server", &server, "--workdir"])
        .arg(dir.path().join("w"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "borgd-bench failed:\n{stderr}");
    // CPU rows too: read from the process CPU clock (nanoseconds), never a whole 0 for a phase
    for row in ["startup_s", "put1k_per_s", "put1k_cpu_s", "put64k_mb_per_s", "get64k_mb_per_s", "getmeta_per_s", "list_s", "list_cpu_s", "check_s", "check_cpu_s", "peak_rss_mib", "put1k_established_per_s", "put1k_established_cpu_s", "list_established_s", "list_established_cpu_s"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    for row in ["temp file + rename: 1 KiB objects per second", "unnamed file + link: 1 KiB objects per second", "temp file + rename: 1 KiB objects per second, established repository", "unnamed file + link: 1 KiB objects per second, established repository"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    assert!(stdout.contains("| borgd: 1 KiB put CPU / unnamed-file loop CPU |"), "{stdout}");
    assert!(stdout.contains("| borgd: established 1 KiB put CPU / unnamed-file loop CPU |"), "{stdout}");
}

/// `index` plants its objects, and every server stores the index twice and gets it back as sent
/// (the run fails otherwise); every figure is reported. 20 000 objects: a 800 KB index, streamed.
#[test]
fn index_benchmark_stores_and_loads_a_large_chunk_index() {
    let dir = tempfile::Builder::new().prefix("borgd-index-").tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let server = format!("borgd::{} serve", env!("CARGO_BIN_EXE_borgd"));
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .args(["index", "--objects", "20000", "--reps", "1", "--warmup", "0", "--server", &server, "--workdir"])
        .arg(dir.path().join("w"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "borgd-bench failed:\n{stderr}");
    for row in ["store_s", "store_cpu_s", "store_again_s", "store_again_cpu_s", "load_s", "load_cpu_s", "peak_rss_mib", "rss_after_open_mib"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    assert_eq!(objects_in(&dir.path().join("w/repo")), 20_000);
}

/// A server that stops answering without closing (here `sleep`, which reads and answers nothing
/// but keeps its pipes open) fails the run once the stall limit passes, saying so, instead of
/// hanging it: through its pipes (`protocol`) and, with a recorded session fed into it (`compare
/// run`), when it stops reading.
#[test]
fn a_stalled_server_fails_the_run_instead_of_hanging_it() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join("stuck");
    // its stderr away from the benchmark's, so that nothing waits for it to end
    support::write_script(&stuck, "#!/bin/sh\nexec sleep 20 2>/dev/null\n");
    // the benchmark against it, with a stall limit of 1 s: it must fail; what it said
    let fails = |args: Vec<std::ffi::OsString>| {
        let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).args(args).env("BORGD_BENCH_STALL_S", "1").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "a stalled server passed:\n{stderr}");
        stderr
    };
    let server = format!("stuck::{}", stuck.display());
    let mut args: Vec<std::ffi::OsString> = ["protocol", "--reps", "1", "--warmup", "0", "--small", "10", "--large", "2", "--no-established", "--server", &server, "--workdir"].map(Into::into).to_vec();
    args.push(dir.path().join("w").into());
    let stderr = fails(args);
    assert!(stderr.contains("the server has not answered for 1 s"), "{stderr}");
    // a recorded session of 4 MB, more than the pipe holds: the writing stalls
    let rec = dir.path().join("rec");
    for sub in ["repo-before", "repo-recorded"] {
        std::fs::create_dir_all(rec.join(sub)).unwrap();
    }
    std::fs::write(rec.join("create.stream"), vec![0x90u8; 4 << 20]).unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["compare".into(), "run".into(), rec.clone().into()];
    args.extend(["--reps", "1", "--warmup", "0", "--server", &server].map(Into::into));
    let stderr = fails(args);
    assert!(stderr.contains("the server has not read what was sent for 1 s"), "{stderr}");
}

/// The same for `e2e`, whose live sessions are the real client's (which has no limit of its
/// own): a client command still going past the stall limit fails the run, and the client and
/// the stalled server are killed, over the rsh shim and over a real sshd (where the server is
/// not the client's child: `measure` names itself, and its server dies with it).
#[test]
fn a_stalled_server_fails_a_live_e2e_session_and_is_killed() {
    let borg = std::env::var_os("BORGD_TEST_BORG").expect("BORGD_TEST_BORG is not set: run the README's test command (scripts/test.sh)");
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join("stuck");
    // a length of sleep nothing else here uses, to find it by
    support::write_script(&stuck, "#!/bin/sh\nexec sleep 31.25 2>/dev/null\n");
    let stalled_left = || {
        std::fs::read_dir("/proc").unwrap().flatten().filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0031.25\x00")).count()
    };
    for transport in [None, Some("--sshd")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_borgd-bench"));
        cmd.args(["e2e", "--reps", "1", "--warmup", "0", "--size-mb", "1", "--server"]).arg(format!("stuck::{}", stuck.display())).arg("--borg").arg(&borg);
        cmd.arg("--workdir").arg(dir.path().join(format!("w{}", transport.is_some())));
        let out = cmd.args(transport).env("BORGD_BENCH_STALL_S", "5").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{transport:?}: a stalled server passed:\n{stderr}");
        assert!(stderr.contains("had not ended after 5 s: killed with its server"), "{transport:?}: {stderr}");
        // SIGKILL takes a moment to land
        let t = std::time::Instant::now();
        while stalled_left() > 0 && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(stalled_left(), 0, "{transport:?}: the stalled server was left running");
    }
}

/// `measure` (the wrapper `e2e` starts each server through) records what the tables report for
/// a session: CPU time, peak memory and waits — a process that sleeps has waited at least once.
#[test]
fn measure_records_cpu_peak_memory_and_waits_of_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.jsonl");
    let st = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).args(["measure", "--out"]).arg(&out).args(["--", "sleep", "0.1"]).status().unwrap();
    assert!(st.success());
    let line = std::fs::read_to_string(&out).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert!(v["cpu_s"].as_f64().is_some_and(|c| c >= 0.0), "{line}");
    assert!(v["peak_rss_kib"].as_f64().is_some_and(|k| k > 0.0), "{line}");
    assert!(v["waits"].as_f64().is_some_and(|w| w >= 1.0), "{line}");
}

/// `feed` (the one-message-at-a-time replay of docs/BENCHMARKS.md, "A live session's waits")
/// passes a recorded stream through unchanged — messages with newline bytes in them too — paced
/// by the gap, and refuses a stream that ends inside a message.
#[test]
fn feed_passes_a_recorded_stream_through_one_message_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = vec![0x81, 0xa1, b'i', 0x01]; // {"i": 1}
    stream.extend([0x81, 0xa1, b'd', 0xc5, 0x01, 0x00]); // {"d": 256 bytes}
    stream.extend((0..=255u8).collect::<Vec<u8>>());
    stream.extend([0x81, 0xa1, b'i', 0x03]);
    let path = dir.path().join("s.stream");
    std::fs::write(&path, &stream).unwrap();
    let t = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).args(["feed", "--gap-us", "20000"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == stream, "the stream came out changed");
    assert!(t.elapsed() >= std::time::Duration::from_millis(40), "three messages, two gaps of 20 ms");
    std::fs::write(&path, &stream[..20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).args(["feed", "--gap-us", "0"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a whole msgpack message"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `tap` (the recorder between a real client and its server) passes its input through unchanged,
/// keeping a copy and when each piece arrived; `feed --paced` writes the same bytes in the same
/// pieces at the same moments (docs/BENCHMARKS.md, "A live session's waits").
#[test]
fn tap_records_a_stream_with_its_pace_and_feed_replays_it_at_that_pace() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.stream");
    let mut tap = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .arg("tap")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = tap.stdin.take().unwrap();
    let mut output = tap.stdout.take().unwrap();
    let pieces: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'\n' + i; 1000 * (usize::from(i) + 1)]).collect();
    for p in &pieces {
        input.write_all(p).unwrap();
        input.flush().unwrap();
        // the piece has passed through before the next one is written: each is a read of its own
        let mut got = vec![0; p.len()];
        output.read_exact(&mut got).unwrap();
        assert_eq!(&got, p);
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    drop(input);
    assert!(tap.wait().unwrap().success());
    let all = pieces.concat();
    assert_eq!(std::fs::read(&path).unwrap(), all);
    let pace = std::fs::read_to_string(dir.path().join("s.stream.pace")).unwrap();
    let lines: Vec<(u64, usize)> = pace.lines().map(|l| l.split_once(' ').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l.1).collect::<Vec<_>>(), [1000, 2000, 3000], "{pace}");
    assert_eq!(lines[0].0, 0, "{pace}");
    assert!(lines[2].0 >= 60_000, "two 30 ms pauses: {pace}");

    let t = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).args(["feed", "--paced"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == all, "the stream came out changed");
    assert!(t.elapsed() >= std::time::Duration::from_micros(lines[2].0), "fed faster than recorded");
    // a pace that does not match its stream is refused
    std::fs::write(dir.path().join("s.stream.pace"), "0 1000\n10 2000\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).args(["feed", "--paced"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add up to 3000 bytes, the stream has 6000"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `borgd-bench e2e ARGS` with the real client (`BORGD_TEST_BORG`), its work directory in
/// `dir`; fails unless it succeeded. Returns its output and its notes.
fn e2e(dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let borg = std::env::var_os("BORGD_TEST_BORG").expect("BORGD_TEST_BORG is not set: run the README's test command (scripts/test.sh)");
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).arg("e2e").args(args).arg("--borg").arg(&borg).arg("--workdir").arg(dir.join("w")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "borgd-bench e2e {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

/// `borgd-bench e2e` (the end-to-end benchmark with the real client, scaled down) still runs: the
/// real borg client backs a small data set up through borgd and extracts it (the benchmark checks
/// the extracted copy) and backs it up again with new files (the next night's backup); the first
/// backup is recorded with its pace (`tap`) and replayed into borgd at once and at that pace, each
/// replay checked to store every object; every row is reported, and with two servers the CPU ratios
/// repetition by repetition too.
#[test]
fn e2e_benchmark_runs_the_real_client_and_replays_the_session_at_its_pace() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("borgd::{}", env!("CARGO_BIN_EXE_borgd"));
    let other = format!("never::{} --fsync=never", env!("CARGO_BIN_EXE_borgd"));
    let (stdout, stderr) = e2e(dir.path(), &["--reps", "2", "--warmup", "0", "--size-mb", "8", "--server", &server, "--server", &other]);
    for row in ["create_server_cpu_s", "create_replayed_server_cpu_s", "create_paced_server_cpu_s", "create_paced_server_waits", "extract_server_cpu_s", "nightly_create_server_cpu_s", "nightly_create_wall_s"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    // the same ratios taken repetition by repetition, one row per CPU figure
    let paired = stdout.lines().skip_while(|l| !l.starts_with("| per repetition: server CPU / never's")).count();
    assert!(paired >= 6, "no per-repetition table:\n{stdout}");
    for row in ["create_server_cpu_s", "create_paced_server_cpu_s", "create_replayed_server_cpu_s", "extract_server_cpu_s", "nightly_create_server_cpu_s"] {
        let line = stdout.lines().filter(|l| l.starts_with(&format!("| {row} |"))).nth(1).unwrap_or_else(|| panic!("no per-repetition {row}:\n{stdout}"));
        assert_eq!(line.matches('|').count(), 3, "{line}");
    }
    let pace = std::fs::read_to_string(dir.path().join("w/recording/create.stream.pace")).unwrap();
    let recorded: usize = pace.lines().map(|l| l.split_once(' ').unwrap().1.parse::<usize>().unwrap()).sum();
    assert_eq!(recorded as u64, std::fs::metadata(dir.path().join("w/recording/create.stream")).unwrap().len());
    assert!(!stderr.contains("Reserve some repository storage space"), "borg's notes leak into the output:\n{stderr}");
}

/// Runs `borgd-bench crud ARGS` with the real client (`BORGD_TEST_BORG`), shrunk to one-byte
/// samples by the client's own test switch, its work directory in `dir`; fails unless it
/// succeeded. Returns its output.
fn crud(dir: &std::path::Path, args: &[&str]) -> String {
    let borg = std::env::var_os("BORGD_TEST_BORG").expect("BORGD_TEST_BORG is not set: run the README's test command (scripts/test.sh)");
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).arg("crud").args(args).arg("--borg").arg(&borg).arg("--workdir").arg(dir.join("w")).env("_BORG_BENCHMARK_CRUD_TEST", "1").output().unwrap();
    assert!(out.status.success(), "borgd-bench crud {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `borgd-bench crud` runs the client's own `borg benchmark crud` through each server, shrunk to
/// one-byte samples by the client's test switch: every step the client timed is reported for
/// both servers (two samples, four steps each), with the sums, the servers' CPU and memory, and
/// the ratios taken repetition by repetition.
#[test]
fn crud_benchmark_runs_the_clients_own_benchmark_through_each_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("borgd::{}", env!("CARGO_BIN_EXE_borgd"));
    let other = format!("never::{} --fsync=never", env!("CARGO_BIN_EXE_borgd"));
    let stdout = crud(dir.path(), &["--reps", "2", "--warmup", "0", "--server", &server, "--server", &other]);
    for step in ["C-Z-TEST", "R-Z-TEST", "U-Z-TEST", "D-Z-TEST", "C-R-TEST", "R-R-TEST", "U-R-TEST", "D-R-TEST"] {
        let row = format!("{step} (s)");
        assert!(figure(&stdout, &row) > 0.0, "{row} is not positive:\n{stdout}");
        let line = stdout.lines().find(|l| l.starts_with(&format!("| {row} |"))).unwrap();
        assert_eq!(line.matches('|').count(), 5, "a column per server and their ratio: {line}");
    }
    for row in ["all create steps (s)", "all delete steps (s)", "all steps (s)", "server CPU, all sessions (s)", "server peak memory, largest session (MiB)"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    for row in ["all steps", "server CPU"] {
        assert!(figure(&stdout, row) > 0.0, "no per-repetition {row}:\n{stdout}");
    }
    // each of the 8 steps a session of its own, and the repository's creation one more
    let sessions = std::fs::read_to_string(dir.path().join("w/rep0-s0/server.jsonl")).unwrap();
    assert!(sessions.lines().count() > 8, "{sessions}");
}

/// `crud --sshd`: the same through a real sshd on 127.0.0.1 (started and stopped by the benchmark).
#[test]
fn crud_benchmark_runs_over_a_real_sshd() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("borgd::{}", env!("CARGO_BIN_EXE_borgd"));
    let stdout = crud(dir.path(), &["--sshd", "--reps", "1", "--warmup", "0", "--server", &server]);
    assert!(stdout.starts_with("| borg benchmark crud, real borg client over ssh (a real sshd on 127.0.0.1)"), "{stdout}");
    for row in ["C-R-TEST (s)", "D-R-TEST (s)", "all steps (s)", "server CPU, all sessions (s)"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
}

/// `e2e --sshd`: the same through a real sshd on 127.0.0.1 (started and stopped by the
/// benchmark), the recorded session included (sshd passes no environment on: the wrapper reads a
/// file to know it records).
#[test]
fn e2e_benchmark_runs_over_a_real_sshd() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("borgd::{}", env!("CARGO_BIN_EXE_borgd"));
    let (stdout, _) = e2e(dir.path(), &["--sshd", "--reps", "1", "--warmup", "0", "--size-mb", "4", "--server", &server]);
    assert!(stdout.contains("real borg client over ssh (a real sshd on 127.0.0.1)"), "{stdout}");
    for row in ["create_server_cpu_s", "create_paced_server_cpu_s", "extract_server_cpu_s", "nightly_create_server_cpu_s"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    assert!(std::fs::metadata(dir.path().join("w/recording/create.stream")).unwrap().len() > 4_000_000);
}

/// `compare` (docs/BENCHMARKS.md, "Commands"): a small backup by the real borg client through
/// borgd is recorded once, then replayed into two servers as fast as they read, at the client's
/// pace and one request at a time, each replay checked to store every object the backup stored;
/// the table reports each server's figures and its CPU against the first server's, pair by pair;
/// `clients --replay` sends it in two sessions at once through one socket-mode borgd and through
/// a borgd process each, every session into its own repository; servers run beside a neighbour
/// and stop it; a run the disk cannot hold is refused up front.
#[test]
fn compare_records_a_real_backup_and_replays_it_into_two_servers() {
    let borg = std::env::var_os("BORGD_TEST_BORG").expect("BORGD_TEST_BORG is not set: run the README's test command (scripts/test.sh)");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // a small file, a medium one, one written directly (a chunk past 512 KiB)
    for (i, size) in [1_000usize, 100_000, 3_000_000].into_iter().enumerate() {
        std::fs::write(src.join(format!("f{i}")), borgd::testdata::noise(i as u64, size)).unwrap();
    }
    let rec = dir.path().join("rec");
    let bench = |args: Vec<std::ffi::OsString>| Command::new(env!("CARGO_BIN_EXE_borgd-bench")).arg("compare").args(args).output().unwrap();
    let record = || bench(vec!["record".into(), rec.clone().into(), "--borg".into(), borg.clone(), src.clone().into()]);
    let out = record();
    assert!(out.status.success(), "compare record failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("objects"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!record().status.success(), "a second recording into the same directory was not refused");
    let a = format!("a::{}", env!("CARGO_BIN_EXE_borgd"));
    let b = format!("b::{} --fsync=never", env!("CARGO_BIN_EXE_borgd"));
    for feed in [&[][..], &["--paced"][..], &["--gap-us", "100"][..]] {
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), rec.clone().into()];
        args.extend(["--reps", "2", "--warmup", "0"].map(Into::into));
        args.extend(feed.iter().map(Into::into));
        args.extend(["--server", &a, "--server", &b].map(Into::into));
        let out = bench(args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "compare run {feed:?} failed:\n{stderr}");
        for row in ["server CPU s", "waits", "peak memory MiB"] {
            assert!(figure(&stdout, row) > 0.0, "{feed:?}: {row} is not positive:\n{stdout}");
        }
        let paired = stdout.lines().find(|l| l.starts_with("| server CPU / a's in the same repetition")).unwrap_or_else(|| panic!("no paired row:\n{stdout}"));
        assert!(paired.ends_with(" of 2 |"), "{feed:?}: {paired}");
    }
    // the recorded session replayed by two sessions at once, through a socket-mode borgd and
    // through a borgd process each, each into its own copy of the repository: every copy ends
    // up with the backup's objects
    let recorded = objects_in(&rec.join("repo-recorded"));
    assert!(recorded > 3, "{recorded} objects recorded");
    for (i, feed) in [&[][..], &["--paced"][..]].into_iter().enumerate() {
        let work = dir.path().join(format!("clients{i}"));
        let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
            .args(["clients", "--replay", rec.to_str().unwrap(), "--clients", "2", "--reps", "1", "--warmup", "0"])
            .args(feed)
            .args(["--server", &format!("socket::{} serve", env!("CARGO_BIN_EXE_borgd"))])
            .args(["--stdio-server", &format!("stdio::{} serve", env!("CARGO_BIN_EXE_borgd")), "--workdir"])
            .arg(&work)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "clients --replay {feed:?} failed:\n{stderr}");
        for row in ["wall_s", "mb_per_s", "server_cpu_per_session_s", "peak_rss_mib"] {
            assert!(figure(&stdout, row) > 0.0, "{feed:?}: {row} is not positive:\n{stdout}");
        }
        // the socket server's sessions (s0) and the server processes of their own (s1)
        for server in ["s0", "s1"] {
            for c in 0..2 {
                assert_eq!(objects_in(&work.join(format!("rep0-{server}/repo{c}"))), recorded, "{feed:?}: {server}, session {c}");
            }
        }
    }
    // servers beside a neighbour (scripts/beside.sh): each replay runs, and no neighbour outlives
    // its server
    let beside = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/beside.sh");
    let servers = [format!("none::{beside} none {}", env!("CARGO_BIN_EXE_borgd")), format!("stream::{beside} stream:1 {}", env!("CARGO_BIN_EXE_borgd"))];
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .env("BORGD_BENCH", env!("CARGO_BIN_EXE_borgd-bench"))
        .args(["compare", "run", rec.to_str().unwrap(), "--reps", "1", "--warmup", "0", "--server", &servers[0], "--server", &servers[1]])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "compare run beside a neighbour failed:\n{stderr}");
    assert!(stdout.contains("| server CPU / none's in the same repetition"), "{stdout}");
    let left = Command::new("pgrep").args(["-f", "borgd-bench neighbour stream:1"]).output().unwrap();
    assert!(left.stdout.is_empty(), "a neighbour outlived its server: {}", String::from_utf8_lossy(&left.stdout));
    // every replay leaves its repository behind: a run the file system cannot hold is refused
    // before the first replay, not failed in the middle
    let replays = || std::fs::read_dir(&rec).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("replayed-")).count();
    let before = replays();
    // (a server that would fail at once, so that a run not refused fails here fast)
    let out = bench(["run", rec.to_str().unwrap(), "--reps", "100000000", "--server", "f::/bin/false"].map(Into::into).into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not enough room"), "a run too large for the disk was not refused:\n{stderr}");
    assert_eq!(replays(), before, "the refused run replayed");
}

/// `clients` (docs/BENCHMARKS.md, "Many clients at once") runs its sessions at once through a
/// socket-mode borgd and through a borgd process each (`--stdio-server`, as ssh starts them):
/// every session's repository holds its objects afterwards, the figures are
/// reported, the server is stopped, and a server that cannot listen is an error, not a hang; a
/// replay without a recording, or a pace without a replay, is refused.
#[test]
fn clients_runs_sessions_at_once_through_a_socket_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let server = format!("borgd::{} serve", env!("CARGO_BIN_EXE_borgd"));
    let stdio = format!("stdio::{} serve", env!("CARGO_BIN_EXE_borgd"));
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .args(["clients", "--clients", "3", "--puts", "200", "--reps", "1", "--warmup", "0", "--server", &server, "--stdio-server", &stdio, "--workdir"])
        .arg(&work)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "borgd-bench failed:\n{stderr}");
    for row in ["wall_s", "puts_per_s", "server_cpu_s", "server_cpu_per_session_s", "peak_rss_mib"] {
        assert!(figure(&stdout, row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    // the socket server's sessions (s0), and those of a server process each (s1)
    for server in ["s0", "s1"] {
        for c in 0..3 {
            assert_eq!(objects_in(&work.join(format!("rep0-{server}/repo{c}"))), 200, "{server}, session {c}");
        }
    }
    // the server was stopped: its socket file is gone (borgd removes it on SIGTERM)
    assert!(!work.join("rep0-s0/server.sock").exists());

    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .args(["clients", "--clients", "1", "--puts", "1", "--reps", "1", "--warmup", "0", "--server", "f::/bin/false", "--workdir"])
        .arg(dir.path().join("f"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("before listening"), "{stderr}");

    // a replay needs a recording; a pace needs a replay
    for (args, says) in [(&["--replay", "/nonexistent"][..], "nothing recorded"), (&["--paced"][..], "give --replay")] {
        let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench")).arg("clients").args(args).args(["--server", &server]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
}
