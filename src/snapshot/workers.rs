//! The copy run: every unit handed to `--jobs` workers (see `copy`), with
//! progress, then proved durable.
//!
//! The rule: a unit counts as copied only once its rows are durable on the
//! target. Copy sessions commit asynchronously (an fsync per chunk would
//! cost the copy), so a target that crashes and restarts while the workers
//! reconnect can lose units already committed. When the workers are done,
//! one synchronous commit flushes everything committed before it; the units
//! then missing from `pgrepl.copied_chunks` were lost, and are copied again
//! until none is missing. The row counts recorded per table come from
//! those durable records.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::copy::{self, CopyJob};
use super::plan::{TablePlan, Unit};
use super::{CopyRequest, SnapshotError};
use crate::conn::Side;
use crate::lsn::Lsn;
use crate::progress::state;
use crate::progress::ui::{CopyDisplay, ProgressMode, TableStats};
use crate::sql::TableName;

/// Rounds of copying lost units again before giving up.
const ROUNDS: usize = 4;

/// Copies every unit; returns the summary to print.
pub async fn copy_rows(
    req: &CopyRequest<'_>,
    snapshot: &str,
    snapshot_lsn: Lsn,
    units: Vec<Unit>,
) -> Result<String, SnapshotError> {
    let mut per_table: HashMap<TableName, (Arc<TablePlan>, usize)> = HashMap::new();
    for u in &units {
        per_table
            .entry(u.table.name.clone())
            .or_insert((u.table.clone(), 0))
            .1 += 1;
    }
    let mut stats = HashMap::new();
    let mut ordered = Vec::new();
    for (name, (plan, count)) in per_table {
        let s = Arc::new(TableStats::new(
            name.clone(),
            plan.estimated_rows,
            plan.bytes,
            count,
        ));
        ordered.push(s.clone());
        stats.insert(name, s);
    }
    ordered.sort_by(|a, b| a.name.cmp(&b.name));
    crate::progress::telemetry::telemetry().watch_tables(ordered.clone());
    let workers = req.jobs.max(1).min(units.len().max(1));
    let all = units.clone();
    let job = Arc::new(CopyJob {
        name: req.name.clone(),
        source: req.source.clone(),
        target: req.target.clone(),
        snapshot: snapshot.to_string(),
        snapshot_lsn,
        queue: Mutex::new(VecDeque::from(units)),
        stats,
        display: CopyDisplay::new(req.progress, ordered),
        retry_for: req.retry_for,
    });
    let ticker = {
        let job = job.clone();
        let every = if req.progress == ProgressMode::Bars {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(1)
        };
        crate::progress::scope::spawn(async move {
            let mut interval = tokio::time::interval(every);
            loop {
                interval.tick().await;
                job.display.tick();
            }
        })
    };
    let result = copy_until_durable(&job, workers, &all).await;
    ticker.abort();
    job.display.tick();
    let summary = job.display.finish();
    result.map(|()| summary)
}

async fn copy_until_durable(
    job: &Arc<CopyJob>,
    workers: usize,
    all: &[Unit],
) -> Result<(), SnapshotError> {
    for round in 0..ROUNDS {
        run_workers(job, workers).await?;
        let durable = durable_units(job).await?;
        let lost: Vec<&Unit> = all
            .iter()
            .filter(|u| !durable.contains_key(&(u.table.name.clone(), u.chunk)))
            .collect();
        if lost.is_empty() {
            return record_tables(job, &durable).await;
        }
        tracing::warn!(
            chunks = lost.len(),
            round,
            "copied chunks were lost by a target restart: copying them again"
        );
        let mut queue = job
            .queue
            .lock()
            .map_err(|_| SnapshotError::ChunksLost { chunks: lost.len() })?;
        for u in lost {
            if let Some(s) = job.stats.get(&u.table.name) {
                s.units_left.fetch_add(1, Ordering::SeqCst);
            }
            queue.push_back(u.clone());
        }
    }
    Err(SnapshotError::ChunksLost { chunks: all.len() })
}

async fn run_workers(job: &Arc<CopyJob>, workers: usize) -> Result<(), SnapshotError> {
    let mut set = JoinSet::new();
    for id in 0..workers {
        set.spawn(crate::progress::scope::bound(copy::worker(job.clone(), id)));
    }
    while let Some(joined) = set.join_next().await {
        let outcome = joined.unwrap_or_else(|e| {
            Err(SnapshotError::Query {
                side: Side::Target,
                what: "copy worker",
                message: e.to_string(),
                transient: false,
            })
        });
        if let Err(e) = outcome {
            // Wait for the others to end: a commit of theirs must not land
            // after a resume has read what was copied.
            set.abort_all();
            while set.join_next().await.is_some() {}
            return Err(e);
        }
    }
    Ok(())
}

/// The units the target holds durably, with their rows: a synchronous
/// commit first flushes every asynchronous one before it.
async fn durable_units(job: &CopyJob) -> Result<HashMap<(TableName, usize), u64>, SnapshotError> {
    let started = Instant::now();
    loop {
        match read_durable(job).await {
            Ok(done) => return Ok(done),
            Err(e) if started.elapsed() < job.retry_for => {
                tracing::warn!(error = %e, "target unreachable while checking the copy; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn read_durable(job: &CopyJob) -> Result<HashMap<(TableName, usize), u64>, SnapshotError> {
    let mut client = job.target.connect().await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| SnapshotError::target("checking the copy", &e))?;
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(|e| SnapshotError::target("checking the copy", &e))?;
    tx.execute(
        "UPDATE pgrepl.sync SET updated_at = now() WHERE name = $1",
        &[&job.name.as_str()],
    )
    .await
    .map_err(|e| SnapshotError::target("checking the copy", &e))?;
    tx.commit()
        .await
        .map_err(|e| SnapshotError::target("checking the copy", &e))?;
    let rows = client
        .query(
            "SELECT schema_name, table_name, chunk, rows FROM pgrepl.copied_chunks WHERE sync_name = $1",
            &[&job.name.as_str()],
        )
        .await
        .map_err(|e| SnapshotError::target("checking the copy", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (
                    TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                    r.get::<_, i32>(2) as usize,
                ),
                r.get::<_, i64>(3) as u64,
            )
        })
        .collect())
}

/// Every table Copied, with its durable row count.
async fn record_tables(
    job: &CopyJob,
    durable: &HashMap<(TableName, usize), u64>,
) -> Result<(), SnapshotError> {
    let mut rows: HashMap<&TableName, u64> = HashMap::new();
    for ((table, _), n) in durable {
        *rows.entry(table).or_default() += n;
    }
    let mut copied = Vec::with_capacity(job.stats.len());
    for (table, stats) in &job.stats {
        let n = rows.get(table).copied().unwrap_or(0);
        stats.rows.store(n, Ordering::SeqCst);
        copied.push((
            table.clone(),
            n as i64,
            stats.bytes.load(Ordering::SeqCst) as i64,
        ));
    }
    let client = job.target.connect().await?;
    state::set_tables_copied(&client, &job.name, &copied, job.snapshot_lsn)
        .await
        .map_err(|e| SnapshotError::target("recording table state", &e))?;
    Ok(())
}
