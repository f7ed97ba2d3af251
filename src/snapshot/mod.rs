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
//!   row and the script that removes it again, so a copy that dies is
//!   cleaned exactly and started over; it is never resumed from a snapshot
//!   that no longer exists.
//! - Indexes and constraints come after the rows (faster, and what pg_dump
//!   does); the replication origin is set to the consistent point in the
//!   same transaction that marks the copy done.

pub mod copy;
pub mod pgdump;
pub mod plan;
pub mod schema;
pub mod sequences;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::conn::error::describe;
use crate::conn::walsender::{WalSender, WalSenderError};
use crate::conn::{ConnectError, Endpoint, Side};
use crate::lsn::Lsn;
use crate::progress::state::{self, SchemaOrigin, SyncPhase};
use crate::progress::ui::{CopyDisplay, ProgressMode, TableStats};
use crate::source::catalog::{SelectedTables, ServerFacts, SourceTable};
use crate::source::setup::SetupError;
use crate::sql::{SyncName, TableName};
use pgdump::{DumpRequest, PgDump, PgDumpError};
use schema::{Kind, SchemaError, Statement};

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
    },
    #[error("copying {table} failed on the {side}: {message}")]
    Copy {
        table: String,
        side: Side,
        message: String,
    },
    #[error("source: {tables} changed under the snapshot (TRUNCATE or a table-rewriting ALTER as the copy began): run pgrepl sync again to start over")]
    Rewritten { tables: String },
    #[error("source: the exported snapshot is gone (the replication session was lost during the copy): run pgrepl sync again to start the copy over")]
    SnapshotGone,
    #[error("target: {problems}: fix the target tables or drop --existing-schema")]
    Columns { problems: String },
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
        }
    }

    pub fn target(what: &'static str, e: &tokio_postgres::Error) -> Self {
        SnapshotError::Query {
            side: Side::Target,
            what,
            message: describe(e),
        }
    }
}

