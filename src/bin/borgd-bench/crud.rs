//! `crud`: the client's own benchmark, `borg benchmark crud`, through each server.
//!
//! Why: it is the figure a borg user can take themselves, with nothing of ours on the client's
//! side. For each of six samples (1 GB in ten files, 1 GB in a thousand, 100 MB in ten thousand;
//! each all zeros and random) the client times four commands, each a server session of its own:
//! `create` without the files cache (C), `create` with nothing changed (U; the files cache built
//! by an untimed `create` first), `extract --dry-run` (R: every chunk read back) and `delete`
//! (D), with untimed `delete`s between. It prints each time (`--json-lines`).
//!
//! `crud` runs that through each server in turn (alternating, as everything here), into a fresh
//! repository each time (no encryption, over the rsh shim as ssh would start the server, or with
//! `--sshd` through a real sshd on 127.0.0.1 as deployed), and reports each step's time as the
//! client saw it, the sums per kind of step and over all, and the server's CPU and peak memory
//! over the run's sessions (`measure`). The client writes each sample's files into `--data DIR`
//! and removes them after that sample (1 GB at most at a time); a tmpfs keeps those deletions off
//! the file system under test.
//!
//! With `_BORG_BENCHMARK_CRUD_TEST` in the environment the client shrinks every sample to one
//! byte (its own test switch): what the test suite runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ensure_space, opt, parse_servers, read_measurements, repetition, server_order, settle, warn_about_memory, Client, Res, Space, Spread, Sshd, SSH_KEY};

/// One run of `benchmark crud` through one server: each step's time in the client's order, and
/// the server's sessions (CPU seconds, peak MiB).
struct CrudRun {
    steps: Vec<(String, f64)>,
    cpu_s: f64,
    peak_mib: f64,
    sessions: usize,
}

impl CrudRun {
    /// The summed time of the steps whose id starts with `kind` (`C-`, `R-`, ...), or of all.
    fn total(&self, kind: Option<&str>) -> f64 {
        self.steps.iter().filter(|(id, _)| kind.is_none_or(|k| id.starts_with(&format!("{k}-")))).map(|(_, t)| t).sum()
    }
}

/// One figure of a run, as the paired table takes it.
type Pick = fn(&CrudRun) -> f64;

/// Whether the client will run its one-byte test samples.
fn test_samples() -> bool {
    std::env::var_os("_BORG_BENCHMARK_CRUD_TEST").is_some()
}

/// `crud --borg CLIENT --server 'LABEL::EXECUTABLE' ... [--reps N] [--warmup N] [--workdir DIR]
/// [--data DIR] [--sshd]`.
pub fn main(args: &[String]) -> Res<()> {
    let borg = PathBuf::from(opt(args, "--borg").ok_or("crud needs --borg /path/to/borg (the 2.0.0b21 client)")?);
    let servers = parse_servers(args)?;
    if servers.is_empty() {
        return Err("give at least one --server 'LABEL::EXECUTABLE [SERVE OPTIONS]' (run as EXECUTABLE serve CLIENT-OPTIONS SERVE-OPTIONS)".into());
    }
    let reps = super::count(args, "--reps", 5)?.max(1);
    let warmup = super::count(args, "--warmup", 1)?;
    let root = PathBuf::from(opt(args, "--workdir").unwrap_or_else(|| format!("/var/tmp/borgd-crud-{}", std::process::id())));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    // absolute: the repositories' ssh:// URLs are
    let root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    let data = match opt(args, "--data") {
        Some(d) => PathBuf::from(d),
        None => root.join("data"),
    };
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    warn_about_memory();
    // what a run leaves: the random samples' 2.1 GB stay in the repository (the client deletes
    // its archives but does not compact), ~11 500 objects in nearly as many new leaf directories; and
    // the largest sample's files while it runs
    let (per_run, sample) = if test_samples() { (Space { bytes: 4 << 20, inodes: 1000 }, Space { bytes: 1 << 20, inodes: 10 }) } else { (Space { bytes: 2_300_000_000, inodes: 25_000 }, Space { bytes: 1_100_000_000, inodes: 10_100 }) };
    ensure_space(&root, per_run.times(((reps + warmup) * servers.len()) as u64))?;
    ensure_space(&data, sample)?;
    let sshd = if args.iter().any(|a| a == "--sshd") { Some(Sshd::start(&root.join("sshd"), &[(SSH_KEY, "restrict")])?) } else { None };
    let transport = if sshd.is_some() { "over ssh (a real sshd on 127.0.0.1)" } else { "over the rsh shim" };
    let mut results: Vec<Vec<CrudRun>> = (0..servers.len()).map(|_| Vec::new()).collect();
    for rep in 0..warmup + reps {
        let (rep_label, keep) = repetition(rep, warmup);
        for si in server_order(rep, servers.len()) {
            let (label, cmd) = &servers[si];
            let dir = root.join(format!("rep{rep}-s{si}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let measurements = dir.join("server.jsonl");
            let client = Client::new(&borg, &me, &dir, cmd, Some(&measurements), sshd.as_ref())?;
            client.run(&["repo-create", "-e", "none"], &dir, None).map_err(|e| format!("{label}: {e}"))?;
            settle();
            let out = dir.join("crud.jsonl");
            client.run_keeping_output(&["benchmark", "crud", "--json-lines", &data.display().to_string()], &dir, &out).map_err(|e| format!("{label}: {e}"))?;
            let run = read_run(&out, &measurements)?;
            eprintln!("{rep_label} {label}: {} steps in {:.1} s (create {:.1}, extract {:.1}, update {:.1}, delete {:.2}); server CPU {:.2} s over {} sessions, peak {:.1} MiB", run.steps.len(), run.total(None), run.total(Some("C")), run.total(Some("R")), run.total(Some("U")), run.total(Some("D")), run.cpu_s, run.sessions, run.peak_mib);
            if keep {
                results[si].push(run);
            }
        }
    }
    print_results(&servers, &results, reps, transport);
    Ok(())
}

/// The client's step times (`--json-lines`: one object per step, its `id` and `time`) and the
/// server sessions `measure` wrote, the repository's creation left out.
fn read_run(out: &Path, measurements: &Path) -> Res<CrudRun> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut steps = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}: not the client's JSON line ({e}): {line}", out.display()))?;
        match (v["id"].as_str(), v["time"].as_f64()) {
            (Some(id), Some(t)) => steps.push((id.to_string(), t)),
            _ => return Err(format!("{}: a step without id or time: {line}", out.display())),
        }
    }
    // four steps per sample, and at least one sample
    if steps.is_empty() || steps.len() % 4 != 0 {
        return Err(format!("{}: {} steps, not four per sample", out.display(), steps.len()));
    }
    let sessions = read_measurements(measurements);
    let crud = sessions.get(1..).unwrap_or_default();
    if crud.len() < steps.len() {
        return Err(format!("{}: {} server sessions for {} steps", measurements.display(), crud.len(), steps.len()));
    }
    Ok(CrudRun { steps, cpu_s: crud.iter().map(|s| s.cpu_s).sum(), peak_mib: crud.iter().map(|s| s.peak_mib).fold(0.0, f64::max), sessions: crud.len() })
}

