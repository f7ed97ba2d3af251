//! What `verify` compares: each table of the sync holding rows, its
//! columns in the source's order (a row's text is built from them by name,
//! so a target with another column order still compares), its key (the
//! primary key or replica identity index), and key ranges of about
//! `--chunk-rows` rows, cut on the source and used on both sides.

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
    /// Key-range boundaries, each a key tuple as text: chunk i holds the
    /// keys from boundary i-1 (inclusive) to boundary i (exclusive).
    pub bounds: Vec<Vec<String>>,
}

/// One key range of one table.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub table: usize,
    pub index: usize,
    pub lower: Option<Vec<String>>,
    pub upper: Option<Vec<String>>,
}

impl TablePlan {
    pub fn chunks(&self, table: usize) -> Vec<Chunk> {
        let n = self.bounds.len() + 1;
        (0..n)
            .map(|i| Chunk {
                table,
                index: i,
                lower: (i > 0).then(|| self.bounds[i - 1].clone()),
                upper: (i < n - 1).then(|| self.bounds[i].clone()),
            })
            .collect()
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

    /// `WHERE` of a chunk, its bounds as parameters `$1..` (text, cast to
    /// the source's key types); returns the clause and the parameters.
    pub fn range(&self, chunk: &Chunk) -> (String, Vec<String>) {
        if self.key.is_empty() {
            return ("true".into(), Vec::new());
        }
        let mut params = Vec::new();
        let mut parts = Vec::new();
        let keys = format!("({})", self.key_list());
        let tuple = |values: &[String], params: &mut Vec<String>| -> String {
            let items: Vec<String> = values
                .iter()
                .zip(&self.key)
                .map(|(v, (_, ty))| {
                    params.push(v.clone());
                    format!("${}::text::{ty}", params.len())
                })
                .collect();
            format!("({})", items.join(", "))
        };
        if let Some(lo) = &chunk.lower {
            let t = tuple(lo, &mut params);
            parts.push(format!("{keys} >= {t}"));
        }
        if let Some(hi) = &chunk.upper {
            let t = tuple(hi, &mut params);
            parts.push(format!("{keys} < {t}"));
        }
        if parts.is_empty() {
            ("true".into(), params)
        } else {
            (parts.join(" AND "), params)
        }
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
        let mut plan = TablePlan {
            name: name.clone(),
            columns,
            key,
            bounds: Vec::new(),
        };
        if !plan.key.is_empty() {
            plan.bounds = bounds(src, &plan, chunk_rows.max(1)).await?;
        }
        out.push(plan);
    }
    Ok(out)
}

/// Every `chunk_rows`-th key, in key order (one index-ordered pass).
async fn bounds(
    src: &Client,
    plan: &TablePlan,
    chunk_rows: u64,
) -> Result<Vec<Vec<String>>, VerifyError> {
    let texts: Vec<String> = plan
        .key
        .iter()
        .map(|(c, _)| format!("{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {order}) AS pgrepl_rn FROM ONLY {table} AS t) s
         WHERE pgrepl_rn % {chunk_rows} = 0 ORDER BY pgrepl_rn",
        texts = texts.join(", "),
        cols = plan.key_list(),
        order = plan.key_list(),
        table = plan.name.quoted(),
    );
    let rows = src
        .query(&sql, &[])
        .await
        .map_err(|e| VerifyError::source("cutting key ranges", &e))?;
    Ok(rows
        .iter()
        .map(|r| (0..plan.key.len()).map(|i| r.get::<_, String>(i)).collect())
        .collect())
}
