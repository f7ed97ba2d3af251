//! Deciding what to do with one `pgrepl.schema_log` row: find its
//! statement in the captured query string, then replay it, or skip it on
//! purpose (and say why).
//!
//! Rows of one query string arrive in execution order, one per DDL
//! command; they are matched to the string's DDL statements in order, by
//! command tag, so `CREATE TABLE a (...); INSERT INTO a ...; ALTER TABLE a
//! ...` replays the CREATE and the ALTER and never the INSERT (its rows come
//! through the stream). DDL run inside a function or a DO block cannot be
//! found in the string: that stops the sync with a clear message rather than
//! replaying the wrong thing.

use std::collections::HashSet;

use serde::Deserialize;

use super::statement::{self, Class, Piece};
use crate::source::selection::Selection;
use crate::sql::TableName;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("DDL #{id} ({tag}) cannot be matched to a statement of its query text (DDL run inside a function or a DO block?): {query}. Apply it on the target by hand, then rerun with `pgrepl sync --skip-ddl {id}`")]
    Unmatched { id: i64, tag: String, query: String },
    #[error("DDL #{id}: {source}")]
    Statement {
        id: i64,
        source: statement::StatementError,
    },
    #[error("DDL log row is malformed: {0}")]
    Malformed(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

/// One object a DDL command touched, as the trigger logged it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LoggedObject {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub identity: Option<String>,
    pub schema: Option<String>,
    /// NULL for objects without a schema (and then not temporary).
    pub temp: Option<bool>,
    pub table: Option<TableRef>,
}

/// One row of `pgrepl.schema_log`.
#[derive(Clone, Debug)]
pub struct LogRow {
    pub id: i64,
    pub xid: i64,
    pub tag: String,
    pub objects: Vec<LoggedObject>,
    pub ddl: String,
    pub search_path: String,
}

impl LogRow {
    /// Builds a row from column values by name (as decoded from the stream).
    pub fn from_columns(get: impl Fn(&str) -> Option<String>) -> Result<Self, ReplayError> {
        let need = |c: &str| {
            get(c).ok_or_else(|| ReplayError::Malformed(format!("column {c} is missing")))
        };
        let num = |c: &str| -> Result<i64, ReplayError> {
            need(c)?
                .parse()
                .map_err(|_| ReplayError::Malformed(format!("column {c} is not a number")))
        };
        let objects = match get("objects") {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| ReplayError::Malformed(format!("objects: {e}")))?,
            None => Vec::new(),
        };
        Ok(LogRow {
            id: num("id")?,
            xid: num("xid")?,
            tag: need("command_tag")?,
            objects,
            ddl: need("ddl")?,
            search_path: get("search_path").unwrap_or_default(),
        })
    }
}

/// What to do with a log row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Replay {
        sql: String,
        search_path: String,
        creates: Vec<TableName>,
    },
    Skip {
        reason: String,
    },
}

/// Options that decide replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub selection: Selection,
    /// Replicate GRANT / REVOKE / ownership (`--ddl-privileges`).
    pub privileges: bool,
    /// Log ids to skip (`--skip-ddl`).
    pub skip: HashSet<i64>,
}

struct Cursor {
    xid: i64,
    ddl: String,
    pieces: Vec<Piece>,
    next: usize,
}

pub struct Replayer {
    opts: ReplayOptions,
    cursor: Option<Cursor>,
}

impl Replayer {
    pub fn new(opts: ReplayOptions) -> Self {
        Replayer { opts, cursor: None }
    }

    /// The statement of `row`, advancing the cursor of its query string.
    fn piece(&mut self, row: &LogRow) -> Result<Option<Piece>, ReplayError> {
        let same = self
            .cursor
            .as_ref()
            .is_some_and(|c| c.xid == row.xid && c.ddl == row.ddl);
        if !same {
            let pieces = statement::split(&row.ddl)
                .map_err(|source| ReplayError::Statement { id: row.id, source })?;
            self.cursor = Some(Cursor {
                xid: row.xid,
                ddl: row.ddl.clone(),
                pieces,
                next: 0,
            });
        }
        let cursor = self.cursor.as_mut().expect("set just above");
        // The same string run twice in one transaction starts over.
        for round in 0..2 {
            if let Some(i) =
                (cursor.next..cursor.pieces.len()).find(|&i| cursor.pieces[i].matches_tag(&row.tag))
            {
                cursor.next = i + 1;
                return Ok(Some(cursor.pieces[i].clone()));
            }
            if round == 0 {
                cursor.next = 0;
            }
        }
        Ok(None)
    }

