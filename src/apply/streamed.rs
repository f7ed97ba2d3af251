//! A large source transaction streamed while still in progress (pgoutput
//! v2, sources 14 and later): its changes arrive in blocks, interleaved
//! with whole transactions that commit before it, long before its own
//! commit is known.
//!
//! The rule: such a transaction is applied as it arrives, on a target
//! connection of its own, inside one target transaction left open until
//! its Stream Commit; nothing of it is kept in memory beyond the batch
//! being written, and nothing of it is visible or acknowledged before that
//! commit. Subtransactions get a savepoint at their first change; a
//! subtransaction's abort rolls back to it (and so also drops any
//! subtransaction begun after it, which it contains), the whole
//! transaction's abort rolls everything back. At the Stream Commit, the
//! main connection first commits what it holds (those transactions
//! committed earlier on the source), hands the replication origin over
//! (an origin ledger), this connection commits recording the transaction's
//! end LSN, and the origin goes back: position and data commit together
//! here too, exactly once.

use std::sync::Arc;

use super::applier::{Applier, GroupLimits, Shared, SourceTxn};
use super::error::ApplyError;
use super::sent::Meta;
use crate::conn::raw::RawSession;
use crate::ddl::replay::ReplayOptions;
use crate::lsn::Lsn;
use crate::progress::ledger::Ledger;
use crate::sql::{OriginName, SyncName};

/// What an applier of one streamed transaction knows about it.
pub struct Streamed {
    pub xid: u32,
    /// Net-effect batching allowed (off after a batch of it failed).
    pub batching: bool,
    /// Subtransactions seen, in order, each with a savepoint.
    subxacts: Vec<u32>,
}

fn savepoint(xid: u32) -> String {
    format!("\"pgrepl_sub_{xid}\"")
}

impl Applier {
    /// An applier for streamed transaction `xid` on its own connection.
    pub fn for_streamed(
        session: RawSession,
        shared: Arc<Shared>,
        xid: u32,
        batching: bool,
        ddl: Option<ReplayOptions>,
        sync_name: SyncName,
        ledger: &Ledger,
    ) -> Applier {
        let mut a = Applier::new(
            session,
            shared,
            Lsn::ZERO,
            GroupLimits::default(),
            ddl,
            sync_name,
            ledger,
        );
        a.streamed = Some(Streamed {
            xid,
            batching,
            subxacts: Vec::new(),
        });
        a.txn = Some(SourceTxn {
            xid,
            final_lsn: Lsn::ZERO,
            changes: 0,
            skip: false,
            filtered: false,
        });
        a.guard_lock_waits = true;
        a
    }

    /// Before a change of (sub)transaction `xid`: a savepoint when it is
    /// a subtransaction seen for the first time.
    pub async fn enter_subxact(&mut self, xid: u32) -> Result<(), ApplyError> {
        let Some(s) = &self.streamed else {
            return Ok(());
        };
        if xid == s.xid || s.subxacts.contains(&xid) {
            return Ok(());
        }
        // What is batched so far belongs before the savepoint.
        self.flush_batch().await?;
        self.open_group().await?;
        self.send_sql(
            &format!("SAVEPOINT {}", savepoint(xid)),
            Meta::Control("SAVEPOINT"),
        )
        .await?;
        if let Some(s) = &mut self.streamed {
            s.subxacts.push(xid);
        }
        Ok(())
    }

    /// A subtransaction aborted on the source: everything since its
    /// savepoint goes (nothing, if it changed nothing we apply).
    pub async fn abort_subxact(&mut self, subxid: u32) -> Result<(), ApplyError> {
        let Some(at) = self
            .streamed
            .as_ref()
            .and_then(|s| s.subxacts.iter().position(|x| *x == subxid))
        else {
            return Ok(());
        };
        // The batch holds only changes made since the newest savepoint,
        // which is this one or one inside it: all of them are undone.
        self.batch.take();
        self.send_sql(
            &format!("ROLLBACK TO SAVEPOINT {}", savepoint(subxid)),
            Meta::Control("ROLLBACK TO SAVEPOINT"),
        )
        .await?;
        if let Some(s) = &mut self.streamed {
            s.subxacts.truncate(at);
        }
        // Stage tables created since then are gone with it.
        for rel in self.relations.values_mut() {
            rel.forget_stages();
        }
        Ok(())
    }

    /// Commits the streamed transaction with its end LSN as the recorded
    /// position; with an origin (`baton`), the main connection must have
    /// given it up.
    /// Returns whether there was anything to commit.
    pub async fn commit_streamed(
        &mut self,
        end_lsn: Lsn,
        commit_ts: i64,
        baton: Option<&OriginName>,
    ) -> Result<bool, ApplyError> {
        let Some(g) = &mut self.group else {
            return Ok(false);
        };
        g.txns = 1;
        g.last_end = end_lsn;
        g.last_commit_ts = commit_ts;
        g.last_xid = self.streamed.as_ref().map(|s| s.xid);
        self.commit_group_holding(baton).await?;
        Ok(true)
    }
}
