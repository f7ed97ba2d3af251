//! What to copy, decided under the snapshot: each table's columns (stored
//! generated columns left out: the target computes them), whether binary
//! COPY is safe, and how a large table is cut into chunks so every job can
//! work on it — page (ctid) ranges on PG 14+, integer key ranges before.

use std::sync::Arc;

use tokio_postgres::GenericClient;

use crate::source::catalog::SourceTable;
use crate::sql::quote::{ident_list, quote_ident};
use crate::sql::TableName;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    Binary,
    Text,
}

impl CopyFormat {
    fn sql(self) -> &'static str {
        match self {
            CopyFormat::Binary => "binary",
            CopyFormat::Text => "text",
        }
    }
}

#[derive(Debug)]
pub struct TablePlan {
    pub name: TableName,
    pub columns: Vec<String>,
    /// Each copied column's type, as `format_type` writes it.
    pub types: Vec<String>,
    pub format: CopyFormat,
    pub bytes: i64,
    pub estimated_rows: i64,
    /// The table's file under the snapshot, for a split table: chunks of
    /// it copied under two snapshots fit together only if it is the same
    /// file (no VACUUM FULL or CLUSTER moved its rows in between).
    pub relfilenode: Option<i64>,
}

/// How a split table was cut, kept with the copy (see `resume`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cut {
    pub relfilenode: i64,
    pub ranges: Vec<Range>,
}

/// Which rows of a table one unit copies.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Range {
    Whole,
    /// Pages `[from, to)` (`to: None` = to the end).
    Pages {
        from: i64,
        to: Option<i64>,
    },
    /// Key values `[from, to)` of an integer key column.
    Keys {
        column: String,
        from: Option<i64>,
        to: Option<i64>,
    },
}

/// One COPY: a table, or a chunk of one.
#[derive(Clone, Debug)]
pub struct Unit {
    pub table: Arc<TablePlan>,
    pub range: Range,
    /// Chunk number (0-based) and count, for names and logs.
    pub chunk: usize,
    pub chunks: usize,
    pub estimated_bytes: i64,
}

impl Unit {
    /// `COPY ... TO STDOUT` on the source.
    pub fn copy_out_sql(&self) -> String {
        let t = &self.table;
        let cols = ident_list(t.columns.iter().map(String::as_str));
        let fmt = t.format.sql();
        let filter = match &self.range {
            Range::Whole => {
                return format!("COPY {} ({cols}) TO STDOUT (FORMAT {fmt})", t.name.quoted())
            }
            Range::Pages { from, to } => {
                let mut f = format!("ctid >= '({from},0)'::tid");
                if let Some(to) = to {
                    f.push_str(&format!(" AND ctid < '({to},0)'::tid"));
                }
                f
            }
            Range::Keys { column, from, to } => {
                let c = quote_ident(column);
                match (from, to) {
                    (Some(a), Some(b)) => format!("{c} >= {a} AND {c} < {b}"),
                    (Some(a), None) => format!("{c} >= {a}"),
                    (None, Some(b)) => format!("{c} < {b}"),
                    (None, None) => "true".to_string(),
                }
            }
        };
        format!(
            "COPY (SELECT {cols} FROM ONLY {} WHERE {filter}) TO STDOUT (FORMAT {fmt})",
            t.name.quoted()
        )
    }

    /// `COPY ... FROM STDIN` on the target.
    pub fn copy_in_sql(&self) -> String {
        let t = &self.table;
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT {})",
            t.name.quoted(),
            ident_list(t.columns.iter().map(String::as_str)),
            t.format.sql()
        )
    }

    pub fn label(&self) -> String {
        if self.chunks > 1 {
            format!(
                "{} [chunk {}/{}]",
                self.table.name,
                self.chunk + 1,
                self.chunks
            )
        } else {
            self.table.name.to_string()
        }
    }
}

/// Planning inputs that do not depend on the table.
pub struct PlanOptions {
    pub source_version: i32,
    /// Binary COPY allowed (where safe).
    pub binary: bool,
    pub same_major: bool,
    pub same_encoding: bool,
    pub chunk_bytes: i64,
}

/// Plans every table with storage, largest first, on a session that has
/// imported the snapshot.
pub async fn plan(
    client: &impl GenericClient,
    tables: &[&SourceTable],
    opts: &PlanOptions,
) -> Result<Vec<Unit>, tokio_postgres::Error> {
    let block_size: i64 = client
        .query_one("SELECT current_setting('block_size')::int8", &[])
        .await?
        .get(0);
    let mut units = Vec::new();
    for t in tables {
        let cols = client
            .query(
                "SELECT a.attname::text, a.attgenerated <> '', format_type(a.atttypid, a.atttypmod),
                   (WITH RECURSIVE b(oid, typtype, base) AS (
                        SELECT ty.oid, ty.typtype, ty.typbasetype FROM pg_type ty WHERE ty.oid = a.atttypid
                        UNION ALL
                        SELECT ty.oid, ty.typtype, ty.typbasetype FROM b JOIN pg_type ty ON ty.oid = b.base
                        WHERE b.typtype = 'd')
                    SELECT (b.oid < 16384 AND b.typtype <> 'c') OR b.typtype = 'e' FROM b WHERE b.typtype <> 'd')
                 FROM pg_attribute a
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[&t.oid],
            )
            .await?;
        let mut columns = Vec::new();
        let mut types = Vec::new();
        let mut binary_safe = opts.binary && opts.same_major && opts.same_encoding;
        for c in &cols {
            let generated: bool = c.get(1);
            if generated {
                continue;
            }
            columns.push(c.get::<_, String>(0));
            types.push(c.get::<_, String>(2));
            binary_safe &= c.get::<_, Option<bool>>(3).unwrap_or(false);
        }
        let ranges = split(client, t, opts, block_size).await?;
        let relfilenode = match ranges.len() {
            1 => None,
            _ => client
                .query_one(
                    "SELECT relfilenode::int8 FROM pg_class WHERE oid = $1",
                    &[&t.oid],
                )
                .await?
                .get(0),
        };
        let plan = Arc::new(TablePlan {
            relfilenode,
            name: t.name.clone(),
            columns,
            types,
            format: if binary_safe {
                CopyFormat::Binary
            } else {
                CopyFormat::Text
            },
            bytes: t.bytes,
            estimated_rows: t.estimated_rows,
        });
        let chunks = ranges.len();
        for (chunk, range) in ranges.into_iter().enumerate() {
            units.push(Unit {
                table: plan.clone(),
                range,
                chunk,
                chunks,
                estimated_bytes: t.bytes / chunks as i64,
            });
        }
    }
    units.sort_by_key(|u| std::cmp::Reverse(u.estimated_bytes));
    Ok(units)
}

