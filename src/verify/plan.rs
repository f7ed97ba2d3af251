//! What `verify` compares: each table of the sync holding rows, its
//! columns in the source's order (a row's text is built from them by name,
//! so a target with another column order still compares), its key (the
//! primary key or replica identity index), and how many parts of about
//! `--chunk-rows` rows it is hashed in.
//!
//! A table is first hashed whole, one sequential pass per side (parallel
//! where the server allows): an equal table costs no more than that (3M
//! rows: 0.6 s, where 30 key ranges through the index took 1.2 s plus a
//! pass to cut them). Only a table that differs is split, into parts that
//! are buckets of a hash of its key's text, all hashed in one more pass
//! (one `GROUP BY`); each part that differs is narrowed to its rows.

use tokio_postgres::Client;

use super::VerifyError;
use crate::sql::quote::quote_ident;
use crate::sql::TableName;

/// One table to compare.
#[derive(Clone, Debug)]
pub struct TablePlan {
    pub name: TableName,
    pub columns: Vec<String>,
    /// Key column names and their types (as `format_type` writes them).
    pub key: Vec<(String, String)>,
    /// How many parts (key-hash buckets) the table is hashed in; 1 for a
    /// table without a key.
    pub parts: u32,
    /// The source's row estimate, to start the largest tables first.
    pub estimate: f64,
}

/// One part of one table.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub table: usize,
    pub index: u32,
}

impl TablePlan {
    /// The part a row belongs to, as SQL over `t`: the same on both sides
    /// and in every major (the key columns' text, "C" collation,
    /// `hashtextextended`; a widened key type has the same text).
    pub fn part_of(&self) -> String {
        if self.key.is_empty() || self.parts <= 1 {
            return "0".into();
        }
        let texts: Vec<String> = self
            .key
            .iter()
            .map(|(c, _)| format!("t.{}::text", quote_ident(c)))
            .collect();
        format!(
            "((pg_catalog.hashtextextended(({}) COLLATE \"C\", 1) % {n}) + {n}) % {n}",
            texts.join(" || ',' || "),
            n = self.parts
        )
    }

    /// `ROW(t."a", t."b")::text`: the row's canonical text.
    pub fn row_text(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(c)))
            .collect();
        format!("ROW({})::text", cols.join(", "))
    }

    pub fn key_list(&self) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|(c, _)| format!("t.{}", quote_ident(c)))
            .collect();
        cols.join(", ")
    }

    /// `WHERE` of a part.
    pub fn range(&self, chunk: &Chunk) -> (String, Vec<String>) {
        if self.key.is_empty() || self.parts <= 1 {
            return ("true".into(), Vec::new());
        }
        (format!("{} = {}", self.part_of(), chunk.index), Vec::new())
    }
}

/// The tables of `names` as the source (in its snapshot) has them.
pub async fn plan(
    src: &Client,
    names: &[TableName],
    chunk_rows: u64,
) -> Result<Vec<TablePlan>, VerifyError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let quoted = name.quoted();
        let columns: Vec<String> = src
            .query(
                "SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&quoted],
            )
            .await
            .map_err(|e| VerifyError::source("reading columns", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let key: Vec<(String, String)> = src
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                 FROM pg_index i
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = to_regclass($1)
                   AND i.indexrelid = coalesce(
                       (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = i.indrelid AND x.indisprimary),
                       (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = i.indrelid AND x.indisreplident))
                 ORDER BY k.n",
                &[&quoted],
            )
            .await
            .map_err(|e| VerifyError::source("reading keys", &e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let estimate = rows(src, name).await?;
        let parts = match key.is_empty() {
            true => 1,
            false => (estimate / chunk_rows.max(1) as f64)
                .ceil()
                .clamp(1.0, 1_000_000.0) as u32,
        };
        out.push(TablePlan {
            name: name.clone(),
            columns,
            key,
            parts,
            estimate,
        });
    }
    Ok(out)
}

/// The planner's row estimate; counted when there is none (never
/// analyzed), since too few parts would make narrowing a difference hold
/// too many keys.
async fn rows(src: &Client, name: &TableName) -> Result<f64, VerifyError> {
    let estimate: f64 = src
        .query_one(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass($1)",
            &[&name.quoted()],
        )
        .await
        .map_err(|e| VerifyError::source("reading the row estimate", &e))?
        .get(0);
    if estimate > 0.0 {
        return Ok(estimate);
    }
    let counted: i64 = src
        .query_one(&format!("SELECT count(*) FROM ONLY {}", name.quoted()), &[])
        .await
        .map_err(|e| VerifyError::source("counting rows", &e))?
        .get(0);
    Ok(counted as f64)
}
