//! An independent check that two databases hold the same rows: per table,
//! the row count and two 60-bit sums of md5(row::text). Order-free (sums),
//! duplicate-aware (a multiset), and computed by each server itself, so it
//! shares no code with pgrepl. Each table's own rows only (`ONLY`: an
//! inheritance parent is not its children), the row as `ROW(t.*)` (a
//! column named `t` would win over the alias in `t::text`).

use tokio_postgres::Client;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub rows: i64,
    pub hash: String,
}

pub async fn table_checksum(client: &Client, quoted_table: &str) -> Checksum {
    let sql = format!(
        "SELECT count(*), coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint::numeric), 0)::text
                || '/' || coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint::numeric), 0)::text
         FROM (SELECT md5(ROW(t.*)::text) AS h FROM ONLY {quoted_table} AS t) s"
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("checksum of {quoted_table}: {}", super::db_error(&e)));
    Checksum {
        rows: row.get(0),
        hash: row.get(1),
    }
}

/// User tables holding rows (plain tables, leaf partitions and populated
/// materialized views), quoted, pgrepl's own schemas (its state, DDL capture and fence) left out.
pub async fn user_tables(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrepl', 'pgrepl_fence')
               AND n.nspname !~ '^pg_'
             ORDER BY 1",
            &[],
        )
        .await
        .expect("list user tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Panics with a per-table diff unless both databases hold the same tables
/// with the same rows. Returns the number of rows compared.
pub async fn assert_same_data(source: &Client, target: &Client) -> i64 {
    let src_tables = user_tables(source).await;
    let tgt_tables = user_tables(target).await;
    assert_eq!(
        src_tables, tgt_tables,
        "source and target hold different tables"
    );
    let mut diffs = Vec::new();
    let mut total = 0;
    for t in &src_tables {
        let (a, b) = (
            table_checksum(source, t).await,
            table_checksum(target, t).await,
        );
        total += a.rows;
        if a != b {
            diffs.push(format!(
                "{t}: source {} rows {} / target {} rows {}",
                a.rows, a.hash, b.rows, b.hash
            ));
        }
    }
    assert!(diffs.is_empty(), "tables differ:\n{}", diffs.join("\n"));
    total
}

/// Panics unless each of `tables` (quoted names) holds the same rows on
/// both sides.
pub async fn assert_same_tables(source: &Client, target: &Client, tables: &[&str]) {
    for t in tables {
        assert_eq!(
            table_checksum(source, t).await,
            table_checksum(target, t).await,
            "{t} differs"
        );
    }
}
