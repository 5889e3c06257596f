//! `borgd serve`: see the crate documentation and README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use borgd::cli;
use borgd::server::{self, Config, LogConfig};

fn main() -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let opts = match cli::parse(
        std::env::args_os(),
        env("SSH_ORIGINAL_COMMAND").as_deref(),
        env("BORG_REPO_PERMISSIONS").as_deref(),
        env("BORG_STORE_DATA_LEVELS").as_deref(),
    ) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(opts.umask as libc::mode_t);
    }
    // Chunks are up to 20 MiB: keep buffers of 256 KiB and more in their own mappings, returned
    // to the system when freed, instead of glibc's adaptive threshold moving them onto the heap
    // (which then stays as large as the largest chunk ever seen).
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
    if let Err(e) = borgd::signals::install(opts.socket.is_none()) {
        eprintln!("borgd: cannot install signal handlers: {e}");
        return ExitCode::from(2);
    }
    let cfg = Arc::new(Config {
        restrict_to_paths: opts.serve.restrict_to_paths.clone(),
        restrict_to_repositories: opts.serve.restrict_to_repositories.clone(),
        permissions: opts.permissions,
        durability: opts.serve.fsync,
        direct_io: !opts.serve.no_direct_io,
        put_writers: opts.put_writers,
        coalesce: std::time::Duration::from_micros(opts.serve.coalesce_us),
        data_levels: opts.data_levels,
        max_message: opts.serve.max_message_mib * 1024 * 1024,
        lock_wait: opts.lock_wait,
    });
    let logcfg = LogConfig { level: opts.level, topics: opts.debug_topics.clone() };
    if let Some(sock) = &opts.socket {
        let path = if sock.is_empty() { server::socket::default_socket_path() } else { PathBuf::from(sock) };
        let max = opts.serve.max_connections as usize;
        return match server::socket::serve_socket(cfg, &logcfg, &path, max, &borgd::signals::STOP) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("borgd: {e}");
                ExitCode::from(2)
            }
        };
    }
    match server::serve_stdio(cfg, &logcfg, &borgd::signals::STOP) {
        Ok(()) => ExitCode::SUCCESS,
        Err(server::ServeError::Stopped) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("borgd: {e}");
            ExitCode::from(2)
        }
    }
}
