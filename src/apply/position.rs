//! Where the target stands in the source's stream, and what may be told
//! to the source.
//!
//! The rule: the replication origin records every position the target
//! reaches, each in a commit of its own, and the source is told as flushed
//! only what `pg_replication_origin_progress(origin, true)` returns (see
//! `session`). Stretches of the source's WAL with nothing to apply (other
//! databases, unpublished tables, empty transactions) are no exception:
//! when the applier is idle past its last commit, it commits a marker that
//! moves the origin there. So the target's origin is never behind the
//! slot's confirmed position, and a target that is (restored from a backup,
//! or lost its last transactions in a crash) is told apart from one that
//! merely skipped nothing — see `session`'s start-up check.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::applier::Applier;
use super::error::ApplyError;
use super::sent::Meta;
use crate::lsn::Lsn;
use crate::sql::quote_literal;

/// How often an idle stretch is recorded at most.
const MARKER_EVERY: Duration = Duration::from_secs(1);

impl Applier {
    /// A keepalive: the source has nothing more for now, up to `end`.
    pub async fn idle(&mut self, end: Lsn) -> Result<(), ApplyError> {
        if self.txn.is_some() {
            return Ok(());
        }
        self.commit_group().await?;
        self.shared.idle_through.fetch_max(end.0, Ordering::SeqCst);
        self.tick().await
    }

    /// Records an idle stretch if one is waiting and the last record is
    /// old enough (called on keepalives, empty transactions and a timer).
    pub async fn tick(&mut self) -> Result<(), ApplyError> {
        if self.txn.is_some() || self.last_marker.elapsed() < MARKER_EVERY {
            return Ok(());
        }
        self.mark_idle().await
    }

    /// Ends cleanly: commits the open group when it holds whole source
    /// transactions only (and records how far the source was idle),
    /// otherwise rolls it back.
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        if self.txn.is_none() {
            self.commit_group().await?;
            return self.mark_idle().await;
        }
        self.abort().await;
        Ok(())
    }

    /// Commits a marker moving the origin to where the source was idle
    /// through, if that is past the last commit.
    async fn mark_idle(&mut self) -> Result<(), ApplyError> {
        let idle = self.shared.idle_through();
        let written = Lsn(self.shared.written_end.load(Ordering::SeqCst));
        if idle <= written || self.group.is_some() || self.streamed.is_some() {
            return Ok(());
        }
        self.last_marker = Instant::now();
        self.open_group().await?;
        let sql = format!(
            "UPDATE pgrepl.sync SET updated_at = now() WHERE name = {}",
            quote_literal(self.sync_name.as_str())
        );
        self.send_sql(&sql, Meta::Control("recording an idle position"))
            .await?;
        if let Some(g) = &mut self.group {
            g.last_end = idle;
            g.last_commit_ts = self.shared.last_commit_ts.load(Ordering::Relaxed) as i64;
        }
        tracing::trace!(%idle, "idle position recorded");
        self.commit_group().await
    }
}
