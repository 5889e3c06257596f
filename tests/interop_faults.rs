//! Real disk faults with the real borg client: a repository on a small tmpfs that fills up, the
//! same file system remounted read-only, a repository at its quota (a Btrfs quota group), a
//! larger one on a full ext3 (no `fallocate`), a `repo-create` on a tmpfs out of inodes,
//! `data/` replaced by a copy of itself during a backup, a power cut right after a backup (on
//! ext4 and XFS) and in the middle of one, and damaged chunks replaced by the next backup. (EIO
//! and EACCES — which root cannot be denied — are covered by the simulated disk in the unit
//! tests: `repository::tests`.)
//!
//! These tests mount tmpfs and loop-mounted Btrfs, ext3, ext4 and XFS, so they need root (as CI
//! has; root is subject to Btrfs quota groups, and an ext3 made with `-m 0` keeps no blocks for
//! it).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{files_below, Env, Mounted};

/// A tmpfs of `size` at `at`; more mount options may follow the size after commas
/// (`8m,nr_inodes=5`).
fn tmpfs(at: &Path, size: &str) -> Mounted {
    Mounted::mount("tmpfs", &format!("size={size},mode=0755"), Path::new("tmpfs"), at)
}

/// Inodes in use on the file system at `path`.
fn inodes_used(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a statvfs the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_files - st.f_ffree) as u64
}

fn no_temp_files(repo: &Path) {
    let tmp: Vec<_> = files_below(repo).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

#[test]
fn disk_full_then_space_freed_then_read_only() {
    let mut env = Env::new();
    let fs = tmpfs(&env.path("small"), "24m");
    let repo = fs.0.join("repo");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "none"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), support::noise(1, 20 << 20)).unwrap();
    std::fs::write(src.join("b"), support::noise(2, 20 << 20)).unwrap();

    // disk full: a clear error naming the cause, nothing partial, no lock left
    let text = env.fails(&["-r", &url, "create", "full", src.to_str().unwrap()]);
    assert!(text.contains("No space left on device"), "{text}");
    no_temp_files(&repo);
    assert!(files_below(&repo.join("locks")).is_empty(), "lock released");
    assert!(!files_below(&repo.join("archives")).iter().any(|_| true), "no archive from the failed backup");

    // full to the last byte (other files): Python's server cannot take a lock; borgd lists the
    // repository with the room it keeps in reserve (see `a_repository_at_its_quota_...`)
    let others = fs.0.join("others");
    std::fs::create_dir(&others).unwrap();
    fill(&others, libc::ENOSPC);
    let borgd = std::mem::replace(&mut env.remote_path, support::borg_binary().display().to_string());
    let text = env.fails(&["-r", &url, "repo-list"]);
    assert!(text.contains("No space left on device"), "Python's server: {text}");
    // its borgstore leaves the temp file of the lock it could not write (written with
    // `NamedTemporaryFile(delete=False)`, not removed when the write fails)
    for tmp in files_below(&repo.join("locks")).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")) {
        std::fs::remove_file(tmp).unwrap();
    }
    env.remote_path = borgd;
    let text = env.ok(&["-r", &url, "repo-list"]);
    assert!(text.contains("is full") && text.contains("No space left on device"), "{text}");
    std::fs::remove_dir_all(&others).unwrap();

    // space freed: the same backup succeeds, and Python borg's own check agrees
    fs.remount("size=200m");
    env.ok(&["-r", &url, "create", "full", src.to_str().unwrap()]);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);

    // read-only file system: a clear error, then fine again once writable
    fs.remount("ro");
    let text = env.fails(&["-r", &url, "create", "ro", src.to_str().unwrap()]);
    assert!(text.contains("Read-only file system"), "{text}");
    fs.remount("rw");
    no_temp_files(&repo);
    env.ok(&["-r", &url, "create", "rw-again", src.to_str().unwrap()]);
    assert!(files_below(&repo.join("locks")).is_empty());
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn check_repair_cleans_up_a_crashed_writers_temp_files() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let src = support::one_file_source(&env, support::noise(5, 100_000));
    env.ok(&["-r", &url, "create", "a", src.to_str().unwrap()]);
    // what a writer killed between write and rename leaves behind
    let some_dir = files_below(&repo.join("data"))[0].parent().unwrap().to_path_buf();
    std::fs::write(some_dir.join("0123abcd.4f2a9c.tmp"), b"half an object").unwrap();
    std::fs::write(repo.join("config/manifest.77aa.tmp"), b"half a manifest").unwrap();
    // ignored by listings and by check ...
    env.ok(&["-r", &url, "check"]);
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["a"]);
    // ... and removed by check --repair
    env.ok(&["-r", &url, "check", "--repair"]);
    no_temp_files(&repo);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// A `repo-create` that fails part way (here: a tmpfs out of inodes at `config/version`) takes
