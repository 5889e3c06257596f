//! borgd: a BorgBackup 2 repository server, a drop-in replacement for `borg serve`.
//!
//! Layers, bottom up: [`store`] (borgstore's key/value model on a posix file system),
//! [`lock`] (storelocking-compatible locks in the store), [`repository`] (borg 2 repository
//! semantics), [`rpc`] (msgpack framing, messages, exception marshalling), [`server`] (sessions
//! and transports) and [`cli`] (argv, the only place that knows about it).

#![warn(missing_docs)]

pub mod cli;
pub mod error;
pub mod fanout;
pub mod fasthash;
pub mod host;
pub mod lock;
pub mod log;
pub mod output;
pub mod repository;
pub mod rpc;
pub mod server;
pub mod signals;
pub mod spool;
pub mod store;
pub mod testdata;
pub mod testsshd;
