//! A source relation (as pgoutput describes it) mapped onto its target
//! table, and the statements that apply its rows there. Statements are
//! prepared once per shape and reused; the shapes are:
//!
//! - INSERT of every column sent;
//! - UPDATE setting the columns sent (unchanged TOAST values are not sent
//!   and not set), matching the old key when the key changed, else the key;
//! - DELETE matching the key;
//! - with REPLICA IDENTITY FULL, UPDATE/DELETE match every old column,
//!   NULL-aware like IS NOT DISTINCT FROM (one shape per NULL pattern so
//!   `=` can use an index), through `ctid ... LIMIT 1` so exactly one of
//!   several identical rows changes. Columns whose type has no equality
//!   (json, point, xml) compare by their text form.

use std::collections::HashMap;
use std::fmt::Write;

use std::sync::Arc;

use super::pipeline::Pipeline;

use crate::sql::quote::push_ident;
use crate::sql::TableName;
use crate::stream::pgoutput::{Datum, OldRow, Relation, Tuple};

/// One column of a target table as [`CATALOG_COLUMNS`] reads it, in text.
pub type CatalogRow = Vec<Option<String>>;

/// What mapping a relation reads of each column of its target table, over
/// `pg_class c JOIN pg_attribute a`: the table's kind, the column's name,
/// whether it is generated, whether it is GENERATED ALWAYS AS IDENTITY,
/// whether its type (through domains and arrays) has a default btree
/// class (else it is compared as text), its type with typmod, whether its
/// values can travel in an array of it, and its type's OID and typmod.
pub const CATALOG_COLUMNS: &str = "c.relkind::text, a.attname::text, a.attgenerated <> '', a.attidentity = 'a',
   (WITH RECURSIVE ty(oid, typtype, base, elem, cat) AS (
        SELECT t.oid, t.typtype, t.typbasetype, t.typelem, t.typcategory FROM pg_type t WHERE t.oid = a.atttypid
        UNION ALL
        SELECT t.oid, t.typtype, t.typbasetype, t.typelem, t.typcategory FROM ty JOIN pg_type t
          ON t.oid = CASE WHEN ty.typtype = 'd' THEN ty.base WHEN ty.cat = 'A' THEN ty.elem END
        WHERE ty.typtype = 'd' OR ty.cat = 'A')
    SELECT bool_and(CASE WHEN typtype = 'd' OR cat = 'A' OR typtype IN ('e', 'r', 'm') THEN true
                         WHEN typtype = 'c' THEN false
                         ELSE EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod
                                      WHERE m.amname = 'btree' AND o.opcdefault AND o.opcintype = ty.oid) END)
    FROM ty),
   format_type(a.atttypid, a.atttypmod),
   (SELECT t.typarray <> 0 AND t.typcategory <> 'A' AND t.typdelim = ',' FROM pg_type t WHERE t.oid = a.atttypid),
   a.atttypid::oid::text, a.atttypmod::text";

#[derive(Debug, thiserror::Error)]
pub enum RelationError {
    #[error("source table {source_table} has no counterpart {target} on the target")]
    NoTable {
        source_table: TableName,
        target: TableName,
    },
    #[error("source table {table} has column(s) {columns} that the target table lacks{hint}")]
    MissingColumns {
        table: TableName,
        columns: String,
        hint: &'static str,
    },
    #[error("target: reading table {table}: {source}")]
    Catalog {
        table: TableName,
        source: Box<crate::conn::raw::RawError>,
    },
    #[error("{table}: an UPDATE left a key column unset (unchanged TOAST in the key)")]
    KeyUnchanged { table: TableName },
    #[error("{table}: an UPDATE sets no column the target may write")]
    NothingToSet { table: TableName },
    #[error("{table}: changes arrive without a replica identity: set one on the source (ALTER TABLE ... REPLICA IDENTITY FULL)")]
    NoIdentity { table: TableName },
}

/// How rows are found for UPDATE and DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Key columns (primary key or replica identity index).
    Key,
    /// Every column (REPLICA IDENTITY FULL).
    Full,
}

/// A prepared statement and where its parameters come from.
#[derive(Clone)]
pub struct Prepared {
    pub name: Arc<str>,
    /// Column indices (into the tuple) of the SET / VALUES parameters.
    pub set: Vec<usize>,
    /// Column indices of the WHERE parameters, taken from the old row when
    /// there is one, else from the new row.
    pub filter: Vec<usize>,
}

