//! Resuming a copy that was interrupted (pgrepl killed, a server
//! restarted, a connection lost): its snapshot died with its session, so
//! what is left is copied under a new one.
//!
//! The rule: every table on the target holds the source's rows as of one
//! snapshot, and the stream applies, for each table, exactly the
//! transactions that snapshot lacks.
//!
//! - A table is kept only when every chunk of its plan is durable on the
//!   target and all of them come from one snapshot. A table with only some
//!   of its chunks is emptied (in the transaction that forgets its chunk
//!   records) and copied again whole: chunks of one table under two
//!   snapshots would disagree about a row that moved between them.
//! - The tables left are copied under the exported snapshot of a temporary
//!   slot made now, at LSN `L`. That snapshot holds every transaction whose
//!   commit record lies before `L`, and none from `L` on; the sync's slot
//!   still streams from its own consistent point `C` < `L`. So for a table
//!   copied at `L` the stream skips the transactions that committed
//!   before `L` (`pgrepl.tables.copied_lsn`, read by `apply::late`), as
//!   native logical replication's table sync does.
//! - Only when nothing about the schema changed in between: the schema
//!   pg_dump writes and every copied table's columns must be what the copy
//!   began with (a fingerprint recorded with the schema). A DDL replayed by
//!   the stream at its place before `L` would otherwise meet a table
//!   already holding rows of after it. Otherwise the copy starts over.
//! - Indexes and constraints an interrupted run built are dropped before
//!   they are built again (pg_dump's own clean statements).
//! - Durable first: one synchronous commit on the target before the chunk
//!   records are read, so what the copy sessions committed asynchronously
//!   is flushed; what a target crash lost has no record either (rows and
//!   record commit together).

use std::collections::HashSet;

use super::holder::{Holder, Planned};
use super::{
    create_slot, dump, fingerprint, finish, open_decoder, Copied, CopyRequest, SlotKind, Snapshot,
    SnapshotError,
};
use crate::progress::kept;
use crate::progress::state::SyncRecord;
use crate::sql::TableName;

/// How a resume ended.
#[derive(Debug)]
pub enum Resumed {
    /// The copy is done.
    Copied(Copied),
    /// It cannot be resumed (the reason): the caller starts it over.
    StartOver(String),
}

/// Resumes the interrupted copy of `record` (phase Copying, its slot
/// still there).
pub async fn resume(req: CopyRequest<'_>, record: &SyncRecord) -> Result<Resumed, SnapshotError> {
    let (mut walsender, pinned) = open_decoder(req.source).await?;
    let primary = req.source;
    let req = CopyRequest {
        source: &pinned,
        ..req
    };
    let temporary = req.name.temporary_slot(std::process::id());
    let slot = create_slot(
        &mut walsender,
        primary,
        temporary.clone(),
        SlotKind::Temporary,
        false,
    )
    .await?;
    tracing::info!(slot = %temporary, lsn = %slot.consistent_point, "snapshot for the rest of the copy");

    let holder = Holder::open(&req, &slot.snapshot).await?;
    let excluded = &holder.selected.excluded;
    let (pre, post, planned) = tokio::try_join!(
        dump(&req, &slot.snapshot, "pre-data", excluded),
        dump(&req, &slot.snapshot, "post-data", excluded),
        holder.lock_and_plan(&req),
    )?;

    let mut tgt = req.target.connect().await?;
    {
        let tx = tgt
            .transaction()
            .await
            .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?;
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?;
        tx.execute(
            "UPDATE pgrepl.sync SET updated_at = now() WHERE name = $1",
            &[&req.name.as_str()],
        )
        .await
        .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?;
        tx.commit()
            .await
            .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?;
    }
    let print = fingerprint(pre.as_ref(), post.as_ref(), &planned.units);
    match kept::same_fingerprint(&tgt, req.name, &print)
        .await
        .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?
    {
        Some(true) => {}
        Some(false) => {
            return Ok(Resumed::StartOver(
                "the source's schema changed since the copy began".into(),
            ))
        }
        None => {
            return Ok(Resumed::StartOver(
                "it was begun by an older pgrepl, which recorded too little to resume it".into(),
            ))
        }
    }
    let chunks = kept::chunks(&tgt, req.name)
        .await
        .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?;
    let (whole, partial) = kept::sort(&chunks, record.consistent_lsn);
    let planned_tables: HashSet<&TableName> = planned.units.iter().map(|u| &u.table.name).collect();
    if let Some(stray) = whole
        .iter()
        .map(|k| &k.table)
        .chain(&partial)
        .find(|t| !planned_tables.contains(t))
    {
        return Ok(Resumed::StartOver(format!(
            "{stray} was copied but is no longer among the tables to copy"
        )));
    }
    {
        let tx = tgt
            .transaction()
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
        kept::keep(&tx, req.name, &whole)
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
        kept::forget(&tx, req.name, &partial)
            .await
            .map_err(|e| SnapshotError::target("removing partly copied tables", &e))?;
        tx.commit()
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
    }
    drop(tgt);

    let keep: HashSet<&TableName> = whole.iter().map(|k| &k.table).collect();
    let units: Vec<_> = planned
        .units
        .into_iter()
        .filter(|u| !keep.contains(&u.table.name))
        .collect();
    let left: HashSet<&TableName> = units.iter().map(|u| &u.table.name).collect();
    let rows: i64 = whole.iter().map(|k| k.rows).sum();
    crate::say!(
        "Resuming the copy: {} table(s) kept ({rows} rows), {} to copy under a new snapshot at {}{}.",
        whole.len(),
        left.len(),
        slot.consistent_point,
        if partial.is_empty() {
            String::new()
        } else {
            format!(
                " ({} partly copied, emptied and copied again)",
                partial.len()
            )
        }
    );
    let copied = finish(
        &req,
        &holder,
        Snapshot {
            id: &slot.snapshot,
            lsn: slot.consistent_point,
        },
        Planned {
            units,
            sequences: planned.sequences,
        },
        (pre, post),
        record.consistent_lsn,
        true,
    )
    .await?;
    drop(holder);
    drop(walsender);
    Ok(Resumed::Copied(copied))
}
