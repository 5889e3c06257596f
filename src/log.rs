//! Server log records, sent to the client the way Python `borg serve` does: as `{"l": {...}}`
//! messages carrying the fields of a Python `LogRecord`, which the client re-emits through its own
//! logging, so `borg --debug` on the client shows what the server did.
//!
//! Records below the level the client asked for (`--debug`, `--info`, ...) are not sent at all;
//! `--debug-topic` enables debug records of `borg.debug.<topic>` loggers.


use crate::output::SharedOutput;
use crate::rpc::msgpack::encode;

/// Python logging levels, as numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `logging.DEBUG`: `--debug`.
    Debug = 10,
    /// `logging.INFO`: `--info` (and `-v`).
    Info = 20,
    /// `logging.WARNING`: borg's default.
    Warning = 30,
    /// `logging.ERROR`: `--error`.
    Error = 40,
    /// `logging.CRITICAL`: `--critical`.
    Critical = 50,
}


/// A session's logger: filters by level and topic, encodes, and writes into the session output.
pub struct Log {
    level: Level,
    topics: Vec<String>,
    out: Option<SharedOutput>,
    /// Also print records on our stderr (socket mode, where there is no client to read them).
    stderr: bool,
}

impl Log {
    /// A logger sending records at or above `level` (and debug records of `topics`) to `out`.
    pub fn new(level: Level, topics: Vec<String>, out: Option<SharedOutput>, stderr: bool) -> Log {
        let topics = topics
            .into_iter()
            .map(|t| if t.contains('.') { t } else { format!("borg.debug.{t}") })
            .collect();
        Log { level, topics, out, stderr }
    }

    /// A logger that drops everything (tests, and work done with no client attached).
    pub fn silent() -> Log {
        Log { level: Level::Critical, topics: Vec::new(), out: None, stderr: false }
    }

    /// Whether a record of this logger and level would be sent.
    pub fn enabled(&self, name: &str, level: Level) -> bool {
        if name.starts_with("borg.debug.") {
            return self.topics.iter().any(|t| name.starts_with(t.as_str()));
        }
        level >= self.level
    }

    /// Sends one record (not flushed: the session flushes before it waits for input).
    pub fn log(&self, name: &str, level: Level, msg: &str) {
        if !self.enabled(name, level) {
            return;
        }
        if self.stderr {
            eprintln!("borgd: {msg}");
        }
        let Some(out) = &self.out else { return };
        let mut buf = Vec::with_capacity(96 + msg.len());
        encode::map(&mut buf, 1);
        encode::str(&mut buf, "l");
        encode::map(&mut buf, 9);
        encode::str(&mut buf, "name");
        encode::str(&mut buf, name);
        encode::str(&mut buf, "level");
        encode::uint(&mut buf, level as u64);
        encode::str(&mut buf, "pathname");
        encode::str(&mut buf, "borgd");
        encode::str(&mut buf, "lineno");
        encode::uint(&mut buf, 0);
        encode::str(&mut buf, "msg");
        encode::str(&mut buf, msg);
        encode::str(&mut buf, "args");
        encode::nil(&mut buf);
        encode::str(&mut buf, "exc_info");
        encode::nil(&mut buf);
        encode::str(&mut buf, "func");
        encode::nil(&mut buf);
        encode::str(&mut buf, "sinfo");
        encode::nil(&mut buf);
        if let Ok(mut w) = out.lock() {
            // a broken client pipe is noticed (and handled) by the session's next response write.
            let _ = w.write_all(&buf);
        }
    }

    /// Pushes buffered records to the client now (long operations call this periodically).
    pub fn flush(&self) {
        if let Some(out) = &self.out {
            if let Ok(mut w) = out.lock() {
                let _ = w.flush();
            }
        }
    }

    /// Debug record.
    pub fn debug(&self, name: &str, msg: &str) {
        self.log(name, Level::Debug, msg);
    }

    /// Info record.
    pub fn info(&self, name: &str, msg: &str) {
        self.log(name, Level::Info, msg);
    }

    /// Warning record.
    pub fn warning(&self, name: &str, msg: &str) {
        self.log(name, Level::Warning, msg);
    }

    /// Error record.
    pub fn error(&self, name: &str, msg: &str) {
        self.log(name, Level::Error, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Output;
    use crate::rpc::msgpack::{check, parse, Value};
    use std::sync::{Arc, Mutex};

    #[test]
    fn records_are_filtered_and_look_like_python_logrecords() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = Output::shared(Box::new(crate::output::Captured(buf.clone())), None);
        let log = Log::new(Level::Info, vec!["repository".into()], Some(out), false);
        log.debug("borg.repository", "hidden");
        log.info("borg.repository", "shown");
        log.debug("borg.debug.repository", "topic shown");
        log.debug("borg.debug.other", "topic hidden");
        log.flush();
        let bytes = buf.lock().unwrap().clone();
        let first = check(&bytes, 1 << 20).unwrap();
        let rec = parse(&bytes[..first]).unwrap();
        let l = rec.get("l").unwrap();
        assert_eq!(l.get("msg"), Some(&Value::Str("shown")));
        assert_eq!(l.get("level"), Some(&Value::Int(20)));
        assert_eq!(l.get("args"), Some(&Value::Nil));
        let second = check(&bytes[first..], 1 << 20).unwrap();
        assert_eq!(parse(&bytes[first..first + second]).unwrap().get("l").unwrap().get("msg"), Some(&Value::Str("topic shown")));
        assert_eq!(first + second, bytes.len());
    }
}
