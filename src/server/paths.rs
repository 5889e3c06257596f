//! Which repository path a client means, and whether the server lets it have it.
//!
//! The requested path is made absolute against the server's working directory (an ssh session
//! starts in the user's home) and its symlinks are resolved like Python's non-strict
//! `os.path.realpath`: existing components are followed, a missing tail is kept as written (so
//! `repo-create` works where nothing exists yet). Restrictions compare resolved paths with a
//! trailing separator, so `--restrict-to-path /foo` never admits `/foobar`.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// Resolves a requested repository path to an absolute path without symlinks.
pub fn resolve(requested: &str) -> io::Result<PathBuf> {
    if requested.is_empty() || requested.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty or invalid path"));
    }
    let p = Path::new(requested);
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) };
    realpath(&abs, &mut 0)
}

fn realpath(p: &Path, links: &mut usize) -> io::Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for comp in p.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => follow(&mut out, name, links)?,
        }
    }
    Ok(out)
}

fn follow(out: &mut PathBuf, name: &OsStr, links: &mut usize) -> io::Result<()> {
    let candidate = out.join(name);
    match std::fs::symlink_metadata(&candidate) {
        Ok(md) if md.file_type().is_symlink() => {
            *links += 1;
            if *links > MAX_SYMLINKS {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&candidate)?;
            let joined = if target.is_absolute() { target } else { out.join(target) };
            *out = realpath(&joined, links)?;
        }
        _ => *out = candidate,
    }
    Ok(())
}

fn with_sep(p: &Path) -> String {
    let mut s = p.to_string_lossy().into_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// Whether the (resolved) repository path is admitted by the restrictions; no restriction of a
/// kind means that kind admits everything.
pub fn admitted(path: &Path, restrict_to_paths: &[PathBuf], restrict_to_repositories: &[PathBuf]) -> bool {
    let p = with_sep(path);
    let resolved = |r: &PathBuf| realpath(&std::env::current_dir().unwrap_or_default().join(r), &mut 0).map(|r| with_sep(&r));
    let in_paths = restrict_to_paths.is_empty() || restrict_to_paths.iter().any(|r| resolved(r).is_ok_and(|r| p.starts_with(&r)));
    let is_repo = restrict_to_repositories.is_empty() || restrict_to_repositories.iter().any(|r| resolved(r).is_ok_and(|r| p == r));
    in_paths && is_repo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_needs_a_separator_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let foo = base.join("foo");
        let only_foo = std::slice::from_ref(&foo);
        assert!(admitted(&base.join("foo/repo"), only_foo, &[]));
        assert!(admitted(&foo, only_foo, &[]));
        assert!(!admitted(&base.join("foobar"), only_foo, &[]));
        assert!(admitted(&foo, &[], only_foo));
        assert!(!admitted(&foo.join("sub"), &[], only_foo));
        assert!(admitted(&base.join("anything"), &[], &[]));
    }

    #[test]
    fn symlinks_are_resolved_and_missing_tails_kept() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("real/escape")).unwrap();
        let r = resolve(&format!("{}/link/new/repo", base.display())).unwrap();
        assert_eq!(r, base.join("real/new/repo"));
        let e = resolve(&format!("{}/link/escape", base.display())).unwrap();
        assert_eq!(e, PathBuf::from("/etc"));
        assert!(!admitted(&e, &[base.join("real")], &[]), "a symlink out of the allowed tree is not admitted");
        let up = resolve(&format!("{}/real/../../x", base.display())).unwrap();
        assert_eq!(up, base.parent().unwrap().join("x"));
        std::os::unix::fs::symlink("loop", base.join("loop")).unwrap();
        assert!(resolve(&format!("{}/loop", base.display())).is_err());
    }
}
