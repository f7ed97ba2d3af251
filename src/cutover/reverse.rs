//! The way back (`cutover --reverse`): at the fence, before the
//! application moves, replication from the new server back to the old one
//! is set up, with nothing to copy (both hold the same rows at the fence):
//! on the target, the DDL capture, a publication and a slot; on the old
//! source, pgrepl's state for a sync `NAME_r` that starts at the slot's
//! consistent point. `pgrepl sync --name NAME_r --source NEW --target OLD`
//! then streams the application's writes back into the fenced old source
//! (pgrepl's apply runs as replica: the fence's triggers let it through,
//! nobody else), and a `cutover` of `NAME_r` moves the application back.
//!
//! The rule: what pgrepl applied is never sent back. Changes the forward
//! sync applied carry its replication origin; a reverse sync asks for
//! `origin 'none'` (16+) and leaves out transactions under a pgrepl origin
//! itself on older majors. A forward sync keeping its position in the
//! progress table (see `progress::ledger`) leaves no origin on what it
//! applied; none of that commits after the reverse slot is made: the
//! forward sync is held at the fence with everything applied, and the
//! fenced source writes nothing more.

use super::{CutoverError, CutoverRequest};
use crate::conn::walsender::WalSender;
use crate::conn::{Endpoint, Side};
use crate::ddl::capture;
use crate::progress::ledger::{Choice, Ledger};
use crate::progress::state::{self, SchemaOrigin, SyncPhase};
use crate::source::catalog::{self, SelectedTables, ServerFacts};
use crate::source::setup;
use crate::sql::{SyncName, TableName};

/// The reverse sync's name.
pub fn name_of(forward: &SyncName) -> Result<SyncName, CutoverError> {
    SyncName::new(&format!("{}_r", forward.as_str())).map_err(|_| {
        CutoverError::Other(format!(
            "--reverse names its sync {}_r, which is too long: use a sync name of at most 38 characters",
            forward.as_str()
        ))
    })
}

