//! The target's catalog of the sync's tables, read ahead in batches.
//!
//! The rule: mapping a relation needs its target table's columns, and a
//! catalog query is a round trip with nothing else in flight (the pipeline
//! drained first). Paid once per table, that is what the first change of
//! each of thousands of tables would cost, one after another. So a miss
//! reads the table asked for together with [`BATCH`] more tables of the
//! sync (`pgrepl.tables`, the next ones in name order after the last read
//! ahead), and the first changes that follow find theirs here, with
//! nothing drained.
//!
//! What was read ahead is trusted only while it is fresh:
//! - an entry is used at most once (a table mapped again reads anew);
//! - it is void once any applier of the session changed the target's
//!   schema after it was read (a DDL replayed or committed, a table
//!   created, a savepoint rolled back: the session's schema epoch, kept in
//!   `Shared`, moved), and dropped when older than [`FRESH_FOR`];
//! - a schema changed by hand on the target within that time (DDL
//!   replication off) is caught when the source's description of a
//!   built-in column's type differs from what was read, or when a column
//!   is missing: the catalog is then read anew before anything is said
//!   (see `relations`). A change by hand that keeps the types the source
//!   sends (generated or identity columns) within those 5 s is not seen.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::pipeline::Pipeline;
use super::relation::{CatalogRow, RelationError, CATALOG_COLUMNS};
use crate::sql::{SyncName, TableName};
use crate::stream::pgoutput::Relation;

/// Tables read ahead by one miss.
const BATCH: usize = 1000;
/// How long what was read ahead may be used.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// Rows: the table asked for (`$1`, quoted) and the next `$5` tables of
/// sync `$2` after (`$3`, `$4`), each with every column (NULLs where the
/// table is gone); then the catalog columns of `relation`.
fn sql() -> String {
    format!(
        "WITH ahead AS (
             SELECT schema_name, table_name FROM pgrepl.tables
             WHERE sync_name = $2
               AND (schema_name COLLATE \"C\", table_name COLLATE \"C\") > ($3, $4)
             ORDER BY schema_name COLLATE \"C\", table_name COLLATE \"C\" LIMIT $5::int
         ), asked AS (
             SELECT $1::text AS q, NULL::text AS s, NULL::text AS n
             UNION ALL
             SELECT format('%I.%I', schema_name, table_name), schema_name, table_name FROM ahead
         )
         SELECT asked.q, asked.s, asked.n, {CATALOG_COLUMNS}
         FROM asked LEFT JOIN pg_class c ON c.oid = to_regclass(asked.q)
           LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    )
}

#[derive(Default)]
pub(super) struct Catalog {
    /// Catalog rows read ahead, by table: when, at which schema epoch.
    ahead: HashMap<TableName, (Instant, u64, Vec<CatalogRow>)>,
    /// The last table of the sync read ahead, in name order.
    cursor: (String, String),
    /// Every table of the sync was read ahead once: a miss reads its own.
    through: bool,
}

impl Catalog {
    /// What was read ahead for `table`, if fresh at schema epoch `epoch`
    /// (taken).
    pub(super) fn take(&mut self, table: &TableName, epoch: u64) -> Option<Vec<CatalogRow>> {
        let (at, read_at, rows) = self.ahead.remove(table)?;
        if read_at != epoch {
            tracing::debug!(%table, "the catalog read ahead is void: the target's schema changed since");
            return None;
        }
        if at.elapsed() > FRESH_FOR {
            tracing::debug!(%table, "the catalog read ahead is too old");
            return None;
        }
        Some(rows)
    }

    /// The target's schema changed: nothing read ahead holds, and every
    /// table may be read ahead again.
    pub(super) fn forget(&mut self) {
        self.ahead.clear();
        self.cursor = Default::default();
        self.through = false;
    }

    /// Whether every built-in column type `rel` describes is the one its
    /// target column had when `rows` were read (same OID and typmod).
    /// Types of the user's own are left to the mapping: their OIDs differ
    /// between servers.
    pub(super) fn same_types(rel: &Relation, rows: &[CatalogRow]) -> bool {
        /// Below this OID a type is built in (FirstNormalObjectId).
        const FIRST_USER_OID: u32 = 16384;
        fn field(r: &CatalogRow, i: usize) -> Option<&str> {
            r.get(i).and_then(|v| v.as_deref())
        }
        rel.columns
            .iter()
            .filter(|c| c.type_oid < FIRST_USER_OID)
            .all(|c| {
                rows.iter()
                    .find(|r| field(r, 1) == Some(c.name.as_str()))
                    .is_none_or(|r| {
                        field(r, 7) == Some(c.type_oid.to_string().as_str())
                            && field(r, 8) == Some(c.type_modifier.to_string().as_str())
                    })
            })
    }

    /// Reads `table`'s catalog rows, and the next tables' ahead (leaving
    /// out those `mapped` says are mapped already). `pipe` must have
    /// nothing in flight.
    pub(super) async fn read<M>(
        &mut self,
        pipe: &mut Pipeline<M>,
        table: &TableName,
        sync: &SyncName,
        epoch: u64,
        mapped: impl Fn(&TableName) -> bool,
    ) -> Result<Vec<CatalogRow>, RelationError> {
        // What nobody asked for in time goes.
        self.ahead.retain(|_, (at, _, _)| at.elapsed() <= FRESH_FOR);
        let limit = if self.through { 0 } else { BATCH };
        let quoted = table.quoted();
        let limit_text = limit.to_string();
        let rows = pipe
            .query_prepared(
                "target catalog",
                &sql(),
                &[
                    &quoted,
                    sync.as_str(),
                    &self.cursor.0,
                    &self.cursor.1,
                    &limit_text,
                ],
            )
            .await
            .map_err(|e| RelationError::Catalog {
                table: table.clone(),
                source: Box::new(e),
            })?;
        let mut asked = Vec::new();
        let mut names = 0usize;
        let mut batch: HashMap<TableName, Vec<CatalogRow>> = HashMap::new();
        for mut row in rows {
            if row.len() < 4 {
                continue;
            }
            let rest = row.split_off(3);
            let (s, n) = (row[1].take(), row[2].take());
            // A column row (attname set) or the table's only row when it
            // has no class (gone since it was recorded).
            let has_column = rest.get(1).is_some_and(|a| a.is_some());
            match (s, n) {
                (Some(s), Some(n)) => {
                    let name = TableName::new(s.clone(), n.clone());
                    let first = !batch.contains_key(&name);
                    let entry = batch.entry(name).or_default();
                    if first {
                        names += 1;
                        if (&s, &n) > (&self.cursor.0, &self.cursor.1) {
                            self.cursor = (s, n);
                        }
                    }
                    if has_column {
                        entry.push(rest);
                    }
                }
                _ if has_column => asked.push(rest),
                _ => {}
            }
        }
        if names < limit {
            self.through = true;
        }
        let now = Instant::now();
        for (name, rows) in batch {
            if !rows.is_empty() && name != *table && !mapped(&name) {
                self.ahead.insert(name, (now, epoch, rows));
            }
        }
        Ok(asked)
    }
}
