//! The statements of a captured query string. `current_query()` is the
//! whole client string (`CREATE TABLE a (...); INSERT INTO a ...`): it is
//! split with libpg_query, only statements that fire DDL event triggers are
//! candidates for a log row, and a candidate is rewritten where the target
//! needs it: no CONCURRENTLY inside a transaction, DROP of a dependent
//! object tolerant of its absence. (CREATE TABLE AS is never replayed as a
//! query: see `ddl::capture`.)

use pg_query::protobuf::{self, ObjectType};
use pg_query::NodeEnum;

use crate::sql::TableName;

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("cannot parse the captured DDL: {0}")]
    Parse(String),
    #[error("cannot write the DDL back as SQL: {0}")]
    Deparse(String),
}

/// What a statement is, as far as replaying goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// Replay it.
    Replay,
    /// A temporary object: session-local on the source.
    Temporary,
    /// Publications and subscriptions belong to each server.
    Replication,
    /// GRANT / REVOKE / ownership: not with `--roles skip`.
    Privileges,
    /// About a large object: the large-object copy carries those, with
    /// their owner and grants (the object may not be on the target yet).
    LargeObject,
}

/// One statement of a captured query string.
#[derive(Clone, Debug)]
pub struct Piece {
    pub sql: String,
    /// First keyword, upper case (`CREATE`, `ALTER`, ...).
    pub keyword: String,
    /// Fires a DDL event trigger (a log row belongs to it).
    pub fires: bool,
    /// `SELECT ... INTO`, whose tag is `SELECT INTO`.
    pub select_into: bool,
    pub class: Class,
    /// Tables it creates (CREATE TABLE / AS / SELECT INTO); an empty schema
    /// means "the first schema of the search_path" at the source, which
    /// only the log row knows.
    pub creates: Vec<TableName>,
}

fn first_node(parsed: &protobuf::ParseResult) -> Option<&NodeEnum> {
    parsed
        .stmts
        .first()
        .and_then(|s| s.stmt.as_ref())
        .and_then(|n| n.node.as_ref())
}

fn first_node_mut(parsed: &mut protobuf::ParseResult) -> Option<&mut NodeEnum> {
    parsed
        .stmts
        .first_mut()
        .and_then(|s| s.stmt.as_mut())
        .and_then(|n| n.node.as_mut())
}

