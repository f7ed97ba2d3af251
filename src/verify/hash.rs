//! Hashing a table's parts on one side, in SQL: per part, the row count
//! and the exact (numeric) sum of a 64-bit hash of each row's canonical
//! text in the "C" collation (`hashtextextended`, which hash partitioning relies on being
//! the same in every major; checked equal on 12, 15 and 18): order-free,
//! duplicates counted, two numbers per part on the wire. Six times
//! cheaper than an md5 per row (pgbench_accounts, 500k rows: 117 ms
//! against 704 ms); two changed rows cancel out only if their hashes'
//! differences do, one chance in 2^64. A part
//! whose hashes differ is narrowed down: every row's key and md5 from both
//! sides, then, for the first rows that differ, their columns.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::plan::{Chunk, TablePlan};
use super::VerifyError;
use crate::conn::Side;
use crate::sql::quote::quote_ident;

/// A range's fingerprint on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub rows: i64,
    pub hash: String,
}

/// How rows of a range differ, by key (or, without a key, by content).
#[derive(Clone, Debug, Default)]
pub struct Differences {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    /// Keys whose rows differ, with the columns that do.
    pub changed: Vec<(String, Vec<String>)>,
    /// Totals (the lists hold the first ones only).
    pub missing_count: u64,
    pub extra_count: u64,
    pub changed_count: u64,
}

/// How many differing rows a report names per table.
pub const SHOWN: usize = 20;