/// back what it made, so the same `repo-create` works once there is room. (Half-made, the
/// repository was "already there" to `repo-create` and missing to every other command, through
/// Python's server too.) A directory the user made for the repository stays.
#[test]
fn a_repo_create_that_fails_part_way_leaves_nothing_behind() {
    let env = Env::new();
    let fs = tmpfs(&env.path("few-inodes"), "8m,nr_inodes=5");
    let repo = fs.0.join("repo");
    let url = env.ssh_url(&repo);
    let text = env.fails(&["-r", &url, "repo-create", "-e", "none"]);
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!repo.exists(), "left behind: {:?}", files_below(&fs.0));
    fs.remount("nr_inodes=1000");
    env.ok(&["-r", &url, "repo-create", "-e", "none"]);
    env.ok(&["-r", &url, "repo-info"]);

    // a directory made beforehand (by an administrator, say) is emptied but kept
    let given = fs.0.join("given");
    std::fs::create_dir(&given).unwrap();
    // room for three more inodes: cache/, its index and config/; config/version fails
    fs.remount(&format!("nr_inodes={}", inodes_used(&fs.0) + 3));
    let url = env.ssh_url(&given);
    let text = env.fails(&["-r", &url, "repo-create", "-e", "none"]);
    assert!(text.contains("No space left on device"), "{text}");
    assert!(given.is_dir() && std::fs::read_dir(&given).unwrap().next().is_none(), "not kept empty: {:?}", files_below(&given));
}

/// Runs `cmd` with `args`, which must succeed.
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Fills what is left of the file system or quota of `dir` (whichever `full`, `ENOSPC` or
/// `EDQUOT`, says is used up) with files of shrinking sizes — another repository of the same
/// owner, say — until not even one byte can be written there.
fn fill(dir: &Path, full: i32) {
    let mut n = 0;
    for size in [1 << 20, 64 << 10, 4 << 10, 1] {
        loop {
            n += 1;
            match std::fs::write(dir.join(format!("filler.{n}")), support::noise(n, size)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(full) => break,
                Err(e) => panic!("filling {}: {e}", dir.display()),
            }
        }
        run("sync", &[]);
    }
    let probe = std::fs::write(dir.join("probe"), b"x");
    assert!(probe.as_ref().is_err_and(|e| e.raw_os_error() == Some(full)), "not full: {probe:?}");
}

/// An owner's home with a quota of `mib` MiB (a Btrfs subvolume with a quota group, on a
/// loop-mounted image unmounted when the first value is dropped).
fn quota_home(env: &Env, mib: u64) -> (Mounted, PathBuf) {
    let fs = support::loop_fs("btrfs", (mib + 128).max(256), &env.path("btrfs.img"), &env.path("btrfs"));
    let home = fs.0.join("home");
    let home_arg = home.to_str().unwrap();
    run("btrfs", &["quota", "enable", fs.0.to_str().unwrap()]);
    run("btrfs", &["subvolume", "create", home_arg]);
    run("btrfs", &["qgroup", "limit", &format!("{mib}M"), home_arg]);
    (fs, home)
}

/// The room borgd keeps in a repository: its pieces and their sizes.
fn room(repo: &Path) -> Vec<(String, u64)> {
    let mut pieces: Vec<_> = std::fs::read_dir(repo).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())).filter(|(n, _)| n.ends_with(".hid")).collect();
    pieces.sort();
    pieces
}