/// The first keyword of a statement, past whitespace and comments.
fn leading_keyword(sql: &str) -> String {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after
                .split_once("*/")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// The table a RangeVar names; the schema is empty when the statement
/// leaves it to the search_path (see `Piece::creates`).
fn rel_name(rv: &protobuf::RangeVar) -> TableName {
    TableName::new(rv.schemaname.clone(), rv.relname.clone())
}

fn object_type(n: i32) -> Option<ObjectType> {
    ObjectType::try_from(n).ok()
}

/// Whether Postgres fires DDL event triggers for this statement (global
/// objects, roles, databases and tablespaces have none).
fn fires(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    match node {
        N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::AlterRoleSetStmt(_)
        | N::DropRoleStmt(_)
        | N::GrantRoleStmt(_) => false,
        N::CreatedbStmt(_)
        | N::AlterDatabaseStmt(_)
        | N::AlterDatabaseSetStmt(_)
        | N::DropdbStmt(_) => false,
        N::CreateTableSpaceStmt(_)
        | N::DropTableSpaceStmt(_)
        | N::AlterTableSpaceOptionsStmt(_) => false,
        N::CreateEventTrigStmt(_) | N::AlterEventTrigStmt(_) | N::AlterSystemStmt(_) => false,
        N::DropStmt(d) => object_type(d.remove_type) != Some(ObjectType::ObjectEventTrigger),
        N::GrantStmt(g) => !matches!(
            object_type(g.objtype),
            Some(
                ObjectType::ObjectDatabase
                    | ObjectType::ObjectTablespace
                    | ObjectType::ObjectParameterAcl
            )
        ),
        N::CommentStmt(c) => !matches!(
            object_type(c.objtype),
            Some(
                ObjectType::ObjectDatabase | ObjectType::ObjectTablespace | ObjectType::ObjectRole
            )
        ),
        N::SelectStmt(s) => s.into_clause.is_some(),
        // DML, queries, transaction control, settings, maintenance.
        N::InsertStmt(_)
        | N::UpdateStmt(_)
        | N::DeleteStmt(_)
        | N::MergeStmt(_)
        | N::TransactionStmt(_)
        | N::VariableSetStmt(_)
        | N::VariableShowStmt(_)
        | N::TruncateStmt(_)
        | N::VacuumStmt(_)
        | N::ClusterStmt(_)
        | N::LockStmt(_)
        | N::CopyStmt(_)
        | N::ExplainStmt(_)
        | N::CallStmt(_)
        | N::DoStmt(_)
        | N::NotifyStmt(_)
        | N::ListenStmt(_)
        | N::UnlistenStmt(_)
        | N::CheckPointStmt(_)
        | N::DiscardStmt(_)
        | N::LoadStmt(_)
        | N::PrepareStmt(_)
        | N::ExecuteStmt(_)
        | N::DeallocateStmt(_)
        | N::DeclareCursorStmt(_)
        | N::FetchStmt(_)
        | N::ClosePortalStmt(_)
        | N::ConstraintsSetStmt(_) => false,
        _ => true,
    }
}

fn classify(node: &NodeEnum) -> (Class, Vec<TableName>) {
    use NodeEnum as N;
    let temp = |rv: &protobuf::RangeVar| rv.relpersistence == "t";
    match node {
        N::CreateStmt(c) => match &c.relation {
            Some(rv) if temp(rv) => (Class::Temporary, Vec::new()),
            Some(rv) => (Class::Replay, vec![rel_name(rv)]),
            None => (Class::Replay, Vec::new()),
        },
        N::CreateTableAsStmt(c) => match c.into.as_ref().and_then(|i| i.rel.as_ref()) {
            Some(rv) if temp(rv) => (Class::Temporary, Vec::new()),
            Some(rv) if object_type(c.objtype) == Some(ObjectType::ObjectTable) => (Class::Replay, vec![rel_name(rv)]),
            _ => (Class::Replay, Vec::new()),
        },
        N::SelectStmt(s) => match s.into_clause.as_ref().and_then(|i| i.rel.as_ref()) {
            Some(rv) if temp(rv) => (Class::Temporary, Vec::new()),
            Some(rv) => (Class::Replay, vec![rel_name(rv)]),
            None => (Class::Replay, Vec::new()),
        },
        N::ViewStmt(v) if v.view.as_ref().is_some_and(temp) => (Class::Temporary, Vec::new()),
        N::CreateSeqStmt(s) if s.sequence.as_ref().is_some_and(temp) => (Class::Temporary, Vec::new()),
        N::CreatePublicationStmt(_) | N::AlterPublicationStmt(_) | N::CreateSubscriptionStmt(_)
        | N::AlterSubscriptionStmt(_) | N::DropSubscriptionStmt(_) => (Class::Replication, Vec::new()),
        N::DropStmt(d) if object_type(d.remove_type) == Some(ObjectType::ObjectPublication) => (Class::Replication, Vec::new()),
        N::GrantStmt(g) if object_type(g.objtype) == Some(ObjectType::ObjectLargeobject) => (Class::LargeObject, Vec::new()),
        N::AlterOwnerStmt(o) if object_type(o.object_type) == Some(ObjectType::ObjectLargeobject) => {
            (Class::LargeObject, Vec::new())
        }
        N::CommentStmt(c) if object_type(c.objtype) == Some(ObjectType::ObjectLargeobject) => (Class::LargeObject, Vec::new()),
        N::GrantStmt(_) | N::AlterDefaultPrivilegesStmt(_) | N::AlterOwnerStmt(_) => (Class::Privileges, Vec::new()),
        N::AlterTableStmt(a) if a.cmds.iter().all(|c| {
            matches!(&c.node, Some(N::AlterTableCmd(cmd)) if cmd.subtype == protobuf::AlterTableType::AtChangeOwner as i32)
        }) =>
        {
            (Class::Privileges, Vec::new())
        }
        _ => (Class::Replay, Vec::new()),
    }
}

/// Splits a captured query string into its statements.
pub fn split(query: &str) -> Result<Vec<Piece>, StatementError> {
    let parts =
        pg_query::split_with_parser(query).map_err(|e| StatementError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for part in parts {
        let sql = part.trim().trim_end_matches(';').trim();
        if sql.is_empty() {
            continue;
        }
        let parsed = pg_query::parse(sql, 0).map_err(|e| StatementError::Parse(e.to_string()))?;
        let (fires, select_into, (class, creates)) = match first_node(&parsed.protobuf) {
            Some(node) => (
                fires(node),
                matches!(node, NodeEnum::SelectStmt(s) if s.into_clause.is_some()),
                classify(node),
            ),
            None => (false, false, (Class::Replay, Vec::new())),
        };
        out.push(Piece {
            sql: sql.to_string(),
            keyword: leading_keyword(sql),
            fires,
            select_into,
            class,
            creates,
        });
    }
    Ok(out)
}

impl Piece {
    /// Whether a log row with this command tag can belong to this statement.
    pub fn matches_tag(&self, tag: &str) -> bool {
        if !self.fires {
            return false;
        }
        if tag == "SELECT INTO" {
            return self.select_into;
        }
        tag.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(&self.keyword))
    }

    /// The statement as the target should run it inside a transaction.
    /// `fixed`: values ADD COLUMN computed once for the existing rows on the
    /// source (a fast default such as `now()`), by column: such a column
    /// is added with that value as a literal, and its expression set as
    /// the default after, so the target's rows get the source's value.
    pub fn for_target(
        &self,
        fixed: &std::collections::HashMap<String, String>,
    ) -> Result<String, StatementError> {
        let mut parsed = pg_query::parse(&self.sql, 0)
            .map_err(|e| StatementError::Parse(e.to_string()))?
            .protobuf;
        let Some(node) = first_node_mut(&mut parsed) else {
            return Ok(self.sql.clone());
        };
        let changed = match node {
            NodeEnum::IndexStmt(i) if i.concurrent => {
                i.concurrent = false;
                true
            }
            NodeEnum::DropStmt(d) => {
                let mut changed = std::mem::take(&mut d.concurrent);
                // Dependent objects may be gone with a table the sync
                // leaves out; their absence is no reason to stop.
                if !d.missing_ok
                    && matches!(
                        object_type(d.remove_type),
                        Some(
                            ObjectType::ObjectIndex
                                | ObjectType::ObjectTrigger
                                | ObjectType::ObjectRule
                                | ObjectType::ObjectPolicy
                        )
                    )
                {
                    d.missing_ok = true;
                    changed = true;
                }
                changed
            }
            NodeEnum::ReindexStmt(r) => {
                let before = r.params.len();
                r.params.retain(|p| !matches!(&p.node, Some(NodeEnum::DefElem(d)) if d.defname == "concurrently"));
                r.params.len() != before
            }
            NodeEnum::AlterTableStmt(a) => {
                let mut changed = fix_added_defaults(&mut a.cmds, fixed);
                for cmd in &mut a.cmds {
                    if let Some(NodeEnum::AlterTableCmd(c)) = &mut cmd.node {
                        if let Some(NodeEnum::PartitionCmd(p)) =
                            c.def.as_deref_mut().and_then(|d| d.node.as_mut())
                        {
                            if p.concurrent {
                                p.concurrent = false;
                                changed = true;
                            }
                        }
                    }
                }
                changed
            }
            _ => false,
        };
        if !changed {
            return Ok(self.sql.clone());
        }
        pg_query::deparse(&parsed, Default::default())
            .map_err(|e| StatementError::Deparse(e.to_string()))
    }
}

/// Rewrites `ADD COLUMN c type DEFAULT expr` (expr not a plain literal)
/// whose value `fixed` holds into `ADD COLUMN c type DEFAULT 'value'::type`
/// followed by `ALTER COLUMN c SET DEFAULT expr`. Returns whether it
/// changed anything.
fn fix_added_defaults(
    cmds: &mut Vec<protobuf::Node>,
    fixed: &std::collections::HashMap<String, String>,
) -> bool {
    if fixed.is_empty() {
        return false;
    }
    let mut after = Vec::new();
    for cmd in cmds.iter_mut() {
        let Some(NodeEnum::AlterTableCmd(c)) = &mut cmd.node else {
            continue;
        };
        if c.subtype != protobuf::AlterTableType::AtAddColumn as i32 {
            continue;
        }
        let Some(NodeEnum::ColumnDef(col)) = c.def.as_deref_mut().and_then(|d| d.node.as_mut())
        else {
            continue;
        };
        let Some(value) = fixed.get(&col.colname) else {
            continue;
        };
        let Some(type_name) = col.type_name.clone() else {
            continue;
        };
        for constraint in &mut col.constraints {
            let Some(NodeEnum::Constraint(k)) = &mut constraint.node else {
                continue;
            };
            if k.contype != protobuf::ConstrType::ConstrDefault as i32 {
                continue;
            }
            let plain = matches!(
                k.raw_expr.as_deref().and_then(|e| e.node.as_ref()),
                Some(NodeEnum::AConst(_))
            );
            if plain {
                continue;
            }
            let literal = protobuf::Node {
                node: Some(NodeEnum::TypeCast(Box::new(protobuf::TypeCast {
                    arg: Some(Box::new(protobuf::Node {
                        node: Some(NodeEnum::AConst(protobuf::AConst {
                            isnull: false,
                            location: -1,
                            val: Some(protobuf::a_const::Val::Sval(protobuf::String {
                                sval: value.clone(),
                            })),
                        })),
                    })),
                    type_name: Some(type_name.clone()),
                    location: -1,
                }))),
            };
            let Some(expr) = k.raw_expr.replace(Box::new(literal)) else {
                continue;
            };
            after.push(protobuf::Node {
                node: Some(NodeEnum::AlterTableCmd(Box::new(protobuf::AlterTableCmd {
                    subtype: protobuf::AlterTableType::AtColumnDefault as i32,
                    name: col.colname.clone(),
                    def: Some(expr),
                    behavior: protobuf::DropBehavior::DropRestrict as i32,
                    recurse: c.recurse,
                    ..Default::default()
                }))),
            });
        }
    }
    let changed = !after.is_empty();
    cmds.extend(after);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_finds_the_ddl_among_dml() {
        let p = split("CREATE TABLE a (id int); INSERT INTO a VALUES (1); -- note\n ALTER TABLE a ADD c int; SET x = 1; SELECT 1")
            .expect("splits");
        let fires: Vec<bool> = p.iter().map(|x| x.fires).collect();
        assert_eq!(fires, vec![true, false, true, false, false]);
        assert!(p[0].matches_tag("CREATE TABLE"));
        assert!(!p[0].matches_tag("ALTER TABLE"));
        assert!(p[2].matches_tag("ALTER TABLE"));
        assert_eq!(p[0].creates, vec![TableName::new("", "a")]);
    }

    #[test]
    fn global_objects_and_temp_tables_are_told_apart() {
        let p = split("CREATE ROLE r; GRANT r TO postgres; CREATE TEMP TABLE t (x int); CREATE PUBLICATION p; GRANT SELECT ON a TO r")
            .expect("splits");
        assert!(!p[0].fires && !p[1].fires);
        assert_eq!(p[2].class, Class::Temporary);
        assert_eq!(p[3].class, Class::Replication);
        assert_eq!(p[4].class, Class::Privileges);
        let lo = split("GRANT SELECT ON LARGE OBJECT 7 TO r; ALTER LARGE OBJECT 7 OWNER TO r; GRANT SELECT ON t TO r")
            .expect("splits");
        assert_eq!(lo[0].class, Class::LargeObject);
        assert_eq!(lo[1].class, Class::LargeObject);
        assert_eq!(lo[2].class, Class::Privileges);
    }

    fn target(sql: &str) -> String {
        let p = split(sql).expect("splits");
        p[0].for_target(&Default::default())
            .expect("rewrites")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn concurrently_goes_and_select_into_is_a_creation() {
        assert_eq!(
            target("CREATE INDEX CONCURRENTLY i ON t (x)"),
            "CREATE INDEX i ON t USING btree (x)"
        );
        assert_eq!(
            target("DROP INDEX CONCURRENTLY i"),
            "DROP INDEX IF EXISTS i"
        );
        let p = split("SELECT a, b INTO s.n FROM t").expect("splits");
        assert!(p[0].select_into && p[0].matches_tag("SELECT INTO"));
        assert_eq!(p[0].creates, vec![TableName::new("s", "n")]);
        let p = split("CREATE TABLE n AS SELECT 1").expect("splits");
        assert_eq!(p[0].creates, vec![TableName::new("", "n")]);
        assert_eq!(
            target("ALTER TABLE p DETACH PARTITION c CONCURRENTLY"),
            "ALTER TABLE p DETACH PARTITION c"
        );
        assert_eq!(target("REINDEX (CONCURRENTLY) INDEX i"), "REINDEX INDEX i");
    }

    #[test]
    fn untouched_statements_keep_their_text() {
        let sql = "ALTER TABLE \"We\"\"ird\"  ADD COLUMN   c int /* spacing kept */";
        let p = split(sql).expect("splits");
        assert_eq!(p[0].for_target(&Default::default()).expect("ok"), sql);
    }

    #[test]
    fn defaults_computed_once_are_replayed_as_their_values() {
        let p = split("ALTER TABLE t ADD COLUMN c timestamptz NOT NULL DEFAULT now(), ADD d int DEFAULT 1, ADD e text")
            .expect("splits");
        let mut fixed = std::collections::HashMap::new();
        fixed.insert("c".to_string(), "2024-01-02 03:04:05+00".to_string());
        fixed.insert("d".to_string(), "1".to_string());
        let sql = p[0].for_target(&fixed).expect("rewrites");
        assert_eq!(
            sql,
            "ALTER TABLE t ADD COLUMN c timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05+00'::timestamptz, \
             ADD COLUMN d int DEFAULT 1, ADD COLUMN e text, ALTER COLUMN c SET DEFAULT now()"
        );
    }
}
