//! The real borg 2.0.0b21 client over ssh:// (rsh shim) against borgd: the whole life of a
//! repository in each encryption mode, the client's other repository commands (recreate,
//! repo-compress, tar export and import, transfer, the single-object `debug` commands, ...),
//! on-disk compatibility with Python borg both ways, server logs on the client, and no lock left
//! behind by a killed client.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{assert_same_tree, files_below, make_source, Env};

fn lifecycle(mode: &str) {
    let env = Env::new();
    let src = env.path("src");
    make_source(&src);
    let repo_dir = env.path("repo");
    let url = env.ssh_url(&repo_dir);
    let r = |args: &[&str]| {
        let mut v = vec!["-r", url.as_str()];
        v.extend_from_slice(args);
        env.ok(&v)
    };
    let src_s = src.to_str().unwrap();

    r(&["repo-create", "-e", mode]);
    assert!(repo_dir.join("config/readme").exists() && repo_dir.join("cache").is_dir());

    let data_bytes = || files_below(&repo_dir.join("data")).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>();
    r(&["create", "a1", src_s]);
    let after_first = data_bytes();
    assert!(after_first > 21 * 1024 * 1024 || mode != "none", "the 21 MiB of noise must be stored");
    std::fs::write(src.join("small.txt"), b"hello borgd, changed\n").unwrap();
    r(&["create", "a2", src_s]);
    let added = data_bytes() - after_first;
    assert!(added < 200_000, "second backup must deduplicate, it added {added} bytes");

    let names = || support::archive_names(&env, &["-r", url.as_str()]);
    assert_eq!(names(), ["a1", "a2"]);
    let files = r(&["list", "a1"]);
    assert!(files.contains("big.bin") && files.contains("empty") && files.contains("dup2"), "{files}");
    let info = r(&["info", "a1"]);
    assert!(info.contains("a1"), "{info}");

    let out = env.path("extract");
    std::fs::create_dir_all(&out).unwrap();
    let mut ex = env.command(&["-r", &url, "extract", "a1"]);
    let status = ex.current_dir(&out).status().unwrap();
    assert!(status.success());
    let extracted = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::metadata(extracted.join("empty")).unwrap().len(), 0);
    assert_eq!(std::fs::read(extracted.join("big.bin")).unwrap(), support::noise(1, 21 * 1024 * 1024 + 12345));
    std::fs::write(src.join("small.txt"), b"hello borgd\n").unwrap(); // a1's content
    assert_same_tree(&src, &extracted);

    let diff = r(&["diff", "a1", "a2"]);
    assert!(diff.contains("small.txt"), "{diff}");

    r(&["rename", "a2", "a3"]);
    assert_eq!(names(), ["a1", "a3"]);

    r(&["delete", "a1"]);
    assert_eq!(names(), ["a3"]);
    r(&["undelete", "a1"]);
    assert_eq!(names(), ["a1", "a3"]);

    r(&["create", "a4", src_s]);
    r(&["prune", "--keep-last", "1"]);
    assert_eq!(names(), ["a4"]);
    let before = files_below(&repo_dir.join("data")).len();
    r(&["compact"]);
    let after = files_below(&repo_dir.join("data")).len();
    assert!(after < before, "compact must remove the changed small file's chunk ({before} -> {after})");

    r(&["check"]);
    r(&["check", "--repository-only"]);
    r(&["check", "--archives-only"]);

    if mode != "none" {
        let key = env.path("key.export");
        r(&["key", "export", key.to_str().unwrap()]);
        let exported = std::fs::read_to_string(&key).unwrap();
        assert!(exported.contains("BORG_KEY"), "{exported}");
        r(&["key", "import", key.to_str().unwrap()]);
    }

    // with-lock: the command runs while a lock is in the store; afterwards none is left.
    let locks = repo_dir.join("locks");
    let probe = format!("test -n \"$(ls {})\"", locks.display());
    r(&["with-lock", "sh", "-c", &probe]);
    assert!(files_below(&locks).is_empty());
    // break-lock removes a lock a (pretend) dead foreign client left.
    std::fs::write(locks.join("0123456789abcdef"), br#"{"exclusive": true, "hostid": "elsewhere@1", "processid": 1, "threadid": 0, "time": "2099-01-01T00:00:00.000+00:00"}"#).unwrap();
    env.fails(&["-r", &url, "--lock-wait", "1", "list", "a4"]);
    r(&["break-lock"]);
    assert!(files_below(&locks).is_empty());
    // an unreadable lock record is named, with what to do, and break-lock removes it (through
    // Python's server break-lock fails on it too)
    std::fs::write(locks.join("0123456789abcdef"), br#"{"exclusive": tr"#).unwrap();
    let refused = env.fails(&["-r", &url, "list", "a4"]);
    assert!(refused.contains("locks/0123456789abcdef") && refused.contains("break-lock"), "{refused}");
    r(&["break-lock"]);
    assert!(files_below(&locks).is_empty());
    // an empty one, what a power cut leaves of a lock, is stale: removed, with a warning
    std::fs::write(locks.join("0123456789abcdef"), b"").unwrap();
    let listed = r(&["list", "a4"]);
    assert!(listed.contains("Removing the empty lock record locks/0123456789abcdef"), "{listed}");
    assert!(files_below(&locks).is_empty());

    let ri = r(&["repo-info"]);
    assert!(ri.contains("Repository ID"), "{ri}");
    r(&["repo-space", "--reserve", "1M"]);
    assert!(files_below(&repo_dir.join("config")).iter().any(|p| p.to_string_lossy().contains("space-reserve")));
    r(&["repo-space", "--free"]);

    // Python borg, locally on the same directory, accepts what borgd wrote.
    env.ok(&["-r", repo_dir.to_str().unwrap(), "check"]);

    // corrupt a data object on disk: check finds it, --repair removes it, the store checks clean.
    let victim = files_below(&repo_dir.join("data")).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let damaged = env.fails(&["-r", &url, "check", "--repository-only"]);
    assert!(damaged.contains("corrupted"), "{damaged}");
    let _ = env.run(&["-r", &url, "check", "--repair"]);
    assert!(!victim.exists(), "repair deletes the corrupt object");
    r(&["check", "--repository-only"]);

    r(&["repo-delete"]);
    assert!(!repo_dir.join("config").exists());
}

#[test]
fn lifecycle_unencrypted() {
    lifecycle("none");
}

#[test]
fn lifecycle_repokey_aes_ocb() {
    lifecycle("repokey-aes-ocb");
}

#[test]
fn lifecycle_repokey_blake2_chacha20_poly1305() {
    lifecycle("repokey-blake2-chacha20-poly1305");
}

#[test]
fn repository_made_by_python_borg_is_served() {
    let env = Env::new();
    let repo = env.path("pyrepo");
    env.ok(&["-r", repo.to_str().unwrap(), "repo-create", "-e", "repokey-aes-ocb"]);
    let src = support::one_file_source(&env, support::noise(7, 2_000_000));
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "create", "via-borgd", src.to_str().unwrap()]);
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(env.command(&["-r", &url, "extract", "via-borgd"]).current_dir(&out).status().unwrap().success());
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// The client's other commands that work a repository through the server, each checked by what
/// it left: `version` (the server's too), `tag`, `recreate`, `repo-compress` (objects read,
/// compressed anew and written again in place), `export-tar` / `import-tar`, `analyze`, `check
/// --find-lost-archives` (an archive whose directory entry was removed found again),
/// `transfer` between two repositories on two connections of one client, and `benchmark crud`
/// (its own create, extract and delete sessions, borgd passed on to each); Python borg checks
/// both repositories locally.
#[test]
fn the_clients_other_repository_commands_work() {
    let mut env = Env::new();
    let src = env.path("src");
    make_source(&src);
    // something the compressors can tell apart (the rest is noise)
    std::fs::write(src.join("text"), "borgd serves borg clients\n".repeat(40_000)).unwrap();
    let src_s = src.to_str().unwrap();
    let (a, b) = (env.path("a"), env.path("b"));
    let (url_a, url_b) = (env.ssh_url(&a), env.ssh_url(&b));
    let on_a = |args: &[&str]| env.ok(&[&["-r", url_a.as_str()], args].concat());
    on_a(&["repo-create", "-e", "repokey-aes-ocb"]);
    on_a(&["create", "a1", src_s]);
    on_a(&["create", "a2", src_s]);

    let version = on_a(&["version"]);
    assert!(version.starts_with("2.0.0b21 / 2.0.0b21"), "client / server version: {version}");

    on_a(&["tag", "a1", "--set", "keep"]);
    let tags = on_a(&["repo-list", "--format", "{archive}:{tags}{NL}"]);
    assert!(tags.contains("a1:keep") && tags.contains("a2:\n"), "{tags}");

    on_a(&["recreate", "--exclude", "*/big.bin", "-a", "a2"]);
    assert!(!on_a(&["list", "a2"]).contains("big.bin") && on_a(&["list", "a1"]).contains("big.bin"));

    let contents = || files_below(&a.join("data")).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect::<std::collections::BTreeMap<_, _>>();
    let before = contents();
    on_a(&["repo-compress", "--compression", "zstd,3"]);
    let after = contents();
    let rewritten = before.iter().filter(|(p, v)| after.get(*p).is_some_and(|w| w != *v)).count();
    assert!(rewritten > 0 && after.keys().eq(before.keys()), "repo-compress rewrote {rewritten} of {} objects in place", before.len());
    on_a(&["check", "--verify-data"]);

    let (tar1, tar3) = (env.path("a1.tar"), env.path("a3.tar"));
    on_a(&["export-tar", "a1", tar1.to_str().unwrap()]);
    on_a(&["import-tar", "a3", tar1.to_str().unwrap()]);
    on_a(&["export-tar", "a3", tar3.to_str().unwrap()]);
    assert!(std::fs::read(&tar1).unwrap() == std::fs::read(&tar3).unwrap(), "a tar imported and exported again differs");

    on_a(&["create", "a1", src_s]);
    let analysis = on_a(&["analyze", "-a", "a1"]);
    assert!(analysis.contains("chunks added or removed by directory path"), "{analysis}");

    // an archive whose directory entry is lost: check finds its metadata among all objects (each
    // object's header read through `get` without its data), and --repair writes the entry again
    let ids = on_a(&["repo-list", "--format", "{archive} {id}{NL}"]);
    let a3 = ids.lines().find_map(|l| l.strip_prefix("a3 ")).unwrap_or_else(|| panic!("no a3 in {ids}"));
    std::fs::remove_file(a.join("archives").join(a3)).unwrap();
    assert!(!support::archive_names(&env, &["-r", &url_a]).contains(&"a3".to_string()));
    let found = env.fails(&["-r", &url_a, "check", "--archives-only", "--find-lost-archives"]);
    assert!(found.contains(&format!("Would create archives directory entry for a3 {a3}")), "{found}");
    on_a(&["check", "--archives-only", "--find-lost-archives", "--repair"]);
    assert!(a.join("archives").join(a3).exists());
    assert!(support::archive_names(&env, &["-r", &url_a]).contains(&"a3".to_string()));

    // a related repository (same key material), filled from the first over a second connection
    env.set_env("BORG_OTHER_PASSPHRASE", "correct horse battery staple");
    env.ok(&["-r", &url_b, "repo-create", "--other-repo", &url_a, "-e", "repokey-aes-ocb"]);
    env.ok(&["-r", &url_b, "transfer", "--other-repo", &url_a]);
    let names = |url: &str| support::archive_names(&env, &["-r", url]);
    assert_eq!(names(&url_b), names(&url_a));
    assert_eq!(names(&url_b).len(), 4);
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(env.command(&["-r", &url_b, "extract", "a3"]).current_dir(&out).status().unwrap().success());
    assert_same_tree(&src.join("sub"), &out.join(src.strip_prefix("/").unwrap()).join("sub"));

    // the client's benchmark, shrunk to one-byte files by its own test switch: each step a
    // client command of its own through borgd, its archives deleted again at the end
    env.set_env("_BORG_BENCHMARK_CRUD_TEST", "1");
    let crud_data = env.path("crud");
    std::fs::create_dir_all(&crud_data).unwrap();
    let crud = env.ok(&["-r", &url_b, "benchmark", "crud", crud_data.to_str().unwrap()]);
    for step in ["C-Z-TEST", "R-Z-TEST", "U-Z-TEST", "D-Z-TEST", "C-R-TEST", "R-R-TEST", "U-R-TEST", "D-R-TEST"] {
        assert!(crud.contains(step), "no {step} in: {crud}");
    }
    assert_eq!(support::archive_names(&env, &["-r", &url_b]).len(), 4);
    for repo in [&a, &b] {
        env.ok(&["-r", repo.to_str().unwrap(), "check"]);
    }
}

