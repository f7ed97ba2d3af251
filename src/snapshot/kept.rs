//! What an interrupted copy kept, on the target, for resuming it (see
//! `snapshot::resume`): each chunk copied, with its table's chunk count
//! and the LSN of the snapshot it was copied under; per table, the LSN of
//! the snapshot its rows are from; and a fingerprint of the schema the copy
//! began with, so a resume can prove nothing changed in between.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::GenericClient;

use super::plan::Cut;
use crate::lsn::Lsn;
use crate::sql::{quote_literal, SyncName, TableName};

/// One chunk in `pgrepl.copied_chunks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptChunk {
    pub table: TableName,
    pub chunk: usize,
    /// The chunks of the table's plan (None: recorded by an older pgrepl).
    pub chunks: Option<usize>,
    pub rows: i64,
    /// The snapshot's LSN (None: the sync's consistent LSN).
    pub lsn: Option<Lsn>,
}

/// A table whose rows are all on the target, from one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptTable {
    pub table: TableName,
    pub rows: i64,
    pub lsn: Lsn,
}

/// What the target holds of one table: its chunks, by number, with their
/// rows and snapshot's LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopiedTable {
    pub table: TableName,
    /// The chunks of its plan (None: recorded by an older pgrepl).
    pub planned: Option<usize>,
    pub chunks: BTreeMap<usize, (i64, Lsn)>,
}

impl CopiedTable {
    /// Every chunk of the plan is there.
    pub fn whole(&self) -> bool {
        self.planned.is_some_and(|n| n == self.chunks.len())
    }

    /// The earliest and the latest snapshot its chunks come from.
    pub fn lsns(&self) -> (Lsn, Lsn) {
        let lsns = self.chunks.values().map(|(_, l)| *l);
        (
            lsns.clone().min().unwrap_or(Lsn::ZERO),
            lsns.max().unwrap_or(Lsn::ZERO),
        )
    }

    pub fn rows(&self) -> i64 {
        self.chunks.values().map(|(r, _)| r).sum()
    }
}

/// The chunks, by table (`consistent`: the LSN of chunks recorded without
/// one).
pub fn by_table(chunks: &[KeptChunk], consistent: Lsn) -> Vec<CopiedTable> {
    let mut out: BTreeMap<&TableName, CopiedTable> = BTreeMap::new();
    for c in chunks {
        let t = out.entry(&c.table).or_insert_with(|| CopiedTable {
            table: c.table.clone(),
            planned: c.chunks,
            chunks: BTreeMap::new(),
        });
        if t.planned != c.chunks {
            t.planned = None;
        }
        t.chunks
            .insert(c.chunk, (c.rows, c.lsn.unwrap_or(consistent)));
    }
    out.into_values().collect()
}

/// How each split table was cut, as recorded.
pub async fn cuts(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<HashMap<TableName, Cut>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schema_name, table_name, copy_cut::text FROM pgrepl.tables
             WHERE sync_name = $1 AND copy_cut IS NOT NULL",
            &[&name.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let cut: Cut = serde_json::from_str(r.get::<_, &str>(2)).ok()?;
            Some((
                TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                cut,
            ))
        })
        .collect())
}

/// Records how split tables are cut (their chunks' ranges in order).
pub async fn record_cuts(
    client: &impl GenericClient,
    name: &SyncName,
    cuts: &[(TableName, Cut)],
) -> Result<(), tokio_postgres::Error> {
    if cuts.is_empty() {
        return Ok(());
    }
    let schemas: Vec<&str> = cuts.iter().map(|(t, _)| t.schema.as_str()).collect();
    let names: Vec<&str> = cuts.iter().map(|(t, _)| t.name.as_str()).collect();
    let texts: Vec<String> = cuts
        .iter()
        .map(|(_, c)| serde_json::to_string(c).unwrap_or_default())
        .collect();
    client
        .execute(
            "UPDATE pgrepl.tables t SET copy_cut = u.c::jsonb
             FROM unnest($2::text[], $3::text[], $4::text[]) AS u(s, n, c)
             WHERE t.sync_name = $1 AND t.schema_name = u.s AND t.table_name = u.n",
            &[&name.as_str(), &schemas, &names, &texts],
        )
        .await
        .map(|_| ())
}

/// Every chunk recorded for sync `name`.
pub async fn chunks(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<Vec<KeptChunk>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schema_name, table_name, chunk, chunks, rows, snapshot_lsn
             FROM pgrepl.copied_chunks WHERE sync_name = $1",
            &[&name.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeptChunk {
            table: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            chunk: r.get::<_, i32>(2).max(0) as usize,
            chunks: r.get::<_, Option<i32>>(3).map(|n| n.max(0) as usize),
            rows: r.get(4),
            lsn: r.get(5),
        })
        .collect())
}

/// Records the fingerprint of the schema a new copy begins with.
pub async fn record_fingerprint(
    client: &impl GenericClient,
    name: &SyncName,
    fingerprint: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgrepl.sync SET copy_fingerprint = md5($2) WHERE name = $1",
            &[&name.as_str(), &fingerprint],
        )
        .await
        .map(|_| ())
}

