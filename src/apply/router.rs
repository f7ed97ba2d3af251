//! Routes each pgoutput message to the applier it belongs to: whole
//! committed transactions to the main one (which holds the replication
//! origin), the blocks of a large transaction streamed while in progress
//! to an applier of its own on its own target connection (see
//! `streamed`), opened at its first block and closed at its Stream Commit
//! or Stream Abort.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::applier::Applier;
use super::error::ApplyError;
use super::resent::{Block, Resend};
use super::shared::Shared;
use crate::conn::raw::{RawError, RawSession};
use crate::conn::{Endpoint, Side};
use crate::ddl::replay::ReplayOptions;
use crate::lsn::Lsn;
use crate::progress::ledger::Ledger;
use crate::sql::SyncName;
use crate::stream::pgoutput::{self, Message, Relation};

/// Settings of every apply connection: replica role (no user triggers, no
/// FK checks, as native apply), asynchronous commit (the flush watcher
/// reports only what is durable), no timeouts, and index probes for the
/// set-based writes (a hash join would scan the whole table per batch),
/// without JIT (compiling each batch statement costs more than it saves).
pub const APPLY_SETTINGS: &str = "SET session_replication_role = replica; SET synchronous_commit = off; SET statement_timeout = 0;
     SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0;
     SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off;";

/// How long the main connection may wait for a lock while a streamed
/// transaction is open.
const MAIN_LOCK_TIMEOUT_SECS: u32 = 10;

/// Connects an apply connection to the target with [`APPLY_SETTINGS`].
pub async fn apply_connection(target: &Endpoint) -> Result<RawSession, RawError> {
    let mut session = RawSession::connect(Side::Target, &target.config, false).await?;
    session.simple_query(APPLY_SETTINGS).await?;
    Ok(session)
}

/// What a streamed transaction's applier needs besides its connection.
pub struct StreamContext {
    pub target: Endpoint,
    pub ledger: Ledger,
    pub ddl: Option<ReplayOptions>,
    pub sync_name: SyncName,
    /// Streamed transactions to apply without batching (a batch of
    /// theirs failed before).
    pub unbatched: Vec<u32>,
    /// Leave out transactions pgrepl applied on the source (reverse sync).
    pub skip_pgrepl_origins: bool,
    /// The transaction the source may stream again at the start (see
    /// `resent`).
    pub resend: Resend,
}

/// One open streamed transaction.
struct Open {
    applier: Applier,
    /// Relation descriptions sent inside it: after its commit the source
    /// counts them as sent for the main stream too.
    relations: Vec<Relation>,
}

pub struct Router {
    main: Applier,
    shared: Arc<Shared>,
    context: StreamContext,
    open: FxHashMap<u32, Open>,
    /// Inside a streamed block: of this transaction.
    block: Option<u32>,
}

impl Router {
    pub fn new(main: Applier, shared: Arc<Shared>, context: StreamContext) -> Self {
        Router {
            main,
            shared,
            context,
            open: FxHashMap::default(),
            block: None,
        }
    }

    /// A committed transaction is partly received.
    pub fn in_transaction(&self) -> bool {
        self.main.in_transaction()
    }

    /// Handles one pgoutput message; `more_waiting` as for the applier.
    pub async fn handle(&mut self, payload: Bytes, more_waiting: bool) -> Result<(), ApplyError> {
        let (xid, message) = pgoutput::decode_in(payload, self.block.is_some())?;
        // A block of a transaction the target holds already: dropped.
        if let Some(top) = self.block.filter(|x| self.context.resend.dropping(*x)) {
            return match message {
                Message::StreamStop => {
                    self.block = None;
                    Ok(())
                }
                Message::StreamStart { .. }
                | Message::StreamCommit { .. }
                | Message::StreamAbort { .. } => Err(ApplyError::Protocol(format!(
                    "a stream control message inside a block of transaction {top}"
                ))),
                _ => Ok(()),
            };
        }
        match message {
            Message::StreamStart { xid, first } => self.start_block(xid, first).await,
            // What the block left batched goes to the target now, so it
            // works while the source decodes the next block.
            Message::StreamStop => match self.block.take().and_then(|x| self.open.get_mut(&x)) {
                Some(open) => open.applier.flush_batch().await,
                None => Ok(()),
            },
            Message::StreamCommit {
                xid,
                end_lsn,
                commit_ts,
                ..
            } => self.commit(xid, end_lsn, commit_ts).await,
            Message::StreamAbort { xid, subxid } => self.abort_streamed(xid, subxid).await,
            message => match self.block {
                None => {
                    if matches!(message, Message::Commit { .. }) {
                        // Cannot be the one sent again: the main applier
                        // skips what commits before its start.
                        let _ = self.context.resend.committed(None);
                    }
                    self.main.handle(message, more_waiting).await
                }
                Some(top) => {
                    let open = self.open.get_mut(&top).ok_or_else(|| {
                        ApplyError::Protocol(format!(
                            "a change of unknown streamed transaction {top}"
                        ))
                    })?;
                    match &message {
                        Message::Relation(r) => open.relations.push(r.clone()),
                        Message::Insert { .. }
                        | Message::Update { .. }
                        | Message::Delete { .. }
                        | Message::Truncate { .. } => {
                            open.applier.enter_subxact(xid.unwrap_or(top)).await?
                        }
                        _ => {}
                    }
                    open.applier.handle(message, true).await
                }
            },
        }
    }