/// The client's `debug` commands, which work single objects through the server's raw `put`,
/// `get`, `delete` and `list`: an object put under an id the user chose lands where borgstore puts
/// it and comes back byte for byte; deleting it twice says "not found" the second time and exits
/// 0, and getting it then fails with the client's "not found" (both as through Python's server);
/// `dump-repo-objs` writes one file per object listed; and the repository still checks.
#[test]
fn the_clients_debug_commands_work_single_objects() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let src = support::one_file_source(&env, "an archive's file\n");
    let on = |args: &[&str]| env.ok(&[&["-r", url.as_str()], args].concat());
    on(&["create", "a1", src.to_str().unwrap()]);

    let id = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let (payload, fetched) = (env.path("payload"), env.path("fetched"));
    std::fs::write(&payload, support::noise(7, 70_000)).unwrap();
    assert!(on(&["debug", "put-obj", id, payload.to_str().unwrap()]).contains(&format!("object {id} put")));
    let stored = repo.join("data/00/11").join(id);
    assert!(stored.is_file(), "not at {}", stored.display());
    assert!(on(&["debug", "get-obj", id, fetched.to_str().unwrap()]).contains(&format!("object {id} fetched")));
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&payload).unwrap(), "the object came back changed");

    assert!(on(&["debug", "delete-obj", id]).contains(&format!("object {id} deleted")));
    assert!(!stored.exists());
    assert!(on(&["debug", "delete-obj", id]).contains(&format!("object {id} not found")));
    let missing = env.fails(&["-r", &url, "debug", "get-obj", id, env.path("again").to_str().unwrap()]);
    assert!(missing.contains(&format!("object {id} not found")), "{missing}");

    let dump = env.path("dump");
    std::fs::create_dir_all(&dump).unwrap();
    assert!(env.command(&["-r", &url, "debug", "dump-repo-objs"]).current_dir(&dump).status().unwrap().success());
    let objects = files_below(&repo.join("data")).len();
    assert!(objects > 0);
    assert_eq!(std::fs::read_dir(&dump).unwrap().count(), objects, "one dumped file per object");
    on(&["check"]);
}