fn params(values: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn err(side: Side, what: &'static str) -> impl Fn(tokio_postgres::Error) -> VerifyError {
    move |e| VerifyError::Query {
        side,
        what,
        message: crate::conn::error::describe(&e),
    }
}

/// The whole table on one side, in one pass.
pub async fn fingerprint(
    client: &Client,
    side: Side,
    plan: &TablePlan,
) -> Result<Fingerprint, VerifyError> {
    let sql = format!(
        "SELECT count(*)::int8, coalesce(sum(pg_catalog.hashtextextended({row} COLLATE \"C\", 0)), 0)::text
         FROM ONLY {table} AS t",
        row = plan.row_text(),
        table = plan.name.quoted(),
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(err(side, "hashing rows"))?;
    Ok(Fingerprint {
        rows: row.get(0),
        hash: row.get(1),
    })
}

/// Every part of a table on one side, in one pass: part `i`'s fingerprint
/// at index `i` (an empty part: no rows, sum 0). The parts come from a
/// join with `generate_series` so the planner knows there are few groups
/// (grouping by the expression alone, it expects one per row and sorts).
pub async fn fingerprints(
    client: &Client,
    side: Side,
    plan: &TablePlan,
) -> Result<Vec<Fingerprint>, VerifyError> {
    let sql = format!(
        "SELECT g.p::int8, count(*)::int8, sum(s.h)::text
         FROM (SELECT {part} AS p, pg_catalog.hashtextextended({row} COLLATE \"C\", 0) AS h
               FROM ONLY {table} AS t) s
         JOIN pg_catalog.generate_series(0, {last}) AS g(p) ON g.p = s.p
         GROUP BY g.p",
        part = plan.part_of(),
        row = plan.row_text(),
        table = plan.name.quoted(),
        last = plan.parts.max(1) - 1,
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(err(side, "hashing parts"))?;
    let empty = Fingerprint {
        rows: 0,
        hash: "0".into(),
    };
    let mut out = vec![empty; plan.parts.max(1) as usize];
    for r in rows {
        let part = r.get::<_, i64>(0);
        if let Some(slot) = usize::try_from(part).ok().and_then(|p| out.get_mut(p)) {
            *slot = Fingerprint {
                rows: r.get(1),
                hash: r.get(2),
            };
        }
    }
    Ok(out)
}

/// One row's entry: its md5, how many such rows, and its key's values.
type Entry = (String, i64, Vec<String>);

/// key text -> entry (keyed tables), or md5 -> entry (keyless ones).
async fn row_hashes(
    client: &Client,
    side: Side,
    plan: &TablePlan,
    chunk: &Chunk,
) -> Result<HashMap<String, Entry>, VerifyError> {
    let (range, values) = plan.range(chunk);
    let (key, key_values) = if plan.key.is_empty() {
        (
            format!("md5({})", plan.row_text()),
            "ARRAY[]::text[]".to_string(),
        )
    } else {
        let texts: Vec<String> = plan
            .key
            .iter()
            .map(|(c, _)| format!("t.{}::text", quote_ident(c)))
            .collect();
        (
            format!("ROW({})::text", plan.key_list()),
            format!("ARRAY[{}]", texts.join(", ")),
        )
    };
    let sql = format!(
        "SELECT {key}, md5({row}), count(*)::int8, {key_values} FROM ONLY {table} AS t WHERE {range} GROUP BY 1, 2, 4",
        row = plan.row_text(),
        table = plan.name.quoted(),
    );
    let rows = client
        .query(&sql, &params(&values))
        .await
        .map_err(err(side, "reading row hashes"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, Vec<String>>(3),
                ),
            )
        })
        .collect())
}

/// The rows of a differing range that differ, by key.
pub async fn narrow(
    src: &Client,
    tgt: &Client,
    plan: &TablePlan,
    chunk: &Chunk,
) -> Result<Differences, VerifyError> {
    let (a, b) = tokio::try_join!(
        row_hashes(src, Side::Source, plan, chunk),
        row_hashes(tgt, Side::Target, plan, chunk)
    )?;
    let mut d = Differences::default();
    let sorted = |m: &HashMap<String, Entry>| -> BTreeMap<String, Entry> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let (a, b) = (sorted(&a), sorted(&b));
    if plan.key.is_empty() {
        // Rows by content: a row is missing or extra as many times as its
        // counts differ.
        for (h, (_, n, _)) in &a {
            let m = b.get(h).map(|(_, m, _)| *m).unwrap_or(0);
            if *n > m {
                d.missing_count += (n - m) as u64;
                if d.missing.len() < SHOWN {
                    d.missing.push(format!("a row with md5 {h}"));
                }
            }
        }
        for (h, (_, m, _)) in &b {
            let n = a.get(h).map(|(_, n, _)| *n).unwrap_or(0);
            if *m > n {
                d.extra_count += (m - n) as u64;
                if d.extra.len() < SHOWN {
                    d.extra.push(format!("a row with md5 {h}"));
                }
            }
        }
        return Ok(d);
    }
    let mut changed_keys = Vec::new();
    for (k, (h, _, values)) in &a {
        match b.get(k) {
            None => {
                d.missing_count += 1;
                if d.missing.len() < SHOWN {
                    d.missing.push(k.clone());
                }
            }
            Some((h2, _, _)) if h2 != h => {
                d.changed_count += 1;
                if changed_keys.len() < SHOWN {
                    changed_keys.push((k.clone(), values.clone()));
                }
            }
            Some(_) => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        d.extra_count += 1;
        if d.extra.len() < SHOWN {
            d.extra.push(k.clone());
        }
    }
    for (k, values) in changed_keys {
        let columns = differing_columns(src, tgt, plan, &values).await?;
        d.changed.push((k, columns));
    }
    Ok(d)
}

/// The columns in which the rows of the key `values` differ between the
/// sides (found through the key's index on each).
async fn differing_columns(
    src: &Client,
    tgt: &Client,
    plan: &TablePlan,
    values: &[String],
) -> Result<Vec<String>, VerifyError> {
    let cols: Vec<String> = plan
        .columns
        .iter()
        .map(|c| format!("t.{}::text", quote_ident(c)))
        .collect();
    let key: Vec<String> = plan
        .key
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::text::{ty}", i + 1))
        .collect();
    let sql = format!(
        "SELECT {} FROM ONLY {} AS t WHERE ({}) = ({})",
        cols.join(", "),
        plan.name.quoted(),
        plan.key_list(),
        key.join(", ")
    );
    let (a, b) = tokio::try_join!(
        async {
            src.query_opt(&sql, &params(values))
                .await
                .map_err(err(Side::Source, "reading a row"))
        },
        async {
            tgt.query_opt(&sql, &params(values))
                .await
                .map_err(err(Side::Target, "reading a row"))
        }
    )?;
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(Vec::new());
    };
    Ok(plan
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| a.get::<_, Option<String>>(*i) != b.get::<_, Option<String>>(*i))
        .map(|(_, c)| c.clone())
        .collect())
}
