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

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("source: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Relation(#[from] RelationError),
    #[error("conflict on {table} applying the source transaction that commits at LSN {lsn}: {message} (row {key}). Nothing from this transaction on was applied or acknowledged: fix the target row, then rerun pgrepl sync to retry it")]
    Conflict {
        table: TableName,
        key: String,
        lsn: Lsn,
        message: String,
        /// Whole source transactions before it shared its target
        /// transaction and were rolled back with it.
        took_earlier: bool,
    },
    #[error("target rejected DDL #{id} ({statement}): {message}. Nothing from its source transaction (LSN {lsn}) on was applied or acknowledged: fix the target, or skip exactly this command with `pgrepl sync --skip-ddl {id}`")]
    DdlRejected {
        id: i64,
        statement: String,
        message: String,
        lsn: Lsn,
        took_earlier: bool,
    },
    #[error("{0}")]
    Ddl(#[from] ReplayError),
    #[error("target: {what} failed at source LSN {lsn}: {message}")]
    Target {
        what: String,
        lsn: Lsn,
        message: String,
        transient: bool,
    },
    #[error(transparent)]
    Session(Box<RawError>),
    /// A batched write went wrong: replay the group unbatched up to
    /// `through`, which names the exact transaction if it is real.
    #[error("a batched write failed ({reason}); replaying one transaction at a time up to LSN {through}")]
    BatchFailed { through: Lsn, reason: String },
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
            _ => false,
        }
    }

    /// The source transaction to replay on its own when the error rolled
    /// back whole transactions grouped before it.
    pub fn grouped_stop(&self) -> Option<Lsn> {
        match self {
            ApplyError::Conflict {
                lsn,
                took_earlier: true,
                ..
            }
            | ApplyError::DdlRejected {
                lsn,
                took_earlier: true,
                ..
            } => Some(*lsn),
            ApplyError::BatchFailed { through, .. } => Some(*through),
            _ => None,
        }
    }

    pub fn target(what: impl Into<String>, lsn: Lsn, error: &ServerError) -> Self {
        ApplyError::Target {
            what: what.into(),
            lsn,
            message: error.to_string(),
            transient: transient_code(&error.code),
        }
    }
}