/// `borg check --max-duration` (a partial repository check) through borgd resumes after the key
/// a past partial check recorded (`cache/last-key-checked`, as Python borg names it), checks
/// exactly the objects after it, and forgets the mark once the pass is complete.
#[test]
fn a_partial_check_resumes_where_the_last_one_stopped() {
    let env = Env::new();
    let src = env.path("src");
    make_source(&src);
    let (repo, url) = env.new_repo("repo");
    env.ok(&["-r", &url, "create", "a1", src.to_str().unwrap()]);
    let mut names: Vec<String> = files_below(&repo.join("data")).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort();
    let mark_at = names.len() / 3;
    let mark = repo.join("cache/last-key-checked");
    std::fs::write(&mark, format!("data/{}", names[mark_at])).unwrap();
    let out = env.ok(&["-r", &url, "check", "--repository-only", "--max-duration", "600", "--info"]);
    assert!(out.contains("Starting partial repository check") && out.contains(&format!("Skipping to keys after data/{}.", names[mark_at])), "{out}");
    let after = names.len() - mark_at - 1;
    assert!(out.contains(&format!("Checked {after} repository objects, 0 errors.")), "expected {after} of {} objects checked:\n{out}", names.len());
    assert!(!mark.exists(), "a completed pass forgets the mark");
    // a full check starts from the beginning
    let out = env.ok(&["-r", &url, "check", "--repository-only", "--info"]);
    assert!(out.contains(&format!("Checked {} repository objects, 0 errors.", names.len())), "{out}");
}

