//! The benchmark a reader reruns (docs/BENCHMARKS.md) must still run: `borgd-bench protocol`,
//! scaled down, against the real `borgd`. It fails on its own if a `list` misses ids or `check`
//! finds a bad object; here every figure and reference loop must also be reported. (Without the
//! established-repository phase: its 65 792 directories would make this test ten times slower,
//! and deleting them makes this machine's file creation slower for minutes.)

use std::process::Command;

#[test]
fn protocol_benchmark_runs_against_borgd_and_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("borgd::{} serve", env!("CARGO_BIN_EXE_borgd"));
    let out = Command::new(env!("CARGO_BIN_EXE_borgd-bench"))
        .args(["protocol", "--reps", "1", "--warmup", "0", "--small", "300", "--large", "20", "--no-established", "--server", &server, "--workdir"])
        .arg(dir.path().join("w"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "borgd-bench failed:\n{stderr}");
    let figure = |row: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with(&format!("| {row} |"))).unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        let cell = line.split('|').nth(2).unwrap().trim();
        cell.split_whitespace().next().unwrap().parse().unwrap_or_else(|_| panic!("{row}: {cell:?}"))
    };
    // CPU rows too: read from the process CPU clock (nanoseconds), never a whole 0 for a phase
    for row in ["startup_s", "put1k_per_s", "put1k_cpu_s", "put64k_mb_per_s", "get64k_mb_per_s", "getmeta_per_s", "list_s", "list_cpu_s", "check_s", "check_cpu_s", "peak_rss_mib"] {
        assert!(figure(row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    for row in ["temp file + rename: 1 KiB objects per second", "unnamed file + link: 1 KiB objects per second"] {
        assert!(figure(row) > 0.0, "{row} is not positive:\n{stdout}");
    }
    assert!(stdout.contains("| borgd: 1 KiB put CPU / unnamed-file loop CPU |"), "{stdout}");
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
