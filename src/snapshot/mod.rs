//! Stage 2: the snapshot copy — the source's schema and rows on the target,
//! exactly as of the replication slot's consistent point.
//!
//! The rule: after the copy, every copied table on the target holds the
//! source's rows as of the consistent point, no earlier and no later;
//! everything after it belongs to the stream, which starts there. Hence:
//!
//! - One snapshot, exported by `CREATE_REPLICATION_SLOT`, imported by every
//!   session that reads schema or rows (pg_dump, the lock holder, each copy
//!   worker). The exporting session stays idle until the copy is over: any
//!   command there kills the snapshot.
//! - ACCESS SHARE locks on every copied table right after the import, then
//!   a check that no table was truncated or rewritten between the snapshot
//!   and the lock (such a change is not MVCC-safe: the copy would miss rows).
//! - The schema lands in one target transaction together with the state
//!   row, the script that removes it again and a fingerprint of it. A
//!   copy that dies keeps every table whose rows are all durable; the rest
//!   are copied under a new snapshot, and the stream skips, for those
//!   tables only, what committed before that snapshot (see `resume`).
//! - Indexes and constraints come after the rows (faster, and what pg_dump
//!   does); the replication origin is set to the consistent point in the
//!   same transaction that marks the copy done.

mod carry;
pub mod copy;
mod discard;
mod holder;
pub mod kept;
pub mod pgdump;
pub mod plan;
pub mod pool;
mod post;
mod resume;
pub mod schema;
mod untouched;
mod workers;

use std::time::Duration;

use crate::conn::error::describe;
use crate::conn::walsender::{WalSender, WalSenderError};
use crate::conn::{ConnectError, Endpoint, Side};
use crate::lsn::Lsn;
use crate::progress::state::{self, SchemaOrigin, SyncPhase};
use crate::progress::ui::ProgressMode;
use crate::source::catalog::{SelectedTables, ServerFacts, SourceTable};
use crate::source::selection::Selection;
use crate::source::setup::SetupError;
use crate::sql::{PublicationName, SyncName, TableName};
pub use discard::{discard, Discarded};
use holder::{Holder, Planned};
use pgdump::{DumpRequest, PgDump, PgDumpError};
pub use resume::{resume, Resumed};
use schema::SchemaError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error(transparent)]
    WalSender(Box<WalSenderError>),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    PgDump(#[from] PgDumpError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("{side}: {what}: {message}")]
    Query {
        side: Side,
        what: &'static str,
        message: String,
        /// The connection broke or the server is restarting.
        transient: bool,
    },
    #[error("copying {table} failed on the {side}: {message}")]
    Copy {
        table: String,
        side: Side,
        message: String,
        transient: bool,
    },
    #[error("source: {tables} changed under the snapshot (TRUNCATE or a table-rewriting ALTER as the copy began): run pgrepl sync again to start over")]
    Rewritten { tables: String },
    #[error("source: the exported snapshot is gone (the replication session was lost during the copy): run pgrepl sync again to start the copy over")]
    SnapshotGone,
    #[error("target: {problems}: fix the target tables or drop --existing-schema")]
    Columns { problems: String },
    #[error("source: the tables changed while the sync was being set up ({what}); nothing was kept: run pgrepl sync again")]
    Changed { what: String },
    #[error("target: {chunks} copied chunk(s) were lost again and again (is the target restarting?): run pgrepl sync again")]
    ChunksLost { chunks: usize },
}

impl From<ConnectError> for SnapshotError {
    fn from(e: ConnectError) -> Self {
        SnapshotError::Connect(Box::new(e))
    }
}

impl From<crate::conn::raw::RawError> for SnapshotError {
    fn from(e: crate::conn::raw::RawError) -> Self {
        SnapshotError::WalSender(Box::new(e))
    }
}

impl SnapshotError {
    pub fn source(what: &'static str, e: &tokio_postgres::Error) -> Self {
        SnapshotError::Query {
            side: Side::Source,
            what,
            message: describe(e),
            transient: crate::conn::error::is_transient(e),
        }
    }

    pub fn target(what: &'static str, e: &tokio_postgres::Error) -> Self {
        SnapshotError::Query {
            side: Side::Target,
            what,
            message: describe(e),
            transient: crate::conn::error::is_transient(e),
        }
    }

