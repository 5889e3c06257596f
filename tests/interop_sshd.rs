//! SSH forced commands, proven with a real `sshd` on 127.0.0.1 and the real borg client.
//!
//! Each test starts its own sshd (throwaway host key, its own port and authorized_keys file) and
//! uses `authorized_keys` lines written like the `borg serve` documentation's examples, with a
//! separate client key per line. What the client asks for through its own command line (another
//! path, `--restrict-to-path /`, `--permissions all`) must get it nothing more.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Env;

struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().expect("ssh-keygen (openssh-client) must be installed");
    assert!(ok.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    /// Starts sshd with one authorized_keys line per (key name, options) pair.
    fn start(env: &Env, lines: &[(&str, String)]) -> Sshd {
        assert_eq!(unsafe { libc::geteuid() }, 0, "the sshd tests run sshd and log in as root (CI runs as root)");
        std::fs::create_dir_all("/run/sshd").expect("privilege separation directory /run/sshd");
        let dir = env.path("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        keygen(&dir.join("host_key"));
        let mut authorized = String::new();
        for (name, options) in lines {
            let key = dir.join(name);
            keygen(&key);
            let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
            authorized.push_str(&format!("{options} {}", public.trim_end()));
            authorized.push('\n');
        }
        std::fs::write(dir.join("authorized_keys"), authorized).unwrap();
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\nStrictModes no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitUserEnvironment no\nAcceptEnv none\nLogLevel ERROR\n",
            hk = dir.join("host_key").display(),
            ak = dir.join("authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server) must be installed");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { child, port, dir }
    }

    /// Configures `env` to log in with `key` (BORG_RSH) and returns the URL of `path`.
    fn client(&self, env: &mut Env, key: &str, path: &Path) -> String {
        let rsh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.dir.join(key).display()
        );
        env.set_env("BORG_RSH", &rsh);
        format!("ssh://root@127.0.0.1:{}/{}", self.port, path.display())
    }
}

#[test]
fn forced_restrict_to_path_cannot_be_widened_by_the_client() {
    let mut env = Env::new();
    let borgd = env.borgd.display().to_string();
    let allowed = env.path("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let sshd = Sshd::start(&env, &[("path_key", format!("command=\"{borgd} serve --restrict-to-path {}\",restrict", allowed.display()))]);
    let url = sshd.client(&mut env, "path_key", &allowed.join("repo"));
    env.ok(&["-r", &url, "repo-create", "-e", "none"]);
    let src = env.path("src");
    support::make_source(&src);
    env.ok(&["-r", &url, "create", "a", src.to_str().unwrap()]);
    assert!(env.ok(&["-r", &url, "list", "a"]).contains("big.bin"));

    // another path: refused
    let other_path = env.path("other");
    let other = sshd.client(&mut env, "path_key", &other_path);
    let text = env.fails(&["-r", &other, "repo-create", "-e", "none"]);
    assert!(text.contains("Repository path not allowed"), "{text}");
    // the client's own command line asks for --restrict-to-path / and --permissions all: ignored
    // (the trailing --debug-topic swallows the client's own "serve", so the line parses)
    env.remote_path = format!("{borgd} serve --restrict-to-path=/ --permissions=all --debug-topic");
    let text = env.fails(&["-r", &other, "repo-create", "-e", "none"]);
    assert!(text.contains("Repository path not allowed"), "{text}");
    assert!(!env.path("other").exists());
}

#[test]
fn forced_read_only_permissions_hold() {
    let mut env = Env::new();
    let borgd = env.borgd.display().to_string();
    let repo = env.path("repo");
    env.ok(&["-r", repo.to_str().unwrap(), "repo-create", "-e", "none"]); // made locally by Python borg
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.ok(&["-r", repo.to_str().unwrap(), "create", "a", src.to_str().unwrap()]);
    let sshd = Sshd::start(&env, &[("ro_key", format!("command=\"{borgd} serve --permissions=read-only\",restrict"))]);
    let url = sshd.client(&mut env, "ro_key", &repo);
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["a"]);
    let text = env.fails(&["-r", &url, "create", "b", src.to_str().unwrap()]);
    assert!(text.contains("Permission denied") && text.contains("read-only"), "{text}");
    env.remote_path = format!("{borgd} serve --permissions=all --debug-topic");
    let text = env.fails(&["-r", &url, "delete", "a"]);
    assert!(text.contains("read-only"), "{text}");
    // the allowlisted options do come from the client: its --debug reaches the server
    env.remote_path = borgd.clone();
    let out = env.run(&["-r", &url, "--debug", "repo-list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCK-ACQUIRE"), "client --debug is honoured");
}

#[test]
fn forced_command_with_environment_prefix() {
    let mut env = Env::new();
    let borgd = env.borgd.display().to_string();
    let repo = env.path("repo");
    env.ok(&["-r", repo.to_str().unwrap(), "repo-create", "-e", "none"]);
    let sshd = Sshd::start(&env, &[("env_key", format!("command=\"BORG_REPO_PERMISSIONS=no-delete {borgd} serve\",restrict"))]);
    let url = sshd.client(&mut env, "env_key", &repo);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.ok(&["-r", &url, "create", "kept", src.to_str().unwrap()]);
    let text = env.fails(&["-r", &url, "delete", "kept"]);
    assert!(text.contains("no-delete"), "{text}");
    // the client's own VAR=value words are dropped, not interpreted
    env.remote_path = format!("BORG_REPO_PERMISSIONS=all {borgd}");
    let text = env.fails(&["-r", &url, "delete", "kept"]);
    assert!(text.contains("no-delete"), "{text}");
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["kept"]);
}