pub struct TargetRelation {
    pub source: Relation,
    pub table: TableName,
    pub identity: Identity,
    /// Indices of the replica identity columns.
    pub key: Vec<usize>,
    /// Per source column: the target's column.
    pub(super) columns: Vec<TargetColumn>,
    partitioned: bool,
    statements: HashMap<String, Prepared>,
    /// Temp tables for set-based deletes and updates, once created; and
    /// whether each holds rows of this transaction.
    pub(super) stages: Option<Stages>,
    /// The common shapes, kept apart so the hot path builds no SQL.
    fast_insert: Option<Prepared>,
    fast_update: Option<Prepared>,
    fast_delete: Option<Prepared>,
}

/// A column as the target has it.
#[derive(Clone, Debug)]
pub(super) struct TargetColumn {
    /// Its type, typmod included (`character(3)`, `numeric(6,2)`).
    pub(super) type_name: String,
    /// Compared as text: its type has no equality operator.
    pub(super) text_compare: bool,
    /// GENERATED ALWAYS AS IDENTITY: an UPDATE may not set it (see
    /// `identity`).
    pub(super) always_identity: bool,
    /// Its array type, when set-based statements can take its values as
    /// one array parameter (see `sets`).
    pub(super) array_type: Option<String>,
}

pub(super) struct Stages {
    pub(super) base: String,
    pub(super) dirty: [bool; 2],
}

