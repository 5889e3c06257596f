//! `compare`: server builds side by side on one recorded `borg create` session.
//!
//! `e2e` judges a server against Python's with the real client beside it, whose own CPU, file
//! reading and pace move every figure by 10–20% from one repetition to the next. A change to
//! borgd is judged better on the same requests fed to each build in turn, with nothing else
//! running: `compare record` backs a source up once through borgd with the client's stream
//! recorded (and its pace, see `pace`); `compare run` replays it into each server — into a fresh
//! copy of the repository as it was before the backup — as fast as the server reads, at the
//! client's recorded pace (`--paced`), or one request every N µs (`--gap-us N`); `--reps` counted
//! repetitions (10 unless given) after `--warmup` ones that are not (2). Servers alternate from
//! one repetition to the next, and the figure that decides is paired: each server's CPU over the
//! first server's in the same repetition, whose median (with a 95% confidence interval) and how
//! many of them are below 1 it prints. On this machine 20 pairs resolve 3–5% (docs/BENCHMARKS.md).
//!
//! Layout of a recording directory DIR: `create.stream` and `create.stream.pace` (the client's
//! requests and when they arrived), `repo-before` (the repository before the backup),
//! `repo-recorded` (after it: its object count is what every replay must store), `repo` (where the
//! stream expects the repository: each replay's copy; the one before is renamed `replayed-*`,
//! never deleted: see `bench-fs.sh`), `LABEL.jsonl` (`measure`'s lines of the last run).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{copy_tree, count, count_objects, distinct_labels, ensure_space, gap_us, opt, pace, parse_servers, positional, replay_session, repetition, server_order, Client, Recording, Res, Session, Space, Spread};

const USAGE: &str = "usage: borgd-bench compare record DIR --borg CLIENT [--server EXECUTABLE] SOURCE...\n       borgd-bench compare run DIR [--reps N] [--warmup N] [--paced | --gap-us N] --server 'LABEL::EXECUTABLE [SERVE OPTIONS]' [--server ...]";

/// Repetitions run first and not counted by default: the first replays after a fresh file system
/// or a cache drop were up to 60% dearer.
const WARMUP: usize = 2;

/// `compare record|run ...` (see the module docs).
pub fn main(args: &[String]) -> Res<()> {
    match args.first().map(String::as_str) {
        Some("record") => record(&args[1..]),
        Some("run") => run(&args[1..]),
        _ => Err(USAGE.into()),
    }
}

