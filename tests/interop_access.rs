//! Access control with the real borg 2.0.0b21 client: `--permissions` modes as a user sees them,
//! `--restrict-to-path` and `--restrict-to-repository`, and the environment variable that sets the
//! mode. The server options are added on the server side (a wrapper, as a forced command would).
//! And the server run as an unprivileged user, as backup hosts run it.

mod support;

use support::{files_below, make_source, snapshot_without_locks, Env};

/// A repository with one archive `a1` made with full permissions.
fn repo_with_archive(env: &mut Env) -> (std::path::PathBuf, String, String) {
    let src = env.path("src");
    make_source(&src);
    let repo = env.path("repo");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "repokey-aes-ocb"]);
    env.ok(&["-r", &url, "create", "a1", src.to_str().unwrap()]);
    (repo, url, src.display().to_string())
}

#[test]
fn no_delete_creates_but_never_deletes() {
    let mut env = Env::new();
    let (repo, url, src) = repo_with_archive(&mut env);
    env.with_server_args(&["--permissions=no-delete"]);
    env.ok(&["-r", &url, "create", "a2", &src]);
    assert!(env.ok(&["-r", &url, "list", "a1"]).contains("big.bin"), "no-delete can read");
    let denied = env.fails(&["-r", &url, "delete", "a1"]);
    assert!(denied.contains("Permission denied") && denied.contains("no-delete"), "{denied}");
    let data_before = files_below(&repo.join("data"));
    let _ = env.run(&["-r", &url, "compact"]);
    assert_eq!(files_below(&repo.join("data")), data_before, "compact removed nothing");
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["a1", "a2"]);
    env.ok(&["-r", &url, "check"]);
}

#[test]
fn write_only_backs_up_but_cannot_read() {
    let mut env = Env::new();
    let src = env.path("src");
    make_source(&src);
    let repo = env.path("repo");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "repokey-aes-ocb"]);
    env.with_server_args(&["--permissions=write-only"]);
    env.ok(&["-r", &url, "create", "secret-backup", src.to_str().unwrap()]);
    for args in [&["list", "secret-backup"][..], &["extract", "secret-backup"][..], &["repo-list"][..]] {
        let mut v = vec!["-r", url.as_str()];
        v.extend_from_slice(args);
        let denied = env.fails(&v);
        assert!(denied.contains("Permission denied") && denied.contains("write-only"), "{args:?}: {denied}");
    }
    // borg 2.0.0b21's client reads existing archives' metadata (data/) when it creates an
    // archive, which write-only forbids: the second backup is refused exactly as by Python's
    // `borg serve --permissions=write-only`, with a clear message instead of a traceback.
    let second = env.fails(&["-r", &url, "create", "second", src.to_str().unwrap()]);
    assert!(second.contains("Permission denied") && second.contains("load"), "{second}");
    // the data is intact for an unrestricted reader
    env.without_server_args();
    assert!(env.ok(&["-r", &url, "list", "secret-backup"]).contains("big.bin"));
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}

#[test]
fn read_only_reads_and_changes_nothing_but_its_lock() {
    let mut env = Env::new();
    let (repo, url, src) = repo_with_archive(&mut env);
    let before = snapshot_without_locks(&repo);
    env.with_server_args(&["--permissions=read-only"]);
    assert_eq!(support::archive_names(&env, &["-r", &url]), ["a1"]);
    assert!(env.ok(&["-r", &url, "list", "a1"]).contains("big.bin"));
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(env.command(&["-r", &url, "extract", "a1"]).current_dir(&out).status().unwrap().success());
    support::assert_same_tree(std::path::Path::new(&src), &out.join(src.trim_start_matches('/')));
    env.ok(&["-r", &url, "check"]);
    for args in [&["create", "a2", src.as_str()][..], &["delete", "a1"][..], &["rename", "a1", "b1"][..], &["compact"][..]] {
        let mut v = vec!["-r", url.as_str()];
        v.extend_from_slice(args);
        let denied = env.fails(&v);
        assert!(denied.contains("Permission denied") && denied.contains("read-only"), "{args:?}: {denied}");
    }
    assert_eq!(snapshot_without_locks(&repo), before, "read-only changed the repository");
    assert!(files_below(&repo.join("locks")).is_empty());
}

