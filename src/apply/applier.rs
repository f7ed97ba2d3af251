//! Applies decoded source transactions to the target, exactly once.
//!
//! The rule: a target transaction holds whole source transactions only,
//! and records in the sync's ledger (see `progress::ledger`) the end LSN of
//! the last one, so the data and the position commit together or not at
//! all.
//! Nothing is acknowledged to the source that the target has not made
//! durable (that is the flush watcher's job, see `session`).
//!
//! Statements go through the [`Pipeline`]: sent back to back, their
//! results checked in order, every one of them before COMMIT is sent (an
//! UPDATE that found no row is no error to the server, only to us). Small
//! source transactions that arrive back to back share one target
//! transaction (never splitting one). Any error rolls the target
//! transaction back, so a conflict leaves the target at the last committed
//! group.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::batch::Batch;
use super::error::{ApplyError, TxnRef};
pub use super::group::GroupLimits;
use super::group::{Group, SourceTxn};
use super::late::Late;
use super::params::Param;
use super::pipeline::{Outcome, Pipeline};
use super::relations::{Internal, Relations};
use super::sent::{Judge, Meta, Op, Sent};
pub use super::shared::Shared;
use super::streamed::Streamed;
use crate::conn::raw::RawSession;
use crate::ddl::replay::{ReplayOptions, Replayer};
use crate::lsn::Lsn;
use crate::progress::ledger::{origin_session_sql, Ledger};
use crate::sql::{ObjectName, OriginName, SyncName, TableName};
use crate::stream::pgoutput::Message;

/// Names of the statements prepared once per session.
struct Fixed {
    begin: String,
    commit: String,
    xact_setup: String,
}

pub struct Applier {
    pub(super) pipe: Pipeline<Sent>,
    /// Relation descriptions and their target tables (see `relations`).
    pub(super) relations: Relations,
    pub(super) group: Option<Group>,
    /// A target transaction is open on the connection: BEGIN was sent and
    /// no COMMIT or ROLLBACK has gone through yet.
    open: bool,
    /// When the origin last recorded an idle position (see `position`).
    pub(super) last_marker: Instant,
    /// Rows per path sent in the open target transaction.
    pub(super) paths: super::paths::Pending,
    /// Leave out source transactions applied by pgrepl (a reverse sync).
    pub skip_pgrepl_origins: bool,
    pub(super) txn: Option<SourceTxn>,
    pub(super) shared: Arc<Shared>,
    limits: GroupLimits,
    fixed: Fixed,
    start: Lsn,
    /// Source transactions ending at or before this commit on their own
    /// (set after an error inside a group, to stop exactly before it).
    pub(super) ungrouped_through: Lsn,
    /// DDL replay; `None` with --no-ddl.
    pub(super) ddl: Option<Replayer>,
    /// A DDL was replayed: commit at the end of this source transaction
    /// (new enum values, for one, must be committed before use).
    pub(super) commit_after_txn: bool,
    pub(super) sync_name: SyncName,
    /// Net effects of the open group, written out before anything that
    /// depends on their order (see `flush`).
    pub(super) batch: Batch,
    pub(super) stage_seq: u64,
    /// The last source transaction whose changes went into a batch of
    /// the open group (where to replay up to if a batch fails).
    pub(super) batch_through: Lsn,
    /// Applying one large transaction streamed while in progress (see
    /// `streamed`), rather than whole committed ones.
    pub(super) streamed: Option<Streamed>,
    /// Another apply connection holds an open transaction: a lock wait or
    /// deadlock may be between the two (see `ApplyError::StreamLockWait`).
    pub(super) guard_lock_waits: bool,
    /// Source types that are not built in, by source OID: their qualified
    /// names (pgoutput describes them before the relations using them).
    pub(super) types: HashMap<u32, String>,
    /// Tables a CREATE TABLE AS of the open source transaction is making
    /// (see `ddl`).
    pub(super) expected: HashSet<TableName>,
    /// Tables copied under a later snapshot (see `late`).
    pub(super) late: Late,
}

