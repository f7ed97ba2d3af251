//! What a statement in flight was, and how its result is judged: an
//! UPDATE or DELETE that touched no row is a conflict, a batch whose row
//! count is off is replayed without batching, a server error names the
//! table, the key and the source transaction.
//!
//! The rule: a [`Sent`] keeps what a statement was and where it belongs
//! (the source transaction, its place in the group), nothing else; a
//! [`Judge`] is handed what judging a result needs of the applier, which
//! owns the pipeline and calls it for every result.

use super::error::{ApplyError, TxnRef};
use super::pipeline::Outcome;
use super::relations::Relations;
use crate::ddl::replay::Replayer;
use crate::stream::pgoutput::Tuple;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// What a statement in flight was, for its result check.
pub(super) enum Meta {
    Control(&'static str),
    /// A row change; `row` holds its key (for the message on conflict).
    Row {
        op: Op,
        relation: u32,
        row: Tuple,
    },
    Statement(String),
    Ddl {
        id: i64,
        statement: String,
    },
    /// Part of writing out a batch; `expected` rows, when known.
    Batch {
        relation: u32,
        what: &'static str,
        expected: Option<u64>,
    },
}

impl Meta {
    pub(super) fn batch(relation: u32, what: &'static str, expected: Option<u64>) -> Meta {
        Meta::Batch {
            relation,
            what,
            expected,
        }
    }
}

/// A statement in flight: what it was, and which source transaction.
pub(super) struct Sent {
    meta: Meta,
    txn: TxnRef,
    /// Whole source transactions before it in the same group.
    txn_in_group: usize,
}

impl Sent {
    pub(super) fn at(meta: Meta, (txn, txn_in_group): (TxnRef, usize)) -> Sent {
        Sent {
            meta,
            txn,
            txn_in_group,
        }
    }
}

/// What judging a result needs besides the result.
pub(super) struct Judge<'a> {
    /// Names the table and key of a conflict.
    pub(super) relations: &'a Relations,
    /// Where to replay up to without batching when a batch fails.
    pub(super) batch_ref: TxnRef,
    /// Another apply connection holds an open transaction: a lock wait or
    /// deadlock may be between the two (see `ApplyError::StreamLockWait`).
    pub(super) guard_lock_waits: bool,
    /// DDL replay, if on.
    pub(super) ddl: Option<&'a Replayer>,
}

impl Judge<'_> {
    pub(super) fn check(&self, outcome: Outcome<Sent>) -> Result<(), ApplyError> {
        let (sent, failure) = match outcome {
            Outcome::Done { meta: sent, rows } => {
                let verb = match &sent.meta {
                    Meta::Row { op, .. } if rows != 1 && *op != Op::Insert => op.verb(),
                    Meta::Batch {
                        relation,
                        what,
                        expected: Some(n),
                    } if rows != *n => {
                        let table = self.relations.name_key(*relation, &Vec::new()).0;
                        return Err(ApplyError::BatchFailed {
                            through: self.batch_ref,
                            reason: format!("{what} {table}: {rows} rows instead of {n}"),
                        });
                    }
                    _ => return Ok(()),
                };
                (sent, format!("{verb} found no matching row on the target"))
            }
            Outcome::Failed { meta: sent, error } => {
                if self.guard_lock_waits && matches!(error.code.as_str(), "55P03" | "40P01") {
                    return Err(ApplyError::StreamLockWait {
                        txn: sent.txn,
                        message: error.to_string(),
                    });
                }
                let took_earlier = sent.txn_in_group > 0;
                return Err(match sent.meta {
                    Meta::Row { op, relation, row }
                        if !super::error::transient_code(&error.code) =>
                    {
                        let (table, key) = self.relations.name_key(relation, &row);
                        ApplyError::Conflict {
                            table,
                            key,
                            txn: sent.txn,
                            message: format!("{} failed: {error}", op.verb()),
                            took_earlier,
                        }
                    }
                    Meta::Row { op, .. } => ApplyError::target(op.verb(), sent.txn, &error),
                    Meta::Control(what) => ApplyError::target(what, sent.txn, &error),
                    Meta::Statement(sql) => ApplyError::target(sql, sent.txn, &error),
                    // A role created on the source since the copy: the
                    // carry task creates it, the command waits for it.
                    Meta::Ddl { id, statement }
                        if error.code == "42704"
                            && error.message.starts_with("role \"")
                            && self.ddl.is_some_and(|d| d.roles_follow()) =>
                    {
                        ApplyError::Target {
                            what: format!("DDL #{id} ({statement}) waits for its role to be created on the target"),
                            txn: sent.txn,
                            message: error.to_string(),
                            transient: true,
                        }
                    }
                    Meta::Ddl { id, statement } if !super::error::transient_code(&error.code) => {
                        ApplyError::DdlRejected {
                            id,
                            statement,
                            message: error.to_string(),
                            txn: sent.txn,
                            took_earlier,
                        }
                    }
                    Meta::Ddl { statement, .. } => ApplyError::target(statement, sent.txn, &error),
                    Meta::Batch { what, .. } if super::error::transient_code(&error.code) => {
                        ApplyError::target(what, sent.txn, &error)
                    }
                    Meta::Batch { relation, what, .. } => {
                        let table = self.relations.name_key(relation, &Vec::new()).0;
                        ApplyError::BatchFailed {
                            through: self.batch_ref,
                            reason: format!("{what} {table}: {error}"),
                        }
                    }
                });
            }
        };
        let took_earlier = sent.txn_in_group > 0;
        match sent.meta {
            Meta::Row { relation, row, .. } => {
                let (table, key) = self.relations.name_key(relation, &row);
                Err(ApplyError::Conflict {
                    table,
                    key,
                    txn: sent.txn,
                    message: failure,
                    took_earlier,
                })
            }
            _ => Ok(()),
        }
    }
}
