//! What a cutover fails with, and whether anything was changed by then
//! (`NothingChanged`, `AfterFence`).

use std::time::Duration;

use crate::conn::error::describe;
use crate::conn::{ConnectError, Side};
use crate::control::ControlError;
use crate::lsn::Lsn;
use crate::verify::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{side}: {what}: {message}")]
    Query {
        side: Side,
        what: &'static str,
        message: String,
    },
    #[error("the sync's lag stayed above the limit for {waited:?} ({lag}): wait for it to catch up, or raise --max-lag / --max-lag-time")]
    Lag { lag: String, waited: Duration },
    #[error("{sessions} session(s) kept writing to synced tables for {waited:?}: stop them, or pass --terminate to end them")]
    Busy { sessions: usize, waited: Duration },
    #[error("{count} session(s) of the source database opened before the fence could still move a sequence past the value the target gets, or write a large object: {named}. Stop them (the application's connections), or pass --terminate to end them")]
    Sessions { count: usize, named: String },
    #[error("the fence needs schema pgrepl_fence on the source, which {user:?} may not create: have a superuser run `pgrepl install-capture --source CONNINFO --for {user}` once (it makes the fence ahead, inert until a cutover), or GRANT CREATE ON DATABASE to {user:?}, then cut over again")]
    FenceNotMade { user: String },
    #[error("verify found differences under the fence:\n{0}")]
    Differs(String),
    #[error("interrupted")]
    Interrupted,
    /// Refused before anything was touched.
    #[error("{0}")]
    NothingChanged(String),
    /// Failed once the fence was lasting: it stands, and the sync may
    /// have ended at it.
    #[error("{0}. The fence stands on the source: `pgrepl status` says whether the sync ended at it; `pgrepl cutover` again finishes the cutover, `pgrepl cutover --abandon` lifts the fence if the sync did not end")]
    AfterFence(Box<CutoverError>),
    #[error("target: sync {name} was already cut over at {at}: {}", if *lifted_old_fence { "its target (the old source) was still fenced from before, and takes writes again now; nothing else to do" } else { "nothing to do" })]
    AlreadyCutOver {
        name: String,
        at: Lsn,
        /// A cut back had ended the sync but not unfenced its target
        /// (the old source); this run did.
        lifted_old_fence: bool,
    },
    #[error("{0}")]
    Other(String),
}

impl From<ConnectError> for CutoverError {
    fn from(e: ConnectError) -> Self {
        CutoverError::Connect(Box::new(e))
    }
}

impl CutoverError {
    pub fn source(what: &'static str, e: &tokio_postgres::Error) -> Self {
        CutoverError::Query {
            side: Side::Source,
            what,
            message: describe(e),
        }
    }

    pub fn target(what: &'static str, e: &tokio_postgres::Error) -> Self {
        CutoverError::Query {
            side: Side::Target,
            what,
            message: describe(e),
        }
    }
}
