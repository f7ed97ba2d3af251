//! pgrepl's memory, kept on the target in schema `pgrepl` so it commits
//! with the data it describes: which sync exists, what phase it reached,
//! where its snapshot was, and each table's state.
//!
//! A table moves Pending → Copying → Copied → Streaming; a sync moves
//! Copying → Copied → Streaming. A sync found in Copying on start-up is an
//! interrupted copy whose snapshot is gone: it is cleaned and started over.

use std::fmt;

use tokio_postgres::{Client, GenericClient};

use super::ledger::Ledger;
use crate::lsn::Lsn;
use crate::sql::{quote_literal, SyncName, TableName};

/// How a sync got its schema on the target; decides what cleaning removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaOrigin {
    /// pgrepl ran the source's pre-data; `cleanup` drops what it created.
    Created { cleanup: String },
    /// `--existing-schema`: the tables were there (and empty) before.
    Existing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncPhase {
    /// The snapshot copy is running (or was, and died).
    Copying,
    /// Every table is copied as of `consistent_lsn`; streaming starts there.
    Copied,
    /// Streaming; the sync's ledger holds the position.
    Streaming,
}

impl SyncPhase {
    fn as_str(&self) -> &'static str {
        match self {
            SyncPhase::Copying => "copying",
            SyncPhase::Copied => "copied",
            SyncPhase::Streaming => "streaming",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "copying" => SyncPhase::Copying,
            "copied" => SyncPhase::Copied,
            "streaming" => SyncPhase::Streaming,
            _ => return None,
        })
    }
}