/// `compare record DIR --borg CLIENT [--server EXECUTABLE] SOURCE...`: a new repository in
/// DIR, then one backup of SOURCE into it through the server (borgd beside this binary unless
/// given), its stream recorded.
fn record(args: &[String]) -> Res<()> {
    let words = positional(args, &[]);
    let [dir, sources @ ..] = words.as_slice() else { return Err(USAGE.into()) };
    if sources.is_empty() {
        return Err(USAGE.into());
    }
    let borg = PathBuf::from(opt(args, "--borg").ok_or("compare record needs --borg /path/to/borg (the 2.0.0b21 client)")?);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = match opt(args, "--server") {
        Some(s) => PathBuf::from(s),
        None => me.with_file_name("borgd"),
    };
    if !server.is_file() {
        return Err(format!("{}: no such server executable (give --server EXECUTABLE)", server.display()));
    }
    let dir = Path::new(dir.as_str());
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    if dir.join("repo-before").exists() || dir.join("repo").exists() {
        return Err(format!("{} already holds a recording", dir.display()));
    }
    let client = Client::new(&borg, &me, &dir, &[server.display().to_string()], None, None)?;
    client.run(&["repo-create", "-e", "none"], &dir, None)?;
    copy_tree(&dir.join("repo"), &dir.join("repo-before"))?;
    let stream = dir.join("create.stream");
    let mut create = vec!["create", "replay"];
    create.extend(sources.iter().map(|s| s.as_str()));
    client.run(&create, &dir, Some(&stream))?;
    std::fs::rename(dir.join("repo"), dir.join("repo-recorded")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let len = std::fs::metadata(&stream).map_err(|e| format!("{}: {e}", stream.display()))?.len();
    println!("{}: {len} bytes, {} objects", stream.display(), count_objects(&dir.join("repo-recorded")));
    Ok(())
}

/// How a run feeds the recorded stream.
enum Feed {
    AtOnce,
    Paced,
    Gap(Duration),
}

/// The files of a recording directory `compare record` made (see the module docs), for `compare
/// run` and `clients --replay`.
pub struct RecordingDir {
    /// The client's stream (its pace beside it, see `pace::pace_path`).
    pub stream: PathBuf,
    /// The repository before the backup, which every replay starts from a copy of.
    pub before: PathBuf,
    /// The repository after it: what every replay must store.
    pub recorded: PathBuf,
}

impl RecordingDir {
    /// `dir`'s recording, or an error saying there is none.
    pub fn open(dir: &Path) -> Res<RecordingDir> {
        let r = RecordingDir { stream: dir.join("create.stream"), before: dir.join("repo-before"), recorded: dir.join("repo-recorded") };
        if !r.stream.is_file() || !r.before.is_dir() || !r.recorded.is_dir() {
            return Err(format!("nothing recorded in {} (borgd-bench compare record first)", dir.display()));
        }
        Ok(r)
    }
}

/// `compare run DIR [--reps N] [--warmup N] [--paced | --gap-us N] --server LABEL::EXECUTABLE...`:
/// each repetition replays the recording into every server, alternating their order.
fn run(args: &[String]) -> Res<()> {
    let words = positional(args, &["--paced"]);
    let [dir] = words.as_slice() else { return Err(USAGE.into()) };
    let dir = Path::new(dir.as_str()).canonicalize().map_err(|e| format!("{dir}: {e}"))?;
    let servers = parse_servers(args)?;
    if servers.is_empty() {
        return Err(USAGE.into());
    }
    // each label names its measurement file and its column
    distinct_labels(&servers)?;
    let reps = count(args, "--reps", 10)?.max(1);
    let warmup = count(args, "--warmup", WARMUP)?;
    let gap = gap_us(args)?;
    let feed = match (args.iter().any(|a| a == "--paced"), gap) {
        (false, None) => Feed::AtOnce,
        (true, None) => Feed::Paced,
        (false, Some(g)) => Feed::Gap(g),
        (true, Some(_)) => return Err("--paced or --gap-us, not both".into()),
    };
    let RecordingDir { stream, before, recorded } = RecordingDir::open(&dir)?;
    // every replay leaves its repository behind (deleting one would slow the next run's file
    // creation): refuse a run that cannot finish rather than fail in the middle of it
    let replays = (servers.len() * (warmup + reps)) as u64;
    ensure_space(&dir, Space::of_tree(&recorded)?.times(replays))?;
    let data = std::fs::read(&stream).map_err(|e| format!("{}: {e}", stream.display()))?;
    let (pieces, how) = match feed {
        Feed::AtOnce => (None, "as fast as the server reads".to_string()),
        Feed::Paced => (Some(pace::load(&stream, data.len())?), "at the client's pace".to_string()),
        Feed::Gap(g) => (Some(pace::per_message(&data, g).map_err(|e| format!("{}: {e}", stream.display()))?), format!("one request every {} µs", g.as_micros())),
    };
    let rec = Recording { stream: data, before, repo: dir.join("repo"), objects: count_objects(&recorded) };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // measure's lines of this run, one file per server (the warm-up's apart)
    let outs: Vec<PathBuf> = servers.iter().map(|(l, _)| dir.join(format!("{l}.jsonl"))).collect();
    for out in outs.iter().chain([&dir.join("warm-up.jsonl")]) {
        std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut sessions: Vec<Vec<Session>> = vec![Vec::new(); servers.len()];
    for rep in 0..warmup + reps {
        let (rep_label, keep) = repetition(rep, warmup);
        let order = server_order(rep, servers.len());
        for si in order {
            let (label, cmd) = &servers[si];
            let out = if keep { outs[si].clone() } else { dir.join("warm-up.jsonl") };
            let aside = dir.join(format!("replayed-{run_id}-{rep}-{si}"));
            let s = replay_session(&me, &rec, cmd, &out, &aside, pieces.as_deref())?;
            eprintln!("{rep_label} {label}: server CPU {:.3} s, {} waits, {:.1} MiB", s.cpu_s, s.waits, s.peak_mib);
            if keep {
                sessions[si].push(s);
            }
        }
    }
    print_comparison(&format!("{} objects replayed {how}: median of {reps} (min–max)", rec.objects), &servers, &sessions);
    Ok(())
}

/// One figure of a replayed session.
type Field = fn(&Session) -> f64;

/// The table of a run: each server's figures, then its CPU against the first server's in the
/// same repetitions.
fn print_comparison(title: &str, servers: &[(String, Vec<String>)], sessions: &[Vec<Session>]) {
    print!("| {title} |");
    for (l, _) in servers {
        print!(" {l} |");
    }
    println!();
    println!("|{}", "---|".repeat(1 + servers.len()));
    let rows: [(&str, Field); 3] = [("server CPU s", |s| s.cpu_s), ("waits", |s| s.waits), ("peak memory MiB", |s| s.peak_mib)];
    for (name, field) in rows {
        print!("| {name} |");
        for s in sessions {
            print!(" {} |", Spread::of(&mut s.iter().map(field).collect::<Vec<f64>>()));
        }
        println!();
    }
    let first = &servers[0].0;
    print!("| server CPU / {first}'s in the same repetition: median (min–max; 95% CI), lower in |");
    print!(" — |");
    for s in &sessions[1..] {
        let (ratios, lower, n) = paired(&sessions[0], s);
        print!(" {}, {lower} of {n} |", ratios.with_ci());
    }
    println!();
}

/// `b`'s CPU over `a`'s, repetition by repetition, and in how many `b` was lower. A change is
/// real where the interval excludes 1.
fn paired(a: &[Session], b: &[Session]) -> (Spread, usize, usize) {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| b.cpu_s / a.cpu_s).collect();
    let lower = r.iter().filter(|&&x| x < 1.0).count();
    (Spread::of(&mut r), lower, r.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(cpu_s: f64) -> Session {
        Session { cpu_s, peak_mib: 1.0, waits: 1.0 }
    }

    #[test]
    fn paired_ratios_are_taken_repetition_by_repetition() {
        // b is 10% cheaper in every repetition
        let a: Vec<Session> = [1.0, 2.0, 3.0].map(session).to_vec();
        let b: Vec<Session> = [0.9, 1.8, 2.7].map(session).to_vec();
        let (r, lower, n) = paired(&a, &b);
        assert!((r.median - 0.9).abs() < 1e-9 && (r.max - 0.9).abs() < 1e-9, "{r:?}");
        assert_eq!((lower, n), (3, 3));
        let (same, lower, _) = paired(&a, &a);
        assert_eq!((same.median, lower), (1.0, 0));
    }
}