/// Keyfile mode (the key on the client, none in the repository) through borgd: the repository
/// holds no key, as one Python borg makes locally; a backup (sent through the client's upload
/// buffer, rate-limited) extracts whole; `key change-location` moves the key into the repository
/// and back out, leaving an empty `keys/repokey` as Python borg does.
#[test]
fn keyfile_mode_and_moving_the_key_in_and_out() {
    let env = Env::new();
    let src = env.path("src");
    make_source(&src);
    let (repo, python_repo) = (env.path("repo"), env.path("python-repo"));
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "keyfile-aes-ocb"]);
    env.ok(&["-r", python_repo.to_str().unwrap(), "repo-create", "-e", "keyfile-aes-ocb"]);
    // what borgd adds: the room it keeps in reserve, hidden files (`store::room`)
    let entries = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.ends_with(".hid")).collect();
        v.sort();
        v
    };
    assert_eq!(entries(&repo), entries(&python_repo), "borgd's keyfile repository against Python borg's");
    assert!(!repo.join("keys").exists());

    env.ok(&["-r", &url, "--upload-buffer", "8", "--upload-ratelimit", "100000", "create", "a1", src.to_str().unwrap()]);
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(env.command(&["-r", &url, "extract", "a1"]).current_dir(&out).status().unwrap().success());
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));

    let repokey = repo.join("keys/repokey");
    env.ok(&["-r", &url, "key", "change-location", "repokey"]);
    assert!(std::fs::metadata(&repokey).unwrap().len() > 100, "the key is in the repository now");
    assert!(env.ok(&["-r", &url, "repo-info"]).contains("repokey AES-OCB"));
    env.ok(&["-r", &url, "key", "change-location", "keyfile"]);
    assert_eq!(std::fs::metadata(&repokey).unwrap().len(), 0, "an empty repokey: none in the repository");
    assert!(env.ok(&["-r", &url, "repo-info"]).contains("key file AES-OCB"));
    env.ok(&["-r", &url, "list", "a1"]);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn debug_shows_server_log_records() {
    let env = Env::new();
    let url = env.ssh_url(&env.path("repo"));
    let out = env.run(&["-r", &url, "--debug", "repo-create", "-e", "none"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // these lines only borgd writes, and they arrive as log records, not as raw stderr
    assert!(stderr.contains("LOCK-ACQUIRE: success"), "{stderr}");
    assert!(stderr.contains("opened repository"), "{stderr}");
    assert!(!stderr.contains("stderr:"), "server wrote to stderr: {stderr}");
    // without --debug, none of that is sent
    let quiet = env.run(&["-r", &url, "repo-info"]);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("LOCK-"));
}

#[test]
fn killed_client_leaves_no_blocking_lock() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    // a create reading an endless stream from stdin, killed with SIGKILL mid-backup
    let mut child = env.command(&["-r", &url, "create", "killed", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        n += 1;
        if stdin.write_all(&support::noise(n, 1 << 20)).is_err() {
            break;
        }
    }
    assert!(repo.join("locks").read_dir().unwrap().next().is_some(), "the backup held a lock while running");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    // the next backup gets the lock within the default wait
    let src = support::one_file_source(&env, b"x");
    env.ok(&["-r", &url, "--lock-wait", "10", "create", "after", src.to_str().unwrap()]);
    assert!(files_below(&repo.join("locks")).is_empty());
    env.ok(&["-r", &url, "check"]);
}

#[test]
fn python_borg_and_borgd_respect_each_others_locks() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let local = repo.to_str().unwrap();
    // Python borg, locally, holds the exclusive lock: a borgd client cannot get it
    let mut holder = env.command(&["-r", local, "with-lock", "sleep", "5"]).spawn().unwrap();
    support::wait_for_file(&repo.join("locks"));
    let text = env.fails(&["-r", &url, "--lock-wait", "1", "compact"]);
    assert!(text.contains("Failed to create/acquire the lock"), "{text}");
    assert!(holder.wait().unwrap().success());
    // a borgd client holds it: Python borg, locally, cannot get it
    let mut holder = env.command(&["-r", &url, "with-lock", "sleep", "5"]).spawn().unwrap();
    support::wait_for_file(&repo.join("locks"));
    let text = env.fails(&["-r", local, "--lock-wait", "1", "compact"]);
    assert!(text.contains("Failed to create/acquire the lock"), "{text}");
    assert!(holder.wait().unwrap().success());
    assert!(files_below(&repo.join("locks")).is_empty());
    env.ok(&["-r", local, "compact"]);
}

