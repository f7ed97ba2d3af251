//! The target transaction being filled and the source transaction being
//! received.
//!
//! The rule: these keep counts and positions only. A [`Group`] is whole
//! source transactions sharing one target transaction: how many, how many
//! rows, since when, and the last one's end (what the ledger records with
//! the commit); a [`SourceTxn`] is the one being received. The applier
//! decides when to open and commit; [`GroupLimits`] says when a group is
//! big or old enough.

use std::time::{Duration, Instant};

use super::params::Param;
use crate::lsn::Lsn;

/// Limits on grouping source transactions into one target transaction.
#[derive(Clone, Debug)]
pub struct GroupLimits {
    pub txns: usize,
    pub rows: usize,
    pub age: Duration,
    /// Statements sent but not yet confirmed.
    pub inflight: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            txns: 5000,
            rows: 100_000,
            age: Duration::from_millis(200),
            inflight: 20_000,
        }
    }
}

pub(super) struct Group {
    started: Instant,
    pub(super) txns: usize,
    pub(super) rows: usize,
    pub(super) last_end: Lsn,
    pub(super) last_commit_ts: i64,
    /// The source transaction ending at `last_end` (none for an idle
    /// stretch): recorded with it (see `resent`).
    pub(super) last_xid: Option<u32>,
}

impl Group {
    pub(super) fn new() -> Self {
        Group {
            started: Instant::now(),
            txns: 0,
            rows: 0,
            last_end: Lsn::ZERO,
            last_commit_ts: 0,
            last_xid: None,
        }
    }

    /// Old or large enough to commit before another source transaction.
    pub(super) fn due(&self, limits: &GroupLimits) -> bool {
        self.started.elapsed() >= limits.age || self.rows >= limits.rows
    }

    /// At a limit: commit at the end of this source transaction.
    pub(super) fn full(&self, limits: &GroupLimits) -> bool {
        self.txns >= limits.txns || self.rows >= limits.rows || self.started.elapsed() >= limits.age
    }

    /// What the ledger records with the commit: end LSN, commit time and
    /// the transaction's xid.
    pub(super) fn ledger_params(&self) -> [Param; 3] {
        [
            Param::Text(self.last_end.to_string().into()),
            Param::Text(self.last_commit_ts.to_string().into()),
            match self.last_xid {
                Some(xid) => Param::Text(xid.to_string().into()),
                None => Param::Null,
            },
        ]
    }
}

pub(super) struct SourceTxn {
    pub(super) xid: u32,
    pub(super) final_lsn: Lsn,
    pub(super) changes: usize,
    /// Already applied before this session started.
    pub(super) skip: bool,
    /// Applied on the source by pgrepl itself (a reverse sync does not send
    /// back what the forward one wrote): its changes are left out.
    pub(super) filtered: bool,
}

impl SourceTxn {
    pub(super) fn new(xid: u32, final_lsn: Lsn, skip: bool) -> Self {
        SourceTxn {
            xid,
            final_lsn,
            changes: 0,
            skip,
            filtered: false,
        }
    }
}