/// The four small pieces of the room, whole, as [`room`] lists them.
fn small_pieces_whole() -> Vec<(String, u64)> {
    (0..4).map(|i| (format!("borgd-room.{i}.hid"), 128 << 10)).collect()
}

/// A repository at its owner's quota (a Btrfs quota group here, full to the last byte with
/// other files of the owner's): every borg command needs a lock, a new file, so Python's server
/// fails them all, `borg list` as much as the `borg delete` and `borg compact` that would free
/// space. borgd opens it with room it keeps in reserve (`store::room`), says so, refuses new
/// data (which would take that room), deletes and compacts; then the room is whole again, the
/// next backup goes through, and Python borg checks the repository clean and serves it.
#[test]
fn a_repository_at_its_quota_still_opens_and_frees_space() {
    let mut env = Env::new();
    let (_fs, home) = quota_home(&env, 40);
    let repo = home.join("repo");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "none"]);
    let whole = small_pieces_whole();
    assert_eq!(room(&repo), whole, "a new repository has its room");
    let src = support::one_file_source(&env, support::noise(3, 5 << 20));
    env.ok(&["-r", &url, "create", "first", src.to_str().unwrap()]);
    let small = env.path("small");
    std::fs::create_dir(&small).unwrap();
    std::fs::write(small.join("f"), support::noise(4, 1 << 20)).unwrap();
    let small = small.to_str().unwrap();
    fill(&home, libc::EDQUOT);

    let borgd = std::mem::replace(&mut env.remote_path, support::borg_binary().display().to_string());
    let text = env.fails(&["-r", &url, "repo-list"]);
    assert!(text.contains("Disk quota exceeded") && text.contains("locks/"), "Python's server: {text}");
    env.remote_path = borgd;

    let text = env.ok(&["-r", &url, "repo-list"]);
    assert!(text.contains("first") && text.contains("is full") && text.contains("Disk quota exceeded"), "{text}");
    let text = env.fails(&["-r", &url, "create", "refused", small]);
    assert!(text.contains("borgd refuses new data") && text.contains("borg compact"), "{text}");
    env.ok(&["-r", &url, "delete", "first"]);
    env.ok(&["-r", &url, "compact"]);
    assert_eq!(room(&repo), whole, "the room is whole again once space was freed");
    assert!(files_below(&repo.join("locks")).is_empty(), "lock released");

    env.ok(&["-r", &url, "create", "second", small]);
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["second"]);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
    env.remote_path = support::borg_binary().display().to_string();
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["second"], "Python's server serves it");
}