/// Everything the copy needs to know.
pub struct CopyRequest<'a> {
    pub name: &'a SyncName,
    pub source: &'a Endpoint,
    pub target: &'a Endpoint,
    pub source_facts: &'a ServerFacts,
    pub target_facts: &'a ServerFacts,
    pub selected: &'a SelectedTables,
    /// Tables of the source left out of the sync (pg_dump skips them and
    /// the sequences they own).
    pub excluded: Vec<SourceTable>,
    pub existing_schema: bool,
    pub pg_dump: Option<PgDump>,
    pub jobs: usize,
    pub chunk_bytes: i64,
    /// Binary COPY allowed where safe (else always text).
    pub binary: bool,
    pub progress: ProgressMode,
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
    let mut walsender = WalSender::connect(Side::Source, &req.source.config).await?;
    let system = walsender.identify_system().await?;
    let slot = walsender
        .create_slot_exporting_snapshot(&req.name.slot())
        .await?;
    tracing::info!(slot = %req.name.slot(), consistent_lsn = %slot.consistent_point, snapshot = %slot.snapshot, "replication slot created");

    let storage: Vec<&SourceTable> = req.selected.with_storage().collect();
    let (pre, post, holder) = tokio::try_join!(
        dump(&req, &slot.snapshot, "pre-data"),
        dump(&req, &slot.snapshot, "post-data"),
        lock_holder(&req, &slot.snapshot, &storage),
    )?;
    let Holder {
        client: _holder,
        mut units,
        sequences,
    } = holder;

    let mut tgt = req.target.connect().await?;
    let known = schema::known_settings(&tgt).await?;
    let existing = schema::existing_schemas(&tgt).await?;
    let table_names: Vec<TableName> = storage.iter().map(|t| t.name.clone()).collect();
    {
        let tx = tgt
            .transaction()
            .await
            .map_err(|e| SnapshotError::target("starting the schema transaction", &e))?;
        state::ensure_schema(&tx)
            .await
            .map_err(|e| SnapshotError::target("creating the pgrepl schema", &e))?;
        let origin = match (&pre, &post) {
            (Some(pre), Some(post)) => {
                schema::run_statements(&tx, &pre.creates, &known, &existing).await?;
                SchemaOrigin::Created {
                    cleanup: schema::cleanup_script(&post.drops, &pre.drops, &existing),
                }
            }
            _ => {
                check_columns(&tx, &mut units).await?;
                SchemaOrigin::Existing
            }
        };
        state::begin_copy(
            &tx,
            req.name,
            slot.consistent_point,
            &system.system_id,
            &origin,
            &table_names,
        )
        .await
        .map_err(|e| SnapshotError::target("recording the sync", &e))?;
        tx.commit()
            .await
            .map_err(|e| SnapshotError::target("committing the schema", &e))?;
    }
    if pre.is_some() {
        tracing::info!("pre-data schema created on the target");
    }

    let state_client = Arc::new(tgt);
    let summary = copy_rows(&req, &slot.snapshot, units, state_client.clone()).await?;

    let set = sequences::apply(&*state_client, &sequences)
        .await
        .map_err(|e| SnapshotError::target("setting sequences", &e))?;
    tracing::info!(
        sequences = set,
        "sequences set to their values as of the copy (never behind the snapshot)"
    );

    if let (Some(pre), Some(post)) = (&pre, &post) {
        post_data(&req, &post.creates, &known, &existing).await?;
        refresh_matviews(&state_client, req.source, &slot.snapshot, &pre.creates).await?;
    }

    drop(state_client);
    let mut tgt = req.target.connect().await?;
    let tx = tgt
        .transaction()
        .await
        .map_err(|e| SnapshotError::target("finishing the copy", &e))?;
    let origin = req.name.origin();
    tx.execute(
        "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
        &[&origin.as_str()],
    )
    .await
    .map_err(|e| SnapshotError::target("creating the replication origin", &e))?;
    tx.execute(
        "SELECT pg_replication_origin_advance($1, $2)",
        &[&origin.as_str(), &slot.consistent_point],
    )
    .await
    .map_err(|e| SnapshotError::target("setting the replication origin", &e))?;
    state::set_phase(&tx, req.name, SyncPhase::Copied)
        .await
        .map_err(|e| SnapshotError::target("recording the copy", &e))?;
    tx.commit()
        .await
        .map_err(|e| SnapshotError::target("finishing the copy", &e))?;
    drop(walsender);
    Ok(Copied {
        consistent_lsn: slot.consistent_point,
        summary,
    })
}

async fn dump(
    req: &CopyRequest<'_>,
    snapshot: &str,
    section: &'static str,
) -> Result<Option<schema::CleanDump>, SnapshotError> {
    let Some(pg_dump) = &req.pg_dump else {
        return Ok(None);
    };
    if req.existing_schema {
        return Ok(None);
    }
    let excluded: Vec<TableName> = req.excluded.iter().map(|t| t.name.clone()).collect();
    let sql = pg_dump
        .dump(&DumpRequest {
            source: &req.source.config,
            snapshot,
            excluded: &excluded,
            section,
            clean: true,
        })
        .await?;
    Ok(Some(schema::split_clean(schema::parse_dump(&sql)?)))
}

struct Holder {
    client: Client,
    units: Vec<plan::Unit>,
    sequences: Vec<sequences::SequenceValue>,
}