#[test]
fn chunk_index_written_by_check_loads_in_python_borg() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}")), support::noise(i, 700_000)).unwrap();
    }
    env.ok(&["-r", &url, "create", "a", src.to_str().unwrap()]);
    env.ok(&["-r", &url, "check", "--repository-only"]);
    let caches: Vec<_> = files_below(&repo.join("cache")).into_iter().filter(|p| p.to_string_lossy().contains("chunks.")).collect();
    assert_eq!(caches.len(), 1, "check leaves exactly its fresh index: {caches:?}");
    let objects = files_below(&repo.join("data")).len();
    let python = std::env::var("BORGD_TEST_PYTHON").expect("BORGD_TEST_PYTHON (set by scripts/test.sh)");
    let script = "import io, sys, os\n\
from xxhash import xxh64\n\
from borg.hashindex import ChunkIndex\n\
path = sys.argv[1]\n\
data = open(path, 'rb').read()\n\
assert xxh64(data, seed=3).hexdigest() == os.path.basename(path).split('.')[1], 'name is not the hash'\n\
idx = ChunkIndex.read(io.BytesIO(data))\n\
print(len(idx))\n";
    let out = std::process::Command::new(python).args(["-c", script]).arg(&caches[0]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), objects.to_string(), "the index lists every object");
}

