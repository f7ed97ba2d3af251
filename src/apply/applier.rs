//! Applies decoded source transactions to the target, exactly once.
//!
//! The rule: a target transaction holds whole source transactions only,
//! and records with `pg_replication_origin_xact_setup` the end LSN of the
//! last one, so the data and the position commit together or not at all.
//! Nothing is acknowledged to the source that the target has not made
//! durable (that is the flush watcher's job, see `session`).
//!
//! Statements are pipelined: each is sent without waiting for the one
//! before; results are checked in order. Small source transactions that
//! arrive back to back share one target transaction (never splitting one).
//! Any error rolls the target transaction back, so a conflict leaves the
//! target exactly at the last committed group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio_postgres::{Client, Statement};

use super::params::Param;
use super::relation::{Prepared, RelationError, RowFilter, StatementError, TargetRelation};
use crate::conn::error::{describe, is_transient};
use crate::ddl::replay::{short, Action, LogRow, ReplayError, ReplayOptions, Replayer};
use crate::lsn::Lsn;
use crate::sql::{quote_literal, SyncName, TableName};
use crate::stream::pgoutput::{self, Datum, DecodeError, Message, OldRow, Tuple};
use crate::stream::receiver::StreamError;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("source: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Relation(#[from] RelationError),
    #[error("conflict on {table} applying the source transaction that commits at LSN {lsn}: {message} (row {key}). Nothing from this transaction on was applied or acknowledged: fix the target row, then rerun pgrepl sync to retry it")]
    Conflict {
        table: TableName,
        key: String,
        lsn: Lsn,
        message: String,
        /// Whole source transactions before it shared its target
        /// transaction and were rolled back with it.
        took_earlier: bool,
    },
    #[error("target rejected DDL #{id} ({statement}): {message}. Nothing from its source transaction (LSN {lsn}) on was applied or acknowledged: fix the target, or skip exactly this command with `pgrepl sync --skip-ddl {id}`")]
    DdlRejected {
        id: i64,
        statement: String,
        message: String,
        lsn: Lsn,
        took_earlier: bool,
    },
    #[error("{0}")]
    Ddl(#[from] ReplayError),
    #[error("target: {what} failed at source LSN {lsn}: {message}")]
    Target {
        what: String,
        lsn: Lsn,
        message: String,
        transient: bool,
    },
    #[error("source: the stream broke the protocol: {0}")]
    Protocol(String),
}

impl ApplyError {
    /// Worth reconnecting and resuming from the origin.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Stream(e) => e.is_transient(),
            ApplyError::Target { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The source transaction to replay on its own when the error rolled
    /// back whole transactions grouped before it.
    pub fn grouped_stop(&self) -> Option<Lsn> {
        match self {
            ApplyError::Conflict {
                lsn,
                took_earlier: true,
                ..
            }
            | ApplyError::DdlRejected {
                lsn,
                took_earlier: true,
                ..
            } => Some(*lsn),
            _ => None,
        }
    }

    fn target(what: impl Into<String>, lsn: Lsn, e: &tokio_postgres::Error) -> Self {
        ApplyError::Target {
            what: what.into(),
            lsn,
            message: describe(e),
            transient: is_transient(e),
        }
    }
}

impl From<StatementError> for ApplyError {
    fn from(e: StatementError) -> Self {
        match e {
            StatementError::Relation(r) => ApplyError::Relation(r),
            StatementError::Prepare(p) => {
                ApplyError::target("preparing a statement", Lsn::ZERO, &p)
            }
        }
    }
}

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
            txns: 2000,
            rows: 50_000,
            age: Duration::from_millis(200),
            inflight: 2000,
        }
    }
}

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
}

impl Shared {
    pub fn new(start: Lsn) -> Arc<Self> {
        let s = Shared::default();
        s.written_end.store(start.0, Ordering::SeqCst);
        s.idle_through.store(start.0, Ordering::SeqCst);
        Arc::new(s)
    }

