//! The copy workers: each holds one source session inside the exported
//! snapshot and one target session, and pipes `COPY ... TO STDOUT` into
//! `COPY ... FROM STDIN` unit after unit. A unit's rows and its marker in
//! `pgrepl.copied_chunks` commit together, so a retry after a broken
//! connection never copies a chunk twice. A worker that loses a connection
//! reconnects for up to `--retry-for` (a target restarting, say); what a
//! restart lost is found and copied again by `workers`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_postgres::Client;
use tracing::Instrument;

use super::plan::Unit;
use super::SnapshotError;
use crate::conn::raw::{CopyOut, RawError, RawSession};
use crate::conn::{Endpoint, Side};
use crate::lsn::Lsn;
use crate::progress::state::{self, TableState};
use crate::progress::ui::{CopyDisplay, TableStats};
use crate::sql::{quote_literal, SyncName, TableName};

/// Source session settings for work inside the snapshot: no timeout may
/// end a long copy or the idle lock-holding transaction.
pub const SOURCE_SESSION: &str =
    "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; SET lock_timeout = 0";

/// Opens the snapshot on `client`: from here it sees the source exactly as
/// of the slot's consistent point.
pub async fn import_snapshot(client: &Client, snapshot: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "{SOURCE_SESSION}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
}

/// Everything the workers share.
pub struct CopyJob {
    pub name: SyncName,
    pub source: Endpoint,
    pub target: Endpoint,
    pub snapshot: String,
    /// The LSN the snapshot shows the source at (recorded per chunk).
    pub snapshot_lsn: Lsn,
    pub queue: Mutex<VecDeque<Unit>>,
    pub stats: HashMap<TableName, Arc<TableStats>>,
    pub display: CopyDisplay,
    /// How long a worker keeps reconnecting.
    pub retry_for: Duration,
}

impl CopyJob {
    fn next(&self) -> Option<Unit> {
        self.queue.lock().ok()?.pop_front()
    }

    /// Nothing left to copy (a worker that waited for a place finds the
    /// others took everything).
    fn is_empty(&self) -> bool {
        self.queue.lock().map(|q| q.is_empty()).unwrap_or(true)
    }
}

/// The snapshot, imported on a raw session (for the copy pipe).
async fn import_snapshot_raw(session: &mut RawSession, snapshot: &str) -> Result<(), RawError> {
    session
        .simple_query(&format!(
            "{SOURCE_SESSION}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map(|_| ())
}

async fn open_source(job: &CopyJob) -> Result<RawSession, RawError> {
    let mut src = RawSession::connect(Side::Source, &job.source.config, false).await?;
    import_snapshot_raw(&mut src, &job.snapshot).await?;
    Ok(src)
}

async fn open_target(job: &CopyJob) -> Result<RawSession, RawError> {
    let mut tgt = RawSession::connect(Side::Target, &job.target.config, false).await?;
    tgt.simple_query("SET synchronous_commit = off; SET statement_timeout = 0")
        .await?;
    Ok(tgt)
}

/// Both sessions of a worker, reconnecting while the failure is transient
/// and `--retry-for` has not passed.
async fn open(job: &CopyJob, since: Instant) -> Result<(RawSession, RawSession), SnapshotError> {
    let mut attempt = 0u32;
    loop {
        let opened =
            async { Ok::<_, RawError>((open_source(job).await?, open_target(job).await?)) }.await;
        match opened {
            Ok(pair) => return Ok(pair),
            Err(e) if e.is_transient() && since.elapsed() < job.retry_for => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "copy session: reconnecting");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt.min(8)))).await;
            }
            Err(e) if e.to_string().contains("snapshot") => {
                return Err(SnapshotError::SnapshotGone)
            }
            Err(e) => {
                let side = match &e {
                    RawError::Server { side, .. }
                    | RawError::Io { side, .. }
                    | RawError::Protocol { side, .. } => *side,
                    RawError::Connect(c) => c.side,
                };
                return Err(SnapshotError::Query {
                    side,
                    what: "opening a copy session",
                    message: e.to_string(),
                    transient: e.is_transient(),
                });
            }
        }
    }
}

