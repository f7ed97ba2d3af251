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
//!
//! [`Streamed`] keeps what the applier of such a transaction knows of it:
//! its xid, whether it is batched, the subtransactions with a savepoint;
//! it says which savepoint statements to send, the applier sends them.

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

impl Streamed {
    pub(super) fn new(xid: u32, batching: bool) -> Self {
        Streamed {
            xid,
            batching,
            subxacts: Vec::new(),
        }
    }

    /// A change of (sub)transaction `xid` needs a savepoint first: a
    /// subtransaction seen for the first time.
    pub(super) fn new_subxact(&self, xid: u32) -> bool {
        xid != self.xid && !self.subxacts.contains(&xid)
    }

    /// The statement setting subtransaction `xid`'s savepoint.
    pub(super) fn savepoint_sql(xid: u32) -> String {
        format!("SAVEPOINT {}", savepoint(xid))
    }

    /// Subtransaction `xid`'s savepoint is set.
    pub(super) fn entered(&mut self, xid: u32) {
        self.subxacts.push(xid);
    }

    /// Where subtransaction `subxid` is among those with a savepoint (none:
    /// it changed nothing applied).
    pub(super) fn subxact(&self, subxid: u32) -> Option<usize> {
        self.subxacts.iter().position(|x| *x == subxid)
    }

    /// The statement undoing subtransaction `subxid`.
    pub(super) fn rollback_sql(subxid: u32) -> String {
        format!("ROLLBACK TO SAVEPOINT {}", savepoint(subxid))
    }

    /// Rolled back to the savepoint of the subtransaction at `at`: it and
    /// every one begun after it are gone.
    pub(super) fn rolled_back(&mut self, at: usize) {
        self.subxacts.truncate(at);
    }
}
