//! Resuming a copy that was interrupted (pgrepl killed, a server
//! restarted, a connection lost): its snapshot died with its session, so
//! what is left is copied under a new one.
//!
//! The rule: every table on the target holds the source's rows as of one
//! snapshot, and the stream applies, for each table, exactly the
//! transactions that snapshot lacks.
//!
//! - A table is kept when every chunk of its plan is durable on the
//!   target and all come from one snapshot. Chunks of one table from
//!   different snapshots (or only some of its chunks) fit together only if
//!   no transaction changed the table in between and its file is the same
//!   (no VACUUM FULL moved its rows): then they are kept and the missing
//!   chunks, cut as before, copied under the new snapshot (`untouched`
//!   reads the slot's changes since without consuming them). Otherwise the
//!   table is emptied (in the transaction that forgets its chunk records)
//!   and copied again whole: chunks of one table under two snapshots would
//!   disagree about a row that changed between them.
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
//! - Indexes, keys and triggers an interrupted run built are dropped
//!   (pg_dump's own clean statements) before any row is copied again.
//! - Nothing of it is trusted on another server (system identifier), and a
//!   DDL logged in `[C, L)` starts the copy over too: the stream would
//!   replay it onto tables copied after it. The fingerprint holds the DDL
//!   log's count and last id for that (a DROP and CREATE of the same table
//!   leaves the schema as it was).
//! - Durable first: one synchronous commit on the target before the chunk
//!   records are read, so what the copy sessions committed asynchronously
//!   is flushed; what a target crash lost has no record either (rows and
//!   record commit together).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::holder::{Holder, Planned};
use super::kept;
use super::plan::{self, Cut, TablePlan, Unit};
use super::{
    create_slot, dump, fingerprint, finish, open_decoder, untouched, Copied, CopyRequest, SlotKind,
    Snapshot, SnapshotError,
};
use crate::lsn::Lsn;
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
    let system = walsender.identify_system().await?;
    if system.system_id != record.source_system_id {
        return Ok(Resumed::StartOver(format!(
            "the source is another server now (system {}, the copy began on {})",
            system.system_id, record.source_system_id
        )));
    }
    let temporary = req.name.resume_slot(std::process::id(), next_attempt());
    let slot = create_slot(
        &mut walsender,
        primary,
        temporary.clone(),
        SlotKind::Temporary,
        false,
    )
    .await?;
    tracing::info!(slot = %temporary, lsn = %slot.consistent_point, "snapshot for the rest of the copy");

    // What fails here the same way every time (a table changed under the
    // setup, columns the target cannot take) cannot be resumed.
    let prepared = async {
        let holder = Holder::open(&req, &slot.snapshot).await?;
        let excluded = &holder.selected.excluded;
        let (pre, post, mut planned) = tokio::try_join!(
            dump(&req, &slot.snapshot, "pre-data", excluded),
            dump(&req, &slot.snapshot, "post-data", excluded),
            holder.lock_and_plan(&req),
        )?;
        if req.existing_schema || pre.is_none() {
            let client = req.target.connect().await?;
            super::holder::check_columns(&client, &mut planned.units).await?;
        }
        Ok::<_, SnapshotError>((holder, pre, post, planned))
    }
    .await;
    let (holder, pre, post, planned) = match prepared {
        Ok(p) => p,
        Err(
            e @ (SnapshotError::Changed { .. }
            | SnapshotError::Columns { .. }
            | SnapshotError::Schema(_)
            | SnapshotError::Rewritten { .. }),
        ) => return Ok(Resumed::StartOver(e.to_string())),
        Err(e) => return Err(e),
    };
    let unlogged: HashSet<&TableName> = holder
        .selected
        .tables
        .iter()
        .filter(|t| t.unlogged)
        .map(|t| &t.name)
        .collect();

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
    let print = fingerprint(
        pre.as_ref(),
        post.as_ref(),
        &planned.units,
        &holder.ddl_mark().await,
    );
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
    let cuts = kept::cuts(&tgt, req.name)
        .await
        .map_err(|e| SnapshotError::target("reading what the copy kept", &e))?;
    let later = slot.consistent_point;
    let plans: HashMap<&TableName, Arc<TablePlan>> = planned
        .units
        .iter()
        .map(|u| (&u.table.name, u.table.clone()))
        .collect();
    let mut decided = Decided::default();
    // Tables whose chunks fit together if nothing changed them in a
    // window of commits: from their first chunk's snapshot on.
    let mut windows: HashMap<TableName, (Lsn, Lsn)> = HashMap::new();
    let copied = kept::by_table(&chunks, record.consistent_lsn);
    for t in &copied {
        if !plans.contains_key(&t.table) {
            return Ok(Resumed::StartOver(format!(
                "{} was copied but is no longer among the tables to copy",
                t.table
            )));
        }
        let (first, last) = t.lsns();
        if t.whole() && first == last {
            decided.whole.push(t.table.clone());
        } else if unlogged.contains(&t.table) {
            decided.forget.push(t.table.clone());
        } else if t.whole() {
            // Consistent as of its last chunk if nothing changed it since
            // its first (what came after, the stream applies).
            windows.insert(t.table.clone(), (first, last));
        } else if same_file(&holder, &t.table, cuts.get(&t.table)).await? {
            windows.insert(t.table.clone(), (first, later));
        } else {
            decided.forget.push(t.table.clone());
        }
    }
    let stretch = match windows.is_empty() {
        true => untouched::Stretch::default(),
        false => {
            let decoder = req.source.connect().await?;
            untouched::read(
                &decoder,
                &req.name.slot(),
                &req.publication,
                later,
                &windows,
            )
            .await
        }
    };
    // (The fingerprint's DDL mark should have seen it already.)
    if stretch.ddl {
        return Ok(Resumed::StartOver(
            "a DDL ran on the source while the copy was down".into(),
        ));
    }
    for table in windows.into_keys() {
        match stretch.changed.contains(&table) {
            true => decided.forget.push(table),
            false => decided.untouched.push(table),
        }
    }

    // What is left to copy under the new snapshot: the chunks a table
    // kept in part lacks (cut as it was), every other table as planned now.
    let by_name: HashMap<&TableName, &kept::CopiedTable> =
        copied.iter().map(|t| (&t.table, t)).collect();
    let mut kept_tables = Vec::new();
    let mut units = Vec::new();
    let mut kept_chunks = 0;
    for table in decided.whole.iter().chain(&decided.untouched) {
        let t = by_name[table];
        if t.whole() {
            kept_tables.push(kept::KeptTable {
                table: table.clone(),
                rows: t.rows(),
                lsn: t.lsns().1,
            });
            continue;
        }
        let (Some(cut), Some(plan)) = (cuts.get(table), plans.get(table)) else {
            continue;
        };
        kept_chunks += t.chunks.len();
        let n = cut.ranges.len();
        for (chunk, range) in cut.ranges.iter().enumerate() {
            if !t.chunks.contains_key(&chunk) {
                units.push(Unit {
                    table: plan.clone(),
                    range: range.clone(),
                    chunk,
                    chunks: n,
                    estimated_bytes: plan.bytes / n as i64,
                });
            }
        }
    }
    let in_part: HashSet<&TableName> = decided
        .untouched
        .iter()
        .filter(|t| !by_name[t].whole())
        .collect();
    let keep: HashSet<&TableName> = kept_tables.iter().map(|k| &k.table).collect();
    let fresh: Vec<Unit> = planned
        .units
        .into_iter()
        .filter(|u| !keep.contains(&u.table.name) && !in_part.contains(&u.table.name))
        .collect();
    // Indexes, keys and triggers an interrupted run began to build go
    // before any row is copied again (no trigger fires, no key is checked).
    if let Some(post) = &post {
        super::post::drop_built(&tgt, &post.drops).await?;
    }
    {
        let tx = tgt
            .transaction()
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
        kept::keep(&tx, req.name, &kept_tables)
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
        kept::forget(&tx, req.name, &decided.forget)
            .await
            .map_err(|e| SnapshotError::target("removing partly copied tables", &e))?;
        kept::record_cuts(&tx, req.name, &plan::cuts(&fresh))
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
        tx.commit()
            .await
            .map_err(|e| SnapshotError::target("keeping what the copy did", &e))?;
    }
    drop(tgt);
    units.extend(fresh);
    units.sort_by_key(|u| std::cmp::Reverse(u.estimated_bytes));

    let left: HashSet<&TableName> = units.iter().map(|u| &u.table.name).collect();
    let rows: i64 = kept_tables.iter().map(|k| k.rows).sum();
    crate::say!(
        "Resuming the copy: {} table(s) kept ({rows} rows){}, {} to copy under a new snapshot at {later}{}.",
        kept_tables.len(),
        match in_part.len() {
            0 => String::new(),
            n => format!(", {kept_chunks} chunk(s) of {n} split table(s) kept"),
        },
        left.len(),
        match decided.forget.len() {
            0 => String::new(),
            n => format!(" ({n} partly copied or changed since, emptied and copied again)"),
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
    )
    .await?;
    drop(holder);
    drop(walsender);
    Ok(Resumed::Copied(copied))
}

/// What becomes of each table the target holds chunks of.
#[derive(Default)]
struct Decided {
    /// Every chunk there, from one snapshot.
    whole: Vec<TableName>,
    /// Chunks from several snapshots (or some of them), and no change to
    /// the table since the first: kept, the rest copied.
    untouched: Vec<TableName>,
    /// Emptied and copied again.
    forget: Vec<TableName>,
}

/// The table is the file it was when it was cut (`cut`: how, if recorded).
async fn same_file(
    holder: &Holder,
    table: &TableName,
    cut: Option<&Cut>,
) -> Result<bool, SnapshotError> {
    let Some(cut) = cut else {
        return Ok(false);
    };
    let row = holder
        .client
        .query_opt(
            "SELECT c.relfilenode::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| SnapshotError::source("reading a table's file", &e))?;
    Ok(row.is_some_and(|r| r.get::<_, i64>(0) == cut.relfilenode))
}

/// Attempts of this process, for a fresh temporary slot name each (a
/// backend of the last one may not have noticed its client is gone).
fn next_attempt() -> u32 {
    static ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