#[test]
fn permissions_from_the_environment_and_the_option_overrides_it() {
    let mut env = Env::new();
    let (_repo, url, src) = repo_with_archive(&mut env);
    // the server's environment (BORG_REPO_PERMISSIONS set where borgd runs)
    let script = env.path("env-wrapper");
    support::write_script(&script, &format!("#!/bin/sh\nBORG_REPO_PERMISSIONS=read-only exec '{}' \"$@\"\n", env.borgd.display()));
    env.remote_path = script.display().to_string();
    let denied = env.fails(&["-r", &url, "create", "a2", &src]);
    assert!(denied.contains("read-only"), "{denied}");
    std::fs::write(&script, format!("#!/bin/sh\nBORG_REPO_PERMISSIONS=read-only exec '{}' \"$@\" --permissions=all\n", env.borgd.display())).unwrap();
    env.ok(&["-r", &url, "create", "a2", &src]);
}

#[test]
fn restrict_to_path_admits_the_tree_and_nothing_else() {
    let mut env = Env::new();
    let allowed = env.path("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(env.path("allowedbar")).unwrap();
    std::os::unix::fs::symlink(env.path("elsewhere"), allowed.join("escape")).unwrap();
    env.with_server_args(&["--restrict-to-path", allowed.to_str().unwrap()]);
    // below the allowed path, even with missing parents: fine
    let inside = env.ssh_url(&allowed.join("deep/er/repo"));
    env.ok(&["-r", &inside, "repo-create", "-e", "none"]);
    env.ok(&["-r", &inside, "repo-info"]);
    for bad in [env.path("allowedbar/repo"), env.path("other"), allowed.join("../other"), allowed.join("escape/repo")] {
        let text = env.fails(&["-r", &env.ssh_url(&bad), "repo-create", "-e", "none"]);
        assert!(text.contains("Repository path not allowed"), "{}: {text}", bad.display());
    }
    assert!(!env.path("other").exists() && !env.path("elsewhere").exists() && !env.path("allowedbar/repo").exists());
}

#[test]
fn restrict_to_repository_admits_exactly_that_repository() {
    let mut env = Env::new();
    let repo = env.path("only/repo");
    env.with_server_args(&["--restrict-to-repository", repo.to_str().unwrap()]);
    // it may not exist yet: repo-create works there
    env.ok(&["-r", &env.ssh_url(&repo), "repo-create", "-e", "none"]);
    env.ok(&["-r", &env.ssh_url(&repo), "repo-info"]);
    for bad in [repo.join("sub"), env.path("only"), env.path("only/repo2")] {
        let text = env.fails(&["-r", &env.ssh_url(&bad), "repo-info"]);
        assert!(text.contains("Repository path not allowed"), "{}: {text}", bad.display());
    }
}

/// Differential: in each restricted mode, Python's `borg serve` (b21) and borgd allow and deny
/// the same client commands, run in the same order on copies of one repository — but for the
/// one difference borgd makes on purpose (docs/SECURITY.md): `check` in read-only mode, which
/// Python's server fails with a traceback. (Exit codes differ too: borgd's denials are the
/// client's clean exit 21, Python's a traceback's 2; only success or failure is compared.)
#[test]
fn borgd_allows_and_denies_what_python_borg_serve_does() {
    let mut env = Env::new();
    let (repo, url, src) = repo_with_archive(&mut env);
    env.ok(&["-r", &url, "create", "a2", &src]);
    let commands: &[&[&str]] = &[
        &["extract", "--dry-run", "a1"],
        &["create", "a3", &src],
        &["rename", "a1", "a1b"],
        &["delete", "-a", "a2"],
        &["compact"],
        &["check"],
        &["repo-space", "--reserve", "1M"],
        &["key", "change-passphrase"],
    ];
    let python = support::borg_binary();
    let servers = [("python", python.as_path()), ("borgd", env.borgd.as_path())];
    let modes = ["no-delete", "write-only", "read-only"];
    // each server's sequence in each mode on its own copy, with its own client state, all at once
    let outcomes: Vec<Vec<bool>> = std::thread::scope(|s| {
        let runs: Vec<_> = modes
            .iter()
            .flat_map(|mode| servers.iter().map(move |server| (mode, server)))
            .map(|(mode, &(label, server))| {
                let dir = env.path(&format!("{mode}-{label}"));
                let (env, repo) = (&env, &repo);
                s.spawn(move || {
                    std::fs::create_dir_all(dir.join("base")).unwrap();
                    assert!(std::process::Command::new("cp").arg("-a").arg(repo).arg(dir.join("repo")).status().unwrap().success());
                    let wrapper = dir.join("serve");
                    support::write_script(&wrapper, &format!("#!/bin/sh\nexec '{}' \"$@\" --permissions={mode}\n", server.display()));
                    let url = env.ssh_url(&dir.join("repo"));
                    commands
                        .iter()
                        .map(|c| {
                            let args: Vec<&str> = ["-r", url.as_str()].iter().chain(c.iter()).copied().collect();
                            let mut cmd = env.command(&args);
                            cmd.env("BORG_REMOTE_PATH", &wrapper).env("BORG_BASE_DIR", dir.join("base")).env("BORG_NEW_PASSPHRASE", "correct horse battery staple");
                            cmd.output().unwrap().status.success()
                        })
                        .collect()
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (m, mode) in modes.iter().enumerate() {
        let (python, borgd) = (&outcomes[2 * m], &outcomes[2 * m + 1]);
        let table = || commands.iter().zip(python.iter().zip(borgd)).map(|(c, (p, b))| format!("{c:?}: python {p}, borgd {b}")).collect::<Vec<_>>().join("\n");
        for (i, c) in commands.iter().enumerate() {
            let expected = if *mode == "read-only" && c[0] == "check" { !python[i] && borgd[i] } else { python[i] == borgd[i] };
            assert!(expected, "{mode}, {c:?}:\n{}", table());
        }
        assert!(borgd.contains(&true) && borgd.contains(&false), "{mode} allowed all or nothing:\n{}", table());
    }
}

/// Backup hosts run the server as an unprivileged user (the account in `authorized_keys`, or a
/// service's `User=`), where every permission check applies that root passes: here `nobody`,
/// over ssh (a wrapper drops to it, with an empty environment as sshd gives a forced command)
/// and as a socket server. The repository's files are that user's and no one else's (umask
/// 0077: files 0600, directories 0700), the notes on chunk indexes are kept (user extended
/// attributes need only the file's owner), and the backups are whole.
#[test]
fn an_unprivileged_server_serves_over_ssh_and_a_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;
    const NOBODY: u32 = 65_534;
    let mut env = Env::new();
    // the test's directory must be passable for nobody; the server a copy nobody can run
    std::fs::set_permissions(env.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let borgd = env.path("borgd");
    std::fs::copy(&env.borgd, &borgd).unwrap();
    std::fs::set_permissions(&borgd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let drop_to_nobody = format!("setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- env -i PATH=/usr/bin:/bin HOME=/nonexistent");
    let wrapper = env.path("as-nobody");
    support::write_script(&wrapper, &format!("#!/bin/sh\nexec {drop_to_nobody} '{}' \"$@\"\n", borgd.display()));
    env.remote_path = wrapper.display().to_string();
    let srv = env.path("srv");
    std::fs::create_dir(&srv).unwrap();
    std::os::unix::fs::chown(&srv, Some(NOBODY), Some(NOBODY)).unwrap();
    let src = env.path("src");
    make_source(&src);
    let src = src.to_str().unwrap();

    let repo = srv.join("repo");
    let url = env.ssh_url(&repo);
    env.ok(&["-r", &url, "repo-create", "-e", "repokey-aes-ocb"]);
    env.ok(&["-r", &url, "create", "a1", src]);
    env.ok(&["-r", &url, "create", "a2", src]);
    let noted = borgd::repository::trust::date_notes_later(&repo, std::time::Duration::ZERO).unwrap();
    assert!(noted >= 1, "no chunk index of nobody's has a note");
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    assert!(env.command(&["-r", &url, "extract", "a1"]).current_dir(&out).status().unwrap().success());
    support::assert_same_tree(std::path::Path::new(src), &out.join(src.trim_start_matches('/')));
    env.ok(&["-r", &url, "delete", "a1"]);
    env.ok(&["-r", &url, "compact"]);
    env.ok(&["-r", &url, "check"]);

    // a socket server as nobody, its socket in a directory of nobody's
    let socket = srv.join("borgd.sock");
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into(), "--".into()]);
    let mut server = cmd.arg(&borgd).arg("serve").arg(format!("--socket={}", socket.display())).arg(format!("--restrict-to-path={}", srv.display())).spawn().unwrap();
    support::wait_until_listening(&socket);
    let sock = format!("--socket={}", socket.display());
    let socket_url = format!("socket://{}", repo.display());
    env.ok(&[&sock, "-r", &socket_url, "create", "a3", src]);
    assert_eq!(support::archive_names(&env, &[&sock, "-r", &socket_url]), ["a2", "a3"]);
    // SAFETY: kill with our child's pid and a valid signal.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = support::wait_at_most(&mut server, std::time::Duration::from_secs(20)).expect("borgd as nobody stops on SIGTERM");
    assert!(status.success(), "{status}");

    for path in std::iter::once(repo.clone()).chain(files_below(&repo)) {
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "{} is not nobody's", path.display());
        assert_eq!(md.mode() & 0o077, 0, "{} is open to others: {:o}", path.display(), md.mode());
    }
    // last: Python borg, run here as root, leaves files of root's
    env.ok(&["-r", repo.to_str().unwrap(), "check"]);
}
