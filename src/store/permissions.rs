//! The borgstore permission model, and the four modes `borg serve --permissions` offers.
//!
//! A permission map grants, per namespace, a set of the letters
//! `l` (list names), `r` (read contents), `w` (write new items), `W` (write, also overwrite) and
//! `D` (delete). The most specific (longest) path present in the map decides: if it does not grant
//! one of the required letters, the operation is denied, even if a shorter path would grant it.
//! Store of an existing item needs `W`, of a new one `w` or `W`; a move needs `D` on its source and
//! `w`/`W` (or `W` if the target exists) on its target; creating a store needs `w`/`W` on the
//! root, destroying it `D`.

use std::fmt;
use std::str::FromStr;

/// The permission modes of `borg serve --permissions` / `BORG_REPO_PERMISSIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `all`: no restriction (the default).
    All,
    /// `no-delete`: read and add, never delete or overwrite data.
    NoDelete,
    /// `write-only`: add, never read data.
    WriteOnly,
    /// `read-only`: read, never write or delete.
    ReadOnly,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "all" => Ok(Mode::All),
            "no-delete" => Ok(Mode::NoDelete),
            "write-only" => Ok(Mode::WriteOnly),
            "read-only" => Ok(Mode::ReadOnly),
            other => Err(format!(
                "Invalid BORG_REPO_PERMISSIONS value: {other}, should be one of: all, no-delete, write-only, read-only."
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::All => "all",
            Mode::NoDelete => "no-delete",
            Mode::WriteOnly => "write-only",
            Mode::ReadOnly => "read-only",
        })
    }
}

/// A namespace → granted-letters table; `None` inside [`Permissions`] means "everything allowed".
#[derive(Debug, Clone)]
pub struct Permissions {
    mode: Mode,
    table: Vec<(&'static str, &'static str)>,
}

impl Permissions {
    /// The table borg 2.0.0b21's `Repository.__init__` builds for each mode.
    pub fn for_mode(mode: Mode) -> Permissions {
        let table = match mode {
            Mode::All => vec![],
            Mode::NoDelete => vec![
                ("", "lr"),
                ("archives", "lrw"),
                ("cache", "lrwWD"),
                ("config", "lrW"),
                ("data", "lrw"),
                ("keys", "lr"),
                ("locks", "lrwD"),
            ],
            Mode::WriteOnly => vec![
                ("", "l"),
                ("archives", "lw"),
                ("cache", "lrwWD"),
                ("config", "lrW"),
                ("data", "lw"),
                ("keys", "lr"),
                ("locks", "lrwD"),
            ],
            Mode::ReadOnly => vec![("", "lr"), ("locks", "lrwD")],
        };
        Permissions { mode, table }
    }

    /// The mode this table was built for, named in denial messages.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether one of `required` is granted for `name`, by the most specific entry present.
    pub fn allows(&self, name: &str, required: &str) -> bool {
        if self.mode == Mode::All {
            return true;
        }
        let mut path = name;
        loop {
            if let Some((_, granted)) = self.table.iter().find(|(p, _)| *p == path) {
                return required.chars().any(|c| granted.contains(c));
            }
            if path.is_empty() {
                return false;
            }
            path = match path.rfind('/') {
                Some(i) => &path[..i],
                None => "",
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_entry_decides() {
        let p = Permissions::for_mode(Mode::NoDelete);
        assert!(p.allows("data/00/11/0011", "w"));
        assert!(!p.allows("data/00/11/0011", "W"));
        assert!(!p.allows("data/00/11/0011", "D"));
        assert!(p.allows("config/manifest", "W"));
        assert!(!p.allows("keys/repokey", "wW"));
        assert!(p.allows("locks/abc", "D"));
        assert!(!p.allows("", "wW"), "no-delete cannot create a repository");
    }

    #[test]
    fn write_only_cannot_read_data_or_archives() {
        let p = Permissions::for_mode(Mode::WriteOnly);
        assert!(!p.allows("data/00/00/00", "r"));
        assert!(p.allows("data/00/00/00", "l"));
        assert!(p.allows("cache/chunks.1", "r"));
        assert!(!p.allows("archives/aa", "r"));
    }

    #[test]
    fn read_only_only_touches_locks() {
        let p = Permissions::for_mode(Mode::ReadOnly);
        assert!(p.allows("data/00/00/00", "r"));
        assert!(!p.allows("config/manifest", "wW"));
        assert!(!p.allows("", "D"));
        assert!(p.allows("locks/x", "w"));
        assert!(Permissions::for_mode(Mode::All).allows("", "D"));
        assert!("bogus".parse::<Mode>().is_err());
    }
}