/// Records a table's state on the worker's own target session.
async fn record_state(
    tgt: &mut RawSession,
    job: &CopyJob,
    table: &TableName,
    state: &TableState,
) -> Result<(), RawError> {
    tgt.simple_query(&state::table_state_sql(&job.name, table, state))
        .await
        .map(|_| ())
}

/// One worker: copies units until the queue is empty.
pub async fn worker(job: Arc<CopyJob>, id: usize) -> Result<(), SnapshotError> {
    // A place in the process's pool first (several databases at once).
    let _place = super::pool::place().await;
    if job.is_empty() {
        return Ok(());
    }
    let (mut src, mut tgt) = open(&job, Instant::now()).await?;
    while let Some(unit) = job.next() {
        let stats = job
            .stats
            .get(&unit.table.name)
            .cloned()
            .expect("every unit's table has stats: both are built from the same plan");
        let span =
            tracing::info_span!("copy", table = %unit.table.name, chunk = unit.chunk, worker = id);
        let started = job.display.table_started(&stats);
        let mut failing_since: Option<Instant> = None;
        loop {
            let result = async {
                if started && shows_copying(&unit) {
                    record_state(&mut tgt, &job, &unit.table.name, &TableState::Copying)
                        .await
                        .map_err(|e| unit_error(&unit, e))?;
                }
                copy_unit(&job, &mut src, &mut tgt, &unit, &stats).await
            }
            .instrument(span.clone())
            .await;
            match result {
                Ok(()) => break,
                Err(UnitError::Transient(e)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= job.retry_for {
                        return Err(e);
                    }
                    tracing::warn!(parent: &span, error = %e, "copy interrupted; reconnecting and retrying the chunk");
                    (src, tgt) = open(&job, since).await?;
                }
                Err(UnitError::Fatal(e)) => return Err(e),
            }
        }
        if stats.units_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            // For `status` while the copy runs (a table of one unit was
            // marked in the unit's own commit); `workers` records the
            // durable counts at the end.
            if unit.chunks > 1 {
                let state = TableState::Copied {
                    rows: stats.rows.load(Ordering::SeqCst) as i64,
                    bytes: stats.bytes.load(Ordering::SeqCst) as i64,
                };
                if let Err(e) = record_state(&mut tgt, &job, &unit.table.name, &state).await {
                    tracing::debug!(error = %e, "recording a table's state");
                }
            }
            job.display.table_done(&stats);
        }
    }
    Ok(())
}

/// Tables smaller than this are not marked Copying on their way: a round
/// trip and a commit each, for a state `status` would show for a moment.
const SHOW_COPYING_FROM: i64 = 8 * 1024 * 1024;

fn shows_copying(unit: &Unit) -> bool {
    unit.chunks > 1 || unit.table.bytes >= SHOW_COPYING_FROM
}

enum UnitError {
    Transient(SnapshotError),
    Fatal(SnapshotError),
}

fn unit_error(unit: &Unit, e: RawError) -> UnitError {
    let (side, message) = match &e {
        RawError::Server { side, error } => (*side, error.to_string()),
        RawError::Io { side, error } => (*side, format!("connection lost: {error}")),
        RawError::Protocol { side, what } => (*side, what.clone()),
        RawError::Connect(c) => (c.side, c.to_string()),
    };
    let err = SnapshotError::Copy {
        table: unit.label(),
        side,
        message,
        transient: e.is_transient(),
    };
    if e.is_transient() {
        UnitError::Transient(err)
    } else {
        UnitError::Fatal(err)
    }
}

/// COPY data is passed on in chunks of this size, whatever the rows.
const CHUNK: usize = 256 * 1024;

