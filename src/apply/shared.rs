//! What the appliers of one session publish to the rest of it.
//!
//! The rule: this keeps positions and counters only, written by the
//! appliers (the main one and those of streamed transactions) and read by
//! the flush watcher and the status display; never a position the target
//! has not committed (`written_end`), nor one past a source transaction
//! still half applied (`idle_through`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::group::Group;
use crate::lsn::Lsn;

/// Positions and counters the applier publishes for the flush watcher and
/// the status display.
#[derive(Debug, Default)]
pub struct Shared {
    /// End LSN recorded by the last committed target transaction.
    pub written_end: AtomicU64,
    /// Every source transaction ending at or before this is applied (or
    /// had nothing to apply) and nothing after it is half done.
    pub idle_through: AtomicU64,
    pub txns: AtomicU64,
    pub rows: AtomicU64,
    /// Source commit time of the last applied transaction (µs since 2000).
    pub last_commit_ts: AtomicU64,
    /// Rows per apply path per table (see `paths`), for the whole run.
    pub paths: Arc<super::paths::Totals>,
    /// Bumped whenever an applier of the session changes the target's
    /// schema (a DDL replayed, a table created, either committed, or a
    /// savepoint rolled back): what any of them read of the catalog before
    /// is stale (see `catalog`).
    schema_epoch: AtomicU64,
}

impl Shared {
    pub fn new(start: Lsn) -> Arc<Self> {
        Self::counting_into(start, Arc::default())
    }

    /// Shared positions of a new session, its path counts added to `paths`.
    pub fn counting_into(start: Lsn, paths: Arc<super::paths::Totals>) -> Arc<Self> {
        let s = Shared {
            paths,
            ..Shared::default()
        };
        s.written_end.store(start.0, Ordering::SeqCst);
        s.idle_through.store(start.0, Ordering::SeqCst);
        Arc::new(s)
    }

    pub fn idle_through(&self) -> Lsn {
        Lsn(self.idle_through.load(Ordering::SeqCst))
    }

    pub(super) fn schema_epoch(&self) -> u64 {
        self.schema_epoch.load(Ordering::SeqCst)
    }

    pub(super) fn schema_changed(&self) {
        self.schema_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Group `g` committed on the target.
    pub(super) fn committed(&self, g: &Group) {
        self.written_end.fetch_max(g.last_end.0, Ordering::SeqCst);
        self.idle_through.fetch_max(g.last_end.0, Ordering::SeqCst);
        self.txns.fetch_add(g.txns as u64, Ordering::Relaxed);
        if g.txns > 1 {
            self.paths
                .grouped_txns
                .fetch_add(g.txns as u64, Ordering::Relaxed);
        }
        self.rows.fetch_add(g.rows as u64, Ordering::Relaxed);
        let watch = crate::progress::telemetry::telemetry();
        watch.applied_transactions.inc_by(g.txns as u64);
        watch.applied_rows.inc_by(g.rows as u64);
        watch.apply_group_transactions.observe(g.txns as f64);
        self.last_commit_ts
            .store(g.last_commit_ts.max(0) as u64, Ordering::Relaxed);
    }
}
