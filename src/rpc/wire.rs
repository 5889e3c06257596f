//! Exception marshalling: how a [`CallError`] reaches the client.
//!
//! The client rebuilds borg exceptions from `exception_class` and `exception_args` for a fixed
//! set of class names (`RemoteRepository.call_many.handle_error`); anything else becomes an
//! `RPCError` whose text is `exception_short` (or `exception_full` when `exception_trace` is
//! true). So reconstructable failures use the client's class names and argument order, and every
//! other failure carries a clear one-line `exception_short` with `exception_trace` false.

use super::msgpack::encode;
use crate::error::CallError;
use crate::lock;
use crate::repository::Error as RepoError;
use crate::store::Error as StoreError;

/// One exception answer, ready to encode.
#[derive(Debug, PartialEq)]
pub struct Exception {
    /// The class name the client rebuilds (`exception_class`).
    pub class: &'static str,
    /// The exception's arguments (`exception_args`), which the client's constructor takes.
    pub args: Vec<String>,
    /// What the user reads (`exception_short`, and the last line of `exception_full`).
    pub message: String,
    /// Whether the client shows a traceback (borg's `ErrorWithTraceback` classes).
    pub trace: bool,
}

fn exc(class: &'static str, args: Vec<String>, message: String, trace: bool) -> Exception {
    Exception { class, args, message, trace }
}

fn store_exception(e: &StoreError) -> Exception {
    let msg = e.to_string();
    match e {
        StoreError::ObjectNotFound(name) => exc("StoreObjectNotFound", vec![name.clone()], msg, false),
        StoreError::PermissionDenied { mode, op, name, required } => {
            // the client prints "Permission denied to {arg}."
            let what = format!("{name} ({op} needs one of the permissions '{required}'; the server runs with --permissions={mode})");
            exc("PathPermissionDenied", vec![what], msg, false)
        }
        StoreError::InvalidName { .. } => exc("ValueError", vec![msg.clone()], msg, false),
        StoreError::AlreadyExists(p) => exc("AlreadyExists", vec![p.display().to_string()], msg, false),
        // never leaves the Store (which turns it into PermissionDenied); named for completeness
        StoreError::ItemExists(name) => exc("Error", vec![msg.clone()], format!("borgd: {name}: {msg}"), false),
        StoreError::DoesNotExist(p) => exc("DoesNotExist", vec![p.display().to_string()], msg, false),
        StoreError::Io { .. } => exc("OSError", vec![msg.clone()], format!("borgd: {msg}"), false),
        // the client prints "Error: " and the text, which says what to do
        StoreError::Full(_) => exc("Error", vec![msg.clone()], msg, false),
    }
}

impl From<&CallError> for Exception {
    fn from(e: &CallError) -> Exception {
        let msg = e.to_string();
        match e {
            CallError::Repository(r) => match r {
                RepoError::AlreadyExists(l) => exc("AlreadyExists", vec![l.clone()], msg, false),
                RepoError::DoesNotExist(l) => exc("DoesNotExist", vec![l.clone()], msg, false),
                RepoError::InvalidRepository(l) => exc("InvalidRepository", vec![l.clone()], msg, false),
                RepoError::InvalidRepositoryConfig(l, why) => exc("InvalidRepositoryConfig", vec![l.clone(), why.clone()], msg, false),
                RepoError::CheckNeeded(l) => exc("CheckNeeded", vec![l.clone()], msg, true),
                RepoError::ObjectNotFound(id, repo) => exc("ObjectNotFound", vec![id.clone(), repo.clone()], msg, true),
                RepoError::Integrity(m) => exc("IntegrityError", vec![m.clone()], msg, true),
                RepoError::NoManifest => exc("NoManifestError", vec![], msg, false),
                RepoError::Refused { .. } => exc("Error", vec![msg.clone()], msg, false),
                RepoError::Lock(lock::Error::Timeout(s)) => exc("LockTimeout", vec![s.clone()], msg, false),
                // the client words it "Failed to create/acquire the lock NAME (WHY)."; WHY says what to do
                RepoError::Lock(lock::Error::Corrupt { name, why }) => {
                    exc("LockFailed", vec![name.clone(), format!("not a valid borg lock record: {why}; run borg break-lock if no borg is using the repository")], msg, true)
                }
                RepoError::Lock(lock::Error::Store(s)) | RepoError::Store(s) => store_exception(s),
            },
            CallError::PathNotAllowed(p) => exc("PathNotAllowed", vec![p.clone()], msg, false),
            CallError::InvalidRpcMethod(m) => exc("InvalidRPCMethod", vec![m.clone()], msg, false),
            CallError::BadRequest { .. } => exc("TypeError", vec![msg.clone()], msg, false),
            CallError::Unsupported(m) => exc("Error", vec![m.clone()], msg, false),
            CallError::ZeroDivision => exc("ZeroDivisionError", vec![msg.clone()], format!("ZeroDivisionError: {msg}"), true),
        }
    }
}

/// What the client shows as server system information in tracebacks.
fn sysinfo() -> String {
    format!("borgd {} (Rust), serving as borg 2.0.0b21\nPlatform: {} {}", env!("CARGO_PKG_VERSION"), std::env::consts::OS, std::env::consts::ARCH)
}

/// Encodes the exception answer map for `msgid`.
pub fn encode_exception(msgid: i64, e: &Exception, out: &mut Vec<u8>) {
    encode::map(out, 7);
    encode::str(out, "i");
    encode::int(out, msgid);
    encode::str(out, "exception_class");
    encode::str(out, e.class);
    encode::str(out, "exception_args");
    encode::array(out, e.args.len());
    for a in &e.args {
        encode::str(out, a);
    }
    encode::str(out, "exception_full");
    encode::array(out, 1);
    encode::str(out, &format!("{}: {}", e.class, e.message));
    encode::str(out, "exception_short");
    encode::array(out, 1);
    encode::str(out, &e.message);
    encode::str(out, "exception_trace");
    encode::bool(out, e.trace);
    encode::str(out, "sysinfo");
    encode::str(out, &sysinfo());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::msgpack::{parse, Value};
    use crate::store::Mode;

    #[test]
    fn reconstructed_classes_keep_python_argument_order() {
        let e = CallError::Repository(RepoError::ObjectNotFound("ab".into(), "/r".into()));
        let x = Exception::from(&e);
        assert_eq!((x.class, x.args.clone(), x.trace), ("ObjectNotFound", vec!["ab".to_string(), "/r".to_string()], true));
        let so = CallError::from(StoreError::ObjectNotFound("config/x".into()));
        assert_eq!(Exception::from(&so).class, "StoreObjectNotFound");
        let lt = CallError::from(lock::Error::Timeout("file:///r".into()));
        assert_eq!(Exception::from(&lt).class, "LockTimeout");
    }

    #[test]
    fn permission_denials_name_operation_and_mode() {
        let e = CallError::from(StoreError::PermissionDenied { mode: Mode::ReadOnly, op: "store", name: "archives/ab".into(), required: "wW" });
        let x = Exception::from(&e);
        assert_eq!(x.class, "PathPermissionDenied");
        assert!(x.args[0].contains("store") && x.args[0].contains("read-only") && x.args[0].contains("archives/ab"));
        let mut out = Vec::new();
        encode_exception(9, &x, &mut out);
        let v = parse(&out).unwrap();
        assert_eq!(v.get("i"), Some(&Value::Int(9)));
        assert_eq!(v.get("exception_trace"), Some(&Value::Bool(false)));
        assert!(matches!(v.get("sysinfo"), Some(Value::Str(_))));
    }
}