    pub fn idle_through(&self) -> Lsn {
        Lsn(self.idle_through.load(Ordering::SeqCst))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
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

/// What an in-flight statement was, for its result check.
enum Meta {
    Control(&'static str),
    Row {
        op: Op,
        table: TableName,
        key: String,
    },
    Statement(String),
    Ddl {
        id: i64,
        statement: String,
    },
}

struct Done {
    result: Result<u64, tokio_postgres::Error>,
    meta: Meta,
    lsn: Lsn,
    /// Position of its source transaction within the group.
    txn_in_group: usize,
}

struct Group {
    started: Instant,
    txns: usize,
    rows: usize,
    last_end: Lsn,
    last_commit_ts: i64,
}

struct SourceTxn {
    final_lsn: Lsn,
    changes: usize,
    /// Already applied before this session started.
    skip: bool,
}

/// Why the applier stopped without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Requested,
    CaughtUp,
}

pub struct Applier {
    client: Arc<Client>,
    relations: HashMap<u32, TargetRelation>,
    inflight: FuturesOrdered<BoxFuture<'static, Done>>,
    group: Option<Group>,
    txn: Option<SourceTxn>,
    shared: Arc<Shared>,
    limits: GroupLimits,
    xact_setup: Statement,
    start: Lsn,
    /// Source transactions ending at or before this commit on their own
    /// (set after a conflict inside a group, to stop exactly before it).
    ungrouped_through: Lsn,
    /// DDL replay; `None` with --no-ddl.
    ddl: Option<Replayer>,
    /// `pgrepl.schema_log` on the source: its relation id and columns.
    schema_log: Option<(u32, Vec<String>)>,
    /// A DDL was replayed: commit at the end of this source transaction
    /// (new enum values, for one, must be committed before use).
    commit_after_txn: bool,
    sync_name: SyncName,
}

impl Applier {
    /// `client` must be the session holding the replication origin.
    pub async fn new(
        client: Arc<Client>,
        shared: Arc<Shared>,
        start: Lsn,
        limits: GroupLimits,
        ddl: Option<ReplayOptions>,
        sync_name: SyncName,
    ) -> Result<Self, ApplyError> {
        let xact_setup = client
            .prepare(
                "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn,
                        '2000-01-01 00:00:00+00'::timestamptz + $2::int8 * interval '1 microsecond')",
            )
            .await
            .map_err(|e| ApplyError::target("preparing the origin statement", start, &e))?;
        Ok(Applier {
            client,
            relations: HashMap::new(),
            inflight: FuturesOrdered::new(),
            group: None,
            txn: None,
            shared,
            limits,
            xact_setup,
            start,
            ungrouped_through: Lsn::ZERO,
            ddl: ddl.map(Replayer::new),
            schema_log: None,
            commit_after_txn: false,
            sync_name,
        })
    }

    /// Commit source transactions up to `lsn` one by one.
    pub fn ungroup_through(&mut self, lsn: Lsn) {
        self.ungrouped_through = lsn;
    }

    /// A source transaction is partly received.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    fn lsn(&self) -> Lsn {
        self.txn.as_ref().map(|t| t.final_lsn).unwrap_or(Lsn::ZERO)
    }

