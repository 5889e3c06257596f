//! Command-line parsing: `borgd [common options] serve [options]`, the same command line as
//! `borg serve`, and the SSH forced-command merge. Nothing else in borgd looks at argv.
//!
//! borg's common options (log level, `--debug-topic`, `--lock-wait`, `--umask`, ...) are accepted
//! before or after `serve`, because the client appends its log level after `serve`. Options that
//! only make sense on the client (`--rsh`, `--remote-path`, `--repo`, ...) are accepted and ignored,
//! as `borg serve` does: the client always names the repository in `open`.
//!
//! With `SSH_ORIGINAL_COMMAND` set (a forced command in `authorized_keys`), the client's own
//! command line is parsed too; if it is a `serve` command, only its log level, debug topics and
//! `--lock-wait` are taken — never restrictions, `--permissions` or `--umask`. Leading `VAR=value`
//! words are dropped without being interpreted. Anything else runs the forced command as is.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::log::Level;
use crate::store::{Durability, Mode};

/// The borgd command line.
#[derive(Debug, Parser)]
#[command(name = "borgd", version, about = "A BorgBackup 2 repository server: a drop-in `borg serve`.")]
pub struct Cli {
    // (Plain comments here: clap would show doc comments as help text.)
    // borg's common options, before the subcommand.
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    // `serve` (the only subcommand).
    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: Command,
}

/// borg's common options (`define_common_options`), usable before or after the subcommand.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Common options")]
pub struct Common {
    /// work on log level CRITICAL
    #[arg(long, global = true, action = ArgAction::SetTrue, overrides_with_all = ["error", "warning", "info", "debug"])]
    pub critical: bool,
    /// work on log level ERROR
    #[arg(long, global = true, action = ArgAction::SetTrue, overrides_with_all = ["critical", "warning", "info", "debug"])]
    pub error: bool,
    /// work on log level WARNING (default)
    #[arg(long, global = true, action = ArgAction::SetTrue, overrides_with_all = ["critical", "error", "info", "debug"])]
    pub warning: bool,
    /// work on log level INFO
    #[arg(long, short = 'v', visible_alias = "verbose", global = true, action = ArgAction::SetTrue,
          overrides_with_all = ["critical", "error", "warning", "debug"])]
    pub info: bool,
    /// enable debug output, work on log level DEBUG
    #[arg(long, global = true, action = ArgAction::SetTrue, overrides_with_all = ["critical", "error", "warning", "info"])]
    pub debug: bool,
    /// enable TOPIC debugging (can be specified multiple times)
    #[arg(long = "debug-topic", value_name = "TOPIC", global = true, action = ArgAction::Append)]
    pub debug_topics: Vec<String>,
    /// wait at most SECONDS for acquiring a repository lock (when the client names no wait)
    #[arg(long = "lock-wait", value_name = "SECONDS", global = true, env = "BORG_LOCK_WAIT", default_value_t = 10.0)]
    pub lock_wait: f64,
    /// set umask to M (octal, default 0077)
    #[arg(long, value_name = "M", global = true, value_parser = parse_octal, default_value = "0077")]
    pub umask: u32,
    /// accepted for compatibility; no effect on the server
    #[arg(short = 'p', long, global = true, hide = true)]
    pub progress: bool,
    /// accepted for compatibility; no effect on the server
    #[arg(long, global = true, hide = true)]
    pub iec: bool,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "log-json", global = true, hide = true)]
    pub log_json: bool,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "show-version", global = true, hide = true)]
    pub show_version: bool,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "show-rc", global = true, hide = true)]
    pub show_rc: bool,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "remote-path", value_name = "PATH", global = true, hide = true)]
    pub remote_path: Option<String>,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "upload-ratelimit", value_name = "RATE", global = true, hide = true)]
    pub upload_ratelimit: Option<u64>,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "upload-buffer", value_name = "UPLOAD_BUFFER", global = true, hide = true)]
    pub upload_buffer: Option<u64>,
    /// accepted for compatibility; no effect on the server
    #[arg(long = "debug-profile", value_name = "FILE", global = true, hide = true)]
    pub debug_profile: Option<String>,
    /// accepted for compatibility; no effect on the server
    #[arg(long, value_name = "RSH", global = true, hide = true)]
    pub rsh: Option<String>,
    /// ignored by serve: the client always names the repository
    #[arg(short = 'r', long, value_name = "REPO", global = true, hide = true)]
    pub repo: Option<String>,
    /// listen on a unix socket (at PATH, or the default path the client computes) for socket:// clients
    #[arg(long, value_name = "PATH", global = true, num_args = 0..=1, default_missing_value = "")]
    pub socket: Option<String>,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("invalid octal umask {s:?}: {e}"))
}

