//! Interop test harness: runs the real borg 2.0.0b21 client against the real `borgd` binary.
//!
//! The client reaches borgd the way it reaches `borg serve` over ssh: `BORG_RSH` is a shim that
//! drops the host and runs the remote command locally, and `BORG_REMOTE_PATH` names borgd.
//! `BORGD_TEST_BORG` must point at the client (the README's test command sets it up); without
//! it these tests fail rather than pass vacuously.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One isolated test environment: a temp directory, a borg client configuration, a borgd.
pub struct Env {
    pub dir: tempfile::TempDir,
    borg: PathBuf,
    pub borgd: PathBuf,
    pub remote_path: String,
    env: Vec<(String, String)>,
}

/// The borg client binary the tests use.
pub fn borg_binary() -> PathBuf {
    let p = std::env::var_os("BORGD_TEST_BORG")
        .map(PathBuf::from)
        .expect("BORGD_TEST_BORG is not set: run the README's test command (scripts/test.sh), which installs borg 2.0.0b21");
    assert!(p.exists(), "BORGD_TEST_BORG={} does not exist", p.display());
    p
}

impl Env {
    /// A fresh environment with its own borg base dir and passphrase.
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("borgd-it-").tempdir().expect("tempdir");
        let borgd = PathBuf::from(env!("CARGO_BIN_EXE_borgd"));
        let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rsh-shim");
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).expect("base dir");
        let env = vec![
            ("BORG_RSH".into(), shim.display().to_string()),
            ("BORG_BASE_DIR".into(), base.display().to_string()),
            ("BORG_PASSPHRASE".into(), "correct horse battery staple".into()),
            ("BORG_RELOCATED_REPO_ACCESS_IS_OK".into(), "yes".into()),
            ("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK".into(), "yes".into()),
            ("BORG_CHECK_I_KNOW_WHAT_I_AM_DOING".into(), "YES".into()),
            ("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING".into(), "YES".into()),
            ("BORG_HOST_ID".into(), String::new()),
        ];
        Env { dir, borg: borg_binary(), remote_path: borgd.display().to_string(), borgd, env }
    }

    /// Sets (or overrides) an environment variable for every borg run of this environment.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
    }

    /// A path inside the environment's temp directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The ssh:// URL of an absolute path (borg 2: `ssh://host//abs/path`).
    pub fn ssh_url(&self, path: &Path) -> String {
        format!("ssh://localhost/{}", path.display())
    }

    /// Creates an unencrypted repository `rel` through borgd; returns its path and ssh:// URL.
    pub fn new_repo(&self, rel: &str) -> (PathBuf, String) {
        let repo = self.path(rel);
        let url = self.ssh_url(&repo);
        self.ok(&["-r", &url, "repo-create", "-e", "none"]);
        (repo, url)
    }

    /// A borg command with this environment, ready to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.borg);
        c.args(args).stdin(Stdio::null()).current_dir(self.dir.path());
        for (k, v) in &self.env {
            if v.is_empty() {
                c.env_remove(k);
            } else {
                c.env(k, v);
            }
        }
        c.env("BORG_REMOTE_PATH", &self.remote_path);
        c
    }

    /// Runs borg and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run borg")
    }

    /// Runs borg, requires exit code 0, returns stdout (and stderr appended after a marker).
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "borg {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        format!("{}\n--- stderr\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Runs borg, requires a non-zero exit code, returns stdout+stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "borg {args:?} unexpectedly succeeded:\n{text}");
        text
    }
}

pub use borgd::testdata::noise;

/// A source directory `src` holding one file, `f`, with `content`: what a test backs up when
/// the data does not matter.
pub fn one_file_source(env: &Env, content: impl AsRef<[u8]>) -> PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir src");
    std::fs::write(src.join("f"), content).expect("write src/f");
    src
}

/// A source tree with a file over 20 MiB, an empty file, small files and duplicate content.
pub fn make_source(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    std::fs::write(root.join("big.bin"), noise(1, 21 * 1024 * 1024 + 12345)).expect("big");
    std::fs::write(root.join("empty"), b"").expect("empty");
    std::fs::write(root.join("small.txt"), b"hello borgd\n").expect("small");
    let dup = noise(2, 300_000);
    std::fs::write(root.join("sub/dup1"), &dup).expect("dup1");
    std::fs::write(root.join("sub/deeper/dup2"), &dup).expect("dup2");
    for i in 0..20 {
        std::fs::write(root.join(format!("sub/f{i}")), noise(100 + i, 1000 + 37 * i as usize)).expect("f");
    }
}

