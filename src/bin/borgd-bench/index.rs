//! `index`: the chunk index of a large repository, as a backup uploads it at its end
//! (`store_store` of `cache/chunks.<hash>`) and a client without a cache of its own loads it at
//! its start (`store_load`).
//!
//! The index lists `--objects` ids (40 bytes each: 40 MB for a million), and the repository holds
//! an object for each — planted straight into `data/` as empty files before any server runs (not
//! measured: a server's check of an uploaded index needs only their names). Every server, in
//! turn, opens that one repository, stores the index, loads it back (and it must come back as
//! sent), and closes; the table gives the wall time and server CPU of each call, and the
//! server's peak memory after open and over the session, which must not grow with the number of
//! objects. Servers alternate between repetitions; medians of `--reps` after `--warmup`
//! (docs/BENCHMARKS.md, "A large repository's chunk index").
//!
//! Each session finds no index in `cache/` (the harness removes the previous session's) and
//! stores the index twice: the first time it is new to the repository, and borgd looks for every
//! object it lists (`store_*`); the second time it is the merge of the indexes in `cache/` (only
//! itself), which borgd has checked and noted, and `data/` has not changed since, so borgd need
//! look for none (`store_again_*`; see `repository::trust`; in the first session, seconds after
//! the planting, its leaves count as changed, so keep a warm-up). Python stores it unchecked
//! both times. Without the removal, which case a session measured would depend on whether borgd's
//! session or Python's ran before it (Python's store drops borgd's note).

use std::path::{Path, PathBuf};
use std::time::Instant;

use borgd::repository::chunkindex;
use borgd::rpc::msgpack::{self, Value};

use super::{count, distinct_labels, ensure_space, object, opt, parse_servers, print_runs, proc_cpu, proc_hwm, repetition, server_order, settle, Arg, Res, Run, Server, Space, BLOCK, DATA_DIRS};

/// Plants an empty `data/xx/yy/<hex id>` file for each id (a borg 2 repository's two levels).
fn plant(repo: &Path, ids: &[[u8; 32]]) -> Res<()> {
    for id in ids {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let dir = repo.join("data").join(&hex[..2]).join(&hex[2..4]);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::File::create(dir.join(&hex)).map_err(|e| format!("{hex}: {e}"))?;
    }
    Ok(())
}

/// One server's session: open, store the index (new to the repository), store it again (the
/// merge of what `cache/` holds), load it back, close.
fn session(cmd: &[String], dir: &Path, repo: &Path, name: &str, index: &[u8]) -> Res<Run> {
    let mut run = Run::new();
    let cached = repo.join(name);
    match std::fs::remove_file(&cached) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", cached.display())),
        _ => {}
    }
    let mut s = Server::start(cmd, dir)?;
    let pid = s.pid();
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(false)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(10))])?;
    run.insert("rss_after_open_mib", proc_hwm(pid) as f64 / 1024.0);
    let (t, cpu) = (Instant::now(), proc_cpu(pid));
    s.call("store_store", &[("name", Arg::Str(name)), ("value", Arg::Bin(index))])?;
    run.insert("store_s", t.elapsed().as_secs_f64());
    run.insert("store_cpu_s", proc_cpu(pid).saturating_sub(cpu).as_secs_f64());
    let (t, cpu) = (Instant::now(), proc_cpu(pid));
    s.call("store_store", &[("name", Arg::Str(name)), ("value", Arg::Bin(index))])?;
    run.insert("store_again_s", t.elapsed().as_secs_f64());
    run.insert("store_again_cpu_s", proc_cpu(pid).saturating_sub(cpu).as_secs_f64());
    let (t, cpu) = (Instant::now(), proc_cpu(pid));
    let answer = s.call("store_load", &[("name", Arg::Str(name))])?;
    run.insert("load_s", t.elapsed().as_secs_f64());
    run.insert("load_cpu_s", proc_cpu(pid).saturating_sub(cpu).as_secs_f64());
    if msgpack::parse(&answer).map_err(|e| e.to_string())?.get("r") != Some(&Value::Bin(index)) {
        return Err("store_load did not give back what store_store stored".into());
    }
    drop(answer);
    let ru = s.close()?;
    run.insert("peak_rss_mib", ru.maxrss_kib as f64 / 1024.0);
    Ok(run)
}

/// `borgd-bench index --server 'LABEL::CMD' [...] [--objects N] [--reps N] [--warmup N]
/// [--workdir DIR]`.
pub fn main(args: &[String]) -> Res<()> {
    let servers = parse_servers(args)?;
    if servers.is_empty() {
        return Err("give at least one --server 'LABEL::CMD'".into());
    }
    distinct_labels(&servers)?;
    let objects = count(args, "--objects", 1_000_000)?.max(1);
    let reps = count(args, "--reps", 5)?.max(1);
    let warmup = count(args, "--warmup", 1)?;
    let root = PathBuf::from(opt(args, "--workdir").unwrap_or_else(|| format!("/var/tmp/borgd-bench-{}", std::process::id())));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let index_bytes = (objects * chunkindex::ENTRY_SIZE) as u64;
    ensure_space(&root, Space { bytes: DATA_DIRS * BLOCK + 2 * index_bytes, inodes: objects as u64 + DATA_DIRS + 64 })?;

    let ids: Vec<[u8; 32]> = (0..objects as u64).map(|i| object(i, 0).0).collect();
    let index = chunkindex::serialize(ids.iter());
    let name = chunkindex::cache_name(&index);
    // the repository, made by the first server; then its objects planted
    let repo = root.join("repo");
    let mut s = Server::start(&servers[0].1, &root)?;
    s.call("negotiate", &[("client_data", Arg::Nil)])?;
    s.call("open", &[("path", Arg::Str(&repo.display().to_string())), ("create", Arg::Bool(true)), ("exclusive", Arg::Bool(true)), ("lock_wait", Arg::Int(10))])?;
    s.close()?;
    let t = Instant::now();
    plant(&repo, &ids)?;
    drop(ids);
    eprintln!("planted {objects} objects in {:.1} s; the index is {} bytes", t.elapsed().as_secs_f64(), index.len());

    let mut results: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    for rep in 0..warmup + reps {
        let (label, keep) = repetition(rep, warmup);
        for si in server_order(rep, servers.len()) {
            settle();
            let run = session(&servers[si].1, &root, &repo, &name, &index).map_err(|e| format!("{}: {e}", servers[si].0))?;
            eprintln!("{label} {}: store {:.2} s, again {:.2} s, load {:.2} s, peak {:.1} MiB", servers[si].0, run["store_s"], run["store_again_s"], run["load_s"], run["peak_rss_mib"]);
            if keep {
                results[si].push(run);
            }
        }
    }
    let metrics: Vec<&'static str> = results[0][0].keys().copied().collect();
    print_runs(&format!("chunk index of {objects} objects (median of {reps}, min–max)"), &servers, &results, &metrics);
    eprintln!("work directory (delete when done): {}", root.display());
    Ok(())
}