/// Whether `fingerprint` is the one the copy began with (None: none was
/// recorded, a copy begun by an older pgrepl).
pub async fn same_fingerprint(
    client: &impl GenericClient,
    name: &SyncName,
    fingerprint: &str,
) -> Result<Option<bool>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT copy_fingerprint = md5($2) FROM pgrepl.sync WHERE name = $1",
            &[&name.as_str(), &fingerprint],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Marks `tables` Copied with their rows and snapshot LSN.
pub async fn keep(
    client: &impl GenericClient,
    name: &SyncName,
    tables: &[KeptTable],
) -> Result<(), tokio_postgres::Error> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.table.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.table.name.as_str()).collect();
    let rows: Vec<i64> = tables.iter().map(|t| t.rows).collect();
    let lsns: Vec<String> = tables.iter().map(|t| t.lsn.to_string()).collect();
    client
        .execute(
            "UPDATE pgrepl.tables t SET state = 'copied', rows = u.r, copied_lsn = u.l::pg_lsn, updated_at = now()
             FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[]) AS u(s, n, r, l)
             WHERE t.sync_name = $1 AND t.schema_name = u.s AND t.table_name = u.n",
            &[&name.as_str(), &schemas, &names, &rows, &lsns],
        )
        .await
        .map(|_| ())
}

/// Removes what the copy wrote of `tables` (rows and chunk records) and
/// marks them Pending again. Run in the caller's transaction, so a table
/// is never left with some of its rows and none of its records.
pub async fn forget(
    client: &impl GenericClient,
    name: &SyncName,
    tables: &[TableName],
) -> Result<(), tokio_postgres::Error> {
    if tables.is_empty() {
        return Ok(());
    }
    let quoted: Vec<String> = tables.iter().map(TableName::quoted).collect();
    client
        .batch_execute(&format!("TRUNCATE ONLY {}", quoted.join(", ")))
        .await?;
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    client
        .execute(
            "DELETE FROM pgrepl.copied_chunks c USING unnest($2::text[], $3::text[]) AS u(s, n)
             WHERE c.sync_name = $1 AND c.schema_name = u.s AND c.table_name = u.n",
            &[&name.as_str(), &schemas, &names],
        )
        .await?;
    client
        .execute(
            "UPDATE pgrepl.tables t SET state = 'pending', rows = NULL, bytes = NULL, copied_lsn = NULL, copy_cut = NULL, updated_at = now()
             FROM unnest($2::text[], $3::text[]) AS u(s, n)
             WHERE t.sync_name = $1 AND t.schema_name = u.s AND t.table_name = u.n",
            &[&name.as_str(), &schemas, &names],
        )
        .await
        .map(|_| ())
}

/// The query (for a raw session) listing the tables copied under a later
/// snapshot than the sync's consistent point, with that snapshot's LSN
/// (through `to_jsonb`: a sync begun by an older pgrepl lacks the column).
pub fn copied_late_sql(name: &SyncName) -> String {
    format!(
        "SELECT t.schema_name, t.table_name, to_jsonb(t) ->> 'copied_lsn' FROM pgrepl.tables t
         JOIN pgrepl.sync s ON s.name = t.sync_name
         WHERE t.sync_name = {} AND (to_jsonb(t) ->> 'copied_lsn')::pg_lsn > s.consistent_lsn",
        quote_literal(name.as_str())
    )
}

/// Reads the rows of [`copied_late_sql`].
pub fn parse_copied_late(rows: &[Vec<Option<String>>]) -> HashMap<TableName, Lsn> {
    rows.iter()
        .filter_map(|r| {
            let schema = r.first()?.clone()?;
            let name = r.get(1)?.clone()?;
            let lsn = r.get(2)?.as_deref()?.parse().ok()?;
            Some((TableName::new(schema, name), lsn))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(t: &str, chunk: usize, chunks: Option<usize>, lsn: Option<u64>) -> KeptChunk {
        KeptChunk {
            table: TableName::new("public", t),
            chunk,
            chunks,
            rows: 10,
            lsn: lsn.map(Lsn),
        }
    }

    #[test]
    fn chunks_are_told_by_table_with_their_snapshots() {
        let consistent = Lsn(100);
        let chunks = [
            chunk("whole", 0, Some(1), None),
            chunk("split", 2, Some(3), None),
            chunk("split", 0, Some(3), None),
            chunk("split", 1, Some(3), None),
            chunk("half", 0, Some(2), None),
            chunk("mixed", 0, Some(2), None),
            chunk("mixed", 1, Some(2), Some(200)),
            chunk("old", 0, None, None),
        ];
        let tables = by_table(&chunks, consistent);
        let seen: Vec<(&str, bool, u64, u64, i64)> = tables
            .iter()
            .map(|t| {
                let (a, b) = t.lsns();
                (t.table.name.as_str(), t.whole(), a.0, b.0, t.rows())
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("half", false, 100, 100, 10),
                ("mixed", true, 100, 200, 20),
                ("old", false, 100, 100, 10),
                ("split", true, 100, 100, 30),
                ("whole", true, 100, 100, 10),
            ]
        );
    }
}