/// borgd's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// start the repository server process
    Serve(ServeArgs),
}

/// Options of `serve`.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// restrict repository access to PATH (repeatable); sub-directories are allowed implicitly
    #[arg(long = "restrict-to-path", value_name = "PATH", action = ArgAction::Append)]
    pub restrict_to_paths: Vec<PathBuf>,
    /// restrict repository access to exactly the repository at PATH (repeatable)
    #[arg(long = "restrict-to-repository", value_name = "PATH", action = ArgAction::Append)]
    pub restrict_to_repositories: Vec<PathBuf>,
    /// set repository permission mode; overrides BORG_REPO_PERMISSIONS
    #[arg(long, value_parser = ["all", "no-delete", "write-only", "read-only"])]
    pub permissions: Option<String>,
    /// when written data is forced to disk: before anything can reference it (barrier), after every write (always), or never (like Python borg)
    #[arg(long, value_enum, default_value_t = Durability::Barrier)]
    pub fsync: Durability,
    /// write large objects (512 KiB and more) through the page cache like Python borg, instead of
    /// around it with O_DIRECT (consider it where synchronous writes are slow: network block
    /// devices, NFS)
    #[arg(long = "no-direct-io")]
    pub no_direct_io: bool,
    /// threads per session writing small objects at once, so that the file-system waits of a
    /// client faster than the disk overlap, for more CPU (default 0: one object after the other,
    /// like Python borg; 4 with --fsync=always, where every put waits for the disk; 4 lifts a
    /// fast client's small-object rate about 1.6x)
    #[arg(long = "put-writers", value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub put_writers: Option<u16>,
    /// when a client sends puts more slowly than they are stored, wait this long (microseconds)
    /// before reading more, so that one wake-up takes several (0: read at once)
    #[arg(long = "coalesce-us", value_name = "MICROSECONDS", default_value_t = crate::server::coalesce::DEFAULT_NAP_US, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub coalesce_us: u64,
    /// largest message held in memory, in MiB; the values of put and store_store (a chunk index) are streamed to disk instead, up to msgpack's 4 GiB
    #[arg(long = "max-message-mib", value_name = "MIB", default_value_t = 32)]
    pub max_message_mib: usize,
    /// socket mode: most sessions served at once; more connections get a clear "busy" error
    #[arg(long = "max-connections", value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
}

/// Everything the server needs to know, after argv, the environment and the forced-command merge.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The least level of the records sent to the client (under a forced command, the client's).
    pub level: Level,
    /// `--debug-topic`s: which debug loggers are on (under a forced command, the client's).
    pub debug_topics: Vec<String>,
    /// Seconds to wait for a lock, unless the client's `open` asks for its own.
    pub lock_wait: f64,
    /// The umask files and directories are created with (`--umask`, default 0077 as borg's).
    pub umask: u32,
    /// `--socket`: serve `socket://` clients at this path (empty: the client's default path).
    pub socket: Option<String>,
    /// The options of `serve` itself as given (restrictions, write path, limits).
    pub serve: ServeArgs,
    /// The permission mode, after `--permissions` and `BORG_REPO_PERMISSIONS`.
    pub permissions: Mode,
    /// Nesting levels of `data/` (`BORG_STORE_DATA_LEVELS`), for repositories borgd creates.
    pub data_levels: usize,
    /// Writer threads per session: `--put-writers`, or the default for the `--fsync` mode.
    pub put_writers: usize,
}