/// A repository Python borg made holds no room. borgd's first session on it makes the room as
/// it opens, so a first backup through borgd that runs into the quota still leaves a repository
/// borgd opens (the quota then filled to the last byte), compacts, and backs up into again.
/// Made only at that session's close, the room would find less space left than one chunk. And
/// `borg compact` frees the chunks the failed backup stored, as the refusal of that backup's
/// chunk index says.
#[test]
fn a_python_made_repository_gets_its_room_before_a_backup_fills_it() {
    let env = Env::new();
    let (_fs, home) = quota_home(&env, 40);
    let repo = home.join("repo");
    let (local, url) = (repo.to_str().unwrap(), env.ssh_url(&repo));
    env.ok(&["-r", local, "repo-create", "-e", "none"]);
    assert!(room(&repo).is_empty(), "Python borg made room");

    let big = support::one_file_source(&env, support::noise(5, 48 << 20));
    // 64 KiB chunks: the put the quota cuts off leaves less than that free, too little to make
    // the room at the session's close
    let refusal = env.fails(&["-r", &url, "create", "--chunker-params", "fixed,65536", "big", big.to_str().unwrap()]);
    assert!(refusal.contains("Disk quota exceeded"), "{refusal}");
    let kept: u64 = room(&repo).iter().map(|(_, size)| size).sum();
    assert!(kept >= 3 * (128 << 10), "room left after the backup: {:?}", room(&repo));
    fill(&home, libc::EDQUOT);

    let text = env.ok(&["-r", &url, "repo-list"]);
    assert!(text.contains("is full"), "{text}");
    // borgd refused the backup's chunk index, which lists the chunks the quota cut off. It kept
    // the part that is true if that fitted in what space the backup left (not in the room): then
    // plain `compact`, which frees only what a cached index lists, frees what the backup stored;
    // else the refusal said that `compact --stats` does
    let compact: &[&str] = if refusal.contains("so that borg compact can free them") {
        &["compact"]
    } else {
        assert!(refusal.contains("borg compact --stats finds them"), "{refusal}");
        &["compact", "--stats"]
    };
    env.ok(&[&["-r", url.as_str()][..], compact].concat());
    let whole = small_pieces_whole();
    assert_eq!(room(&repo), whole, "the room is whole again once compact freed the backup's chunks");
    let small = env.path("small");
    std::fs::create_dir(&small).unwrap();
    std::fs::write(small.join("f"), support::noise(6, 1 << 20)).unwrap();
    env.ok(&["-r", &url, "create", "small", small.to_str().unwrap()]);
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["small"]);
    env.ok(&["-r", local, "check"]);
}

/// A larger repository at its quota: two backups of ~8 000 chunks each leave two cached chunk
/// indexes of ~320 KB, and `borg compact` (a backup too) first uploads their merge, more than
/// the room's small pieces hold. Its large piece, sized for the cached indexes, takes it: after
/// `borg delete`, `compact` goes through and the room is whole again. Once every archive is
/// deleted and compacted away, the large piece goes too: its space is the owner's again.
#[test]
fn a_larger_repository_at_its_quota_still_compacts() {
    let env = Env::new();
    let (_fs, home) = quota_home(&env, 300);
    a_larger_repository_full_still_compacts(&env, &home, libc::EDQUOT);
}

/// The same on a full ext3 file system, which cannot allocate space ahead (`fallocate` says
/// `EOPNOTSUPP` for files without extents): the merged index's space is allocated all the same
/// (glibc writes a byte into each block), so it too is found missing before a byte of the
/// upload is read, and the upload is staged again with the room's large piece.
#[test]
fn a_larger_repository_on_a_full_ext3_disk_still_compacts() {
    let env = Env::new();
    // no blocks kept for root, an inode per 4 KiB: ~8 000 chunks a backup, each a file of its own
    let _fs = support::loop_fs_with("ext3", &["-m", "0", "-i", "4096"], 400, &env.path("ext3.img"), &env.path("ext3"));
    a_larger_repository_full_still_compacts(&env, &env.path("ext3"), libc::ENOSPC);
}

/// Two backups into a repository at `home/repo`, `home` filled up to the last byte (until
/// writing fails with `full`), then `delete` and `compact`.
fn a_larger_repository_full_still_compacts(env: &Env, home: &Path, full: i32) {
    let repo = home.join("repo");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "none"]);
    for (n, name) in ["one", "two"].into_iter().enumerate() {
        let src = env.path(name);
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), support::noise(10 + n as u64, 32 << 20)).unwrap();
        env.ok(&["-r", &url, "create", "--chunker-params", "fixed,4096", name, src.to_str().unwrap()]);
    }
    let indexes: u64 = std::fs::read_dir(repo.join("cache")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(indexes > 512 << 10, "cached indexes of {indexes} bytes");
    let large = ("borgd-room.4.hid".to_string(), (indexes + indexes / 4).next_power_of_two());
    assert_eq!(room(&repo).last(), Some(&large));
    fill(home, full);

    env.ok(&["-r", &url, "delete", "one"]);
    env.ok(&["-r", &url, "compact"]);
    assert_eq!(room(&repo)[..4], small_pieces_whole()[..], "the small pieces made again");
    // the merged index first staged into no space, its temp file (partly allocated) removed
    no_temp_files(&repo);
    assert_eq!(support::archive_names(env, &["-r", &url]), ["two"]);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
    env.ok(&["-r", &url, "delete", "two"]);
    env.ok(&["-r", &url, "compact"]);
    assert_eq!(room(&repo), small_pieces_whole(), "the large piece removed with the indexes it was for");
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

/// Directories made immutable (`chattr +i`: no entry can be added or removed, even by root)
/// for as long as the value lives.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn new(dirs: Vec<PathBuf>) -> Immutable {
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
            run("chattr", &["+i", d.to_str().unwrap()]);
        }
        Immutable(dirs)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(d).status();
        }
    }
}

