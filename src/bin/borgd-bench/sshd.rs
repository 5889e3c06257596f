//! A real `sshd` on 127.0.0.1 for `e2e --sshd`: the client reaches each server over ssh, as
//! backup hosts serve it.
//!
//! The default transport is the rsh shim (the client's pipe goes straight into the server), which
//! measures the server alone. Behind a real sshd the server reads what sshd decrypted, in the
//! pieces sshd writes (ssh channel packets, not the client's large writes), and sshd works on
//! this machine's two cores beside it: the deployed path, whose figures can differ. sshd's own
//! CPU is not the server's and is not counted (for either server).
//!
//! Throwaway keys in the run's work directory, a free port, root logging in with a key (the
//! benchmark runs as root), no forced command: the client names the server to start, as with the
//! shim (`BORG_REMOTE_PATH`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Res;

/// A running sshd; stopped when dropped.
pub struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
}

fn keygen(path: &Path) -> Res<()> {
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
    /// Starts `/usr/sbin/sshd` with its keys and configuration in `dir`, and waits until it
    /// listens.
    pub fn start(dir: &Path) -> Res<Sshd> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("--sshd runs sshd and logs in as root: run the benchmark as root".into());
        }
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd (sshd's privilege separation directory): {e}"))?;
        std::fs::create_dir_all(dir).map_err(io)?;
        let (host_key, key) = (dir.join("host_key"), dir.join("client_key"));
        keygen(&host_key)?;
        keygen(&key)?;
        let public = std::fs::read_to_string(key.with_extension("pub")).map_err(io)?;
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("restrict {}\n", public.trim_end())).map_err(io)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("a free port on 127.0.0.1: {e}"))?.port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitUserEnvironment no\nLogLevel ERROR\n",
                host_key.display(),
                authorized.display(),
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
        Ok(Sshd { child, port, key })
    }

    /// The client's `BORG_RSH` for this sshd.
    pub fn rsh(&self) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.key.display()
        )
    }

    /// The `ssh://` URL of `path` through this sshd.
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}/{}", self.port, path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