    /// A connection broke, a server restarted, the snapshot died with its
    /// session: the copy can go on under a new snapshot (`resume`).
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Connect(c) => c.failure.is_transient(),
            SnapshotError::WalSender(e) => e.is_transient(),
            SnapshotError::Query { transient, .. } | SnapshotError::Copy { transient, .. } => {
                *transient
            }
            SnapshotError::SnapshotGone | SnapshotError::ChunksLost { .. } => true,
            SnapshotError::Setup(_)
            | SnapshotError::PgDump(_)
            | SnapshotError::Schema(_)
            | SnapshotError::Rewritten { .. }
            | SnapshotError::Columns { .. }
            | SnapshotError::Changed { .. } => false,
        }
    }
}

/// Everything the copy needs to know (cloned for each attempt of a copy
/// resumed within `--retry-for`).
#[derive(Clone)]
pub struct CopyRequest<'a> {
    pub name: &'a SyncName,
    pub source: &'a Endpoint,
    pub target: &'a Endpoint,
    pub source_facts: &'a ServerFacts,
    pub target_facts: &'a ServerFacts,
    /// The tables the preflight saw (the copy takes its own from the
    /// snapshot, see `holder`).
    pub selected: &'a SelectedTables,
    pub selection: &'a Selection,
    pub publication: PublicationName,
    pub existing_schema: bool,
    pub pg_dump: Option<PgDump>,
    pub jobs: usize,
    pub chunk_bytes: i64,
    /// Binary COPY allowed where safe (else always text).
    pub binary: bool,
    pub progress: ProgressMode,
    /// How long a copy session that lost its connection keeps trying to
    /// reconnect (the sync's --retry-for).
    pub retry_for: Duration,
    /// What moves besides rows: roles, extensions' versions, large
    /// objects, the database's settings.
    pub carry: &'a crate::carry::Plan,
    /// Where the target keeps the applied position from the copy on.
    pub ledger: crate::progress::ledger::Ledger,
    /// Make the slot a failover slot (PostgreSQL 17+).
    pub failover_slot: bool,
}

/// What a finished copy hands to the stream.
#[derive(Debug)]
pub struct Copied {
    pub consistent_lsn: Lsn,
    pub summary: String,
}

/// Creates the slot and copies everything under its snapshot. On error the
/// caller discards the partial copy (see [`discard`]).
pub async fn run(req: CopyRequest<'_>) -> Result<Copied, SnapshotError> {
    let (mut walsender, pinned) = open_decoder(req.source).await?;
    let primary = req.source;
    let req = CopyRequest {
        source: &pinned,
        ..req
    };
    let system = walsender.identify_system().await?;
    let slot = create_slot(
        &mut walsender,
        primary,
        req.name.slot(),
        SlotKind::Sync,
        req.failover_slot,
    )
    .await?;
    tracing::info!(slot = %req.name.slot(), consistent_lsn = %slot.consistent_point, snapshot = %slot.snapshot, "replication slot created");

    let holder = Holder::open(&req, &slot.snapshot).await?;
    let excluded = &holder.selected.excluded;
    let (mut pre, post, planned) = tokio::try_join!(
        dump(&req, &slot.snapshot, "pre-data", excluded),
        dump(&req, &slot.snapshot, "post-data", excluded),
        holder.lock_and_plan(&req),
    )?;
    let fingerprint = fingerprint(
        pre.as_ref(),
        post.as_ref(),
        &planned.units,
        &holder.ddl_mark().await,
    );
    let mut units = planned.units;

    if let Some(pre) = pre.as_mut() {
        schema::pin_extension_versions(&mut pre.creates, |name| {
            req.carry.extension_version(name).map(str::to_string)
        });
    }
    let mut tgt = req.target.connect().await?;
    let known = schema::known_settings(&tgt).await?;
    let existing = schema::existing_schemas(&tgt).await?;
    let table_names: Vec<TableName> = holder.storage().iter().map(|t| t.name.clone()).collect();
    {
        let tx = tgt
            .transaction()
            .await
            .map_err(|e| SnapshotError::target("starting the schema transaction", &e))?;
        state::ensure_schema(&tx)
            .await
            .map_err(|e| SnapshotError::target("creating the pgrepl schema", &e))?;
        // Roles first: the schema names them as owners and grantees.
        for sql in crate::carry::roles::statements(
            req.carry,
            &req.target_facts.database,
            req.target_facts.major(),
            req.target_facts.is_superuser,
        ) {
            tx.batch_execute(&sql)
                .await
                .map_err(|e| SchemaError::Rejected {
                    statement: crate::carry::roles::redacted(&sql),
                    message: describe(&e),
                })?;
        }
        let origin = match (&pre, &post) {
            (Some(pre), Some(post)) => {
                schema::run_statements(&tx, &pre.creates, &known, &existing).await?;
                SchemaOrigin::Created {
                    cleanup: schema::cleanup_script(&post.drops, &pre.drops, &existing)
                        + &crate::carry::roles::cleanup(req.carry),
                }
            }
            _ => {
                holder::check_columns(&tx, &mut units).await?;
                SchemaOrigin::Existing
            }
        };
        state::begin_copy(
            &tx,
            req.name,
            slot.consistent_point,
            &system,
            &origin,
            &table_names,
        )
        .await
        .map_err(|e| SnapshotError::target("recording the sync", &e))?;
        state::record_roles(&tx, req.name, req.carry.policy)
            .await
            .map_err(|e| SnapshotError::target("recording the sync", &e))?;
        kept::record_fingerprint(&tx, req.name, &fingerprint)
            .await
            .map_err(|e| SnapshotError::target("recording the sync", &e))?;
        kept::record_cuts(&tx, req.name, &plan::cuts(&units))
            .await
            .map_err(|e| SnapshotError::target("recording the sync", &e))?;
        tx.commit()
            .await
            .map_err(|e| SnapshotError::target("committing the schema", &e))?;
    }
    drop(tgt);
    if pre.is_some() {
        tracing::info!("pre-data schema created on the target");
    }

    let snapshot = Snapshot {
        id: &slot.snapshot,
        lsn: slot.consistent_point,
    };
    let copied = finish(
        &req,
        &holder,
        snapshot,
        Planned {
            units,
            sequences: planned.sequences,
        },
        (pre, post),
        slot.consistent_point,
    )
    .await?;
    drop(holder);
    drop(walsender);
    Ok(copied)
}

