//! After the rows: indexes and constraints (faster built once than kept up
//! row by row, as pg_dump does), then materialized views refreshed where
//! the source has them populated.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;
use tokio_postgres::Client;

use super::schema::{self, Kind, Statement};
use super::{copy, CopyRequest, SnapshotError};
use crate::conn::{Endpoint, Side};
use crate::source::catalog::SelectedTables;
use crate::sql::TableName;

/// Post-data: index builds in parallel on `--jobs` sessions, largest
/// table first; then the rest (foreign keys, triggers, ...) in order.
pub async fn post_data(
    req: &CopyRequest<'_>,
    selected: &SelectedTables,
    statements: &[Statement],
    known: &HashSet<String>,
    existing: &HashSet<String>,
) -> Result<(), SnapshotError> {
    let settings = schema::settings(statements);
    let sizes: HashMap<&TableName, i64> =
        selected.tables.iter().map(|t| (&t.name, t.bytes)).collect();
    let mut builds: Vec<Statement> = statements
        .iter()
        .filter(|s| matches!(s.kind, Kind::BuildsIndex(_)))
        .cloned()
        .collect();
    builds.sort_by_key(|s| match &s.kind {
        Kind::BuildsIndex(Some(t)) => std::cmp::Reverse(sizes.get(t).copied().unwrap_or(0)),
        _ => std::cmp::Reverse(0),
    });
    let rest: Vec<Statement> = statements
        .iter()
        .filter(|s| !matches!(s.kind, Kind::BuildsIndex(_) | Kind::Setting(_)))
        .cloned()
        .collect();
    let started = std::time::Instant::now();
    let count = builds.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(builds)));
    let mut set = JoinSet::new();
    for _ in 0..req.jobs.max(1).min(count.max(1)) {
        let queue = queue.clone();
        let target = req.target.clone();
        let settings = settings.clone();
        let known = known.clone();
        let existing = existing.clone();
        set.spawn(async move {
            let client = target.connect().await?;
            client
                .batch_execute("SET statement_timeout = 0; SET maintenance_work_mem = '256MB'")
                .await
                .map_err(|e| SnapshotError::target("setting up an index session", &e))?;
            schema::run_statements(&client, &settings, &known, &existing).await?;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(stmt) = next else {
                    return Ok::<(), SnapshotError>(());
                };
                schema::run_statements(&client, std::slice::from_ref(&stmt), &known, &existing)
                    .await?;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        let outcome = joined.unwrap_or_else(|e| {
            Err(SnapshotError::Query {
                side: Side::Target,
                what: "index build",
                message: e.to_string(),
                transient: false,
            })
        });
        if let Err(e) = outcome {
            set.abort_all();
            return Err(e);
        }
    }
    tracing::info!(
        indexes = count,
        seconds = started.elapsed().as_secs_f64(),
        "indexes and keys built"
    );
    let client = req.target.connect().await?;
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(|e| SnapshotError::target("setting up the post-data session", &e))?;
    schema::run_statements(&client, &settings, known, existing).await?;
    schema::run_statements(&client, &rest, known, existing).await?;
    Ok(())
}

/// Materialized views come empty from the schema: refresh those the
/// source has populated, in creation order.
pub async fn refresh_matviews(
    target: &Client,
    source: &Endpoint,
    snapshot: &str,
    pre: &[Statement],
) -> Result<(), SnapshotError> {
    let matviews: Vec<&TableName> = pre
        .iter()
        .filter_map(|s| match &s.kind {
            Kind::CreateMatView(name) => Some(name),
            _ => None,
        })
        .collect();
    if matviews.is_empty() {
        return Ok(());
    }
    let src = source.connect().await?;
    copy::import_snapshot(&src, snapshot)
        .await
        .map_err(|e| SnapshotError::source("importing the snapshot", &e))?;
    let populated: HashSet<TableName> = src
        .query(
            "SELECT schemaname::text, matviewname::text FROM pg_matviews WHERE ispopulated",
            &[],
        )
        .await
        .map_err(|e| SnapshotError::source("reading materialized views", &e))?
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    for mv in matviews.into_iter().filter(|m| populated.contains(*m)) {
        target
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW {}", mv.quoted()))
            .await
            .map_err(|e| SnapshotError::target("refreshing a materialized view", &e))?;
    }
    Ok(())
}

/// Drops what an interrupted run of [`post_data`] may have built, with
/// pg_dump's own clean statements (`drops`), before it is built again.
/// pgrepl's event triggers are not the source's. An index or key a
/// partition inherited goes with its parent's: what refuses for that
/// (42P16, 2BP01) is tried again once the rest is dropped.
pub async fn drop_built(tgt: &Client, drops: &[Statement]) -> Result<(), SnapshotError> {
    use tokio_postgres::error::SqlState;
    let mut pending: Vec<&Statement> = drops
        .iter()
        .filter(|s| !s.sql.starts_with("DROP EVENT TRIGGER IF EXISTS pgrepl_"))
        .collect();
    for pass in 0..3 {
        let mut again = Vec::new();
        for s in pending {
            match tgt.batch_execute(&s.sql).await {
                Ok(()) => {}
                Err(e)
                    if pass < 2
                        && matches!(
                            e.code(),
                            Some(&SqlState::INVALID_TABLE_DEFINITION)
                                | Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST)
                        ) =>
                {
                    again.push(s)
                }
                Err(e) => {
                    return Err(SnapshotError::target(
                        "removing indexes an interrupted copy built",
                        &e,
                    ))
                }
            }
        }
        if again.is_empty() {
            break;
        }
        pending = again;
    }
    Ok(())
}