/// Compares two trees byte for byte (file names and contents), panicking on the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().expect("run diff");
    assert!(out.status.success(), "trees differ:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// All files below `dir` (recursively).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A `borgd serve --socket=PATH` child process, stopped (SIGTERM) when dropped.
pub struct SocketServer {
    pub child: std::process::Child,
    pub socket: PathBuf,
}

impl SocketServer {
    /// Starts borgd on a socket in the environment's directory and waits until it listens.
    pub fn start(env: &Env, extra: &[&str]) -> SocketServer {
        let socket = env.path("borgd.sock");
        Self::start_at(env, &socket, &[&format!("--socket={}", socket.display())], extra, &[])
    }

    /// Starts borgd with `socket_args` (e.g. a bare `--socket`) and a server environment, and
    /// waits until `socket` accepts connections.
    pub fn start_at(env: &Env, socket: &Path, socket_args: &[&str], extra: &[&str], server_env: &[(&str, &str)]) -> SocketServer {
        let socket = socket.to_path_buf();
        let mut cmd = Command::new(&env.borgd);
        cmd.env_remove("BORG_RUNTIME_DIR").env_remove("BORG_BASE_DIR").env_remove("XDG_RUNTIME_DIR");
        for (k, v) in server_env {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("serve")
            .args(socket_args)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start borgd");
        wait_until_listening(&socket);
        SocketServer { child, socket }
    }

    /// The client options that reach this server for a repository path.
    pub fn args(&self, repo: &Path) -> Vec<String> {
        vec![format!("--socket={}", self.socket.display()), "-r".into(), format!("socket://{}", repo.display())]
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then waits (at most 20 s) and returns the exit status and what it wrote to stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = wait_at_most(&mut self.child, std::time::Duration::from_secs(20)).expect("borgd did not stop on SIGTERM");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds, looking every 20 ms; the test fails with `what` (what did not
/// happen) once `limit` has passed without it.
pub fn wait_until(limit: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits (at most 10 s) until a server accepts connections on `socket`.
pub fn wait_until_listening(socket: &Path) {
    let what = format!("borgd did not start listening on {}", socket.display());
    wait_until(std::time::Duration::from_secs(10), &what, || std::os::unix::net::UnixStream::connect(socket).is_ok());
}

/// A file system mounted for a test at `.0`; unmounted when dropped (lazily if still busy).
pub struct Mounted(pub PathBuf);

impl Mounted {
    /// `mount -t KIND -o OPTIONS SOURCE AT` (creating `AT`), which must succeed: tests that mount
    /// need root, as CI has, and the kernel's `KIND`.
    pub fn mount(kind: &str, options: &str, source: &Path, at: &Path) -> Mounted {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount").args(["-t", kind, "-o", options]).arg(source).arg(at).output().expect("run mount");
        assert!(out.status.success(), "mounting {kind} needs root and the kernel's {kind}: {}", String::from_utf8_lossy(&out.stderr));
        Mounted(at.to_path_buf())
    }

    /// Changes its mount options (`mount -o remount,OPTIONS`).
    pub fn remount(&self, options: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.0).status().expect("run mount");
        assert!(ok.success(), "remount {options}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A fresh file system of `kind` (`xfs`, `btrfs`, `ext3`) and `mib` MiB made in `image`
/// (sparse) and loop-mounted at `at`.
pub fn loop_fs(kind: &str, mib: u64, image: &Path, at: &Path) -> Mounted {
    loop_fs_with(kind, &[], mib, image, at)
}

/// [`loop_fs`] with more options for `mkfs.KIND`.
pub fn loop_fs_with(kind: &str, mkfs_options: &[&str], mib: u64, image: &Path, at: &Path) -> Mounted {
    std::fs::File::create(image).and_then(|f| f.set_len(mib << 20)).expect("image file");
    let mkfs = Command::new(format!("mkfs.{kind}")).arg("-q").args(mkfs_options).arg(image).output();
    let mkfs = mkfs.unwrap_or_else(|e| panic!("mkfs.{kind} ({e}): scripts/test.sh installs xfsprogs, btrfs-progs and e2fsprogs"));
    assert!(mkfs.status.success(), "mkfs.{kind}: {}", String::from_utf8_lossy(&mkfs.stderr));
    Mounted::mount(kind, "loop", image, at)
}

/// Writes an executable script at `path` (a server wrapper, a stand-in server).
pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Waits for `child` to exit, at most `limit`: its exit status, or `None` while it still runs (a
/// hang the caller reports instead of hanging the test run).
pub fn wait_at_most(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Runs `borg` with string arguments (a convenience over `Env::ok`).
pub fn ok_args(env: &Env, args: &[String]) -> String {
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    env.ok(&v)
}

/// `prefix` followed by `rest`, as owned strings.
pub fn cat(prefix: &[String], rest: &[&str]) -> Vec<String> {
    prefix.iter().cloned().chain(rest.iter().map(|s| s.to_string())).collect()
}

/// Starts a `borg create NAME -` fed with noise until `feed` elapses; returns the running child
/// (the caller kills or waits for it) — a backup that is guaranteed to be in progress.
pub fn slow_create(env: &Env, repo_args: &[String], name: &str, feed: std::time::Duration) -> std::process::Child {
    use std::io::Write;
    let args = cat(repo_args, &["create", name, "-"]);
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = env.command(&v).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn borg");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut n = 0u64;
        while started.elapsed() < feed {
            n += 1;
            if stdin.write_all(&noise(n, 256 * 1024)).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    child
}

/// Waits until `dir` holds at least one file (e.g. a lock appeared), at most 20 s.
pub fn wait_for_file(dir: &Path) {
    wait_until(std::time::Duration::from_secs(20), &format!("nothing appeared in {}", dir.display()), || !files_below(dir).is_empty());
}

impl Env {
    /// Makes the client start `borgd <client args> <server_args>`: server-side options the
    /// client cannot see or change, as a forced command would add them.
    pub fn with_server_args(&mut self, server_args: &[&str]) {
        let script = self.path(&format!("borgd-wrapper-{}", server_args.len() + self.env.len()));
        let quoted: Vec<String> = server_args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
        write_script(&script, &format!("#!/bin/sh\nexec '{}' \"$@\" {}\n", self.borgd.display(), quoted.join(" ")));
        self.remote_path = script.display().to_string();
    }

    /// Back to plain `borgd`.
    pub fn without_server_args(&mut self) {
        self.remote_path = self.borgd.display().to_string();
    }
}

/// Every file below `dir` except lock files, with size and modification time: a fingerprint of
/// what a read-only client must not change.
pub fn snapshot_without_locks(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    files_below(dir)
        .into_iter()
        .filter(|p| !p.starts_with(dir.join("locks")))
        .map(|p| {
            let md = std::fs::metadata(&p).expect("stat");
            (p, md.len(), md.modified().expect("mtime"))
        })
        .collect()
}

/// Archive names in a repository (exact names, not a substring search of `repo-list`, whose
/// output also holds hex ids).
pub fn archive_names(env: &Env, repo_args: &[&str]) -> Vec<String> {
    let mut args = repo_args.to_vec();
    args.extend_from_slice(&["repo-list", "--format", "{archive}{NL}"]);
    let out = env.ok(&args);
    let stdout = out.split("\n--- stderr").next().unwrap_or("");
    stdout.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// From a `--debug --debug-topic=repository` log, the line saying the merge of the cached chunk
/// indexes was taken on trust, as (objects trusted, objects listed); panics, with the log's
/// chunk-index lines, if there is none.
pub fn merge_taken_on_trust(log: &str) -> (u64, u64) {
    let line = log.lines().find(|l| l.contains("the merge of the cached indexes")).unwrap_or_else(|| {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("chunk index")).collect();
        panic!("no merge taken on trust:\n{}", lines.join("\n"))
    });
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = (1..words.len().saturating_sub(2)).find(|i| words[*i] == "of" && words[i + 2] == "objects").expect("N of M objects");
    (words[at - 1].parse().unwrap(), words[at + 1].parse().unwrap())
}