impl Applier {
    /// `session` must be idle and, with an origin ledger, hold the origin.
    pub fn new(
        session: RawSession,
        shared: Arc<Shared>,
        start: Lsn,
        limits: GroupLimits,
        ddl: Option<ReplayOptions>,
        sync_name: SyncName,
        ledger: &Ledger,
    ) -> Self {
        let mut pipe = Pipeline::new(session);
        let fixed = Fixed {
            begin: pipe.prepare("BEGIN"),
            commit: pipe.prepare("COMMIT"),
            // The position and the transaction ending there, together.
            xact_setup: pipe.prepare(&ledger.xact_setup_sql(&sync_name)),
        };
        Applier {
            pipe,
            relations: Relations::default(),
            group: None,
            open: false,
            last_marker: Instant::now(),
            paths: Default::default(),
            skip_pgrepl_origins: false,
            txn: None,
            shared,
            limits,
            fixed,
            start,
            ungrouped_through: Lsn::ZERO,
            ddl: ddl.map(Replayer::new),
            commit_after_txn: false,
            sync_name,
            batch: Batch::default(),
            stage_seq: 0,
            batch_through: Lsn::ZERO,
            streamed: None,
            guard_lock_waits: false,
            types: HashMap::new(),
            expected: HashSet::new(),
            late: Default::default(),
        }
    }

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
        let limits = GroupLimits::default();
        let mut a = Applier::new(session, shared, Lsn::ZERO, limits, ddl, sync_name, ledger);
        a.streamed = Some(Streamed::new(xid, batching));
        a.txn = Some(SourceTxn::new(xid, Lsn::ZERO, false));
        a.guard_lock_waits = true;
        a
    }

    /// Commit source transactions up to `lsn` one by one.
    pub fn ungroup_through(&mut self, lsn: Lsn) {
        self.ungrouped_through = lsn;
    }

    /// A source transaction is partly received.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Handles one pgoutput message. `more_waiting`: more messages are
    /// already queued (then a commit may be grouped with what follows).
    pub async fn handle(&mut self, message: Message, more_waiting: bool) -> Result<(), ApplyError> {
        match message {
            Message::Begin { final_lsn, xid, .. } => {
                if self.txn.is_some() {
                    return Err(ApplyError::Protocol("BEGIN inside a transaction".into()));
                }
                if self.group.as_ref().is_some_and(|g| g.due(&self.limits)) {
                    self.commit_group().await?;
                }
                self.txn = Some(SourceTxn::new(xid, final_lsn, final_lsn < self.start));
            }
            Message::Commit {
                end_lsn, commit_ts, ..
            } => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| ApplyError::Protocol("COMMIT without BEGIN".into()))?;
                self.expected.clear();
                let alone = txn.final_lsn <= self.ungrouped_through;
                if txn.changes >= super::paths::LARGE {
                    self.shared.paths.large_txns.fetch_add(1, Ordering::Relaxed);
                }
                if txn.skip {
                    tracing::debug!(lsn = %txn.final_lsn, "skipped a transaction applied before");
                } else if let Some(g) = &mut self.group {
                    if txn.changes > 0 {
                        g.txns += 1;
                    }
                    g.last_end = end_lsn;
                    g.last_commit_ts = commit_ts;
                    g.last_xid = Some(txn.xid);
                    let full = g.full(&self.limits);
                    let ddl_done = std::mem::take(&mut self.commit_after_txn);
                    if !more_waiting || full || alone || ddl_done {
                        self.commit_group().await?;
                    }
                } else {
                    // Nothing to apply (only unpublished changes).
                    self.shared
                        .idle_through
                        .fetch_max(end_lsn.0, Ordering::SeqCst);
                    self.tick().await?;
                }
            }
            Message::Relation(rel) => self.describe_relation(rel).await?,
            Message::Insert { relation, new } if self.relations.internal(relation).is_some() => {
                if self.relations.internal(relation) == Some(Internal::SchemaLog) {
                    self.ddl_row(new).await?
                }
            }
            Message::Update { relation, .. } | Message::Delete { relation, .. }
                if self.relations.internal(relation).is_some() => {}
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. }
                if self.in_copy(relation) => {}
            Message::Insert { relation, new } => self.row(Op::Insert, relation, None, new).await?,
            Message::Update { relation, old, new } => {
                self.row(Op::Update, relation, old, new).await?
            }
            Message::Delete { relation, old } => {
                self.row(Op::Delete, relation, Some(old), Vec::new())
                    .await?
            }
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => self.truncate(&relations, cascade, restart_identity).await?,
            Message::Type {
                oid,
                namespace,
                name,
            } => {
                self.types
                    .insert(oid, ObjectName::new(namespace, name).quoted());
            }
            Message::Origin { name, .. } => {
                if self.skip_pgrepl_origins && name.starts_with("pgrepl_") {
                    if let Some(t) = &mut self.txn {
                        tracing::trace!(origin = %name, "a transaction pgrepl applied: not sent back");
                        t.filtered = true;
                    }
                }
            }
            Message::Logical { .. } => {}
            Message::StreamStart { .. }
            | Message::StreamStop
            | Message::StreamCommit { .. }
            | Message::StreamAbort { .. } => {
                return Err(ApplyError::Protocol(
                    "a streamed-transaction message reached the applier".into(),
                ))
            }
        }
        Ok(())
    }

    /// Opens the target transaction if needed and counts a change.
    pub(super) async fn begin_change(&mut self) -> Result<bool, ApplyError> {
        let Some(txn) = &mut self.txn else {
            return Err(ApplyError::Protocol(
                "a change outside a transaction".into(),
            ));
        };
        if txn.skip || txn.filtered {
            return Ok(false);
        }
        txn.changes += 1;
        self.open_group().await?;
        if let Some(g) = &mut self.group {
            g.rows += 1;
        }
        Ok(true)
    }

    /// Opens the target transaction if none is open.
    pub(super) async fn open_group(&mut self) -> Result<(), ApplyError> {
        if self.group.is_none() {
            self.group = Some(Group::new());
            let begin = self.fixed.begin.clone();
            self.open = true;
            self.send(&begin, &[], Meta::Control("BEGIN")).await?;
        }
        Ok(())
    }

    /// A statement without parameters, in the open target transaction.
    pub(super) async fn statement(&mut self, sql: String) -> Result<(), ApplyError> {
        if !self.begin_change().await? {
            return Ok(());
        }
        self.flush_batch().await?;
        self.send_sql(&sql.clone(), Meta::Statement(sql)).await
    }

    /// The change of `relation` is in its table's copy already (see `late`).
    pub(super) fn in_copy(&self, relation: u32) -> bool {
        debug_assert!(self.streamed.is_none() || self.late.until() == Lsn::ZERO);
        self.txn
            .as_ref()
            .is_some_and(|t| self.late.skips(relation, t.final_lsn))
    }

    /// Where statements sent now belong: source transaction, and its
    /// place in the group.
    pub(super) fn position(&self) -> (TxnRef, usize) {
        let txn = match &self.streamed {
            Some(s) => TxnRef::Streamed(s.xid),
            None => TxnRef::Commit(self.txn.as_ref().map(|t| t.final_lsn).unwrap_or(Lsn::ZERO)),
        };
        (txn, self.group.as_ref().map(|g| g.txns).unwrap_or(0))
    }

    /// Where to replay up to without batching when a batch fails.
    pub(super) fn batch_ref(&self) -> TxnRef {
        match &self.streamed {
            Some(s) => TxnRef::Streamed(s.xid),
            None => TxnRef::Commit(self.batch_through),
        }
    }

    fn sent(&self, meta: Meta) -> Sent {
        Sent::at(meta, self.position())
    }

    pub(super) async fn send_copy(
        &mut self,
        sql: &str,
        data: &[u8],
        meta: Meta,
    ) -> Result<(), ApplyError> {
        let sent = self.sent(meta);
        self.pipe.copy_in(sql, data, sent);
        self.after_send().await
    }

    pub(super) async fn send(
        &mut self,
        statement: &str,
        params: &[Param],
        meta: Meta,
    ) -> Result<(), ApplyError> {
        let sent = self.sent(meta);
        self.pipe.execute(statement, params.iter(), sent);
        self.after_send().await
    }

    pub(super) async fn send_sql(&mut self, sql: &str, meta: Meta) -> Result<(), ApplyError> {
        let sent = self.sent(meta);
        self.pipe.execute_sql(sql, sent);
        self.after_send().await
    }

    async fn after_send(&mut self) -> Result<(), ApplyError> {
        // At the limit, take back half at once: one flush for many replies.
        if self.pipe.in_flight() > self.limits.inflight {
            while self.pipe.in_flight() > self.limits.inflight / 2 {
                self.pop().await?;
            }
        }
        Ok(self.pipe.write_some().await?)
    }

    /// Waits for the oldest statement in flight and checks its result.
    async fn pop(&mut self) -> Result<(), ApplyError> {
        match self.pipe.next().await? {
            None => Ok(()),
            Some(outcome) => self.check(outcome),
        }
    }

    /// Checks the result of a statement (see `sent`).
    fn check(&self, outcome: Outcome<Sent>) -> Result<(), ApplyError> {
        let judge = Judge {
            relations: &self.relations,
            batch_ref: self.batch_ref(),
            guard_lock_waits: self.guard_lock_waits,
            ddl: self.ddl.as_ref(),
        };
        judge.check(outcome)
    }

    /// Waits for every statement in flight.
    pub(super) async fn drain(&mut self) -> Result<(), ApplyError> {
        while self.pipe.in_flight() > 0 {
            self.pop().await?;
        }
        Ok(())
    }

    /// Records the position of the group's last source transaction and
    /// commits; the data and the position become visible together.
    pub(super) async fn commit_group(&mut self) -> Result<(), ApplyError> {
        self.commit_group_holding(None).await
    }

    /// Commits the group; with `baton`, this connection takes the
    /// replication origin just for this commit and gives it back after (a
    /// streamed transaction's connection: see `streamed`).
    pub(super) async fn commit_group_holding(
        &mut self,
        baton: Option<&OriginName>,
    ) -> Result<(), ApplyError> {
        if self.group.is_none() {
            return Ok(());
        }
        self.flush_batch().await?;
        self.drain().await?;
        let Some(g) = self.group.take() else {
            return Ok(());
        };
        if let Some(origin) = baton {
            self.send_sql(
                &origin_session_sql(Some(origin)),
                Meta::Control("taking the replication origin"),
            )
            .await?;
        }
        let setup = self.fixed.xact_setup.clone();
        let commit = self.fixed.commit.clone();
        let params = g.ledger_params();
        self.send(
            &setup,
            &params,
            Meta::Control("recording the applied position"),
        )
        .await?;
        self.send(&commit, &[], Meta::Control("COMMIT")).await?;
        if baton.is_some() {
            self.send_sql(
                &origin_session_sql(None),
                Meta::Control("handing the replication origin back"),
            )
            .await?;
        }
        for outcome in self.pipe.sync().await? {
            self.check(outcome)?;
        }
        self.open = false;
        self.paths
            .commit(&self.shared.paths, self.streamed.is_some());
        if self.relations.committed() {
            self.shared.schema_changed();
        }
        self.batch_through = Lsn::ZERO;
        self.shared.committed(&g);
        tracing::trace!(end = %g.last_end, txns = g.txns, rows = g.rows, "group committed");
        Ok(())
    }

    /// Takes the replication origin (`Some`) or gives it up (`None`) while
    /// no target transaction is open, for another connection to commit
    /// with it in between.
    pub(super) async fn hold_origin(
        &mut self,
        origin: Option<&OriginName>,
    ) -> Result<(), ApplyError> {
        self.run_now(&origin_session_sql(origin), "moving the replication origin")
            .await
    }

    /// Runs `sql` at once, outside any group, and waits for it.
    pub(super) async fn run_now(
        &mut self,
        sql: &str,
        what: &'static str,
    ) -> Result<(), ApplyError> {
        self.send_sql(sql, Meta::Control(what)).await?;
        for outcome in self.pipe.sync().await? {
            self.check(outcome)?;
        }
        Ok(())
    }

    /// Commits the open group, if any (before a streamed block, so this
    /// connection holds no locks the other one could wait on).
    pub(super) async fn commit_open_group(&mut self) -> Result<(), ApplyError> {
        if self.txn.is_some() {
            return Err(ApplyError::Protocol(
                "a streamed block inside a transaction".into(),
            ));
        }
        self.commit_group().await
    }

    /// Before a change of (sub)transaction `xid`: a savepoint when it is
    /// a subtransaction seen for the first time (see `streamed`).
    pub async fn enter_subxact(&mut self, xid: u32) -> Result<(), ApplyError> {
        if !self.streamed.as_ref().is_some_and(|s| s.new_subxact(xid)) {
            return Ok(());
        }
        // What is batched so far belongs before the savepoint.
        self.flush_batch().await?;
        self.open_group().await?;
        let sql = Streamed::savepoint_sql(xid);
        self.send_sql(&sql, Meta::Control("SAVEPOINT")).await?;
        if let Some(s) = &mut self.streamed {
            s.entered(xid);
        }
        Ok(())
    }

    /// A subtransaction aborted on the source: everything since its
    /// savepoint goes (nothing, if it changed nothing we apply).
    pub async fn abort_subxact(&mut self, subxid: u32) -> Result<(), ApplyError> {
        let Some(at) = self.streamed.as_ref().and_then(|s| s.subxact(subxid)) else {
            return Ok(());
        };
        // The batch holds only changes made since the newest savepoint,
        // which is this one or one inside it: all of them are undone.
        self.batch.take();
        let sql = Streamed::rollback_sql(subxid);
        self.send_sql(&sql, Meta::Control("ROLLBACK TO SAVEPOINT"))
            .await?;
        if let Some(s) = &mut self.streamed {
            s.rolled_back(at);
        }
        // Stage tables created since then are gone with it, and the schema
        // may be as it was.
        self.relations.forget_stages();
        self.schema_changed();
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

    /// After an error: forgets what is in flight and rolls the target back.
    pub async fn abort(&mut self) {
        self.batch.take();
        self.paths.forget();
        self.batch_through = Lsn::ZERO;
        let _ = self.pipe.sync().await;
        self.group = None;
        // Also after a COMMIT that failed: the statement before it may have
        // left the transaction open and aborted.
        if std::mem::take(&mut self.open) {
            self.pipe
                .execute_sql("ROLLBACK", self.sent(Meta::Control("ROLLBACK")));
            if let Err(e) = self.pipe.sync().await {
                tracing::debug!(error = %e, "rollback after an error");
            }
        }
        self.txn = None;
    }
}
