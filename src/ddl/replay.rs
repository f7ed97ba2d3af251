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

use std::collections::{HashMap, HashSet};

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
    #[error("source: pgrepl's DDL capture failed on {tag} #{id} while {step}: {error}. The sync cannot follow this command exactly{consequence}. Fix the cause and start over (`pgrepl teardown`, then `pgrepl sync`), or, once the target matches the source by hand, rerun with `pgrepl sync --skip-ddl {id}`")]
    CaptureFailed {
        id: i64,
        tag: String,
        step: String,
        error: String,
        consequence: String,
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

/// What the capture could not do for a command (a `capture_failed` row).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Failure {
    pub step: String,
    pub error: String,
    /// The publication it concerned, when only one sync is affected.
    pub publication: Option<String>,
    pub table: Option<String>,
}

/// One row of `pgrepl.schema_log`.
#[derive(Clone, Debug)]
pub struct LogRow {
    pub id: i64,
    pub xid: i64,
    pub tag: String,
    /// `ddl_command_start`, `ddl_command_end` or [`TABLE_CREATED`].
    pub event: String,
    pub objects: Vec<LoggedObject>,
    pub ddl: String,
    pub search_path: String,
    /// `current_schema()` when the command ran: where an unqualified
    /// CREATE put its object.
    pub creation_schema: Option<String>,
    /// Session settings the command read its values under (TimeZone, ...).
    pub settings: Vec<(String, String)>,
    /// Values ADD COLUMN computed once for every existing row, per column.
    pub fixed_defaults: HashMap<String, String>,
    pub failure: Option<Failure>,
    /// The role the command ran as (`SET ROLE`, else the session user).
    pub role: Option<String>,
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
        let json = |c: &str| -> Result<Option<serde_json::Value>, ReplayError> {
            get(c)
                .map(|text| {
                    serde_json::from_str(&text)
                        .map_err(|e| ReplayError::Malformed(format!("{c}: {e}")))
                })
                .transpose()
        };
        let settings = match json("settings")? {
            Some(serde_json::Value::Object(m)) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
                .collect(),
            _ => Vec::new(),
        };
        // {table: {column: value}}: an ALTER TABLE names one table (its
        // children get the same values).
        let mut fixed_defaults = HashMap::new();
        if let Some(serde_json::Value::Object(tables)) = json("fixed_defaults")? {
            for (_, columns) in tables {
                if let serde_json::Value::Object(columns) = columns {
                    for (column, value) in columns {
                        if let Some(v) = value.as_str() {
                            fixed_defaults.insert(column, v.to_string());
                        }
                    }
                }
            }
        }
        let failure = match json("failure")? {
            Some(v) if !v.is_null() => Some(
                serde_json::from_value(v)
                    .map_err(|e| ReplayError::Malformed(format!("failure: {e}")))?,
            ),
            _ => None,
        };
        Ok(LogRow {
            id: num("id")?,
            xid: num("xid")?,
            tag: need("command_tag")?,
            event: get("event").unwrap_or_default(),
            objects,
            ddl: need("ddl")?,
            search_path: get("search_path").unwrap_or_default(),
            creation_schema: get("creation_schema"),
            settings,
            fixed_defaults,
            failure,
            role: get("role"),
        })
    }

    /// The schema of a table a statement named without one: the logged
    /// object of that name, else where unqualified CREATEs went at the
    /// source, else the first schema of the logged search_path.
    fn resolve(&self, table: &TableName, logged: &[TableName]) -> TableName {
        if !table.schema.is_empty() {
            return table.clone();
        }
        let schema = logged
            .iter()
            .find(|t| t.name == table.name)
            .map(|t| t.schema.clone())
            .or_else(|| self.creation_schema.clone())
            .or_else(|| {
                self.search_path
                    .split(',')
                    .map(|p| p.trim().trim_matches('"'))
                    .find(|p| !p.is_empty() && *p != "$user" && *p != "pg_catalog")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "public".to_string());
        TableName::new(schema, table.name.clone())
    }
}

/// What to do with a log row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Replay {
        sql: String,
        search_path: String,
        /// Session settings to run it under.
        settings: Vec<(String, String)>,
        creates: Vec<TableName>,
        /// The role to run it as, so what it creates has the source's
        /// owner (and that role's default privileges).
        role: Option<String>,
    },
    /// A CREATE TABLE AS has begun: its table comes by its first row's
    /// relation description, or by its `table_created` row.
    Expect {
        table: TableName,
    },
    Skip {
        reason: String,
    },
}

