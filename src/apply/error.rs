//! Why applying stopped: transient (reconnect and resume from the origin)
//! or fatal (a person must look), each naming what it was applying.

use super::relation::RelationError;
use crate::conn::raw::RawError;
use crate::conn::ServerError;
use crate::ddl::replay::ReplayError;
use crate::lsn::Lsn;
use crate::sql::TableName;
use crate::stream::pgoutput::DecodeError;
use crate::stream::receiver::StreamError;

/// Which source transaction: by where it commits, or, for one streamed
/// while still in progress, by its xid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnRef {
    Commit(Lsn),
    Streamed(u32),
}

impl std::fmt::Display for TxnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnRef::Commit(lsn) => write!(f, "the source transaction that commits at LSN {lsn}"),
            TxnRef::Streamed(xid) => write!(
                f,
                "source transaction {xid} (large, streamed while in progress)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("source: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Relation(#[from] RelationError),
    #[error("conflict on {table} applying {txn}: {message} (row {key}). Nothing from this transaction on was applied or acknowledged: fix the target row, then rerun pgrepl sync to retry it")]
    Conflict {
        table: TableName,
        key: String,
        txn: TxnRef,
        message: String,
        /// Whole source transactions before it shared its target
        /// transaction and were rolled back with it.
        took_earlier: bool,
    },
    #[error("target rejected DDL #{id} ({statement}): {message}. Nothing from {txn} on was applied or acknowledged: fix the target, or skip exactly this command with `pgrepl sync --skip-ddl {id}`")]
    DdlRejected {
        id: i64,
        statement: String,
        message: String,
        txn: TxnRef,
        took_earlier: bool,
    },
    #[error("{0}")]
    Ddl(#[from] ReplayError),
    #[error("target: {what} failed applying {txn}: {message}")]
    Target {
        what: String,
        txn: TxnRef,
        message: String,
        transient: bool,
    },
    #[error(transparent)]
    Session(Box<RawError>),
    /// A batched write went wrong: replay the group unbatched up to
    /// `through`, which names the exact transaction if it is real.
    #[error("a batched write failed ({reason}); replaying without batching up to {through}")]
    BatchFailed { through: TxnRef, reason: String },
    /// Two apply connections waited on each other's locks (possible only
    /// when the target has constraints the source lacks).
    #[error("the apply connection for {txn} and the main one waited on each other on the target ({message}); resuming without streaming large transactions")]
    StreamLockWait { txn: TxnRef, message: String },
    #[error("source: the stream broke the protocol: {0}")]
    Protocol(String),
}

impl From<RawError> for ApplyError {
    fn from(e: RawError) -> Self {
        ApplyError::Session(Box::new(e))
    }
}

/// Server errors that a new session can cure: the connection or the
/// server going away, serialization failures, deadlocks, no free slot.
pub fn transient_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || matches!(code, "40001" | "40P01" | "53300")
}

impl ApplyError {
    /// Worth reconnecting and resuming from the origin.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Stream(e) => e.is_transient(),
            ApplyError::Target { transient, .. } => *transient,
            ApplyError::Session(e) => e.is_transient(),
            ApplyError::Relation(RelationError::Catalog { source, .. }) => source.is_transient(),
            ApplyError::StreamLockWait { .. } => true,
            _ => false,
        }
    }

    /// The source transaction to replay on its own (or without batching)
    /// when the error rolled back whole transactions grouped before it.
    pub fn grouped_stop(&self) -> Option<TxnRef> {
        match self {
            ApplyError::Conflict {
                txn,
                took_earlier: true,
                ..
            }
            | ApplyError::DdlRejected {
                txn,
                took_earlier: true,
                ..
            } => Some(*txn),
            ApplyError::BatchFailed { through, .. } => Some(*through),
            _ => None,
        }
    }

    pub fn target(what: impl Into<String>, txn: TxnRef, error: &ServerError) -> Self {
        ApplyError::Target {
            what: what.into(),
            txn,
            message: error.to_string(),
            transient: transient_code(&error.code),
        }
    }
}