/// A replication session where the source decodes (the primary, or its
/// standby with `--source-standby`), and an endpoint pinned to that very
/// server: an exported snapshot lives on the server that made its slot, so
/// every session of the copy (and pg_dump) goes there, whichever server of
/// a multi-host conninfo that was.
async fn open_decoder(source: &Endpoint) -> Result<(WalSender, Endpoint), SnapshotError> {
    let walsender = WalSender::connect(Side::Source, &source.decoder().config).await?;
    let pinned = Endpoint::new(Side::Source, walsender.server().clone());
    Ok((walsender, pinned))
}

/// An exported snapshot and the LSN it shows the source at.
#[derive(Clone, Copy)]
struct Snapshot<'a> {
    id: &'a str,
    lsn: Lsn,
}

/// The rows of `planned.units` under `snapshot`, then sequences, indexes
/// and constraints, and the sync marked Copied: streaming starts at
/// `consistent` (the sync slot's point, whatever snapshot this copy ran
/// under).
async fn finish(
    req: &CopyRequest<'_>,
    holder: &Holder,
    snapshot: Snapshot<'_>,
    planned: Planned,
    (pre, post): (Option<schema::CleanDump>, Option<schema::CleanDump>),
    consistent: Lsn,
) -> Result<Copied, SnapshotError> {
    let summary = workers::copy_rows(req, snapshot.id, snapshot.lsn, planned.units).await?;

    let tgt = req.target.connect().await?;
    let set = crate::sequences::apply(&tgt, &planned.sequences)
        .await
        .map_err(|e| SnapshotError::target("setting sequences", &e))?;
    tracing::info!(
        sequences = set,
        "sequences set to their values as of the copy (never behind the snapshot)"
    );

    if let (Some(pre), Some(post)) = (&pre, &post) {
        let known = schema::known_settings(&tgt).await?;
        let existing = schema::existing_schemas(&tgt).await?;
        post::post_data(req, &holder.selected, &post.creates, &known, &existing).await?;
        post::refresh_matviews(&tgt, req.source, snapshot.id, &pre.creates).await?;
    }
    drop(tgt);

    let mut tgt = req.target.connect().await?;
    let tx = tgt
        .transaction()
        .await
        .map_err(|e| SnapshotError::target("finishing the copy", &e))?;
    req.ledger
        .start_at(&tx, req.name, consistent)
        .await
        .map_err(|e| SnapshotError::target("recording where streaming starts", &e))?;
    let carried = carry::finish(req, snapshot.id, &tx).await?;
    state::set_phase(&tx, req.name, SyncPhase::Copied)
        .await
        .map_err(|e| SnapshotError::target("recording the copy", &e))?;
    tx.commit()
        .await
        .map_err(|e| SnapshotError::target("finishing the copy", &e))?;
    let carried = carry::summary(req, carried, &tgt).await;
    Ok(Copied {
        consistent_lsn: consistent,
        summary: format!("{summary}\n{carried}"),
    })
}