impl Common {
    fn level(&self) -> Level {
        if self.debug {
            Level::Debug
        } else if self.info {
            Level::Info
        } else if self.error {
            Level::Error
        } else if self.critical {
            Level::Critical
        } else {
            Level::Warning
        }
    }
}

/// Applies the SSH forced-command rule: only the allowlisted options come from `original`.
fn merge_forced(cli: &mut Cli, original: &str) {
    let Some(words) = shlex::split(original) else { return };
    let words: Vec<String> = words.into_iter().skip_while(|w| w.contains('=')).collect();
    if words.is_empty() {
        return;
    }
    let Ok(client) = Cli::try_parse_from(words) else { return };
    if !matches!(client.command, Command::Serve(_)) {
        return;
    }
    // allowlist: log level, debug topics, lock wait — taken as the client gave or defaulted them.
    let c = client.common;
    let (critical, error, warning, info, debug) = (c.critical, c.error, c.warning, c.info, c.debug);
    cli.common.critical = critical;
    cli.common.error = error;
    cli.common.warning = warning;
    cli.common.info = info;
    cli.common.debug = debug;
    cli.common.debug_topics = c.debug_topics;
    cli.common.lock_wait = c.lock_wait;
}

/// Parses argv (and `SSH_ORIGINAL_COMMAND`, `BORG_REPO_PERMISSIONS`, `BORG_STORE_DATA_LEVELS`).
pub fn parse<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(
    argv: I,
    ssh_original_command: Option<&str>,
    env_permissions: Option<&str>,
    env_data_levels: Option<&str>,
) -> Result<ServeOptions, clap::Error> {
    let mut cli = Cli::try_parse_from(argv)?;
    if let Some(orig) = ssh_original_command {
        merge_forced(&mut cli, orig);
    }
    let Command::Serve(serve) = cli.command;
    let invalid = |msg: String| clap::Error::raw(clap::error::ErrorKind::InvalidValue, msg + "\n");
    let permissions: Mode = serve
        .permissions
        .as_deref()
        .or(env_permissions)
        .unwrap_or("all")
        .parse()
        .map_err(invalid)?;
    let data_levels = match env_data_levels {
        None => 2,
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|l| *l <= 10)
            .ok_or_else(|| invalid(format!("Invalid BORG_STORE_DATA_LEVELS value: {s:?}, should be a number from 0 to 10.")))?,
    };
    if !cli.common.lock_wait.is_finite() || cli.common.lock_wait < 0.0 {
        return Err(invalid(format!("--lock-wait must be a non-negative number, got {}", cli.common.lock_wait)));
    }
    if serve.max_message_mib == 0 || serve.max_message_mib > 4096 {
        return Err(invalid(format!("--max-message-mib must be from 1 to 4096, got {}", serve.max_message_mib)));
    }
    let put_writers = serve.put_writers.map_or_else(|| crate::server::puts::default_writers(serve.fsync), usize::from);
    Ok(ServeOptions {
        put_writers,
        level: cli.common.level(),
        debug_topics: cli.common.debug_topics.clone(),
        lock_wait: cli.common.lock_wait,
        umask: cli.common.umask,
        socket: cli.common.socket.clone(),
        permissions,
        data_levels,
        serve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str], orig: Option<&str>) -> ServeOptions {
        parse(args.iter().copied(), orig, None, None).unwrap()
    }

    #[test]
    fn client_style_command_lines_parse() {
        let o = p(&["borgd", "serve", "--debug", "--debug-topic=borg.debug.repository"], None);
        assert_eq!(o.level, Level::Debug);
        assert_eq!(o.debug_topics, ["borg.debug.repository"]);
        let o = p(&["borgd", "--info", "serve", "--restrict-to-path", "/a", "--restrict-to-path=/b", "--permissions=read-only"], None);
        assert_eq!(o.level, Level::Info);
        assert_eq!(o.serve.restrict_to_paths.len(), 2);
        assert_eq!(o.permissions, Mode::ReadOnly);
        assert_eq!(p(&["borgd", "serve", "--debug", "--info"], None).level, Level::Info, "last level flag wins");
        assert_eq!(p(&["borgd", "serve"], None).umask, 0o077);
        assert_eq!(p(&["borgd", "serve", "--socket"], None).socket.as_deref(), Some(""));
        assert_eq!(p(&["borgd", "serve", "--socket=/x.sock"], None).socket.as_deref(), Some("/x.sock"));
    }

    #[test]
    fn forced_command_keeps_restrictions_and_takes_only_the_allowlist() {
        let forced = ["borgd", "serve", "--restrict-to-path", "/srv/a", "--permissions=read-only", "--umask=0027"];
        let o = p(&forced, Some("BORG_X=1 borg serve --restrict-to-path / --permissions all --umask=0000 --debug --lock-wait 99"));
        assert_eq!(o.serve.restrict_to_paths, [PathBuf::from("/srv/a")]);
        assert_eq!(o.permissions, Mode::ReadOnly);
        assert_eq!(o.umask, 0o027);
        assert_eq!(o.level, Level::Debug);
        assert_eq!(o.lock_wait, 99.0);
        // not a serve command, or garbage: the forced command as configured
        let o = p(&["borgd", "serve", "--info"], Some("borg list /etc"));
        assert_eq!(o.level, Level::Info);
        let o = p(&["borgd", "serve", "--info"], Some("'unbalanced"));
        assert_eq!(o.level, Level::Info);
        // the client's default log level overrides a level in the forced command, as in borg
        let o = p(&["borgd", "serve", "--debug"], Some("borg serve"));
        assert_eq!(o.level, Level::Warning);
    }

    /// No writer threads unless asked for, except where every put waits for the disk.
    #[test]
    fn writer_threads_by_fsync_mode_unless_given() {
        assert_eq!(p(&["borgd", "serve"], None).put_writers, 0);
        assert_eq!(p(&["borgd", "serve", "--fsync=never"], None).put_writers, 0);
        assert_eq!(p(&["borgd", "serve", "--fsync=always"], None).put_writers, crate::server::puts::WRITERS_ALWAYS);
        assert_eq!(p(&["borgd", "serve", "--fsync=always", "--put-writers=0"], None).put_writers, 0);
        assert_eq!(p(&["borgd", "serve", "--put-writers", "2"], None).put_writers, 2);
        assert!(parse(["borgd", "serve", "--put-writers=65"], None, None, None).is_err());
    }

    #[test]
    fn environment_permissions_and_levels() {
        let o = parse(["borgd", "serve"], None, Some("no-delete"), Some("1")).unwrap();
        assert_eq!((o.permissions, o.data_levels), (Mode::NoDelete, 1));
        let o = parse(["borgd", "serve", "--permissions", "all"], None, Some("read-only"), None).unwrap();
        assert_eq!(o.permissions, Mode::All, "--permissions overrides the environment");
        assert!(parse(["borgd", "serve"], None, Some("bogus"), None).is_err());
        assert!(parse(["borgd", "serve"], None, None, Some("x")).is_err());
        assert!(parse(["borgd", "serve", "--permissions", "bogus"], None, None, None).is_err());
    }

    /// `borgd serve --help` lists serve's own options, then borg's common options under their
    /// own heading (as `borg serve --help` does), not the two interleaved.
    #[test]
    fn help_keeps_the_common_options_apart() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build(); // global options reach the subcommand here, as when parsing
        let help = cli.find_subcommand_mut("serve").expect("serve").render_long_help().to_string();
        let at = |s: &str| help.find(s).unwrap_or_else(|| panic!("{s} missing from:\n{help}"));
        let common = at("Common options:");
        for own in ["--restrict-to-path", "--permissions", "--fsync", "--max-connections"] {
            assert!(at(own) < common, "{own} among the common options:\n{help}");
        }
        for shared in ["--critical", "--debug-topic", "--lock-wait", "--umask", "--socket"] {
            assert!(at(shared) > common, "{shared} among serve's own options:\n{help}");
        }
    }
}
