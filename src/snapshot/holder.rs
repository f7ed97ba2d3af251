//! The lock holder: the session that imports the slot's snapshot first,
//! decides from it what the copy covers, and keeps every copied table
//! locked until the copy is over.
//!
//! The rule: the tables copied are the tables of the snapshot, never those
//! a check saw before it. A table created between the preflight and the
//! slot is in the snapshot (pg_dump makes it on the target), so it is
//! copied; one dropped in between is not. Every copied table must be in
//! the publication as of the snapshot, or its changes after the snapshot
//! would never be streamed: a table the publication missed stops the setup
//! with a clear line, and a rerun picks it up from the start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::{copy, plan, CopyRequest, SnapshotError};
use crate::sequences;
use crate::source::catalog::{self, SelectedTables, SourceTable, TableKind};
use crate::sql::TableName;

/// The session holding the snapshot, and what the copy covers.
pub struct Holder {
    pub client: Client,
    /// The sync's tables as of the snapshot (and the others, left out).
    pub selected: SelectedTables,
}

/// What the holder found once the tables are locked.
pub struct Planned {
    pub units: Vec<plan::Unit>,
    pub sequences: Vec<sequences::SequenceValue>,
}

impl Holder {
    /// Imports the snapshot and reads the sync's tables from it.
    pub async fn open(req: &CopyRequest<'_>, snapshot: &str) -> Result<Holder, SnapshotError> {
        let client = req.source.connect().await?;
        copy::import_snapshot(&client, snapshot)
            .await
            .map_err(|e| SnapshotError::source("importing the snapshot", &e))?;
        let all = catalog::list_tables(&client)
            .await
            .map_err(|e| SnapshotError::source("listing tables in the snapshot", &e))?;
        let selected = SelectedTables::choose(all, req.selection).map_err(|errors| {
            SnapshotError::Changed {
                what: SelectedTables::one_line(&errors),
            }
        })?;
        let before: HashSet<&TableName> = req.selected.names().collect();
        let appeared: Vec<String> = selected
            .names()
            .filter(|n| !before.contains(n))
            .map(ToString::to_string)
            .collect();
        if !appeared.is_empty() {
            tracing::info!(tables = %appeared.join(", "), "tables created since the preflight are in the snapshot: copied too");
        }
        let holder = Holder { client, selected };
        holder.check_published(req).await?;
        Ok(holder)
    }

    /// Every table of the snapshot that the sync covers is in the
    /// publication as of the snapshot.
    async fn check_published(&self, req: &CopyRequest<'_>) -> Result<(), SnapshotError> {
        let rows = self
            .client
            .query(
                "SELECT p.puballtables, coalesce(array_agg(pr.prrelid::int8) FILTER (WHERE pr.prrelid IS NOT NULL), '{}')
                 FROM pg_publication p LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid
                 WHERE p.pubname = $1 GROUP BY p.puballtables",
                &[&req.publication.as_str()],
            )
            .await
            .map_err(|e| SnapshotError::source("reading the publication in the snapshot", &e))?;
        let Some(row) = rows.first() else {
            return Err(SnapshotError::Changed {
                what: format!("publication {} is not in the snapshot", req.publication),
            });
        };
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        let members: HashSet<u32> = row
            .get::<_, Vec<i64>>(1)
            .into_iter()
            .map(|o| o as u32)
            .collect();
        // What a table list names: partitioned tables with their
        // partitions (13+), or on 12 the partitions themselves.
        let by_name: HashMap<&TableName, u32> = self
            .selected
            .tables
            .iter()
            .map(|t| (&t.name, t.oid))
            .collect();
        let missing: Vec<String> = self
            .selected
            .tables
            .iter()
            .filter(|t| t.has_storage())
            .filter(|t| {
                let published_as = match &t.kind {
                    TableKind::Partition { root, .. } if req.source_facts.version_num >= 130000 => {
                        by_name.get(root).copied()
                    }
                    _ => Some(t.oid),
                };
                !published_as.is_some_and(|oid| members.contains(&oid))
            })
            .map(|t| t.name.to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Changed {
                what: format!(
                    "{} appeared while the sync was being set up and {} not in publication {}",
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" },
                    req.publication
                ),
            })
        }
    }

    /// How many DDL the source's capture has logged, and the last one's id,
    /// as of the snapshot (empty without the capture, or where this role
    /// may not read its log): part of the copy's fingerprint, so a DDL
    /// between an interrupted copy and its resume starts it over.
    pub async fn ddl_mark(&self) -> String {
        let exists = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'pgrepl' AND c.relname = 'schema_log')",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if !exists {
            return String::new();
        }
        // In a savepoint: a refusal must not end the snapshot's transaction.
        if self
            .client
            .batch_execute("SAVEPOINT ddl_mark")
            .await
            .is_err()
        {
            return String::new();
        }
        let mark = self
            .client
            .query_one(
                "SELECT count(*)::text || '/' || coalesce(max(id), 0)::text FROM pgrepl.schema_log",
                &[],
            )
            .await;
        let undo = match mark {
            Ok(_) => "RELEASE SAVEPOINT ddl_mark",
            Err(_) => "ROLLBACK TO SAVEPOINT ddl_mark",
        };
        let _ = self.client.batch_execute(undo).await;
        mark.map(|r| r.get::<_, String>(0)).unwrap_or_default()
    }

    /// The tables whose rows are copied.
    pub fn storage(&self) -> Vec<&SourceTable> {
        self.selected.with_storage().collect()
    }

    /// Locks every copied table, proves none was rewritten since the
    /// snapshot, and plans the copy under it.
    pub async fn lock_and_plan(&self, req: &CopyRequest<'_>) -> Result<Planned, SnapshotError> {
        let storage = self.storage();
        let client = &self.client;
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
        let units = plan::plan(client, &storage, &opts)
            .await
            .map_err(|e| SnapshotError::source("planning the copy", &e))?;
        let excluded_oids: Vec<u32> = self.selected.excluded.iter().map(|t| t.oid).collect();
        let sequences = sequences::read(client, &excluded_oids)
            .await
            .map_err(|e| SnapshotError::source("reading sequences", &e))?;
        Ok(Planned { units, sequences })
    }
}

/// With `--existing-schema`: every copied column must exist on the target,
/// and every target column the copy leaves out must accept NULL or have a
/// default. A column of another type on the target (int widened to bigint,
/// say) is fine, but its table is copied as text, which the target parses
/// into its own types.
pub async fn check_columns(
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
                    relfilenode: t.relfilenode,
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