/// A chunk index larger than a streamed message (a backup of ~14 000 chunks: a 560 KB index)
/// is streamed into a temp file, checked there and put in place; a client without a cache of its
/// own loads it back (sent from its file), finds its hash right and uses it; Python borg checks
/// the repository clean.
#[test]
fn a_large_chunk_index_is_streamed_in_checked_and_loaded_back() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let src = support::one_file_source(&env, support::noise(5, 900_000));
    let src = src.to_str().unwrap();
    let out = env.ok(&["-r", &url, "create", "--debug", "--chunker-params", "fixed,64", "a", src]);
    assert!(out.lines().any(|l| l.contains("rpc store_store") && l.contains("bytes streamed")), "the chunk index was not streamed:\n{out}");
    let large: Vec<_> = files_below(&repo.join("cache")).into_iter().filter(|p| std::fs::metadata(p).unwrap().len() > 512 * 1024).collect();
    assert_eq!(large.len(), 1, "{large:?}");
    assert!(!files_below(&repo).iter().any(|p| p.to_string_lossy().ends_with(".tmp")), "no temp file left");
    std::fs::remove_dir_all(env.path("base/.cache")).unwrap();
    let out = env.ok(&["-r", &url, "create", "--debug", "--chunker-params", "fixed,64", "b", src]);
    let name = large[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.contains(&format!("cache/{name} is valid")), "the client did not load {name}:\n{out}");
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// An object gone from under the cached chunk indexes (deleted by hand here; a compact that did
/// not finish can do the same): the client's next backup uploads the merge of the cached
/// indexes, which borgd refuses — naming the way out — instead of letting the client skip the
/// object's upload; `borg check --repository-only` writes a fresh index, and the backup after
/// it uploads the object again, so Python borg checks every archive clean.
#[test]
fn a_cached_chunk_index_listing_a_lost_object_is_refused_until_check_writes_a_fresh_one() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let src = support::one_file_source(&env, support::noise(6, 200_000));
    let src = src.to_str().unwrap();
    env.ok(&["-r", &url, "create", "--chunker-params", "fixed,4096", "a", src]);
    let objects = files_below(&repo.join("data"));
    // one of the file's 4 KiB chunks (stored at about their size; the archive's own objects
    // are smaller or larger, and their ids change from run to run)
    let chunk = objects.iter().find(|p| (4096..4400).contains(&std::fs::metadata(p).unwrap().len())).expect("a 4 KiB chunk");
    std::fs::remove_file(chunk).unwrap();
    let text = env.fails(&["-r", &url, "create", "--chunker-params", "fixed,4096", "b", src]);
    assert!(text.contains("1 objects that are not in the repository") && text.contains("borg check --repository-only"), "{text}");
    env.ok(&["-r", &url, "check", "--repository-only"]);
    env.ok(&["-r", &url, "create", "--chunker-params", "fixed,4096", "b", src]);
    assert_eq!(files_below(&repo.join("data")).len(), objects.len() + 1, "the lost object is back, with archive b's metadata");
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// At the start of every backup after the first the client uploads the merge of the cached
/// chunk indexes. borgd noted each when it checked it, so the merge of a repository too large to
/// look up id by id (more than 65 536 objects) is looked for only in the directories of `data/`
/// that changed since — and a chunk removed behind borgd's back (its directory changed) is still
/// found missing and refused. The first backup's index is that long too, so it was noted as of
/// its check, after the backup's puts: none of the directories they changed needs a look on the
/// next night (here its note is dated 2.5 s later, borgd's clock slack being 2 s, as if the client
/// had taken that long to upload its index after its last put). A `data/xx` replaced whole by an
/// older copy that lacks a chunk (its leaves keep the times they had, from before the notes) is
/// looked for everywhere, and refused. A directory's time cannot be set back: a chunk removed,
/// its directory's modification time then restored (as `rsync -a`, `cp -a` and `tar` leave a
/// directory), is still found missing.
#[test]
fn a_merge_of_checked_chunk_indexes_is_looked_for_only_where_data_changed() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    // ~70 000 chunks of 128 bytes
    let src = support::one_file_source(&env, support::noise(8, 9_000_000));
    let src = src.to_str().unwrap();
    // one archive series: its files cache spares the client chunking the file again
    env.ok(&["-r", &url, "create", "--chunker-params", "fixed,128", "a", src]);
    // an older copy of one `data/xx`, beside the repository, lacking one of its chunks
    let chunk_of_size = |size: u64, below: &std::path::Path| files_below(below).into_iter().find(|p| std::fs::metadata(p).unwrap().len() == size);
    let objects = files_below(&repo.join("data"));
    let mut sizes = std::collections::HashMap::new();
    for p in &objects {
        *sizes.entry(std::fs::metadata(p).unwrap().len()).or_insert(0) += 1;
    }
    let chunk_size = sizes.iter().max_by_key(|(_, n)| **n).map(|(size, _)| *size).unwrap();
    let (top, older) = (repo.join("data/00"), env.path("older"));
    assert!(std::process::Command::new("cp").arg("-a").arg(&top).arg(&older).status().unwrap().success());
    std::fs::remove_file(chunk_of_size(chunk_size, &older).expect("a chunk in data/00")).unwrap();
    assert_eq!(borgd::repository::trust::date_notes_later(&repo, Duration::from_millis(2500)).unwrap(), 1);
    let out = env.run(&["-r", &url, "--debug", "--debug-topic=repository", "create", "--chunker-params", "fixed,128", "a", src]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let (trusted, listed) = support::merge_taken_on_trust(&log);
    assert!(listed > 65_536 && trusted == listed, "{trusted} of {listed} objects trusted");
    // data/00 replaced whole by the older copy, made before this backup's notes (dated later
    // still, so that its leaves' times are well before them): another directory, so the merge
    // is looked for everywhere
    assert_eq!(borgd::repository::trust::date_notes_later(&repo, Duration::from_millis(2500)).unwrap(), 2);
    std::fs::rename(&top, env.path("was")).unwrap();
    std::fs::rename(&older, &top).unwrap();
    let text = env.fails(&["-r", &url, "create", "--chunker-params", "fixed,128", "a", src]);
    assert!(text.contains("1 objects that are not in the repository"), "{text}");
    std::fs::rename(&top, &older).unwrap();
    std::fs::rename(env.path("was"), &top).unwrap();
    // a chunk (the most common stored size) removed: its directory changed, it is looked for
    let chunk = chunk_of_size(chunk_size, &repo.join("data/ff")).expect("a chunk in data/ff");
    let leaf = std::fs::File::open(chunk.parent().unwrap()).unwrap();
    let was = leaf.metadata().unwrap().modified().unwrap();
    std::fs::remove_file(&chunk).unwrap();
    leaf.set_modified(was).unwrap();
    let text = env.fails(&["-r", &url, "create", "--chunker-params", "fixed,128", "a", src]);
    assert!(text.contains("1 objects that are not in the repository"), "{text}");
}

