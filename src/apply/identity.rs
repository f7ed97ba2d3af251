//! Identity columns `GENERATED ALWAYS`, which no UPDATE may set ("column
//! can only be updated to DEFAULT"), yet whose values the source changes
//! (`UPDATE ... SET id = DEFAULT`, a column added with a new identity, a
//! DELETE and INSERT of a key folded into one UPDATE).
//!
//! The rule: the target ends with the source's value in every column. An
//! UPDATE that must write such a column (one outside the key, or the key
//! itself when it changed) is applied as a DELETE of the row and an INSERT
//! `OVERRIDING SYSTEM VALUE` of its new image, in one statement whose row
//! count is the UPDATE's. Apply sessions run as `replica`, so neither user
//! triggers nor foreign keys see the difference; unchanged TOAST values
//! are carried over from the deleted row.

use std::fmt::Write;

use super::relation::{RowFilter, TargetRelation};
use crate::sql::quote::{ident_list, push_ident};

impl TargetRelation {
    /// Whether an UPDATE must be applied as DELETE + INSERT: the table has
    /// an identity column ALWAYS outside the key, or in the key and the
    /// key changed.
    pub fn rewrites_identity(&self, key_changed: bool) -> bool {
        self.columns
            .iter()
            .enumerate()
            .any(|(i, c)| c.always_identity && (key_changed || !self.key.contains(&i)))
    }

    /// `WITH d AS (DELETE ... RETURNING *) INSERT ... SELECT ... FROM d`
    /// for one row: `set` columns from parameters `$1..` (cast to their
    /// types: an INSERT ... SELECT gives its parameters no column to take
    /// a type from), the others as the row had them; the row found by
    /// `filter` with parameters numbered after them.
    pub(super) fn delete_insert_sql(
        &self,
        set: &[usize],
        filter: &RowFilter<'_>,
    ) -> Result<(String, Vec<usize>), super::relation::RelationError> {
        let (where_sql, filter_cols) = self.filter_sql(filter, set.len() + 1)?;
        let all = self.all_columns();
        let mut values = String::new();
        for (n, &i) in all.iter().enumerate() {
            if n > 0 {
                values.push_str(", ");
            }
            match set.iter().position(|&s| s == i) {
                Some(p) => {
                    let _ = write!(values, "${}::{}", p + 1, self.columns[i].type_name);
                }
                None => {
                    values.push_str("d.");
                    push_ident(&mut values, self.col(i));
                }
            }
        }
        let sql = format!(
            "WITH d AS (DELETE FROM {table}{where_sql} RETURNING *) \
             INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {values} FROM d",
            table = self.table.quoted(),
            cols = ident_list(all.iter().map(|&i| self.col(i))),
        );
        Ok((sql, filter_cols))
    }

    /// The set-based form over the rows `from` holds (as `s`, every column):
    /// delete the rows of their keys, insert their images.
    pub(super) fn set_delete_insert_sql(&self, from: &str) -> String {
        let all = self.all_columns();
        let on = self
            .key
            .iter()
            .map(|&i| {
                let c = crate::sql::quote_ident(self.col(i));
                format!("d.{c} = s.{c}")
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let matched = self
            .key
            .iter()
            .map(|&i| {
                let c = crate::sql::quote_ident(self.col(i));
                format!("t.{c} = s.{c}")
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let returning = self
            .key
            .iter()
            .map(|&i| format!("t.{}", crate::sql::quote_ident(self.col(i))))
            .collect::<Vec<_>>()
            .join(", ");
        let values = all
            .iter()
            .map(|&i| format!("s.{}", crate::sql::quote_ident(self.col(i))))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH s AS (SELECT * FROM {from}), \
             d AS (DELETE FROM {table} AS t USING s WHERE {matched} RETURNING {returning}) \
             INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {values} FROM s JOIN d ON {on}",
            table = self.table.quoted(),
            cols = ident_list(all.iter().map(|&i| self.col(i))),
        )
    }
}