impl fmt::Display for SyncPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with roles the target lacks (`--roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolesPolicy {
    /// Create them with their attributes, memberships, settings and
    /// (when readable) password verifiers; owners and grants as on the source.
    Copy,
    /// Leave them out: the target user owns everything, no grants move.
    Skip,
}

impl RolesPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RolesPolicy::Copy => "copy",
            RolesPolicy::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "copy" => Some(RolesPolicy::Copy),
            "skip" => Some(RolesPolicy::Skip),
            _ => None,
        }
    }
}

/// One row of `pgrepl.sync`.
#[derive(Clone, Debug)]
pub struct SyncRecord {
    pub name: SyncName,
    pub phase: SyncPhase,
    pub consistent_lsn: Lsn,
    pub schema: SchemaOrigin,
    pub source_system_id: String,
    pub started_at: String,
    /// Set for a reverse sync: the forward sync it carries writes back for.
    pub reverse_of: Option<String>,
    /// `--roles` as the copy was told.
    pub roles: Option<RolesPolicy>,
    /// Where the applied position is kept.
    pub ledger: Ledger,
    /// The source's timeline the sync streams from (None: not recorded,
    /// a sync of an older pgrepl).
    pub source_timeline: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableState {
    Pending,
    Copying,
    Copied { rows: i64, bytes: i64 },
    Streaming,
}

impl TableState {
    pub fn label(&self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Copying => "copying",
            TableState::Copied { .. } => "copied",
            TableState::Streaming => "streaming",
        }
    }
}

/// One row of `pgrepl.tables`.
#[derive(Clone, Debug)]
pub struct TableRecord {
    pub table: TableName,
    pub state: TableState,
    pub rows: Option<i64>,
}

const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS pgrepl;
COMMENT ON SCHEMA pgrepl IS 'pgrepl state: remove with pgrepl teardown';
CREATE TABLE IF NOT EXISTS pgrepl.sync (
    name text PRIMARY KEY,
    phase text NOT NULL CHECK (phase IN ('copying', 'copied', 'streaming')),
    consistent_lsn pg_lsn,
    schema_created boolean NOT NULL,
    cleanup_sql text,
    source_system_id text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgrepl.tables (
    sync_name text NOT NULL REFERENCES pgrepl.sync (name) ON DELETE CASCADE,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'copying', 'copied', 'streaming')),
    rows bigint,
    bytes bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sync_name, schema_name, table_name)
);
-- A reverse sync (cutover --reverse) names the sync it reverses.
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS reverse_of text;
-- --roles as the copy was told (copy, skip; NULL: no role was missing).
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS roles text;
-- Large objects: how many the source had when they were last made equal.
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS large_objects bigint;
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS large_objects_at timestamptz;
-- Where the applied position is kept (origin, table; NULL: origin).
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS ledger text;
-- The source's timeline the sync streams from (see source::timeline).
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS source_timeline bigint;
CREATE TABLE IF NOT EXISTS pgrepl.copied_chunks (
    sync_name text NOT NULL REFERENCES pgrepl.sync (name) ON DELETE CASCADE,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    chunk int NOT NULL,
    rows bigint NOT NULL,
    PRIMARY KEY (sync_name, schema_name, table_name, chunk)
);
-- A resumable copy (see snapshot::kept): the chunks of the table's plan
-- and the LSN of the snapshot a chunk was copied under (NULL: the sync's
-- consistent LSN); per table, the LSN of the snapshot its rows are from
-- and, split, how it was cut;
-- the md5 of the schema the copy began with.
ALTER TABLE pgrepl.copied_chunks ADD COLUMN IF NOT EXISTS chunks int;
ALTER TABLE pgrepl.copied_chunks ADD COLUMN IF NOT EXISTS snapshot_lsn pg_lsn;
-- For the copy's rate in status: each chunk's COPY bytes and when.
ALTER TABLE pgrepl.copied_chunks ADD COLUMN IF NOT EXISTS bytes bigint;
ALTER TABLE pgrepl.copied_chunks ADD COLUMN IF NOT EXISTS copied_at timestamptz DEFAULT now();
ALTER TABLE pgrepl.tables ADD COLUMN IF NOT EXISTS copied_lsn pg_lsn;
ALTER TABLE pgrepl.tables ADD COLUMN IF NOT EXISTS copy_cut jsonb;
ALTER TABLE pgrepl.sync ADD COLUMN IF NOT EXISTS copy_fingerprint text;";

/// The source transaction ending where the replication origin stands,
/// written with it, for a session to tell it when the source sends it
/// again (see `apply::resent`). Made by every streaming session too (a
/// sync begun by an older pgrepl lacks it).
pub const APPLIED_SQL: &str = "
CREATE TABLE IF NOT EXISTS pgrepl.applied (
    sync_name text PRIMARY KEY REFERENCES pgrepl.sync (name) ON DELETE CASCADE,
    xid bigint,
    end_lsn pg_lsn NOT NULL
)";

/// Creates the state schema if needed.
pub async fn ensure_schema(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(SCHEMA_SQL).await?;
    client.batch_execute(APPLIED_SQL).await
}

async fn state_exists(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT {} IS NOT NULL",
                TableName::new("pgrepl", "sync").oid_sql()
            ),
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The ledger of the recorded sync `name` (its origin when there is no
/// record, as for a sync of an older pgrepl).
pub async fn ledger_of(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<Ledger, tokio_postgres::Error> {
    Ok(load_sync(client, name)
        .await?
        .map(|r| r.ledger)
        .unwrap_or_else(|| Ledger::Origin(name.origin())))
}

/// The recorded sync of this name, if any.
pub async fn load_sync(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<Option<SyncRecord>, tokio_postgres::Error> {
    if !state_exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT phase, consistent_lsn, schema_created, cleanup_sql, source_system_id, started_at::text,
                    to_jsonb(s) ->> 'reverse_of', to_jsonb(s) ->> 'roles', to_jsonb(s) ->> 'ledger',
                    (to_jsonb(s) ->> 'source_timeline')::bigint
             FROM pgrepl.sync s WHERE name = $1",
            &[&name.as_str()],
        )
        .await?;
    Ok(row.and_then(|row| {
        let phase = SyncPhase::parse(row.get::<_, &str>(0))?;
        let schema = if row.get::<_, bool>(2) {
            SchemaOrigin::Created {
                cleanup: row.get::<_, Option<String>>(3).unwrap_or_default(),
            }
        } else {
            SchemaOrigin::Existing
        };
        Some(SyncRecord {
            name: name.clone(),
            phase,
            consistent_lsn: row.get::<_, Option<Lsn>>(1).unwrap_or(Lsn::ZERO),
            schema,
            source_system_id: row.get(4),
            started_at: row.get(5),
            reverse_of: row.get(6),
            roles: row.get::<_, Option<&str>>(7).and_then(RolesPolicy::parse),
            ledger: Ledger::named(row.get::<_, Option<&str>>(8), name),
            source_timeline: row
                .get::<_, Option<i64>>(9)
                .and_then(|t| u32::try_from(t).ok()),
        })
    }))
}

/// Records a new sync in phase Copying with its tables Pending.
pub async fn begin_copy(
    client: &impl GenericClient,
    name: &SyncName,
    consistent_lsn: Lsn,
    source: &crate::conn::walsender::SystemInfo,
    schema: &SchemaOrigin,
    tables: &[TableName],
) -> Result<(), tokio_postgres::Error> {
    let (created, cleanup) = match schema {
        SchemaOrigin::Created { cleanup } => (true, Some(cleanup.as_str())),
        SchemaOrigin::Existing => (false, None),
    };
    client
        .execute(
            "INSERT INTO pgrepl.sync (name, phase, consistent_lsn, schema_created, cleanup_sql, source_system_id, source_timeline)
             VALUES ($1, 'copying', $2, $3, $4, $5, $6)",
            &[
                &name.as_str(),
                &consistent_lsn,
                &created,
                &cleanup,
                &source.system_id,
                &i64::from(source.timeline),
            ],
        )
        .await?;
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    client
        .execute(
            "INSERT INTO pgrepl.tables (sync_name, schema_name, table_name, state)
             SELECT $1, s, n, 'pending' FROM unnest($2::text[], $3::text[]) AS u(s, n)",
            &[&name.as_str(), &schemas, &names],
        )
        .await?;
    Ok(())
}

/// Records the source's timeline the sync now streams from.
pub async fn record_timeline(
    client: &impl GenericClient,
    name: &SyncName,
    timeline: u32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgrepl.sync SET source_timeline = $2 WHERE name = $1",
            &[&name.as_str(), &i64::from(timeline)],
        )
        .await?;
    Ok(())
}

/// Records `--roles` as the copy was told.
pub async fn record_roles(
    client: &impl GenericClient,
    name: &SyncName,
    policy: Option<RolesPolicy>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgrepl.sync SET roles = $2 WHERE name = $1",
            &[&name.as_str(), &policy.map(|p| p.as_str())],
        )
        .await
        .map(|_| ())
}

/// Records that the target's large objects were made the source's
/// (`count` of them), now.
pub async fn record_large_objects(
    client: &impl GenericClient,
    name: &SyncName,
    count: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgrepl.sync SET large_objects = $2, large_objects_at = now() WHERE name = $1",
            &[&name.as_str(), &count],
        )
        .await
        .map(|_| ())
}

/// Marks sync `name` as the reverse of `of`.
pub async fn mark_reverse(
    client: &impl GenericClient,
    name: &SyncName,
    of: &SyncName,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgrepl.sync SET reverse_of = $2 WHERE name = $1",
            &[&name.as_str(), &of.as_str()],
        )
        .await?;
    Ok(())
}

/// The statement moving one table to `state` (for sessions without
/// parameters, such as the copy workers' raw ones).
pub fn table_state_sql(name: &SyncName, table: &TableName, state: &TableState) -> String {
    let (rows, bytes) = match state {
        TableState::Copied { rows, bytes } => (rows.to_string(), bytes.to_string()),
        _ => ("rows".to_string(), "bytes".to_string()),
    };
    format!(
        "UPDATE pgrepl.tables SET state = {}, rows = {rows}, bytes = {bytes}, updated_at = now()
         WHERE sync_name = {} AND schema_name = {} AND table_name = {}",
        quote_literal(state.label()),
        quote_literal(name.as_str()),
        quote_literal(&table.schema),
        quote_literal(&table.name)
    )
}

/// Moves one table to `state`.
pub async fn set_table_state(
    client: &impl GenericClient,
    name: &SyncName,
    table: &TableName,
    state: &TableState,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&table_state_sql(name, table, state))
        .await
}

/// Marks many tables Copied with their row and byte counts, in one
/// statement (a copy of 3,000 small tables would otherwise spend a round
/// trip and a commit on each).
pub async fn set_tables_copied(
    client: &impl GenericClient,
    name: &SyncName,
    tables: &[(TableName, i64, i64)],
    snapshot_lsn: Lsn,
) -> Result<(), tokio_postgres::Error> {
    let schemas: Vec<&str> = tables.iter().map(|(t, _, _)| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|(t, _, _)| t.name.as_str()).collect();
    let rows: Vec<i64> = tables.iter().map(|(_, r, _)| *r).collect();
    let bytes: Vec<i64> = tables.iter().map(|(_, _, b)| *b).collect();
    client
        .execute(
            "UPDATE pgrepl.tables t SET state = 'copied', rows = u.r, bytes = u.b, copied_lsn = $6, updated_at = now()
             FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[]) AS u(s, n, r, b)
             WHERE t.sync_name = $1 AND t.schema_name = u.s AND t.table_name = u.n",
            &[&name.as_str(), &schemas, &names, &rows, &bytes, &snapshot_lsn],
        )
        .await
        .map(|_| ())
}

/// Adds a table that appeared while streaming (DDL), already Streaming.
pub async fn add_streaming_table(
    client: &impl GenericClient,
    name: &SyncName,
    table: &TableName,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgrepl.tables (sync_name, schema_name, table_name, state)
             VALUES ($1, $2, $3, 'streaming') ON CONFLICT (sync_name, schema_name, table_name)
             DO UPDATE SET state = 'streaming', updated_at = now()",
            &[&name.as_str(), &table.schema, &table.name],
        )
        .await?;
    Ok(())
}

/// Moves the sync to `phase` (and every table along when entering Streaming).
pub async fn set_phase(
    client: &impl GenericClient,
    name: &SyncName,
    phase: SyncPhase,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgrepl.sync SET phase = $2, updated_at = now() WHERE name = $1",
            &[&name.as_str(), &phase.as_str()],
        )
        .await?;
    if phase == SyncPhase::Streaming {
        client
            .execute(
                "UPDATE pgrepl.tables SET state = 'streaming', updated_at = now() WHERE sync_name = $1",
                &[&name.as_str()],
            )
            .await?;
    }
    Ok(())
}

/// Every table of the sync and its state.
pub async fn load_tables(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<Vec<TableRecord>, tokio_postgres::Error> {
    if !state_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT schema_name, table_name, state, rows, bytes FROM pgrepl.tables
             WHERE sync_name = $1 ORDER BY schema_name, table_name",
            &[&name.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let rows: Option<i64> = r.get(3);
            let state = match r.get::<_, &str>(2) {
                "copying" => TableState::Copying,
                "copied" => TableState::Copied {
                    rows: rows.unwrap_or(0),
                    bytes: r.get::<_, Option<i64>>(4).unwrap_or(0),
                },
                "streaming" => TableState::Streaming,
                _ => TableState::Pending,
            };
            TableRecord {
                table: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                state,
                rows,
            }
        })
        .collect())
}

/// Forgets the sync: its rows here (its control requests too, so a new
/// sync of the name starts clean). The schema goes with the last sync,
/// unless a DDL capture lives in it too.
///
/// Rule: a server can be one sync's target and another's source at once
/// (the way back of a cutover: the new server holds the forward sync's
/// state and the reverse sync's capture in `pgrepl`); what one sync's
/// teardown removes never takes the other's part with it.
/// Returns whether there was anything to forget.
pub async fn forget(client: &Client, name: &SyncName) -> Result<bool, tokio_postgres::Error> {
    let (schema, capture): (bool, bool) = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgrepl'),
                    EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = 'pgrepl' AND c.relname IN ('schema_log', 'config'))",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    if !schema {
        return Ok(false);
    }
    if !state_exists(client).await? {
        if capture {
            return Ok(false);
        }
        client.batch_execute("DROP SCHEMA pgrepl CASCADE").await?;
        return Ok(true);
    }
    let removed = client
        .execute("DELETE FROM pgrepl.sync WHERE name = $1", &[&name.as_str()])
        .await?
        > 0;
    let control: bool = client
        .query_one(
            &format!(
                "SELECT {} IS NOT NULL",
                TableName::new("pgrepl", "control").oid_sql()
            ),
            &[],
        )
        .await?
        .get(0);
    if control {
        client
            .execute(
                "DELETE FROM pgrepl.control WHERE sync_name = $1",
                &[&name.as_str()],
            )
            .await?;
    }
    let others: i64 = client
        .query_one("SELECT count(*) FROM pgrepl.sync", &[])
        .await?
        .get(0);
    if others == 0 && !capture {
        client.batch_execute("DROP SCHEMA pgrepl CASCADE").await?;
        return Ok(true);
    }
    Ok(removed)
}