/// Markdown tables: every step and sum (median, range) with each server's median over the
/// last's; then, repetition by repetition, each server's total time and CPU over the last's.
fn print_results(servers: &[(String, Vec<String>)], results: &[Vec<CrudRun>], reps: usize, transport: &str) {
    let last = servers.len() - 1;
    // every figure by name, per server, one value per counted run
    let mut figures: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
    let ids: Vec<String> = results[0].first().map(|r| r.steps.iter().map(|(id, _)| id.clone()).collect()).unwrap_or_default();
    let by_id = |r: &CrudRun, id: &str| r.steps.iter().find(|(i, _)| i == id).map_or(f64::NAN, |(_, t)| *t);
    for id in &ids {
        figures.push((format!("{id} (s)"), results.iter().map(|runs| runs.iter().map(|r| by_id(r, id)).collect()).collect()));
    }
    for (kind, name) in [("C", "create"), ("R", "extract"), ("U", "update"), ("D", "delete")] {
        figures.push((format!("all {name} steps (s)"), results.iter().map(|runs| runs.iter().map(|r| r.total(Some(kind))).collect()).collect()));
    }
    figures.push(("all steps (s)".into(), results.iter().map(|runs| runs.iter().map(|r| r.total(None)).collect()).collect()));
    figures.push(("server CPU, all sessions (s)".into(), results.iter().map(|runs| runs.iter().map(|r| r.cpu_s).collect()).collect()));
    figures.push(("server peak memory, largest session (MiB)".into(), results.iter().map(|runs| runs.iter().map(|r| r.peak_mib).collect()).collect()));
    super::print_header(&format!("borg benchmark crud, real borg client {transport} (median of {reps}, min–max)"), servers);
    for (name, per_server) in &figures {
        print!("| {name} |");
        let spreads: Vec<Spread> = per_server.iter().map(|v| Spread::of(&mut v.clone())).collect();
        for s in &spreads {
            print!(" {s} |");
        }
        for s in &spreads[..last] {
            print!(" {} |", super::fmt(s.median / spreads[last].median));
        }
        println!();
    }
    if last == 0 {
        return;
    }
    println!();
    super::print_paired_header("each figure", servers);
    let paired: [(&str, Pick); 2] = [("all steps", |r| r.total(None)), ("server CPU", |r| r.cpu_s)];
    for (name, f) in paired {
        print!("| {name} |");
        for runs in &results[..last] {
            let mut ratios: Vec<f64> = runs.iter().zip(&results[last]).map(|(a, b)| f(a) / f(b)).collect();
            print!(" {} |", Spread::of(&mut ratios).with_ci());
        }
        println!();
    }
    let sessions: BTreeMap<&str, Vec<usize>> = servers.iter().zip(results).map(|((l, _), runs)| (l.as_str(), runs.iter().map(|r| r.sessions).collect())).collect();
    println!();
    println!("server sessions per run (the repository's creation not counted): {sessions:?}");
}