async fn copy_unit(
    job: &CopyJob,
    src: &mut RawSession,
    tgt: &mut RawSession,
    unit: &Unit,
    stats: &TableStats,
) -> Result<(), UnitError> {
    let table = &unit.table.name;
    let marker = format!(
        "pgrepl.copied_chunks WHERE sync_name = {} AND schema_name = {} AND table_name = {} AND chunk = {}",
        quote_literal(job.name.as_str()),
        quote_literal(&table.schema),
        quote_literal(&table.name),
        unit.chunk
    );
    let done = tgt
        .simple_query(&format!("BEGIN; SELECT rows FROM {marker}"))
        .await
        .map_err(|e| unit_error(unit, e))?;
    if let Some(rows) = done
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|r| r.parse::<u64>().ok())
    {
        tracing::info!(rows, "chunk was already copied before the connection broke");
        stats.rows.fetch_add(rows, Ordering::Relaxed);
        tgt.simple_query("COMMIT")
            .await
            .map_err(|e| unit_error(unit, e))?;
        return Ok(());
    }
    // Both sides start their COPY in the same round trip.
    let (out_sql, in_sql) = (unit.copy_out_sql(), unit.copy_in_sql());
    let (out, into) = tokio::join!(src.copy_out(&out_sql), tgt.copy_in(&in_sql));
    out.map_err(|e| unit_error(unit, e))?;
    into.map_err(|e| unit_error(unit, e))?;
    let mut tally = Tally {
        stats,
        rows: 0,
        bytes: 0,
        kept: false,
    };
    let mut buf = BytesMut::with_capacity(2 * CHUNK);
    loop {
        let chunk = src
            .copy_out_chunk(&mut buf, CHUNK)
            .await
            .map_err(|e| unit_error(unit, e))?;
        let (messages, last) = match chunk {
            CopyOut::Data { messages } => (messages, false),
            CopyOut::Done { messages, .. } => (messages, true),
        };
        if !buf.is_empty() {
            tally.add(messages, buf.len() as u64);
            tgt.copy_data(&buf);
            buf.clear();
            tgt.flush().await.map_err(|e| unit_error(unit, e))?;
        }
        if last {
            break;
        }
    }
    let rows = tgt.copy_done().await.map_err(|e| unit_error(unit, e))?;
    let copied = if unit.chunks == 1 {
        let state = TableState::Copied {
            rows: rows as i64,
            bytes: tally.bytes as i64,
        };
        format!("{}; ", state::table_state_sql(&job.name, table, &state))
    } else {
        String::new()
    };
    tgt.simple_query(&format!(
        "INSERT INTO pgrepl.copied_chunks (sync_name, schema_name, table_name, chunk, chunks, rows, snapshot_lsn, bytes) VALUES ({}, {}, {}, {}, {}, {rows}, {}, {}); {copied}COMMIT",
        quote_literal(job.name.as_str()),
        quote_literal(&table.schema),
        quote_literal(&table.name),
        unit.chunk,
        unit.chunks,
        quote_literal(&job.snapshot_lsn.to_string()),
        tally.bytes,
    ))
    .await
    .map_err(|e| unit_error(unit, e))?;
    // Live counting saw one message per row (plus a binary trailer): settle
    // on the server's exact count.
    tally.settle(rows);
    tracing::debug!(
        rows,
        bytes = tally.bytes,
        chunk = unit.chunk,
        chunks = unit.chunks,
        "unit copied"
    );
    Ok(())
}

/// What one attempt added to the table's counters; taken back unless the
/// attempt committed.
struct Tally<'a> {
    stats: &'a TableStats,
    rows: u64,
    bytes: u64,
    kept: bool,
}

impl Tally<'_> {
    fn add(&mut self, rows: u64, bytes: u64) {
        self.rows += rows;
        self.bytes += bytes;
        self.stats.rows.fetch_add(rows, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        crate::progress::telemetry::telemetry()
            .copy_bytes
            .inc_by(bytes);
    }

    fn settle(&mut self, exact_rows: u64) {
        self.stats.rows.fetch_add(exact_rows, Ordering::Relaxed);
        self.stats.rows.fetch_sub(self.rows, Ordering::Relaxed);
        self.rows = exact_rows;
        self.kept = true;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.stats.rows.fetch_sub(self.rows, Ordering::Relaxed);
            self.stats.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}