async fn split(
    client: &impl GenericClient,
    t: &SourceTable,
    opts: &PlanOptions,
    block_size: i64,
) -> Result<Vec<Range>, tokio_postgres::Error> {
    if opts.chunk_bytes <= 0 || t.bytes <= opts.chunk_bytes {
        return Ok(vec![Range::Whole]);
    }
    let n = ((t.bytes + opts.chunk_bytes - 1) / opts.chunk_bytes).max(2);
    if opts.source_version >= 140000 {
        // TID range scans (PG 14+) read only the pages asked for.
        let pages = (t.bytes / block_size).max(1);
        let per = (pages + n - 1) / n;
        let mut ranges = Vec::new();
        let mut from = 0;
        while from < pages {
            let to = from + per;
            ranges.push(Range::Pages {
                from,
                to: (to < pages).then_some(to),
            });
            from = to;
        }
        return Ok(ranges);
    }
    // Older sources would scan the whole table for each ctid chunk: split
    // on a single-column integer primary key instead, or not at all.
    let key = client
        .query_opt(
            "SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             WHERE i.indrelid = $1 AND i.indisprimary AND i.indnatts = 1
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
            &[&t.oid],
        )
        .await?;
    let Some(key) = key else {
        return Ok(vec![Range::Whole]);
    };
    let column: String = key.get(0);
    let c = quote_ident(&column);
    let row = client
        .query_one(
            &format!(
                "SELECT min({c})::int8, max({c})::int8 FROM ONLY {}",
                t.name.quoted()
            ),
            &[],
        )
        .await?;
    let (Some(min), Some(max)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
    else {
        return Ok(vec![Range::Whole]);
    };
    let span = (max as i128 - min as i128 + 1).max(1);
    let step = ((span + n as i128 - 1) / n as i128).max(1);
    let mut ranges = Vec::new();
    let mut from: i128 = min as i128;
    let mut first = true;
    while from <= max as i128 {
        let to = from + step;
        ranges.push(Range::Keys {
            column: column.clone(),
            from: (!first).then_some(from as i64),
            to: (to <= max as i128).then_some(to as i64),
        });
        first = false;
        from = to;
    }
    Ok(ranges)
}

/// The cut of every split table among `units` (ranges in chunk order).
pub fn cuts(units: &[Unit]) -> Vec<(TableName, Cut)> {
    let mut split: Vec<&Unit> = units.iter().filter(|u| u.chunks > 1).collect();
    split.sort_by(|a, b| (&a.table.name, a.chunk).cmp(&(&b.table.name, b.chunk)));
    let mut out: Vec<(TableName, Cut)> = Vec::new();
    for u in split {
        let Some(relfilenode) = u.table.relfilenode else {
            continue;
        };
        match out.last_mut() {
            Some((t, cut)) if *t == u.table.name => cut.ranges.push(u.range.clone()),
            _ => out.push((
                u.table.name.clone(),
                Cut {
                    relfilenode,
                    ranges: vec![u.range.clone()],
                },
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(range: Range) -> Unit {
        Unit {
            table: Arc::new(TablePlan {
                name: TableName::new("s", "we\"ird"),
                columns: vec!["id".into(), "select".into()],
                types: vec!["integer".into(), "text".into()],
                format: CopyFormat::Binary,
                bytes: 0,
                estimated_rows: 0,
                relfilenode: None,
            }),
            range,
            chunk: 0,
            chunks: 1,
            estimated_bytes: 0,
        }
    }

    #[test]
    fn copy_statements_quote_everything() {
        assert_eq!(
            unit(Range::Whole).copy_out_sql(),
            r#"COPY "s"."we""ird" ("id", "select") TO STDOUT (FORMAT binary)"#
        );
        assert_eq!(
            unit(Range::Pages {
                from: 10,
                to: Some(20)
            })
            .copy_out_sql(),
            r#"COPY (SELECT "id", "select" FROM ONLY "s"."we""ird" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid) TO STDOUT (FORMAT binary)"#
        );
        assert!(unit(Range::Keys {
            column: "id".into(),
            from: Some(5),
            to: None
        })
        .copy_out_sql()
        .ends_with(r#"WHERE "id" >= 5) TO STDOUT (FORMAT binary)"#));
        assert_eq!(
            unit(Range::Whole).copy_in_sql(),
            r#"COPY "s"."we""ird" ("id", "select") FROM STDIN (FORMAT binary)"#
        );
    }
}