/// The write-path options (`--fsync`, `--no-direct-io`, `--put-writers`, `--coalesce-us`) change how objects reach the disk, never
/// what the client stores: each combination backs up large chunks (written directly by default)
/// and small files, extracts them identically, and leaves a repository Python borg checks clean.
#[test]
fn write_path_options_store_the_same_backup() {
    let mut env = Env::new();
    let src = env.path("src");
    make_source(&src);
    std::fs::write(src.join("large"), support::noise(11, 9_000_000)).unwrap();
    for (i, args) in [&["--fsync=barrier", "--put-writers=4"][..], &["--fsync=always", "--put-writers=1"], &["--fsync=never", "--no-direct-io", "--put-writers=0", "--coalesce-us=0"]].into_iter().enumerate() {
        env.with_server_args(args);
        let repo = env.path(&format!("repo{i}"));
        let url = env.ssh_url(&repo);
        env.ok(&["-r", &url, "repo-create", "-e", "none"]);
        env.ok(&["-r", &url, "create", "a", src.to_str().unwrap()]);
        let out = env.path(&format!("out{i}"));
        std::fs::create_dir_all(&out).unwrap();
        assert!(env.command(&["-r", &url, "extract", "a"]).current_dir(&out).status().unwrap().success(), "{args:?}");
        assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
        env.ok(&["-r", repo.to_str().unwrap(), "check"]);
    }
}

/// A backup of many small files, sent by the client faster than one at a time (the session
/// naps 50 ms after a put that emptied its input, so puts pile up): a session with writer
/// threads (`--put-writers=4`; there are none by default) hands them over (its debug log says
/// so), and what they wrote extracts identically and checks clean in Python borg. The other
/// interop tests' backups are too small or too slow for the client ever to get ahead, so
/// without this no real client reached the threads.
#[test]
fn puts_of_a_client_ahead_go_to_writer_threads() {
    let mut env = Env::new();
    let src = env.path("src");
    for d in 0..20u64 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100u64 {
            std::fs::write(dir.join(format!("f{f}")), support::noise(1000 + d * 100 + f, 500 + 23 * f as usize)).unwrap();
        }
    }
    env.with_server_args(&["--coalesce-us=50000", "--put-writers=4"]);
    let (repo, url) = env.new_repo("repo");
    let out = env.run(&["-r", &url, "--debug", "--debug-topic=repository", "create", "many", src.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let by_writers = log.matches("written by a writer thread").count();
    assert!(by_writers > 0, "no put went to a writer thread; puts logged: {}", log.matches("rpc put").count());
    env.without_server_args();
    let dest = env.path("out");
    std::fs::create_dir_all(&dest).unwrap();
    assert!(env.command(&["-r", &url, "extract", "many"]).current_dir(&dest).status().unwrap().success());
    assert_same_tree(&src, &dest.join(src.strip_prefix("/").unwrap()));
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// A FUSE mount made by `borg mount`, taken down (lazily) when the test ends however it ends, so a
/// failed test leaves no mount behind (nor a temp directory that cannot be removed).
struct FuseMount(std::path::PathBuf);

impl FuseMount {
    /// Waits until the client's FUSE file system is mounted at the path (the daemonized client
    /// returns before it is), at most a minute.
    fn wait(at: &std::path::Path) -> FuseMount {
        let is_mounted = || {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
            mounts.lines().any(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()) && l.starts_with("borgfs "))
        };
        support::wait_until(Duration::from_secs(60), &format!("borg mount did not mount {} within a minute", at.display()), is_mounted);
        FuseMount(at.to_path_buf())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).stderr(Stdio::null()).status();
    }
}