/// The slot a copy runs under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// The sync's own slot, kept: streaming reads it.
    Sync,
    /// A temporary slot, for its snapshot only (a resumed copy).
    Temporary,
}

/// Creates a slot exporting its snapshot on `walsender`'s server. On a
/// standby the slot is ready at the next running-xacts record from the
/// primary, which the primary writes every 15 s by itself: asked for now
/// and again meanwhile (where the role may).
async fn create_slot(
    walsender: &mut WalSender,
    primary: &Endpoint,
    slot: crate::sql::SlotName,
    kind: SlotKind,
    failover: bool,
) -> Result<crate::conn::walsender::CreatedSlot, SnapshotError> {
    let on_standby = primary.standby.is_some();
    let kick =
        on_standby.then(|| crate::progress::scope::spawn(log_standby_snapshots(primary.clone())));
    let created = match kind {
        SlotKind::Sync => {
            walsender
                .create_slot_exporting_snapshot(&slot, failover && !on_standby)
                .await
        }
        SlotKind::Temporary => {
            walsender
                .create_temporary_slot_exporting_snapshot(&slot)
                .await
        }
    };
    if let Some(k) = kick {
        k.abort();
    }
    Ok(created?)
}

/// What a copy began with, for a resumed one to prove it begins with the
/// same: the schema pg_dump wrote (before and after the rows), each copied
/// table's columns and types, and the DDL log's mark (a DROP and CREATE of
/// the same table changes nothing else).
fn fingerprint(
    pre: Option<&schema::CleanDump>,
    post: Option<&schema::CleanDump>,
    units: &[plan::Unit],
    ddl_mark: &str,
) -> String {
    let mut out = format!("ddl log {ddl_mark}\n");
    for dump in [pre, post].into_iter().flatten() {
        for s in &dump.creates {
            out.push_str(&s.sql);
            out.push_str("\n;\n");
        }
    }
    let mut tables: Vec<String> = units
        .iter()
        .filter(|u| u.chunk == 0)
        .map(|u| {
            let cols: Vec<String> = u
                .table
                .columns
                .iter()
                .zip(&u.table.types)
                .map(|(c, t)| format!("{c} {t}"))
                .collect();
            format!("{} ({})", u.table.name, cols.join(", "))
        })
        .collect();
    tables.sort();
    out.push_str(&tables.join("\n"));
    out
}

async fn dump(
    req: &CopyRequest<'_>,
    snapshot: &str,
    section: &'static str,
    excluded: &[SourceTable],
) -> Result<Option<schema::CleanDump>, SnapshotError> {
    let Some(pg_dump) = &req.pg_dump else {
        return Ok(None);
    };
    if req.existing_schema {
        return Ok(None);
    }
    let excluded: Vec<TableName> = excluded.iter().map(|t| t.name.clone()).collect();
    let sql = pg_dump
        .dump(&DumpRequest {
            source: &req.source.config,
            snapshot,
            excluded: &excluded,
            section,
            clean: true,
            ownership: req.carry.carries_ownership(),
        })
        .await?;
    Ok(Some(schema::split_clean(schema::parse_dump(&sql)?)))
}

/// Asks the primary for a running-xacts record every second (PostgreSQL
/// 16+ `pg_log_standby_snapshot()`), so a slot being made on its standby
/// need not wait for the next one the primary writes by itself. A role
/// that may not call it leaves the waiting to the primary.
async fn log_standby_snapshots(primary: crate::conn::Endpoint) {
    let Ok(client) = primary.connect().await else {
        return;
    };
    loop {
        if let Err(e) = client
            .batch_execute("SELECT pg_catalog.pg_log_standby_snapshot()")
            .await
        {
            tracing::debug!(error = %describe(&e), "pg_log_standby_snapshot refused: the slot waits for the primary's own running-xacts record (up to 15 s)");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