    /// Handles one pgoutput message. `more_waiting`: more messages are
    /// already queued (then a commit may be grouped with what follows).
    pub async fn handle(
        &mut self,
        payload: bytes::Bytes,
        more_waiting: bool,
    ) -> Result<(), ApplyError> {
        match pgoutput::decode(payload)? {
            Message::Begin { final_lsn, .. } => {
                if self.txn.is_some() {
                    return Err(ApplyError::Protocol("BEGIN inside a transaction".into()));
                }
                if let Some(g) = &self.group {
                    if g.started.elapsed() >= self.limits.age || g.rows >= self.limits.rows {
                        self.commit_group().await?;
                    }
                }
                self.txn = Some(SourceTxn {
                    final_lsn,
                    changes: 0,
                    skip: final_lsn < self.start,
                });
            }
            Message::Commit {
                end_lsn, commit_ts, ..
            } => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| ApplyError::Protocol("COMMIT without BEGIN".into()))?;
                let alone = txn.final_lsn <= self.ungrouped_through;
                if txn.skip {
                    tracing::debug!(lsn = %txn.final_lsn, "skipped a transaction applied before");
                } else if let Some(g) = &mut self.group {
                    if txn.changes > 0 {
                        g.txns += 1;
                    }
                    g.last_end = end_lsn;
                    g.last_commit_ts = commit_ts;
                    let full = g.txns >= self.limits.txns
                        || g.rows >= self.limits.rows
                        || g.started.elapsed() >= self.limits.age;
                    let ddl_done = std::mem::take(&mut self.commit_after_txn);
                    if !more_waiting || full || alone || ddl_done {
                        self.commit_group().await?;
                    }
                } else {
                    // Nothing to apply (only unpublished changes).
                    self.shared
                        .idle_through
                        .fetch_max(end_lsn.0, Ordering::SeqCst);
                }
            }
            Message::Relation(rel) if rel.namespace == "pgrepl" && rel.name == "schema_log" => {
                self.schema_log = Some((
                    rel.oid,
                    rel.columns.iter().map(|c| c.name.clone()).collect(),
                ));
            }
            Message::Relation(rel) => {
                self.drain().await?;
                let oid = rel.oid;
                let mapped = TargetRelation::load(&self.client, rel, self.ddl.is_some()).await?;
                self.relations.insert(oid, mapped);
            }
            Message::Insert { relation, new } if self.is_schema_log(relation) => {
                self.ddl_row(new).await?
            }
            Message::Update { relation, .. } | Message::Delete { relation, .. }
                if self.is_schema_log(relation) => {}
            Message::Insert { relation, new } => self.row(Op::Insert, relation, None, new).await?,
            Message::Update { relation, old, new } => {
                self.row(Op::Update, relation, old, new).await?
            }
            Message::Delete { relation, old } => {
                let key = match &old {
                    OldRow::Key(t) | OldRow::Full(t) => t.clone(),
                };
                self.row(Op::Delete, relation, Some(old), key).await?
            }
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                let mut names = Vec::new();
                for r in relations.iter().filter(|r| !self.is_schema_log(**r)) {
                    let rel = self.relation(*r)?;
                    names.push(rel.table.quoted());
                }
                if names.is_empty() {
                    return Ok(());
                }
                let sql = format!(
                    "TRUNCATE {}{}{}",
                    names.join(", "),
                    if restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    },
                    if cascade { " CASCADE" } else { "" }
                );
                self.statement(sql).await?;
            }
            Message::Origin { .. } | Message::Type { .. } | Message::Logical { .. } => {}
        }
        Ok(())
    }

    fn is_schema_log(&self, relation: u32) -> bool {
        self.schema_log
            .as_ref()
            .is_some_and(|(oid, _)| *oid == relation)
    }

    /// A row of `pgrepl.schema_log`: a DDL command to replay (or skip).
    async fn ddl_row(&mut self, new: Tuple) -> Result<(), ApplyError> {
        let (Some(replayer), Some((_, columns))) = (self.ddl.as_mut(), self.schema_log.as_ref())
        else {
            tracing::debug!("DDL log row ignored: DDL replication is off");
            return Ok(());
        };
        let row = LogRow::from_columns(|name| {
            let i = columns.iter().position(|c| c == name)?;
            match new.get(i)? {
                Datum::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }
        })?;
        let action = replayer.decide(&row)?;
        let (sql, search_path, creates) = match action {
            Action::Skip { reason } => {
                tracing::info!(id = row.id, tag = %row.tag, %reason, ddl = %short(&row.ddl), "DDL not replicated");
                return Ok(());
            }
            Action::Replay {
                sql,
                search_path,
                creates,
            } => (sql, search_path, creates),
        };
        if !self.begin_change().await? {
            return Ok(());
        }
        tracing::info!(id = row.id, tag = %row.tag, ddl = %short(&sql), "replaying DDL");
        // The source's search_path while the statement runs, then back.
        let batch = format!(
            "SELECT pg_catalog.set_config('search_path', {}, true); {sql}; RESET search_path",
            quote_literal(&search_path)
        );
        let client = self.client.clone();
        self.push(
            async move { client.batch_execute(&batch).await.map(|_| 0) }.boxed(),
            Meta::Ddl {
                id: row.id,
                statement: short(&sql),
            },
        )
        .await?;
        for table in creates {
            let sql = format!(
                "INSERT INTO pgrepl.tables (sync_name, schema_name, table_name, state) VALUES ({}, {}, {}, 'streaming')
                 ON CONFLICT (sync_name, schema_name, table_name) DO UPDATE SET state = 'streaming', updated_at = now()",
                quote_literal(self.sync_name.as_str()),
                quote_literal(&table.schema),
                quote_literal(&table.name)
            );
            self.statement(sql).await?;
        }
        self.commit_after_txn = true;
        Ok(())
    }

    fn relation(&self, oid: u32) -> Result<&TargetRelation, ApplyError> {
        self.relations.get(&oid).ok_or_else(|| {
            ApplyError::Protocol(format!(
                "a change for relation {oid} came before its description"
            ))
        })
    }

    /// Opens the target transaction if needed and counts a change.
    async fn begin_change(&mut self) -> Result<bool, ApplyError> {
        let Some(txn) = &mut self.txn else {
            return Err(ApplyError::Protocol(
                "a change outside a transaction".into(),
            ));
        };
        if txn.skip {
            return Ok(false);
        }
        txn.changes += 1;
        if self.group.is_none() {
            self.group = Some(Group {
                started: Instant::now(),
                txns: 0,
                rows: 0,
                last_end: Lsn::ZERO,
                last_commit_ts: 0,
            });
            let client = self.client.clone();
            self.push(
                async move { client.batch_execute("BEGIN").await.map(|_| 0) }.boxed(),
                Meta::Control("BEGIN"),
            )
            .await?;
        }
        if let Some(g) = &mut self.group {
            g.rows += 1;
        }
        Ok(true)
    }

    async fn row(
        &mut self,
        op: Op,
        relation: u32,
        old: Option<OldRow>,
        new: Tuple,
    ) -> Result<(), ApplyError> {
        if !self.begin_change().await? {
            return Ok(());
        }
        let client = self.client.clone();
        let rel = self.relations.get_mut(&relation).ok_or_else(|| {
            ApplyError::Protocol(format!(
                "a change for relation {relation} came before its description"
            ))
        })?;
        let prepared: Prepared = match op {
            Op::Insert => rel.insert(&client).await.map_err(StatementError::from)?,
            Op::Update => {
                let filter = rel
                    .filter_for(old.as_ref(), Some(&new))
                    .expect("an update always has a row to match");
                rel.update(&client, &new, &filter).await?
            }
            Op::Delete => {
                let filter = rel
                    .filter_for(old.as_ref(), None)
                    .unwrap_or(RowFilter::Key(&new));
                rel.delete(&client, &filter).await?
            }
        };
        let filter_row: &Tuple = match &old {
            Some(OldRow::Key(t)) | Some(OldRow::Full(t)) => t,
            None => &new,
        };
        let params: Vec<Param> = prepared
            .set
            .iter()
            .map(|&i| Param::from_datum(&new[i]))
            .chain(
                prepared
                    .filter
                    .iter()
                    .map(|&i| Param::from_datum(&filter_row[i])),
            )
            .collect();
        let key = if op == Op::Insert {
            rel.describe_key(&new)
        } else {
            rel.describe_key(filter_row)
        };
        let table = rel.table.clone();
        let statement = prepared.statement;
        self.push(
            async move { client.execute_raw(&statement, params.iter()).await }.boxed(),
            Meta::Row { op, table, key },
        )
        .await
    }

    async fn statement(&mut self, sql: String) -> Result<(), ApplyError> {
        if !self.begin_change().await? {
            return Ok(());
        }
        let client = self.client.clone();
        let text = sql.clone();
        self.push(
            async move { client.batch_execute(&text).await.map(|_| 0) }.boxed(),
            Meta::Statement(sql),
        )
        .await
    }

    async fn push(
        &mut self,
        fut: BoxFuture<'static, Result<u64, tokio_postgres::Error>>,
        meta: Meta,
    ) -> Result<(), ApplyError> {
        if self.inflight.len() >= self.limits.inflight {
            self.pop().await?;
        }
        let lsn = self.lsn();
        let txn_in_group = self.group.as_ref().map(|g| g.txns).unwrap_or(0);
        self.inflight.push_back(
            async move {
                Done {
                    result: fut.await,
                    meta,
                    lsn,
                    txn_in_group,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// Waits for the oldest in-flight statement and checks its result.
    async fn pop(&mut self) -> Result<(), ApplyError> {
        let Some(done) = self.inflight.next().await else {
            return Ok(());
        };
        let took_earlier = done.txn_in_group > 0;
        match (done.result, done.meta) {
            (Ok(n), Meta::Row { op, table, key }) if n != 1 && op != Op::Insert => {
                Err(ApplyError::Conflict {
                    table,
                    key,
                    lsn: done.lsn,
                    message: format!("{} found no matching row on the target", op.verb()),
                    took_earlier,
                })
            }
            (Ok(_), _) => Ok(()),
            (Err(e), Meta::Row { op, table, key }) if !is_transient(&e) => {
                Err(ApplyError::Conflict {
                    table,
                    key,
                    lsn: done.lsn,
                    message: format!("{} failed: {}", op.verb(), describe(&e)),
                    took_earlier,
                })
            }
            (Err(e), Meta::Row { op, .. }) => Err(ApplyError::target(op.verb(), done.lsn, &e)),
            (Err(e), Meta::Control(what)) => Err(ApplyError::target(what, done.lsn, &e)),
            (Err(e), Meta::Statement(sql)) => Err(ApplyError::target(sql, done.lsn, &e)),
            (Err(e), Meta::Ddl { id, statement }) if !is_transient(&e) => {
                Err(ApplyError::DdlRejected {
                    id,
                    statement,
                    message: describe(&e),
                    lsn: done.lsn,
                    took_earlier,
                })
            }
            (Err(e), Meta::Ddl { statement, .. }) => {
                Err(ApplyError::target(statement, done.lsn, &e))
            }
        }
    }

    /// Waits for every in-flight statement.
    async fn drain(&mut self) -> Result<(), ApplyError> {
        while !self.inflight.is_empty() {
            self.pop().await?;
        }
        Ok(())
    }

    /// Records the position of the group's last source transaction and
    /// commits; the data and the position become visible together.
    async fn commit_group(&mut self) -> Result<(), ApplyError> {
        if self.group.is_none() {
            return Ok(());
        }
        // Every result is checked before COMMIT is sent: an UPDATE that
        // found no row is no error to the server, only to us.
        self.drain().await?;
        let Some(g) = self.group.take() else {
            return Ok(());
        };
        let client = self.client.clone();
        let stmt = self.xact_setup.clone();
        let (lsn, ts) = (g.last_end.to_string(), g.last_commit_ts);
        self.push(
            async move { client.execute(&stmt, &[&lsn, &ts]).await }.boxed(),
            Meta::Control("recording the replication origin position"),
        )
        .await?;
        let client = self.client.clone();
        self.push(
            async move { client.batch_execute("COMMIT").await.map(|_| 0) }.boxed(),
            Meta::Control("COMMIT"),
        )
        .await?;
        self.drain().await?;
        self.shared
            .written_end
            .fetch_max(g.last_end.0, Ordering::SeqCst);
        self.shared
            .idle_through
            .fetch_max(g.last_end.0, Ordering::SeqCst);
        self.shared.txns.fetch_add(g.txns as u64, Ordering::Relaxed);
        self.shared.rows.fetch_add(g.rows as u64, Ordering::Relaxed);
        self.shared
            .last_commit_ts
            .store(g.last_commit_ts.max(0) as u64, Ordering::Relaxed);
        tracing::trace!(end = %g.last_end, txns = g.txns, rows = g.rows, "group committed");
        Ok(())
    }

    /// A keepalive: the source has nothing more for now.
    pub async fn idle(&mut self, end: Lsn) -> Result<(), ApplyError> {
        if self.txn.is_some() {
            return Ok(());
        }
        self.commit_group().await?;
        self.shared.idle_through.fetch_max(end.0, Ordering::SeqCst);
        Ok(())
    }

    /// Ends cleanly: commits the open group when it holds whole source
    /// transactions only, otherwise rolls it back.
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        if self.txn.is_none() {
            return self.commit_group().await;
        }
        self.abort().await;
        Ok(())
    }

    /// After an error: forgets in-flight work and rolls the target back.
    pub async fn abort(&mut self) {
        while self.inflight.next().await.is_some() {}
        if self.group.take().is_some() {
            if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                tracing::debug!(error = %describe(&e), "rollback after an error");
            }
        }
        self.txn = None;
    }
}
