//! Sequences: logical decoding does not carry them, so pgrepl does. Their
//! values are read inside the copy's snapshot (a sequence read is never
//! behind it) and set on the target after the copy; while streaming they
//! are kept at least as far as the source's (`keep`); at cutover, under
//! the fence, they are set exactly to the source's (`set_exactly`).
//! Values are read as they are (`last_value`, `is_called`), never guessed
//! from a column's maximum.

pub mod keep;

pub use keep::keep_ahead;

use tokio_postgres::GenericClient;

use crate::sql::{quote_ident, ObjectName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceValue {
    pub name: ObjectName,
    pub last_value: i64,
    pub is_called: bool,
}

impl SequenceValue {
    /// The value `nextval` would return next (ascending sequences).
    pub fn next(&self) -> i64 {
        if self.is_called {
            self.last_value.saturating_add(1)
        } else {
            self.last_value
        }
    }
}

/// Sequences of the source, except pgrepl's, extension members', and
/// those owned by tables left out of the sync.
pub async fn read(
    client: &impl GenericClient,
    excluded_owners: &[u32],
) -> Result<Vec<SequenceValue>, tokio_postgres::Error> {
    let excluded: Vec<i64> = excluded_owners.iter().map(|o| i64::from(*o)).collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrepl')
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                               AND (d.deptype = 'e' OR (d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass
                                                        AND d.refobjid::int8 = ANY($1))))
             ORDER BY 1, 2",
            &[&excluded],
        )
        .await?;
    let names: Vec<ObjectName> = rows
        .iter()
        .map(|r| ObjectName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let mut values = Vec::with_capacity(names.len());
    for chunk in names.chunks(500) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "SELECT {i}, last_value::int8, is_called FROM {}",
                    n.quoted()
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in client.query(&sql, &[]).await? {
            let i: i32 = row.get(0);
            values.push(SequenceValue {
                name: chunk[i as usize].clone(),
                last_value: row.get(1),
                is_called: row.get(2),
            });
        }
    }
    Ok(values)
}

/// Sets each sequence on the target exactly (those that exist there);
/// returns how many.
pub async fn apply(
    client: &impl GenericClient,
    values: &[SequenceValue],
) -> Result<usize, tokio_postgres::Error> {
    let mut set = 0;
    for v in values {
        let qualified = format!(
            "{}.{}",
            quote_ident(&v.name.schema),
            quote_ident(&v.name.name)
        );
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await?
            .get(0);
        if !exists {
            continue;
        }
        client
            .execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&qualified, &v.last_value, &v.is_called],
            )
            .await?;
        set += 1;
    }
    Ok(set)
}
