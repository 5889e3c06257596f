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

/// Deterministic pseudo-random bytes (xorshift), so test data does not compress or dedup away.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
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
    assert!(out.status.success(), "trees differ:\n{}", String::from_utf8_lossy(&out.stdout));
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