/// A backup that fails writing with space to spare (here because 16 of the 256 directories
/// `data/xx` are immutable): borgd refuses the chunk index the client then uploads, which lists
/// the chunks that failed, and keeps the part of it that is true under its own name. So plain
/// `borg compact`, which frees only what a cached index lists, frees every chunk the failed
/// backup stored; refused whole, that index would have left them all behind.
#[test]
fn compact_frees_what_a_failed_backup_stored() {
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let src = support::one_file_source(&env, support::noise(7, 8 << 20));
    let locked = Immutable::new((0..16).map(|i| repo.join(format!("data/{i:02x}"))).collect());
    let refusal = env.fails(&["-r", &url, "create", "--chunker-params", "fixed,16384", "a", src.to_str().unwrap()]);
    assert!(refusal.contains("Operation not permitted") && refusal.contains("so that borg compact can free them"), "{refusal}");
    drop(locked);
    let stored = files_below(&repo.join("data")).len();
    assert!(stored > 10, "{stored} chunks stored");
    env.ok(&["-r", &url, "compact"]);
    assert_eq!(files_below(&repo.join("data")), Vec::<PathBuf>::new(), "left behind by compact");
    env.ok(&["-r", &url, "create", "--chunker-params", "fixed,16384", "a", src.to_str().unwrap()]);
    env.ok(&["-r", repo.to_str().unwrap(), "check", "--verify-data"]);
}

