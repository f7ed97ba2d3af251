//! What a streaming session is asked to do, how it ends, and how it
//! fails: shared by the session and the checks it runs before applying
//! (`guard`), so that neither needs the other's insides.

use std::time::Duration;

use super::error::ApplyError;
use super::group::GroupLimits;
use crate::conn::walsender::WalSenderError;
use crate::conn::{ConnectError, ConnectFailure, Endpoint, Side};
use crate::lsn::Lsn;
use crate::progress::ledger::Ledger;
use crate::progress::ui::ProgressMode;
use crate::sql::SyncName;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error(transparent)]
    WalSender(Box<WalSenderError>),
    #[error("target: {what}: {message}")]
    Target {
        what: &'static str,
        message: String,
        transient: bool,
    },
    #[error("source: {what}: {message}")]
    Source { what: &'static str, message: String },
    #[error("target: it holds the source's changes only through {target_at}, but slot {slot} was confirmed through {confirmed}: the transactions between were lost on the target (restored from a backup, or its last transactions lost in a crash), and the source keeps nothing before {confirmed}. Nothing was applied. Start over: `pgrepl teardown --name {name}`, empty the target, then `pgrepl sync`")]
    TargetBehind {
        slot: String,
        confirmed: Lsn,
        target_at: Lsn,
        name: String,
    },
    #[error("source: the server now answering ({server}, system {system}) is not the one the target was copied from (system {expected}): check --source")]
    OtherSystem {
        server: String,
        system: String,
        expected: String,
    },
    #[error("source: the server now primary ({server}) runs timeline {current}, which left timeline {recorded} at {ended_at}; the target already holds the source's changes through {target_at}, past that point: they were acknowledged by the old primary and never reached the new one (a failover without synchronized_standby_slots). Nothing was applied from the new timeline. The target cannot follow this primary: rebuild it (`pgrepl teardown --name {name}`, then `pgrepl sync`), or bring the old primary back")]
    TargetAhead {
        server: String,
        current: u32,
        recorded: u32,
        ended_at: Lsn,
        target_at: Lsn,
        name: String,
    },
    #[error("source: the server now answering ({server}) runs timeline {current}, which does not descend from timeline {recorded} the sync streamed from: it is another branch of the source's history. Nothing was applied; check --source")]
    OtherTimeline {
        server: String,
        current: u32,
        recorded: u32,
    },
    #[error("source: slot {slot} does not exist on the server now answering ({server}): it was dropped, or the source failed over to a server without it (failover slots need PostgreSQL 17+ and a standby with sync_replication_slots). The changes since the target's position cannot be streamed: start over (`pgrepl teardown --name {name}`, then `pgrepl sync`)")]
    SlotGone {
        slot: String,
        server: String,
        name: String,
    },
    #[error("target: sync {name} was cut over at {at}: the target took over from the source there, and nothing more may be applied to it. Nothing was applied. To replicate again, `pgrepl teardown --name {name}` and start a new sync")]
    CutOver { name: String, at: Lsn },
    #[error("gave up after retrying for {after}: {last}")]
    GaveUp {
        after: String,
        last: Box<SessionError>,
    },
}

impl From<ConnectError> for SessionError {
    fn from(e: ConnectError) -> Self {
        SessionError::Connect(Box::new(e))
    }
}

impl From<WalSenderError> for SessionError {
    fn from(e: WalSenderError) -> Self {
        SessionError::WalSender(Box::new(e))
    }
}

impl SessionError {
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Apply(e) => e.is_transient(),
            SessionError::Connect(c) => {
                c.failure.is_transient() || matches!(c.failure, ConnectFailure::Other(_))
            }
            SessionError::WalSender(w) => w.is_transient(),
            SessionError::Target { transient, .. } => *transient,
            // A source that cannot answer now may later.
            SessionError::Source { .. } => true,
            SessionError::TargetBehind { .. }
            | SessionError::GaveUp { .. }
            | SessionError::OtherSystem { .. }
            | SessionError::TargetAhead { .. }
            | SessionError::SlotGone { .. }
            | SessionError::OtherTimeline { .. }
            | SessionError::CutOver { .. } => false,
        }
    }

    /// Which side or part failed, for the retries metric and the logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::Connect(c) => match c.side {
                Side::Source => "source_connection",
                Side::Target => "target_connection",
            },
            SessionError::WalSender(_)
            | SessionError::Source { .. }
            | SessionError::OtherSystem { .. }
            | SessionError::TargetAhead { .. }
            | SessionError::SlotGone { .. }
            | SessionError::OtherTimeline { .. } => "source",
            SessionError::Apply(ApplyError::Stream(_) | ApplyError::Decode(_)) => "source",
            SessionError::Apply(_)
            | SessionError::Target { .. }
            | SessionError::TargetBehind { .. }
            | SessionError::CutOver { .. } => "target",
            SessionError::GaveUp { last, .. } => last.kind(),
        }
    }
}

/// What to stream and how.
pub struct StreamRequest<'a> {
    pub name: &'a SyncName,
    pub source: &'a Endpoint,
    pub target: &'a Endpoint,
    /// Stop once everything the source had written at the start is applied.
    pub until_caught_up: bool,
    pub retry_for: Duration,
    pub progress: ProgressMode,
    pub limits: GroupLimits,
    /// DDL replay options; `None` when DDL is not captured.
    pub ddl: Option<crate::ddl::replay::ReplayOptions>,
    /// A reverse sync: changes pgrepl itself applied on this source are
    /// not sent back (PG 16+: `origin 'none'`; older: left out here).
    pub skip_pgrepl_origins: bool,
    /// Where the target keeps the applied position.
    pub ledger: Ledger,
}

#[derive(Debug)]
pub enum Outcome {
    /// Stopped on request; `flushed` is durable on the target.
    Stopped { flushed: Lsn },
    /// Applied through the source position noted at the start.
    CaughtUp { target: Lsn, flushed: Lsn },
    /// Ended by a control request (cutover) after every source transaction
    /// committing before `at`.
    Finished { at: Lsn, flushed: Lsn },
}
