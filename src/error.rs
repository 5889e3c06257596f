//! Every way an RPC call can fail. Each variant maps to exactly one wire exception class in
//! `rpc::wire`; nothing else decides what the client sees.

use crate::lock;
use crate::repository;
use crate::rpc::ArgError;
use crate::store;

/// A failed call, answered to the client as an exception.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The repository (or its store or lock) refused or failed.
    #[error(transparent)]
    Repository(#[from] repository::Error),
    /// `--restrict-to-path`/`--restrict-to-repository` do not admit the path.
    #[error("Repository path not allowed: {0}")]
    PathNotAllowed(String),
    /// Not a method of the server, or not callable now (e.g. before `open`).
    #[error("RPC method {0} is not valid")]
    InvalidRpcMethod(String),
    /// An argument of the wrong type, or a request without method/arguments.
    #[error("borgd: invalid call of {method}: {why}")]
    BadRequest {
        /// The method called.
        method: String,
        /// What was wrong with the call.
        why: String,
    },
    /// Something this server deliberately does not offer (yet), said plainly.
    #[error("{0}")]
    Unsupported(String),
    /// `inject_exception("divide")`: the client's tests expect a generic Python exception.
    #[error("integer division or modulo by zero")]
    ZeroDivision,
}

impl CallError {
    /// A wrongly typed argument of `method`.
    pub fn bad_arg(method: &str, e: ArgError) -> CallError {
        CallError::BadRequest { method: method.to_string(), why: e.to_string() }
    }
}

impl From<store::Error> for CallError {
    fn from(e: store::Error) -> CallError {
        CallError::Repository(e.into())
    }
}

impl From<lock::Error> for CallError {
    fn from(e: lock::Error) -> CallError {
        CallError::Repository(e.into())
    }
}
