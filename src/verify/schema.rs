//! The schema beside the rows, per table: columns (type and NOT NULL),
//! constraints, indexes, and the sequences it owns, whose value on the
//! target must not be behind the source's (the next INSERT after a switch
//! would collide). Sequences no table owns are compared on their own line.
//! Texts are the catalog's own (`format_type`, `pg_get_constraintdef`,
//! `pg_get_indexdef`), which read the same on every major 12–18; NOT NULL
//! constraints (a pg_constraint row from 18 on) are compared as columns.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::VerifyError;
use crate::conn::Side;
use crate::sql::TableName;

fn err(side: Side) -> impl Fn(tokio_postgres::Error) -> VerifyError {
    move |e| VerifyError::Query {
        side,
        what: "reading the schema",
        message: crate::conn::error::describe(&e),
    }
}

async fn lines(
    client: &Client,
    side: Side,
    table: &TableName,
) -> Result<BTreeSet<String>, VerifyError> {
    let q = table.quoted();
    let rows = client
        .query(
            "SELECT 'column ' || quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'constraint ' || quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid)
             FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND c.contype <> 'n'
             UNION ALL
             SELECT 'index ' || regexp_replace(pg_get_indexdef(i.indexrelid), ' ON [^ ]+ ', ' ON ')
             FROM pg_index i WHERE i.indrelid = to_regclass($1)",
            &[&q],
        )
        .await
        .map_err(err(side))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Sequences owned by `table` (or, with `None`, by no table), with their
/// values: (name, last_value, is_called).
pub async fn sequences(
    client: &Client,
    side: Side,
    table: Option<&TableName>,
) -> Result<Vec<(String, i64, bool)>, VerifyError> {
    let names: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, s.relname)
             FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             WHERE s.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrepl')
               AND CASE WHEN $1::text IS NULL THEN d.refobjid IS NULL ELSE d.refobjid = to_regclass($1) END
             ORDER BY 1",
            &[&table.map(TableName::quoted)],
        )
        .await
        .map_err(err(side))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for name in names {
        let row = client
            .query_one(
                &format!("SELECT last_value::int8, is_called FROM {name}"),
                &[],
            )
            .await
            .map_err(err(side))?;
        out.push((name, row.get(0), row.get(1)));
    }
    Ok(out)
}

/// What the sequence comparison found: differences, and notes that are
/// not (a sequence behind while the sync runs: it moves them up every
/// `--sequence-interval`, cutover sets them exactly).
#[derive(Debug, Default)]
pub struct SequenceFindings {
    pub differences: Vec<String>,
    pub notes: Vec<String>,
}

/// Compares the sides' sequences: missing, or behind. `exact`: nothing
/// moves (stopped or fenced), so a sequence behind is a difference.
pub fn sequence_differences(
    source: &[(String, i64, bool)],
    target: &[(String, i64, bool)],
    exact: bool,
) -> SequenceFindings {
    let mut out = SequenceFindings::default();
    for (name, value, called) in source {
        // The next value the sequence would hand out.
        let next = |v: i64, called: bool| if called { v.saturating_add(1) } else { v };
        match target.iter().find(|(n, _, _)| n == name) {
            None => out
                .differences
                .push(format!("sequence {name} is missing on the target")),
            Some((_, tv, tc)) if next(*tv, *tc) < next(*value, *called) => {
                let (t, s) = (next(*tv, *tc), next(*value, *called));
                if exact {
                    out.differences.push(format!(
                        "sequence {name} is behind on the target ({t} < {s}): its next value would collide"
                    ));
                } else {
                    out.notes.push(format!(
                        "sequence {name} is behind on the target ({t} < {s}): the running sync moves it up every --sequence-interval, cutover sets it exactly"
                    ));
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// Differences in `table`'s schema, as lines a person reads.
pub async fn compare(
    src: &Client,
    tgt: &Client,
    table: &TableName,
    exact_sequences: bool,
) -> Result<(Vec<String>, Vec<String>), VerifyError> {
    let (a, b) = tokio::try_join!(
        lines(src, Side::Source, table),
        lines(tgt, Side::Target, table)
    )?;
    let mut out: Vec<String> = a
        .difference(&b)
        .map(|l| format!("{l}: only on the source (or different)"))
        .chain(
            b.difference(&a)
                .map(|l| format!("{l}: only on the target (or different)")),
        )
        .collect();
    let (sa, sb) = tokio::try_join!(
        sequences(src, Side::Source, Some(table)),
        sequences(tgt, Side::Target, Some(table))
    )?;
    let found = sequence_differences(&sa, &sb, exact_sequences);
    out.extend(found.differences);
    Ok((out, found.notes))
}