    pub fn decide(&mut self, row: &LogRow) -> Result<Action, ReplayError> {
        let piece = self.piece(row)?;
        if self.opts.skip.contains(&row.id) {
            return Ok(Action::Skip {
                reason: "--skip-ddl".into(),
            });
        }
        let Some(piece) = piece else {
            return Err(ReplayError::Unmatched {
                id: row.id,
                tag: row.tag.clone(),
                query: short(&row.ddl),
            });
        };
        match piece.class {
            Class::Temporary => {
                return Ok(Action::Skip {
                    reason: "temporary object".into(),
                })
            }
            Class::Replication => {
                return Ok(Action::Skip {
                    reason: "publications and subscriptions are per server".into(),
                })
            }
            Class::Privileges if !self.opts.privileges => {
                return Ok(Action::Skip {
                    reason: "privileges and ownership (use --ddl-privileges)".into(),
                })
            }
            _ => {}
        }
        if !row.objects.is_empty() && row.objects.iter().all(|o| o.temp == Some(true)) {
            return Ok(Action::Skip {
                reason: "temporary object".into(),
            });
        }
        let mut tables: Vec<TableName> = row
            .objects
            .iter()
            .filter_map(|o| o.table.as_ref())
            .map(|t| TableName::new(t.schema.clone(), t.name.clone()))
            .collect();
        tables.extend(piece.creates.iter().cloned());
        if let Some(t) = tables.iter().find(|t| !self.opts.selection.selects(t)) {
            return Ok(Action::Skip {
                reason: format!("table {t} is outside --include/--exclude"),
            });
        }
        // With FOR ALL TABLES, a CREATE TABLE AS's rows are published and
        // arrive by the stream; with a table list they were written before
        // the table joined the publication, so the target computes them.
        let rows_streamed = self.opts.selection.is_everything();
        let sql = piece
            .for_target(rows_streamed)
            .map_err(|source| ReplayError::Statement { id: row.id, source })?;
        Ok(Action::Replay {
            sql,
            search_path: row.search_path.clone(),
            creates: piece.creates,
        })
    }
}

/// A statement cut to one readable line.
pub fn short(sql: &str) -> String {
    let line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 300 {
        format!("{}...", line.chars().take(300).collect::<String>())
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, tag: &str, ddl: &str) -> LogRow {
        LogRow {
            id,
            xid: 7,
            tag: tag.into(),
            objects: Vec::new(),
            ddl: ddl.into(),
            search_path: "public".into(),
        }
    }

    fn replayed(a: Action) -> String {
        match a {
            Action::Replay { sql, .. } => sql,
            Action::Skip { reason } => panic!("skipped: {reason}"),
        }
    }

    #[test]
    fn rows_of_one_string_map_to_its_ddl_in_order() {
        let q = "CREATE TABLE a (id int); INSERT INTO a VALUES (1); ALTER TABLE a ADD c int; UPDATE a SET c = id";
        let mut r = Replayer::new(ReplayOptions::default());
        assert_eq!(
            replayed(r.decide(&row(1, "CREATE TABLE", q)).expect("ok")),
            "CREATE TABLE a (id int)"
        );
        assert_eq!(
            replayed(r.decide(&row(2, "ALTER TABLE", q)).expect("ok")),
            "ALTER TABLE a ADD c int"
        );
    }

    #[test]
    fn ddl_inside_a_do_block_is_an_error_naming_the_id() {
        let mut r = Replayer::new(ReplayOptions::default());
        let e = r
            .decide(&row(
                9,
                "CREATE TABLE",
                "DO $$ BEGIN EXECUTE 'CREATE TABLE x ()'; END $$",
            ))
            .expect_err("unmatched");
        assert!(e.to_string().contains("--skip-ddl 9"), "{e}");
        let mut skip = HashSet::new();
        skip.insert(9);
        let mut r = Replayer::new(ReplayOptions {
            skip,
            ..Default::default()
        });
        assert_eq!(
            r.decide(&row(9, "CREATE TABLE", "DO $$ $$")).expect("ok"),
            Action::Skip {
                reason: "--skip-ddl".into()
            }
        );
    }

    #[test]
    fn tables_outside_the_selection_are_skipped() {
        let selection = Selection {
            include: vec!["app.*".parse().expect("pattern")],
            exclude: Vec::new(),
        };
        let mut r = Replayer::new(ReplayOptions {
            selection,
            ..Default::default()
        });
        let a = r
            .decide(&row(1, "CREATE TABLE", "CREATE TABLE other.t (x int)"))
            .expect("ok");
        assert!(
            matches!(a, Action::Skip { ref reason } if reason.contains("other.t")),
            "{a:?}"
        );
        let a = r
            .decide(&row(
                2,
                "CREATE TABLE AS",
                "CREATE TABLE app.n AS SELECT 1 AS x",
            ))
            .expect("ok");
        assert_eq!(
            replayed(a),
            "CREATE TABLE app.n AS SELECT 1 AS x",
            "rows are computed on the target in table-list mode"
        );
        let a = r
            .decide(&row(
                3,
                "CREATE FUNCTION",
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
            ))
            .expect("ok");
        assert!(matches!(a, Action::Replay { .. }));
    }
}