/// `borg mount` through borgd, as users browse and restore from a backup over ssh: one archive
/// mounted by the daemonized client (how it is usually run), every file read back byte for byte;
/// the whole repository in the versions view by a client in the foreground; the mount's lock
/// given back when `borg umount` ends the session, and the repository still checking clean in
/// Python borg.
#[test]
fn mounted_archives_read_through_borgd() {
    let mut env = Env::new();
    // b21's first choice, mfusepy, fails reads through either server (see scripts/test-env.sh)
    env.set_env("BORG_FUSE_IMPL", "pyfuse3");
    let src = env.path("src");
    make_source(&src);
    let src_s = src.to_str().unwrap();
    let repo = env.path("repo");
    let url = env.ssh_url(&repo);
    let r = |args: &[&str]| env.ok(&[&["-r", url.as_str()], args].concat());
    r(&["repo-create", "-e", "repokey-aes-ocb"]);
    r(&["create", "a1", src_s]);
    let a1_src = env.path("a1-src");
    assert!(std::process::Command::new("cp").arg("-a").arg(&src).arg(&a1_src).status().unwrap().success());
    std::fs::write(src.join("small.txt"), b"hello borgd, changed\n").unwrap();
    std::fs::write(src.join("sub/new"), support::noise(7, 700_000)).unwrap();
    r(&["create", "a2", src_s]);
    let locks = repo.join("locks");
    let no_lock_within_a_minute = || support::wait_until(Duration::from_secs(60), "the mount's lock is still there a minute after borg umount", || files_below(&locks).is_empty());

    // one archive, the client daemonized: it returns at once and serves the mount in the
    // background over its borgd session, holding the repository's lock meanwhile
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    r(&["mount", "-a", "a1", mnt.to_str().unwrap()]);
    let mounted = FuseMount::wait(&mnt);
    let a1_mounted = mnt.join("a1").join(src.strip_prefix("/").unwrap());
    assert_same_tree(&a1_src, &a1_mounted);
    assert_eq!(std::fs::read(a1_mounted.join("big.bin")).unwrap(), support::noise(1, 21 * 1024 * 1024 + 12345));
    assert!(!mnt.join("a2").exists(), "only a1 was asked for");
    assert_eq!(files_below(&locks).len(), 1, "the mounted repository holds one lock");
    r(&["umount", mnt.to_str().unwrap()]);
    drop(mounted);
    no_lock_within_a_minute();

    // the whole repository in the versions view, the client in the foreground: one tree merged
    // from all archives, each file a directory of its distinct contents (small.txt's two side
    // by side, the unchanged big.bin once, a2's new file once)
    let mut fg = env.command(&["-r", &url, "mount", "-f", "-o", "versions", mnt.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mounted = FuseMount::wait(&mnt);
    let versions = |file: &str| {
        let dir = mnt.join(src.strip_prefix("/").unwrap()).join(file);
        let mut v: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(versions("small.txt"), [b"hello borgd\n".to_vec(), b"hello borgd, changed\n".to_vec()]);
    assert_eq!(versions("big.bin"), [support::noise(1, 21 * 1024 * 1024 + 12345)]);
    assert_eq!(versions("sub/new"), [support::noise(7, 700_000)]);
    r(&["umount", mnt.to_str().unwrap()]);
    let status = support::wait_at_most(&mut fg, Duration::from_secs(60));
    if status.is_none() {
        let _ = fg.kill(); // so that its stderr ends
    }
    drop(mounted);
    let mut stderr = String::new();
    std::io::Read::read_to_string(fg.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.is_some_and(|s| s.success()), "borg mount -f ended {status:?} after borg umount:\n{stderr}");
    no_lock_within_a_minute();

    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}