/// What an UPDATE or DELETE needs to find its row.
pub enum RowFilter<'a> {
    Key(&'a Tuple),
    Full(&'a Tuple),
}

impl TargetRelation {
    /// Maps `source` onto the same-named table on the target, from its
    /// catalog rows (the [`CATALOG_COLUMNS`] of each of its columns).
    pub fn from_rows(
        source: Relation,
        rows: Vec<CatalogRow>,
        ddl_replicated: bool,
    ) -> Result<Self, RelationError> {
        let table = TableName::new(source.namespace.clone(), source.name.clone());
        if rows.is_empty() {
            return Err(RelationError::NoTable {
                source_table: table.clone(),
                target: table,
            });
        }
        let text = |r: &CatalogRow, i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        let flag = |r: &CatalogRow, i: usize| text(r, i) == "t";
        let partitioned = text(&rows[0], 0) == "p";
        // name -> (generated, the column as the target has it)
        let target_cols: HashMap<String, (bool, TargetColumn)> = rows
            .iter()
            .map(|r| {
                let type_name = text(r, 5);
                let column = TargetColumn {
                    text_compare: !flag(r, 4),
                    always_identity: flag(r, 3),
                    // With its typmod: `character[]` would be char(1)[].
                    array_type: flag(r, 6).then(|| format!("{type_name}[]")),
                    type_name,
                };
                (text(r, 1), (flag(r, 2), column))
            })
            .collect();
        let missing: Vec<&str> = source
            .columns
            .iter()
            .filter(|c| !matches!(target_cols.get(&c.name), Some((false, _))))
            .map(|c| c.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(RelationError::MissingColumns {
                table,
                columns: missing.join(", "),
                hint: if ddl_replicated {
                    ""
                } else {
                    " (DDL replication is off: add them on the target, then rerun pgrepl sync)"
                },
            });
        }
        let columns = source
            .columns
            .iter()
            .filter_map(|c| target_cols.get(&c.name).map(|(_, t)| t.clone()))
            .collect();
        let identity = if source.replica_identity == b'f' {
            Identity::Full
        } else {
            Identity::Key
        };
        let key = source
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        Ok(TargetRelation {
            source,
            table,
            identity,
            key,
            columns,
            partitioned,
            statements: HashMap::new(),
            stages: None,
            fast_insert: None,
            fast_update: None,
            fast_delete: None,
        })
    }

    /// The table as a TRUNCATE names it: `ONLY` the table itself, unless
    /// it is partitioned (then it is its partitions).
    pub fn truncate_target(&self) -> String {
        match self.partitioned {
            true => self.table.quoted(),
            false => format!("ONLY {}", self.table.quoted()),
        }
    }

    pub(super) fn col(&self, i: usize) -> &str {
        &self.source.columns[i].name
    }

    /// The statement for an INSERT of every column.
    pub fn insert<M>(&mut self, pipe: &mut Pipeline<M>) -> Prepared {
        if let Some(p) = &self.fast_insert {
            return p.clone();
        }
        let cols: Vec<usize> = (0..self.source.columns.len()).collect();
        let mut sql = String::from("INSERT INTO ");
        sql.push_str(&self.table.quoted());
        sql.push_str(" (");
        for (n, &i) in cols.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            push_ident(&mut sql, self.col(i));
        }
        sql.push_str(") OVERRIDING SYSTEM VALUE VALUES (");
        sql.push_str(&crate::sql::quote::placeholders(1, cols.len()));
        sql.push(')');
        let p = self.prepare(pipe, sql, cols, Vec::new());
        self.fast_insert = Some(p.clone());
        p
    }

    /// A key filter over a full set of non-NULL key values.
    fn plain_key(&self, filter: &RowFilter<'_>) -> bool {
        match filter {
            RowFilter::Key(t) => {
                !self.key.is_empty()
                    && self
                        .key
                        .iter()
                        .all(|&i| matches!(t.get(i), Some(Datum::Text(_) | Datum::Binary(_))))
            }
            RowFilter::Full(_) => false,
        }
    }

    /// The statement for an UPDATE of `new` (unchanged TOAST columns left
    /// out) finding its row by `filter`; `key_changed` when `filter` holds
    /// the old key of a row whose key changed.
    pub fn update<M>(
        &mut self,
        pipe: &mut Pipeline<M>,
        new: &Tuple,
        filter: &RowFilter<'_>,
        key_changed: bool,
    ) -> Result<Prepared, RelationError> {
        let rewrite = self.rewrites_identity(key_changed);
        let fast = !rewrite
            && self.plain_key(filter)
            && !new.iter().any(|d| matches!(d, Datum::Unchanged));
        if fast {
            if let Some(p) = &self.fast_update {
                return Ok(p.clone());
            }
        }
        let set: Vec<usize> = new
            .iter()
            .enumerate()
            .filter(|(i, d)| {
                !matches!(d, Datum::Unchanged)
                    && (rewrite || !self.columns.get(*i).is_some_and(|c| c.always_identity))
            })
            .map(|(i, _)| i)
            .collect();
        if set.is_empty() {
            return Err(RelationError::NothingToSet {
                table: self.table.clone(),
            });
        }
        if rewrite {
            let (sql, filter_cols) = self.delete_insert_sql(&set, filter)?;
            return Ok(self.prepare(pipe, sql, set, filter_cols));
        }
        let mut sql = String::from("UPDATE ");
        sql.push_str(&self.table.quoted());
        sql.push_str(" SET ");
        for (n, &i) in set.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            push_ident(&mut sql, self.col(i));
            let _ = write!(sql, " = ${}", n + 1);
        }
        let (where_sql, filter_cols) = self.filter_sql(filter, set.len() + 1)?;
        sql.push_str(&where_sql);
        let p = self.prepare(pipe, sql, set, filter_cols);
        if fast {
            self.fast_update = Some(p.clone());
        }
        Ok(p)
    }

    /// The statement for a DELETE finding its row by `filter`.
    pub fn delete<M>(
        &mut self,
        pipe: &mut Pipeline<M>,
        filter: &RowFilter<'_>,
    ) -> Result<Prepared, RelationError> {
        let fast = self.plain_key(filter);
        if fast {
            if let Some(p) = &self.fast_delete {
                return Ok(p.clone());
            }
        }
        let mut sql = String::from("DELETE FROM ");
        sql.push_str(&self.table.quoted());
        let (where_sql, filter_cols) = self.filter_sql(filter, 1)?;
        sql.push_str(&where_sql);
        let p = self.prepare(pipe, sql, Vec::new(), filter_cols);
        if fast {
            self.fast_delete = Some(p.clone());
        }
        Ok(p)
    }

    /// ` WHERE ...` with parameters numbered from `first`.
    pub(super) fn filter_sql(
        &self,
        filter: &RowFilter<'_>,
        first: usize,
    ) -> Result<(String, Vec<usize>), RelationError> {
        let mut sql = String::new();
        let mut cols = Vec::new();
        match filter {
            RowFilter::Key(tuple) => {
                if self.key.is_empty() {
                    return Err(RelationError::NoIdentity {
                        table: self.table.clone(),
                    });
                }
                sql.push_str(" WHERE ");
                for (n, &i) in self.key.iter().enumerate() {
                    if n > 0 {
                        sql.push_str(" AND ");
                    }
                    push_ident(&mut sql, self.col(i));
                    match tuple.get(i) {
                        Some(Datum::Null) => sql.push_str(" IS NULL"),
                        Some(Datum::Unchanged) | None => {
                            return Err(RelationError::KeyUnchanged {
                                table: self.table.clone(),
                            })
                        }
                        Some(_) => {
                            let _ = write!(sql, " = ${}", first + cols.len());
                            cols.push(i);
                        }
                    }
                }
            }
            RowFilter::Full(tuple) => {
                let only = if self.partitioned { "" } else { "ONLY " };
                let (pick, matcher) = if self.partitioned {
                    ("tableoid, ctid", "(tableoid, ctid)")
                } else {
                    ("ctid", "ctid")
                };
                let _ = write!(
                    sql,
                    " WHERE {matcher} = (SELECT {pick} FROM {only}{} WHERE ",
                    self.table.quoted()
                );
                let mut first_cond = true;
                for (i, d) in tuple.iter().enumerate() {
                    if matches!(d, Datum::Unchanged) {
                        continue;
                    }
                    if !first_cond {
                        sql.push_str(" AND ");
                    }
                    first_cond = false;
                    let text = self.columns.get(i).is_none_or(|c| c.text_compare);
                    if text {
                        sql.push('(');
                        push_ident(&mut sql, self.col(i));
                        sql.push_str(")::text");
                    } else {
                        push_ident(&mut sql, self.col(i));
                    }
                    if matches!(d, Datum::Null) {
                        sql.push_str(" IS NULL");
                    } else {
                        let _ = write!(
                            sql,
                            " = ${}{}",
                            first + cols.len(),
                            if text { "::text" } else { "" }
                        );
                        cols.push(i);
                    }
                }
                if first_cond {
                    sql.push_str("true");
                }
                sql.push_str(" LIMIT 1)");
            }
        }
        Ok((sql, cols))
    }

    pub(super) fn prepare<M>(
        &mut self,
        pipe: &mut Pipeline<M>,
        sql: String,
        set: Vec<usize>,
        filter: Vec<usize>,
    ) -> Prepared {
        if let Some(p) = self.statements.get(&sql) {
            return p.clone();
        }
        let name: Arc<str> = pipe.prepare(&sql).into();
        tracing::debug!(table = %self.table, %sql, "prepared");
        let p = Prepared { name, set, filter };
        self.statements.insert(sql, p.clone());
        p
    }

    /// Columns a set-based UPDATE writes: all but the key (and identity
    /// ALWAYS ones, unless they make it a DELETE + INSERT, see `identity`).
    pub fn settable(&self) -> Vec<usize> {
        let rewrite = self.rewrites_identity(false);
        (0..self.source.columns.len())
            .filter(|&i| !self.key.contains(&i) && (rewrite || !self.columns[i].always_identity))
            .collect()
    }

    /// All columns, in order.
    pub fn all_columns(&self) -> Vec<usize> {
        (0..self.source.columns.len()).collect()
    }

    pub(super) fn column_list(&self, cols: &[usize]) -> String {
        crate::sql::quote::ident_list(cols.iter().map(|&i| self.col(i)))
    }

    /// `(id)=(42)`: the key of a row, for conflict messages.
    pub fn describe_key(&self, row: &Tuple) -> String {
        let idx: Vec<usize> = if self.identity == Identity::Full || self.key.is_empty() {
            (0..row.len()).collect()
        } else {
            self.key.clone()
        };
        let names: Vec<&str> = idx.iter().map(|&i| self.col(i)).collect();
        let values: Vec<String> = idx
            .iter()
            .map(|&i| row.get(i).map(Datum::display).unwrap_or_default())
            .collect();
        let mut v = values.join(", ");
        if v.chars().count() > 200 {
            v = format!("{}...", v.chars().take(200).collect::<String>());
        }
        format!("({})=({v})", names.join(", "))
    }

    /// Which row an UPDATE/DELETE must find.
    pub fn filter_for<'a>(
        &self,
        old: Option<&'a OldRow>,
        new: Option<&'a Tuple>,
    ) -> Option<RowFilter<'a>> {
        match (old, new) {
            (Some(OldRow::Full(t)), _) => Some(RowFilter::Full(t)),
            (Some(OldRow::Key(t)), _) => Some(RowFilter::Key(t)),
            (None, Some(t)) => Some(RowFilter::Key(t)),
            (None, None) => None,
        }
    }
}