/// Before the fence: the target can be a source (logical WAL, a free
/// slot, a role allowed to replicate and capture DDL).
pub async fn check(req: &CutoverRequest<'_>) -> Result<(), CutoverError> {
    name_of(req.name)?;
    let tgt = req.target.connect().await?;
    let row = tgt
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int > (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .map_err(|e| CutoverError::target("checking the way back", &e))?;
    let (wal_level, free): (String, bool) = (row.get(0), row.get(1));
    if wal_level != "logical" {
        return Err(CutoverError::Other(format!(
            "target: --reverse streams from the target back to the source, and its wal_level is {wal_level}: set wal_level = logical there and restart it"
        )));
    }
    if !free {
        return Err(CutoverError::Other(
            "target: --reverse needs a free replication slot on the target (max_replication_slots)"
                .into(),
        ));
    }
    let facts = ServerFacts::read(&tgt)
        .await
        .map_err(|e| CutoverError::target("reading the target", &e))?;
    if !facts.is_superuser {
        return Err(CutoverError::Other(
            "target: --reverse installs the DDL capture on the target, which needs a superuser"
                .into(),
        ));
    }
    Ok(())
}

/// Sets up the reverse sync; returns its name.
pub async fn set_up(req: &CutoverRequest<'_>) -> Result<SyncName, CutoverError> {
    let name = match &req.reverse_as {
        Some(n) => n.clone(),
        None => name_of(req.name)?,
    };
    // Roles swap: the target is the new source.
    let (new_source, new_target) = (req.target, req.source);
    let (src, tgt) = tokio::try_join!(new_source.connect(), new_target.connect())?;
    let selection = capture::stored_selection(&tgt, req.name)
        .await
        .map_err(|e| CutoverError::source("reading the sync's selection", &e))?
        .or_else(|| req.selection.clone())
        .unwrap_or_default();
    let facts = ServerFacts::read(&src)
        .await
        .map_err(|e| CutoverError::target("reading the target", &e))?;
    let all = catalog::list_tables(&src)
        .await
        .map_err(|e| CutoverError::target("listing tables", &e))?;
    let selected = SelectedTables::choose(all, &selection)
        .map_err(|_| CutoverError::Other("target: the sync's tables are not all there".into()))?;
    let publication = name.publication();
    // Nothing of an earlier attempt stays in the way.
    if setup::drop_slot(&src, &name.slot(), name.as_str())
        .await
        .map_err(|e| CutoverError::Other(e.to_string()))?
    {
        tracing::info!(slot = %name.slot(), "dropped a reverse slot left by an earlier attempt");
    }
    setup::drop_publication(&src, &publication)
        .await
        .map_err(|e| CutoverError::Other(e.to_string()))?;
    capture::install(&src, &name, &publication, &selection)
        .await
        .map_err(|e| CutoverError::target("installing the DDL capture", &e))?;
    setup::ensure_publication(
        &src,
        &publication,
        &facts,
        &selected,
        selection.is_everything() && facts.is_superuser,
        &[TableName::new("pgrepl", "schema_log")],
    )
    .await
    .map_err(|e| CutoverError::Other(e.to_string()))?;
    let mut ws = WalSender::connect(Side::Target, &new_source.config)
        .await
        .map_err(|e| CutoverError::Other(e.to_string()))?;
    let system = ws
        .identify_system()
        .await
        .map_err(|e| CutoverError::Other(e.to_string()))?;
    let slot = ws
        .create_slot_exporting_snapshot(&name.slot(), false)
        .await
        .map_err(|e| CutoverError::Other(format!("target: creating the reverse slot: {e}")))?;
    drop(ws);
    let tables: Vec<TableName> = selected.with_storage().map(|t| t.name.clone()).collect();
    // pgrepl's own DDL on the fenced old source: neither the fence nor a
    // DDL capture there takes it for the user's.
    tgt.batch_execute("SET pgrepl.internal = 'on'")
        .await
        .map_err(|e| CutoverError::source("preparing the old source", &e))?;
    state::ensure_schema(&tgt)
        .await
        .map_err(|e| CutoverError::source("creating pgrepl's state", &e))?;
    tgt.execute("DELETE FROM pgrepl.sync WHERE name = $1", &[&name.as_str()])
        .await
        .map_err(|e| CutoverError::source("recording the reverse sync", &e))?;
    state::begin_copy(
        &tgt,
        &name,
        slot.consistent_point,
        &system,
        &SchemaOrigin::Existing,
        &tables,
    )
    .await
    .map_err(|e| CutoverError::source("recording the reverse sync", &e))?;
    state::mark_reverse(&tgt, &name, req.name)
        .await
        .map_err(|e| CutoverError::source("recording the reverse sync", &e))?;
    let ledger = Ledger::choose(&tgt, &name, Choice::Auto)
        .await
        .map_err(|e| CutoverError::source("reading function privileges", &e))?;
    ledger
        .start_at(&tgt, &name, slot.consistent_point)
        .await
        .map_err(|e| CutoverError::source("recording where the reverse sync starts", &e))?;
    state::set_phase(&tgt, &name, SyncPhase::Copied)
        .await
        .map_err(|e| CutoverError::source("recording the reverse sync", &e))?;
    Ok(name)
}

/// Removes the way back that a cutover of `forward` set up and did not
/// finish (it failed after, was interrupted, or died): the reverse slot,
/// publication and DDL capture on the new server (`new_source`, the
/// forward sync's target), and the reverse sync's state and origin on the
/// old source. Only for a forward sync that was not cut over: a reverse
/// slot left behind holds the new server's WAL for good. Returns what was
/// removed.
/// `way_back`: the name the way back has (or would have had): its slot
/// may stand before its state was recorded.
pub async fn tear_down(
    forward: &SyncName,
    way_back: Option<&SyncName>,
    old_source: &Endpoint,
    new_source: &Endpoint,
) -> Result<Vec<String>, CutoverError> {
    let old = old_source.connect().await?;
    let rows = old
        .query(
            "SELECT name FROM pgrepl.sync WHERE reverse_of = $1",
            &[&forward.as_str()],
        )
        .await;
    let mut names: Vec<SyncName> = match rows {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| SyncName::new(r.get::<_, &str>(0)).ok())
            .collect(),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => return Err(CutoverError::source("reading the way back's state", &e)),
    };
    let new = new_source.connect().await?;
    // The name it would have: only when its slot stands (made before the
    // state was recorded); nothing else is touched on a guess.
    if let Some(n) = way_back {
        let slot = setup::slot_info(&new, &n.slot())
            .await
            .map_err(|e| CutoverError::Other(e.to_string()))?;
        if slot.is_some() && !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut removed = Vec::new();
    for name in names {
        // The way back reads from the new server (this sync's target) and
        // writes to the old one.
        let failed = |e: crate::teardown::TeardownError| CutoverError::Other(e.to_string());
        crate::teardown::reading_side(&new, &new, &name, "target", "target", &mut removed)
            .await
            .map_err(failed)?;
        crate::teardown::writing_side(&old, &name, "source", &mut removed)
            .await
            .map_err(failed)?;
    }
    Ok(removed)
}

/// [`tear_down`] where nothing can be done about a failure but say it.
pub async fn tear_down_or_warn(
    forward: &SyncName,
    way_back: Option<&SyncName>,
    old_source: &Endpoint,
    new_source: &Endpoint,
) {
    match tear_down(forward, way_back, old_source, new_source).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(removed = %removed.join(", "), "removed the way back this cutover had set up")
        }
        Ok(_) => {}
        Err(e) => tracing::error!(
            error = %e,
            "could not remove the way back this cutover had set up: its slot on the target holds WAL; `pgrepl teardown --name {forward}_r` (source and target swapped) removes it"
        ),
    }
}