/// Imports the snapshot, locks every copied table, proves none was
/// rewritten in between, and plans the copy under the snapshot.
async fn lock_holder(
    req: &CopyRequest<'_>,
    snapshot: &str,
    storage: &[&SourceTable],
) -> Result<Holder, SnapshotError> {
    let client = req.source.connect().await?;
    copy::import_snapshot(&client, snapshot)
        .await
        .map_err(|e| SnapshotError::source("importing the snapshot", &e))?;
    for chunk in storage.chunks(1000) {
        let names: Vec<String> = chunk.iter().map(|t| t.name.quoted()).collect();
        client
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = '60s'; LOCK TABLE {} IN ACCESS SHARE MODE; SET LOCAL lock_timeout = 0",
                names.join(", ")
            ))
            .await
            .map_err(|e| SnapshotError::source("locking the tables to copy", &e))?;
    }
    let oids: Vec<i64> = storage.iter().map(|t| i64::from(t.oid)).collect();
    let rewritten = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid::int8 = ANY($1) AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid)",
            &[&oids],
        )
        .await
        .map_err(|e| SnapshotError::source("checking for rewritten tables", &e))?;
    if !rewritten.is_empty() {
        let tables: Vec<String> = rewritten.iter().map(|r| r.get(0)).collect();
        return Err(SnapshotError::Rewritten {
            tables: tables.join(", "),
        });
    }
    let opts = plan::PlanOptions {
        source_version: req.source_facts.version_num,
        binary: req.binary,
        same_major: req.source_facts.major() == req.target_facts.major(),
        same_encoding: req.source_facts.encoding == req.target_facts.encoding,
        chunk_bytes: req.chunk_bytes,
    };
    let units = plan::plan(&client, storage, &opts)
        .await
        .map_err(|e| SnapshotError::source("planning the copy", &e))?;
    let excluded_oids: Vec<u32> = req.excluded.iter().map(|t| t.oid).collect();
    let sequences = sequences::read(&client, &excluded_oids)
        .await
        .map_err(|e| SnapshotError::source("reading sequences", &e))?;
    Ok(Holder {
        client,
        units,
        sequences,
    })
}

/// With `--existing-schema`: every copied column must exist on the target,
/// and every target column the copy leaves out must accept NULL or have a
/// default. A column of another type on the target (int widened to bigint,
/// say) is fine, but its table is copied as text, which the target parses
/// into its own types.
async fn check_columns(
    client: &impl tokio_postgres::GenericClient,
    units: &mut [plan::Unit],
) -> Result<(), SnapshotError> {
    let mut problems = Vec::new();
    let mut as_text: HashMap<TableName, Arc<plan::TablePlan>> = HashMap::new();
    let mut seen = HashSet::new();
    for u in units.iter() {
        if !seen.insert(u.table.name.clone()) {
            continue;
        }
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                        a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
                 FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''",
                &[&u.table.name.quoted()],
            )
            .await
            .map_err(|e| SnapshotError::target("reading target columns", &e))?;
        let have: HashMap<String, (String, bool)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let t = &u.table;
        let missing: Vec<&str> = t
            .columns
            .iter()
            .filter(|c| !have.contains_key(*c))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            problems.push(format!("{} lacks column(s) {}", t.name, missing.join(", ")));
        }
        let mut required: Vec<&str> = have
            .iter()
            .filter(|(name, (_, needs_value))| *needs_value && !t.columns.contains(name))
            .map(|(name, _)| name.as_str())
            .collect();
        required.sort_unstable();
        if !required.is_empty() {
            problems.push(format!(
                "{} has NOT NULL column(s) {} without a default, which the source does not have",
                t.name,
                required.join(", ")
            ));
        }
        let differ: Vec<String> = t
            .columns
            .iter()
            .zip(&t.types)
            .filter_map(|(c, ty)| {
                let (theirs, _) = have.get(c)?;
                (theirs != ty).then(|| format!("{c} {ty} -> {theirs}"))
            })
            .collect();
        if !differ.is_empty() && t.format == plan::CopyFormat::Binary {
            tracing::info!(table = %t.name, columns = %differ.join(", "), "target column types differ: copied as text");
            as_text.insert(
                t.name.clone(),
                Arc::new(plan::TablePlan {
                    name: t.name.clone(),
                    columns: t.columns.clone(),
                    types: t.types.clone(),
                    format: plan::CopyFormat::Text,
                    bytes: t.bytes,
                    estimated_rows: t.estimated_rows,
                }),
            );
        }
    }
    if !problems.is_empty() {
        return Err(SnapshotError::Columns {
            problems: problems.join("; "),
        });
    }
    for u in units.iter_mut() {
        if let Some(text) = as_text.get(&u.table.name) {
            u.table = text.clone();
        }
    }
    Ok(())
}

