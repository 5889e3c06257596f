//! A throwaway `sshd` on 127.0.0.1, for the tests and the benchmark: the real ssh path between
//! the borg client and a server, as backup hosts run it.
//!
//! The forced-command tests need `authorized_keys` lines with options (`command="borgd serve
//! ..."`); the benchmark's `e2e --sshd` needs one plain key so that the client names the server
//! to start. One place knows how to run such an sshd: keys and configuration in a directory of
//! the caller's, a free port, root logging in with a key (both run as root), stopped when dropped.
//! Not used by the server itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd; stopped when dropped.
pub struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn keygen(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().map_err(|e| format!("ssh-keygen (openssh-client): {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("ssh-keygen {}: {st}", path.display()))
    }
}

impl Sshd {
    /// Starts `/usr/sbin/sshd` with its host key, configuration and one client key per
    /// `(key name, authorized_keys options)` pair in `dir`, and waits until it listens.
    pub fn start(dir: &Path, keys: &[(&str, &str)]) -> Result<Sshd, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("sshd runs as root and is logged in to as root: run this as root".into());
        }
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd (sshd's privilege separation directory): {e}"))?;
        std::fs::create_dir_all(dir).map_err(io)?;
        let host_key = dir.join("host_key");
        keygen(&host_key)?;
        let mut authorized = String::new();
        for (name, options) in keys {
            let key = dir.join(name);
            keygen(&key)?;
            let public = std::fs::read_to_string(key.with_extension("pub")).map_err(io)?;
            authorized.push_str(&format!("{options} {}\n", public.trim_end()));
        }
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, authorized).map_err(io)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("a free port on 127.0.0.1: {e}"))?.port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitUserEnvironment no\nAcceptEnv none\nLogLevel ERROR\n",
                host_key.display(),
                authorized_keys.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .map_err(io)?;
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("/usr/sbin/sshd (openssh-server): {e}"))?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("sshd exited ({st}); try /usr/sbin/sshd -t -f {}", config.display()));
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("sshd did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Sshd { child, port, dir: dir.to_path_buf() })
    }

    /// The client's `BORG_RSH` for logging in with key `key`, to this sshd's port: the port goes
    /// here, not in the URL, because the 2.0.0b21 client's `benchmark crud` rebuilds the URL
    /// without the `:` before the port (`Location.canonical_path`) and then cannot connect.
    pub fn rsh(&self, key: &str) -> String {
        format!(
            "ssh -p {} -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.port,
            self.dir.join(key).display()
        )
    }

    /// The `ssh://` URL of `path` through this sshd (with [`Sshd::rsh`], which names the port).
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1/{}", path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