/// `data/` moved away and replaced by a copy of itself while a backup is writing into it (an
/// administrator restoring or reorganising the repository without taking borg's lock): borgd
/// holds `data/` and its `data/xx` open to write, so the chunks sent after the move went with
/// the old directory, not into the repository. Python's server opens every path anew and writes
/// into the replacement; borgd finds the directories it holds are no longer at their names and
/// refuses the archive, which would reference those chunks, naming the cause. Repeated, the
/// backup uploads them into the repository, and Python borg checks it clean.
#[test]
fn data_moved_away_during_a_backup_is_found_before_the_archive_is_stored() {
    use std::io::Write;
    let env = Env::new();
    let (repo, url) = env.new_repo("repo");
    let before = files_below(&repo.join("data")).len();
    let mut create = env.command(&["-r", &url, "create", "a", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdin = create.stdin.take().unwrap();
    // chunks of the first half in the repository: the session is writing
    for n in 0..32 {
        stdin.write_all(&support::noise(n, 256 * 1024)).unwrap();
    }
    stdin.flush().unwrap();
    support::wait_until(std::time::Duration::from_secs(20), "no chunk was stored", || files_below(&repo.join("data")).len() > before);
    let moved = env.path("data-moved");
    std::fs::rename(repo.join("data"), &moved).unwrap();
    assert!(Command::new("cp").arg("-a").arg(&moved).arg(repo.join("data")).status().unwrap().success());
    for n in 32..64 {
        stdin.write_all(&support::noise(n, 256 * 1024)).unwrap();
    }
    drop(stdin);
    let out = create.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the archive was stored:\n{text}");
    // the archive refused; the client then uploads its chunk index, refused for the same
    // reason, and reports that last error
    assert!(text.contains("refuses to store") && text.contains("data/ was moved away or replaced"), "{text}");
    assert!(support::archive_names(&env, &["-r", &url]).is_empty(), "the archive was stored");
    // repeated: every chunk uploaded into the repository as it is now
    let mut again = env.command(&["-r", &url, "create", "a", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdin = again.stdin.take().unwrap();
    for n in 0..64 {
        stdin.write_all(&support::noise(n, 256 * 1024)).unwrap();
    }
    drop(stdin);
    let out = again.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.ok(&["-r", repo.to_str().unwrap(), "check", "--verify-data"]);
}

/// What a power cut right after a backup leaves, on a journaling file system of `kind`: the
/// disk is copied as the device has it the moment the client says the backup is done — what
/// only the page cache held is not in the copy — and the copy, mounted (its journal replayed),
/// must hold that backup whole: listed, checked clean by Python borg, extracted as it was. Two
/// backups, a copy after each (the second replaces the manifest and the chunk index). The
/// device's own write cache is not part of this (a loop device has none to lose).
///
/// Python's server never fsyncs: in the same scenario by hand (ext4; a `repo-create`, a `sync`,
/// then one backup of 43 MB) the copy had no `data/` at all and the manifest of before the
/// backup, in each of three tries. With borgd's `--fsync=never` this test fails: the copies hold
/// no repository at all.
fn acknowledged_backups_survive_a_power_cut(kind: &str, mib: u64, mkfs_options: &[&str], copy_mount_options: &str) {
    let mut env = Env::new();
    // the copies are the same repository at another path, opened locally
    env.set_env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
    let image = env.path(&format!("{kind}.img"));
    let fs = support::loop_fs_with(kind, mkfs_options, mib, &image, &env.path(kind));
    let repo = fs.0.join("repo");
    let url = env.ssh_url(&repo);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..30u64 {
        std::fs::write(src.join(format!("small{i}")), support::noise(i, 1_000 + 3_000 * i as usize)).unwrap();
    }
    std::fs::write(src.join("big.bin"), support::noise(99, 3 * 1024 * 1024 + 5)).unwrap();
    env.ok(&["-r", &url, "repo-create", "-e", "repokey-aes-ocb"]);

    for (n, archive) in ["first", "second"].into_iter().enumerate() {
        std::fs::write(src.join("changes"), support::noise(200 + n as u64, 700_000)).unwrap();
        env.ok(&["-r", &url, "create", archive, src.to_str().unwrap()]);
        // the power cut: no sync, the copy taken at once
        let copy = env.path(&format!("{kind}-{archive}.img"));
        std::fs::copy(&image, &copy).unwrap();
        let copy = Mounted::mount(kind, &format!("loop,{copy_mount_options}"), &copy, &env.path(&format!("{kind}-{archive}")));
        // (a manifest older than the one the client saw last fails this: "newer than repository")
        let local = copy.0.join("repo");
        let local = local.to_str().unwrap();
        let names = support::archive_names(&env, &["-r", local]);
        assert_eq!(names, ["first", "second"][..=n], "{kind}, the copy after the {archive} backup");
        env.ok(&["-r", local, "check", "--verify-data"]);
        let out = env.path(&format!("out-{kind}-{archive}"));
        std::fs::create_dir_all(&out).unwrap();
        assert!(env.command(&["-r", local, "extract", archive]).current_dir(&out).status().unwrap().success());
        let got = out.join(src.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(got.join("changes")).unwrap(), support::noise(200 + n as u64, 700_000), "{kind}, {archive}");
        assert_eq!(std::fs::read(got.join("big.bin")).unwrap(), support::noise(99, 3 * 1024 * 1024 + 5), "{kind}, {archive}");
        assert_eq!(std::fs::read(got.join("small29")).unwrap(), support::noise(29, 88_000), "{kind}, {archive}");
        drop(copy);
    }
    drop(fs);
}

#[test]
fn acknowledged_backups_survive_a_power_cut_on_ext4() {
    // inode tables and the journal initialised now, not by a kernel thread during the test
    acknowledged_backups_survive_a_power_cut("ext4", 256, &["-E", "lazy_itable_init=0,lazy_journal_init=0"], "rw");
}

#[test]
fn acknowledged_backups_survive_a_power_cut_on_xfs() {
    // (XFS's smallest); a copy has its original's UUID, which XFS refuses twice unless told
    acknowledged_backups_survive_a_power_cut("xfs", 300, &[], "nouuid");
}

/// Damaged chunks heal with the next backup, also where the server may not overwrite. A power
/// cut in the middle of a backup leaves objects whose names were written but not their data
/// (found by hand: a copy of the disk taken mid-backup, ext4 and Python's server alike); here
/// the chunks of a backed-up file are cut to nothing instead. `borg check` finds them and writes
/// a fresh chunk index without them (Python's lists them: the next backup then took them for
/// stored chunks and could not be extracted), so the next backup uploads that file's chunks
/// again, and each put replaces the damaged object although `--permissions=no-delete` forbids
/// overwriting (an intact one is kept: `a_put_of_a_taken_name_...` in the unit tests). Both
/// archives then extract whole, and both checks are clean.
#[test]
fn damaged_chunks_are_replaced_by_the_next_backup() {
    let mut env = Env::new();
    let repo = env.path("repo");
    let url = env.ssh_url(&repo);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = support::noise(31, 3 * 1024 * 1024 + 11);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    for i in 0..10u64 {
        std::fs::write(src.join(format!("small{i}")), support::noise(i, 2_000 + 500 * i as usize)).unwrap();
    }
    env.ok(&["-r", &url, "repo-create", "-e", "repokey-aes-ocb"]);
    env.ok(&["-r", &url, "create", "a1", src.to_str().unwrap()]);

    // big.bin's chunks (the only objects of 512 KiB or more) as a power cut leaves them
    let damaged: Vec<PathBuf> = files_below(&repo.join("data")).into_iter().filter(|p| std::fs::metadata(p).unwrap().len() >= 512 * 1024).collect();
    assert!(!damaged.is_empty(), "no large chunk to damage");
    for f in &damaged {
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(0).unwrap();
    }
    // read-only: the check writes no index, and says nothing of one
    env.with_server_args(&["--permissions=read-only"]);
    let text = env.fails(&["-r", &url, "check", "--repository-only"]);
    assert!(text.contains("is corrupted: too small") && !text.contains("left out of the chunk index"), "{text}");
    env.without_server_args();
    let text = env.fails(&["-r", &url, "check", "--repository-only"]);
    assert!(text.contains("is corrupted: too small"), "{text}");
    let hint = format!("borgd: {} corrupted object", damaged.len());
    assert!(text.contains(&hint) && text.contains("left out of the chunk index written now: a backup that needs one uploads it again"), "{text}");

    env.with_server_args(&["--permissions=no-delete"]);
    env.ok(&["-r", &url, "create", "a2", src.to_str().unwrap()]);
    env.without_server_args();
    for f in &damaged {
        assert!(std::fs::metadata(f).unwrap().len() > 0, "{} was not uploaded again", f.display());
    }
    env.ok(&["-r", &url, "check"]);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
    for archive in ["a1", "a2"] {
        let out = env.path(&format!("out-{archive}"));
        std::fs::create_dir_all(&out).unwrap();
        assert!(env.command(&["-r", &url, "extract", archive]).current_dir(&out).status().unwrap().success(), "{archive}");
        let got = std::fs::read(out.join(src.strip_prefix("/").unwrap()).join("big.bin")).unwrap();
        assert!(got == big, "{archive}: big.bin differs");
    }
}

/// The data objects of `repo` that are names without data (empty files), as a power cut leaves
/// them.
fn without_data(repo: &Path) -> Vec<PathBuf> {
    files_below(&repo.join("data")).into_iter().filter(|p| std::fs::metadata(p).unwrap().len() == 0).collect()
}

/// A power cut in the middle of a backup into a no-delete repository, and the backup after it.
/// The repository's disk (ext4) is an image on an XFS file system of its own, so that a reflink
/// copy of it (`cp --reflink=always`: the image as the device has it, at one instant) is what a
/// power cut leaves. The first objects are written back (`sync`, as the kernel does within 30 s);
/// later, the client is stopped for 6 s: ext4 commits the names of the objects put since while
/// their data, in the page cache, is not written yet, as a power cut finds a backup in full flow.
/// On the copy, the next backup through a no-delete server uploads again everything the cut one
/// put (no chunk index lists it): each put of an intact object keeps it, of a name without data
/// replaces it — Python's server refuses both, as borgstore asks for `W` whenever a name exists.
/// That backup then extracts whole, and both checks are clean.
#[test]
fn a_backup_after_a_power_cut_in_the_middle_of_one() {
    let mut env = Env::new();
    // the copy is the same repository at another path, opened locally too
    env.set_env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
    let host = support::loop_fs("xfs", 1024, &env.path("host.img"), &env.path("host"));
    let image = host.0.join("disk.img");
    let disk = support::loop_fs_with("ext4", &["-E", "lazy_itable_init=0,lazy_journal_init=0"], 512, &image, &env.path("disk"));
    // small files (their chunks go through the page cache) and large ones (written directly)
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..1500u64 {
        std::fs::write(src.join(format!("s{i}")), support::noise(i, 2_000 + (i as usize * 37) % 18_000)).unwrap();
    }
    for i in 0..4u64 {
        std::fs::write(src.join(format!("big{i}")), support::noise(5000 + i, 3 * 1024 * 1024)).unwrap();
    }
    let url = env.ssh_url(&disk.0.join("repo"));
    env.ok(&["-r", &url, "repo-create", "-e", "repokey-aes-ocb"]);

    env.with_server_args(&["--permissions=no-delete"]);
    let mut cut = env.command(&["-r", &url, "create", "cut", src.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let data = disk.0.join("repo/data");
    // SAFETY (both): signalling our own child
    let pause = |cut: &std::process::Child| unsafe { libc::kill(cut.id() as i32, libc::SIGSTOP) };
    let resume = |cut: &std::process::Child| unsafe { libc::kill(cut.id() as i32, libc::SIGCONT) };
    // the first objects written back (as the kernel does within 30 s), the later ones not
    support::wait_until(Duration::from_secs(60), "150 objects put", || files_below(&data).len() >= 150);
    pause(&cut);
    let synced = files_below(&data).len();
    assert!(Command::new("sync").status().unwrap().success());
    resume(&cut);
    support::wait_until(Duration::from_secs(60), "more objects put", || files_below(&data).len() >= synced + 200);
    pause(&cut);
    std::thread::sleep(Duration::from_secs(6));
    let copy = host.0.join("cut.img");
    let copied = Command::new("cp").arg("--reflink=always").arg(&image).arg(&copy).status().unwrap();
    assert!(copied.success(), "a reflink copy on XFS");
    cut.kill().unwrap();
    cut.wait().unwrap();
    // the cut session's server sees its client gone, gives its lock back and ends
    support::wait_until(Duration::from_secs(20), "the cut session's lock released", || files_below(&disk.0.join("repo/locks")).is_empty());
    drop(disk);

    let cut = Mounted::mount("ext4", "loop", &copy, &env.path("cut"));
    let repo = cut.0.join("repo");
    let objects = files_below(&repo.join("data")).len();
    let empty = without_data(&repo).len();
    eprintln!("the copy: {objects} objects, {empty} of them without data");
    assert!(objects >= synced + 200, "the copy holds {objects} objects");
    assert!(objects - empty >= synced, "objects written back before were lost");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "create", "next", src.to_str().unwrap()]);
    env.without_server_args();
    let left = without_data(&repo);
    assert!(left.is_empty(), "objects still without data: {left:?}");
    env.ok(&["-r", &url, "check"]);
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(env.command(&["-r", &url, "extract", "next"]).current_dir(&out).status().unwrap().success());
    support::assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
}