/// Runs the copy workers over every unit, with progress.
async fn copy_rows(
    req: &CopyRequest<'_>,
    snapshot: &str,
    units: Vec<plan::Unit>,
    state_client: Arc<Client>,
) -> Result<String, SnapshotError> {
    let mut per_table: HashMap<TableName, (Arc<plan::TablePlan>, usize)> = HashMap::new();
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
    let workers = req.jobs.max(1).min(units.len().max(1));
    let job = Arc::new(copy::CopyJob {
        name: req.name.clone(),
        source: req.source.clone(),
        target: req.target.clone(),
        snapshot: snapshot.to_string(),
        queue: Mutex::new(VecDeque::from(units)),
        stats,
        display: CopyDisplay::new(req.progress, ordered),
        state: state_client,
    });
    let mut set = JoinSet::new();
    for id in 0..workers {
        set.spawn(copy::worker(job.clone(), id));
    }
    let ticker = {
        let job = job.clone();
        let every = if req.progress == ProgressMode::Bars {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(1)
        };
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            loop {
                interval.tick().await;
                job.display.tick();
            }
        })
    };
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let outcome = joined.unwrap_or_else(|e| {
            Err(SnapshotError::Query {
                side: Side::Target,
                what: "copy worker",
                message: e.to_string(),
            })
        });
        if let Err(e) = outcome {
            set.abort_all();
            result = Err(e);
            break;
        }
    }
    ticker.abort();
    job.display.tick();
    let summary = job.display.finish();
    result.map(|()| summary)
}

/// Post-data: index builds in parallel on `--jobs` sessions, largest
/// table first; then the rest (foreign keys, triggers, ...) in order.
async fn post_data(
    req: &CopyRequest<'_>,
    statements: &[Statement],
    known: &HashSet<String>,
    existing: &HashSet<String>,
) -> Result<(), SnapshotError> {
    let settings = schema::settings(statements);
    let sizes: HashMap<&TableName, i64> = req
        .selected
        .tables
        .iter()
        .map(|t| (&t.name, t.bytes))
        .collect();
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
async fn refresh_matviews(
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

/// What [`discard`] removed.
#[derive(Debug, Default)]
pub struct Discarded {
    pub slot: bool,
    pub target_objects: bool,
}

/// Undoes a copy that did not finish: drops the slot, removes what the
/// schema step created (or empties the tables with `--existing-schema`),
/// and forgets the sync. The rows of tables pgrepl did not create are left
/// alone.
pub async fn discard(
    src: &Client,
    tgt: &Client,
    name: &SyncName,
) -> Result<Discarded, SnapshotError> {
    let mut out = Discarded {
        slot: crate::source::setup::drop_slot(src, &name.slot(), name.as_str()).await?,
        ..Default::default()
    };
    if let Some(record) = state::load_sync(tgt, name)
        .await
        .map_err(|e| SnapshotError::target("reading pgrepl state", &e))?
    {
        let sql = match &record.schema {
            SchemaOrigin::Created { cleanup } => format!("BEGIN; {cleanup} COMMIT;"),
            SchemaOrigin::Existing => {
                let tables = state::load_tables(tgt, name)
                    .await
                    .map_err(|e| SnapshotError::target("reading pgrepl state", &e))?;
                let names: Vec<String> = tables.iter().map(|t| t.table.quoted()).collect();
                if names.is_empty() {
                    String::new()
                } else {
                    format!("TRUNCATE {}", names.join(", "))
                }
            }
        };
        if !sql.is_empty() {
            tgt.batch_execute(&sql)
                .await
                .map_err(|e| SnapshotError::Query {
                    side: Side::Target,
                    what: "removing the interrupted copy",
                    message: describe(&e),
                })?;
            out.target_objects = true;
        }
        tgt.execute("DELETE FROM pgrepl.sync WHERE name = $1", &[&name.as_str()])
            .await
            .map_err(|e| SnapshotError::target("forgetting the interrupted copy", &e))?;
    }
    Ok(out)
}