/// Options that decide replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// This sync's publication (a capture failure about another one's is
    /// not this sync's business).
    pub publication: String,
    pub selection: Selection,
    /// Replicate GRANT / REVOKE / ownership, and run each command as the
    /// role that ran it on the source (all but `--roles skip`).
    pub privileges: bool,
    /// Roles the source's objects come to need are created on the target
    /// while streaming (`--roles copy`): a command naming one the target
    /// lacks yet waits for it.
    pub roles_follow: bool,
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

    pub fn roles_follow(&self) -> bool {
        self.opts.roles_follow
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
        let skip = self.opts.skip.contains(&row.id);
        if row.event == CAPTURE_FAILED {
            return self.failed(row, skip);
        }
        if row.event == TABLE_CREATED {
            // Not a statement of the query string: the cursor stays.
            return Ok(match skip {
                true => Action::Skip {
                    reason: "--skip-ddl".into(),
                },
                false => self.created_table(row),
            });
        }
        let piece = match self.piece(row) {
            // A statement that cannot even be parsed can still be skipped.
            Err(_) if skip => {
                self.cursor = None;
                None
            }
            other => other?,
        };
        if skip {
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
        let why = match piece.class {
            Class::Temporary => Some("temporary object"),
            Class::Replication => Some("publications and subscriptions are per server"),
            Class::Privileges if !self.opts.privileges => {
                Some("privileges and ownership (--roles skip)")
            }
            Class::LargeObject => Some(
                "large objects are carried with their owner and grants by the large-object copy",
            ),
            _ => None,
        };
        if let Some(reason) = why.or_else(|| all_temporary(row).then_some("temporary object")) {
            return Ok(Action::Skip {
                reason: reason.into(),
            });
        }
        let mut tables = logged_tables(row);
        let creates: Vec<TableName> = piece
            .creates
            .iter()
            .map(|t| row.resolve(t, &tables))
            .collect();
        tables.extend(creates.iter().cloned());
        if let Some(skip) = self.outside(&tables) {
            return Ok(skip);
        }
        if matches!(row.tag.as_str(), "CREATE TABLE AS" | "SELECT INTO") {
            if let Some(table) = creates.first() {
                return Ok(Action::Expect {
                    table: table.clone(),
                });
            }
        }
        let sql = piece
            .for_target(&row.fixed_defaults)
            .map_err(|source| ReplayError::Statement { id: row.id, source })?;
        Ok(Action::Replay {
            sql,
            search_path: row.search_path.clone(),
            settings: row.settings.clone(),
            creates,
            role: self.role(row),
        })
    }

    /// A `capture_failed` row: the sync stops there, unless told to go on
    /// or the failure concerns another sync's publication only.
    fn failed(&self, row: &LogRow, skip: bool) -> Result<Action, ReplayError> {
        let failure = row.failure.clone().unwrap_or_default();
        if skip {
            return Ok(Action::Skip {
                reason: format!("--skip-ddl past a capture failure ({})", failure.step),
            });
        }
        if let Some(p) = &failure.publication {
            if *p != self.opts.publication {
                return Ok(Action::Skip {
                    reason: format!("a capture failure of publication {p}, not this sync's"),
                });
            }
        }
        let consequence = match (&failure.publication, &failure.table) {
            (Some(_), Some(t)) => {
                format!(": the rows of {t} are not published, so the target would miss them")
            }
            (None, Some(t)) => format!(": {t} would differ on the target"),
            _ => String::new(),
        };
        Err(ReplayError::CaptureFailed {
            id: row.id,
            tag: row.tag.clone(),
            step: failure.step,
            error: failure.error,
            consequence,
        })
    }

    /// The end of a CREATE TABLE AS: its table, column by column.
    fn created_table(&self, row: &LogRow) -> Action {
        if all_temporary(row) {
            return Action::Skip {
                reason: "temporary object".into(),
            };
        }
        let tables = logged_tables(row);
        if let Some(skip) = self.outside(&tables) {
            return skip;
        }
        Action::Replay {
            sql: row.ddl.clone(),
            search_path: row.search_path.clone(),
            settings: row.settings.clone(),
            creates: tables,
            role: self.role(row),
        }
    }

    fn role(&self, row: &LogRow) -> Option<String> {
        row.role.clone().filter(|_| self.opts.privileges)
    }

    fn outside(&self, tables: &[TableName]) -> Option<Action> {
        tables
            .iter()
            .find(|t| !self.opts.selection.selects(t))
            .map(|t| Action::Skip {
                reason: format!("table {t} is outside --include/--exclude"),
            })
    }
}

/// The `event` of a log row that holds a table made by CREATE TABLE AS,
/// as CREATE TABLE of its columns (see `ddl::capture`).
pub const TABLE_CREATED: &str = "table_created";

/// The `event` of a log row saying the capture failed for a command.
pub const CAPTURE_FAILED: &str = "capture_failed";

fn all_temporary(row: &LogRow) -> bool {
    !row.objects.is_empty() && row.objects.iter().all(|o| o.temp == Some(true))
}

/// The tables the logged objects belong to.
fn logged_tables(row: &LogRow) -> Vec<TableName> {
    row.objects
        .iter()
        .filter_map(|o| o.table.as_ref())
        .map(|t| TableName::new(t.schema.clone(), t.name.clone()))
        .collect()
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
            event: "ddl_command_end".into(),
            objects: Vec::new(),
            ddl: ddl.into(),
            search_path: "public".into(),
            creation_schema: None,
            settings: Vec::new(),
            fixed_defaults: HashMap::new(),
            failure: None,
            role: Some("app_owner".into()),
        }
    }

    fn replayed(a: Action) -> String {
        match a {
            Action::Replay { sql, .. } => sql,
            other => panic!("not replayed: {other:?}"),
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
        // Even a string libpg_query cannot parse.
        assert_eq!(
            r.decide(&row(9, "CREATE TABLE", "CREATE TABLE ((("))
                .expect("ok"),
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
            a,
            Action::Expect {
                table: TableName::new("app", "n")
            },
            "the query is never run on the target"
        );
        // Unqualified names are where the source put them, not in public.
        let mut unqualified = row(4, "CREATE TABLE AS", "CREATE TABLE n2 AS SELECT 1 AS x");
        unqualified.search_path = "app, public".into();
        unqualified.creation_schema = Some("app".into());
        assert_eq!(
            r.decide(&unqualified).expect("ok"),
            Action::Expect {
                table: TableName::new("app", "n2")
            }
        );
        unqualified.id = 5;
        unqualified.creation_schema = Some("other".into());
        assert!(matches!(
            r.decide(&unqualified).expect("ok"),
            Action::Skip { .. }
        ));
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