    async fn start_block(&mut self, xid: u32, first: bool) -> Result<(), ApplyError> {
        if self.block.is_some() {
            return Err(ApplyError::Protocol("Stream Start inside a block".into()));
        }
        if self.context.resend.start_block(xid) == Block::Drop {
            self.block = Some(xid);
            return Ok(());
        }
        // The main connection keeps no locks open while the other works.
        self.main.commit_open_group().await?;
        if first || !self.open.contains_key(&xid) {
            if !first {
                return Err(ApplyError::Protocol(format!(
                    "a later block of streamed transaction {xid}, never started"
                )));
            }
            let session = apply_connection(&self.context.target).await?;
            let batching = !self.context.unbatched.contains(&xid);
            let mut applier = Applier::for_streamed(
                session,
                self.shared.clone(),
                xid,
                batching,
                self.context.ddl.clone(),
                self.context.sync_name.clone(),
                &self.context.ledger,
            );
            applier.skip_pgrepl_origins = self.context.skip_pgrepl_origins;
            tracing::debug!(xid, batching, "a large transaction is streamed while in progress; applying it on a connection of its own");
            if self.open.is_empty() {
                self.guard_main(true).await?;
            }
            self.open.insert(
                xid,
                Open {
                    applier,
                    relations: Vec::new(),
                },
            );
        }
        self.block = Some(xid);
        Ok(())
    }

    async fn commit(&mut self, xid: u32, end_lsn: Lsn, commit_ts: i64) -> Result<(), ApplyError> {
        if let Err(held) = self.context.resend.committed(Some(xid)) {
            return Err(ApplyError::Protocol(format!(
                "the source committed transaction {xid} (ending at {end_lsn}) again, which the target applied through {held}; nothing of it was applied twice"
            )));
        }
        let Some(mut open) = self.open.remove(&xid) else {
            return Err(ApplyError::Protocol(format!(
                "Stream Commit of unknown transaction {xid}"
            )));
        };
        // Transactions the main connection holds committed before this one.
        self.main.commit_open_group().await?;
        let baton = self.context.ledger.baton();
        if baton.is_some() {
            self.main.hold_origin(None).await?;
        }
        let committed = open
            .applier
            .commit_streamed(end_lsn, commit_ts, baton)
            .await;
        if committed.is_err() {
            open.applier.abort().await;
        }
        let committed = committed?;
        if baton.is_some() {
            self.main.hold_origin(baton).await?;
        }
        if self.open.is_empty() {
            self.guard_main(false).await?;
        }
        tracing::debug!(xid, %end_lsn, committed, "streamed transaction committed");
        if !committed {
            self.shared
                .idle_through
                .fetch_max(end_lsn.0, Ordering::SeqCst);
        }
        for r in open.relations {
            self.main.handle(Message::Relation(r), true).await?;
        }
        Ok(())
    }

    async fn abort_streamed(&mut self, xid: u32, subxid: u32) -> Result<(), ApplyError> {
        if self.context.resend.dropping(xid) {
            if xid == subxid {
                self.context.resend.aborted(xid);
            }
            return Ok(());
        }
        if xid == subxid {
            if let Some(mut open) = self.open.remove(&xid) {
                open.applier.abort().await;
                tracing::debug!(
                    xid,
                    "streamed transaction aborted on the source; rolled back"
                );
                if self.open.is_empty() {
                    self.guard_main(false).await?;
                }
            }
            return Ok(());
        }
        match self.open.get_mut(&xid) {
            Some(open) => open.applier.abort_subxact(subxid).await,
            None => Ok(()),
        }
    }

    /// While a streamed transaction is open on its own connection, the
    /// main one must never wait on its locks: on the source nothing that
    /// committed before it could have touched what it holds, so such a
    /// wait means the target differs (a constraint the source lacks) and
    /// would never end. A lock timeout turns it into an error, and the
    /// session resumes without streaming.
    async fn guard_main(&mut self, on: bool) -> Result<(), ApplyError> {
        self.main.guard_lock_waits = on;
        let sql = if on {
            format!("SET lock_timeout = '{}s'", MAIN_LOCK_TIMEOUT_SECS)
        } else {
            "SET lock_timeout = 0".to_string()
        };
        self.main.run_now(&sql, "setting lock_timeout").await
    }

    /// A keepalive: the source has nothing more for now.
    pub async fn idle(&mut self, end: Lsn) -> Result<(), ApplyError> {
        self.main.idle(end).await
    }

    /// At a transaction boundary: commits what the main applier holds, so
    /// the target shows every transaction handled so far.
    pub async fn settle(&mut self) -> Result<(), ApplyError> {
        self.main.commit_open_group().await
    }

    /// A second passed: an idle stretch may be due for recording.
    pub async fn tick(&mut self) -> Result<(), ApplyError> {
        if self.block.is_some() {
            return Ok(());
        }
        self.main.tick().await
    }

    /// Ends cleanly: the main applier commits what it holds whole;
    /// streamed transactions still open roll back (the source sends them
    /// again from their start).
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        for (_, mut open) in self.open.drain() {
            open.applier.abort().await;
        }
        self.main.finish().await
    }

    /// After an error: everything open rolls back.
    pub async fn abort(&mut self) {
        for (_, mut open) in self.open.drain() {
            open.applier.abort().await;
        }
        self.main.abort().await;
    }
}
