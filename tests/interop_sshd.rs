//! SSH forced commands, proven with a real `sshd` on 127.0.0.1 and the real borg client.
//!
//! Each test starts its own sshd (throwaway host key, its own port and authorized_keys file) and
//! uses `authorized_keys` lines written like the `borg serve` documentation's examples, with a
//! separate client key per line. What the client asks for through its own command line (another
//! path, `--restrict-to-path /`, `--permissions all`) must get it nothing more.

mod support;

use std::path::Path;

use borgd::testsshd::Sshd;
use support::Env;

/// Starts sshd (`borgd::testsshd`) in the test's directory with one client key per (key name,
/// authorized_keys options) pair.
fn start_sshd(env: &Env, lines: &[(&str, String)]) -> Sshd {
    let keys: Vec<(&str, &str)> = lines.iter().map(|(k, o)| (*k, o.as_str())).collect();
    Sshd::start(&env.path("sshd"), &keys).expect("the sshd tests run sshd (openssh-server) and log in as root, as CI does")
}

/// Configures `env` to log in with `key` (BORG_RSH) and returns the URL of `path`.
fn client(sshd: &Sshd, env: &mut Env, key: &str, path: &Path) -> String {
    env.set_env("BORG_RSH", &sshd.rsh(key));
    sshd.url(path)
}

#[test]
fn forced_restrict_to_path_cannot_be_widened_by_the_client() {
    let mut env = Env::new();
    let borgd = env.borgd.display().to_string();
    let allowed = env.path("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let sshd = start_sshd(&env, &[("path_key", format!("command=\"{borgd} serve --restrict-to-path {}\",restrict", allowed.display()))]);
    let url = client(&sshd, &mut env, "path_key", &allowed.join("repo"));
    env.ok(&["-r", &url, "repo-create", "-e", "none"]);
    let src = env.path("src");
    support::make_source(&src);
    env.ok(&["-r", &url, "create", "a", src.to_str().unwrap()]);
    assert!(env.ok(&["-r", &url, "list", "a"]).contains("big.bin"));

    // another path: refused
    let other_path = env.path("other");
    let other = client(&sshd, &mut env, "path_key", &other_path);
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
    let src = support::one_file_source(&env, b"data");
    env.ok(&["-r", repo.to_str().unwrap(), "create", "a", src.to_str().unwrap()]);
    let sshd = start_sshd(&env, &[("ro_key", format!("command=\"{borgd} serve --permissions=read-only\",restrict"))]);
    let url = client(&sshd, &mut env, "ro_key", &repo);
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
    let sshd = start_sshd(&env, &[("env_key", format!("command=\"BORG_REPO_PERMISSIONS=no-delete {borgd} serve\",restrict"))]);
    let url = client(&sshd, &mut env, "env_key", &repo);
    let src = support::one_file_source(&env, b"data");
    env.ok(&["-r", &url, "create", "kept", src.to_str().unwrap()]);
    let text = env.fails(&["-r", &url, "delete", "kept"]);
    assert!(text.contains("no-delete"), "{text}");
    // the client's own VAR=value words are dropped, not interpreted
    env.remote_path = format!("BORG_REPO_PERMISSIONS=all {borgd}");
    let text = env.fails(&["-r", &url, "delete", "kept"]);
    assert!(text.contains("no-delete"), "{text}");
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["kept"]);
}
