//! What the source sends again when a session starts, and what of it the
//! target already holds.
//!
//! The rule. A session starts streaming at the target's durable origin
//! position P (see `position`): the end of the last source transaction T
//! the target committed, or an idle stretch's end. What the source does
//! from there, and what pgrepl does with it:
//!
//! - It reads WAL from the slot's `restart_lsn`, which lies before the
//!   first change of every transaction still open at P: a transaction
//!   that began before P and commits after it is sent whole, its streamed
//!   blocks again from the first (`first` set). pgrepl never commits a
//!   streamed transaction's rows before its Stream Commit (see
//!   `streamed`), so a stop at any point of it (SIGTERM, Ctrl-C,
//!   `--until-caught-up`, a lost connection, kill -9) left nothing of it
//!   on the target, and the whole of it is applied on the next run.
//! - It sends no transaction whose commit record starts before P: not as
//!   Begin/Commit (the main applier's `skip` is a second guard), and
//!   never as a Stream Commit.
//! - But it may *stream* one such transaction once more, and then abort
//!   it: T itself. Servers of some minors decide whether streaming may
//!   start by the end of the record being decoded; T's commit record ends
//!   exactly at P, and when that record carries invalidations (DDL,
//!   TRUNCATE, any catalog change) they are queued as one more change of
//!   T, which can push the decoder over `logical_decoding_work_mem` right
//!   there. T is then streamed from its first change, and only then found
//!   to commit before P and dropped with a Stream Abort. Applying that
//!   block would run T's changes a second time on a target that already
//!   holds them, and later ones: an UPDATE finds no row, a column its
//!   relation names was dropped since. The source never had a conflict.
//!
//! So every target transaction records, beside the origin position, the
//! xid of the source transaction ending there (`pgrepl.applied`, written
//! by the same statement that sets the origin up). A session starting at
//! P reads it back; a block of that xid arriving before any commit is
//! dropped unapplied, as is the rest of it, until its Stream Abort. Only
//! the first thing the source sends can be that block (T's commit record
//! is the first one ending at or after P): the first commit of the
//! session closes the window. A Stream Commit of that xid would mean the
//! source committed T twice; that is a protocol error, never a second
//! apply.
//!
//! Schema-log rows (DDL) inside a streamed transaction are replayed on its
//! own connection, inside its target transaction: they commit with its
//! rows or not at all, and a dropped block replays none of them.

use crate::lsn::Lsn;

/// The one source transaction this session may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// None can come: no transaction ends at the start position, or the
    /// session is past the point where it could.
    Closed,
    /// Transaction `xid` ends at the start position `end`: a block of it
    /// arriving now is dropped.
    Watching { xid: u32, end: Lsn },
    /// Its blocks are arriving: dropped until its Stream Abort.
    Dropping { xid: u32, end: Lsn },
}

/// What to do with a block of streamed transaction `xid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Apply,
    /// The target holds it already: read and dropped.
    Drop,
}

impl Resend {
    /// At session start: `applied` is the xid the target recorded with
    /// position `recorded`; the session starts at `start`.
    pub fn at_start(applied: Option<u32>, recorded: Option<Lsn>, start: Lsn) -> Resend {
        match (applied, recorded) {
            (Some(xid), Some(end)) if end == start => Resend::Watching { xid, end },
            _ => Resend::Closed,
        }
    }

    /// A Stream Start of `xid`.
    pub fn start_block(&mut self, xid: u32) -> Block {
        match *self {
            Resend::Watching { xid: x, end } | Resend::Dropping { xid: x, end } if x == xid => {
                if matches!(self, Resend::Watching { .. }) {
                    tracing::info!(xid, %end, "the source streams again a transaction the target applied through {end}; dropping it until the source aborts it");
                }
                *self = Resend::Dropping { xid, end };
                Block::Drop
            }
            _ => Block::Apply,
        }
    }

    /// Whether blocks of `xid` are being dropped.
    pub fn dropping(&self, xid: u32) -> bool {
        matches!(*self, Resend::Dropping { xid: x, .. } if x == xid)
    }

    /// A Stream Abort of the whole transaction `xid`: true if it was the
    /// one being dropped (which is then over).
    pub fn aborted(&mut self, xid: u32) -> bool {
        if self.dropping(xid) {
            tracing::debug!(
                xid,
                "the transaction sent again was aborted by the source, as expected"
            );
            *self = Resend::Closed;
            return true;
        }
        false
    }

    /// A commit (whole or streamed) of `xid`: the window closes. `Err`
    /// with the position the target holds it through when `xid` is the
    /// very transaction the target already applied.
    pub fn committed(&mut self, xid: Option<u32>) -> Result<(), Lsn> {
        let was = std::mem::replace(self, Resend::Closed);
        match was {
            Resend::Watching { xid: x, end } | Resend::Dropping { xid: x, end }
                if Some(x) == xid =>
            {
                Err(end)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_transaction_ending_at_the_start_is_watched() {
        let at = Lsn(0x100);
        assert_eq!(
            Resend::at_start(Some(7), Some(at), at),
            Resend::Watching { xid: 7, end: at }
        );
        assert_eq!(
            Resend::at_start(Some(7), Some(Lsn(0x80)), at),
            Resend::Closed
        );
        assert_eq!(Resend::at_start(None, Some(at), at), Resend::Closed);
        assert_eq!(Resend::at_start(None, None, at), Resend::Closed);
    }

    #[test]
    fn its_blocks_are_dropped_until_its_abort_others_applied() {
        let at = Lsn(0x100);
        let mut r = Resend::at_start(Some(7), Some(at), at);
        assert_eq!(r.start_block(9), Block::Apply);
        assert_eq!(r.start_block(7), Block::Drop);
        assert!(r.dropping(7));
        assert!(!r.dropping(9));
        assert_eq!(r.start_block(7), Block::Drop);
        assert!(!r.aborted(9));
        assert!(r.aborted(7));
        assert_eq!(r, Resend::Closed);
        assert_eq!(r.start_block(7), Block::Apply);
    }

    #[test]
    fn the_first_commit_closes_the_window_and_a_second_commit_of_it_is_refused() {
        let at = Lsn(0x100);
        let mut r = Resend::at_start(Some(7), Some(at), at);
        assert_eq!(r.committed(Some(9)), Ok(()));
        assert_eq!(r.start_block(7), Block::Apply);
        let mut r = Resend::at_start(Some(7), Some(at), at);
        r.start_block(7);
        assert_eq!(r.committed(Some(7)), Err(at));
        let mut r = Resend::at_start(Some(7), Some(at), at);
        assert_eq!(r.committed(None), Ok(()));
        assert_eq!(r, Resend::Closed);
    }
}
