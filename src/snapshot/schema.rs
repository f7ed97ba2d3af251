//! The source's schema on the target. pg_dump's SQL is split into
//! statements with libpg_query and classified: session settings (kept only
//! when the target knows them), the `DROP ... IF EXISTS` block that
//! `--clean` puts first (kept as the cleanup script for an interrupted
//! copy), index builds (run in parallel after the data), and the rest.

use std::collections::HashSet;

use pg_query::protobuf::{AlterTableType, ConstrType};
use pg_query::NodeEnum;
use tokio_postgres::GenericClient;

use crate::conn::error::describe;
use crate::sql::{quote_ident, TableName};

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot parse pg_dump's output: {0}")]
    Parse(String),
    #[error("target rejected the source's schema: {message}\n  statement: {statement}")]
    Rejected { statement: String, message: String },
    #[error("target: {what}: {message}")]
    Query { what: &'static str, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SET name = ...` or `SELECT set_config('name', ...)`.
    Setting(String),
    /// A `DROP ... IF EXISTS` / `ALTER ... IF EXISTS ... DROP` of `--clean`.
    DropIfExists {
        extension: bool,
        schema: Option<String>,
    },
    CreateSchema(String),
    /// `CREATE MATERIALIZED VIEW ... WITH NO DATA`: refreshed after the copy.
    CreateMatView(TableName),
    /// Builds an index: CREATE INDEX, or a PRIMARY KEY / UNIQUE / EXCLUDE
    /// constraint. These run in parallel.
    BuildsIndex(Option<TableName>),
    /// pgrepl's own event triggers on the source: never copied.
    PgreplEventTrigger,
    /// `CREATE EXTENSION IF NOT EXISTS name ...`: given the source's version.
    CreateExtension(String),
    Other,
}

#[derive(Clone, Debug)]
pub struct Statement {
    pub sql: String,
    pub kind: Kind,
}

fn range_var_name(rv: &pg_query::protobuf::RangeVar) -> TableName {
    TableName::new(
        if rv.schemaname.is_empty() {
            "public"
        } else {
            &rv.schemaname
        },
        rv.relname.clone(),
    )
}

fn classify(sql: &str) -> Result<Kind, SchemaError> {
    let parsed =
        pg_query::parse(sql, 0).map_err(|e| SchemaError::Parse(format!("{e}: {}", short(sql))))?;
    let node = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_ref())
        .and_then(|n| n.node.as_ref());
    Ok(match node {
        Some(NodeEnum::VariableSetStmt(s)) => Kind::Setting(s.name.clone()),
        Some(NodeEnum::SelectStmt(_)) if sql.contains("set_config(") => {
            // SELECT pg_catalog.set_config('search_path', '', false)
            let name = sql.split('\'').nth(1).unwrap_or_default().to_string();
            Kind::Setting(name)
        }
        Some(NodeEnum::DropStmt(d)) if d.missing_ok => {
            let ty = pg_query::protobuf::ObjectType::try_from(d.remove_type).ok();
            let schema = match ty {
                Some(pg_query::protobuf::ObjectType::ObjectSchema) => {
                    d.objects.first().and_then(|o| match &o.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                }
                _ => None,
            };
            Kind::DropIfExists {
                extension: ty == Some(pg_query::protobuf::ObjectType::ObjectExtension),
                schema,
            }
        }
        Some(NodeEnum::AlterTableStmt(a)) if a.missing_ok => Kind::DropIfExists {
            extension: false,
            schema: None,
        },
        Some(NodeEnum::AlterDomainStmt(a)) if a.missing_ok => Kind::DropIfExists {
            extension: false,
            schema: None,
        },
        Some(NodeEnum::CreateSchemaStmt(s)) => Kind::CreateSchema(s.schemaname.clone()),
        Some(NodeEnum::CreateTableAsStmt(c))
            if c.objtype == pg_query::protobuf::ObjectType::ObjectMatview as i32 =>
        {
            match c.into.as_ref().and_then(|i| i.rel.as_ref()) {
                Some(rv) => Kind::CreateMatView(range_var_name(rv)),
                None => Kind::Other,
            }
        }
        Some(NodeEnum::IndexStmt(i)) => Kind::BuildsIndex(i.relation.as_ref().map(range_var_name)),
        Some(NodeEnum::AlterTableStmt(a)) if builds_index(a) => {
            Kind::BuildsIndex(a.relation.as_ref().map(range_var_name))
        }
        Some(NodeEnum::CreateEventTrigStmt(t)) if t.trigname.starts_with("pgrepl_") => {
            Kind::PgreplEventTrigger
        }
        Some(NodeEnum::AlterEventTrigStmt(t)) if t.trigname.starts_with("pgrepl_") => {
            Kind::PgreplEventTrigger
        }
        Some(NodeEnum::CommentStmt(_) | NodeEnum::AlterOwnerStmt(_))
            if sql.contains("EVENT TRIGGER pgrepl_") =>
        {
            Kind::PgreplEventTrigger
        }
        Some(NodeEnum::CreateExtensionStmt(e)) => Kind::CreateExtension(e.extname.clone()),
        _ => Kind::Other,
    })
}

/// `ALTER TABLE ... ADD CONSTRAINT ... PRIMARY KEY | UNIQUE | EXCLUDE`.
fn builds_index(a: &pg_query::protobuf::AlterTableStmt) -> bool {
    a.cmds.len() == 1
        && a.cmds.iter().all(|c| match &c.node {
            Some(NodeEnum::AlterTableCmd(cmd)) => {
                cmd.subtype == AlterTableType::AtAddConstraint as i32
                    && matches!(cmd.def.as_deref().and_then(|d| d.node.as_ref()), Some(NodeEnum::Constraint(con))
                        if con.contype == ConstrType::ConstrPrimary as i32
                            || con.contype == ConstrType::ConstrUnique as i32
                            || con.contype == ConstrType::ConstrExclusion as i32)
            }
            _ => false,
        })
}

fn short(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}...", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// pg_dump's SQL as classified statements. psql meta-commands
/// (`\restrict`, `\unrestrict`, `\connect`) are dropped.
pub fn parse_dump(dump: &str) -> Result<Vec<Statement>, SchemaError> {
    let sql: String = dump
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n");
    let parts = pg_query::split_with_parser(&sql).map_err(|e| SchemaError::Parse(e.to_string()))?;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let text = part.trim();
        if text.is_empty() {
            continue;
        }
        let Some(text) = without_server_stamps(text)? else {
            continue;
        };
        let kind = classify(&text)?;
        out.push(Statement { sql: text, kind });
    }
    Ok(out)
}

/// Column options a server sets itself and another server may not know.
/// Debian's PostgreSQL 15.20 stamps every column with `pg_attver=N`
/// (checked on these machines); pg_dump prints it as `ALTER COLUMN c SET
/// (pg_attver=N)`, which every other server rejects ("unrecognized
/// parameter") and which the target's own server sets for itself.
const SERVER_STAMPS: &[&str] = &["pg_attver"];

/// The statement without the server's own column stamps: `None` when
/// nothing else was left in it, the deparsed rest when other options were
/// set beside them, the statement as it was otherwise.
fn without_server_stamps(sql: &str) -> Result<Option<String>, SchemaError> {
    if !SERVER_STAMPS.iter().any(|s| sql.contains(s)) {
        return Ok(Some(sql.to_string()));
    }
    let mut parsed =
        pg_query::parse(sql, 0).map_err(|e| SchemaError::Parse(format!("{e}: {}", short(sql))))?;
    let Some(NodeEnum::AlterTableStmt(a)) = parsed
        .protobuf
        .stmts
        .first_mut()
        .and_then(|s| s.stmt.as_mut())
        .and_then(|n| n.node.as_mut())
    else {
        return Ok(Some(sql.to_string()));
    };
    let mut stripped = false;
    a.cmds.retain_mut(|cmd| {
        let Some(NodeEnum::AlterTableCmd(c)) = &mut cmd.node else {
            return true;
        };
        if c.subtype != AlterTableType::AtSetOptions as i32 {
            return true;
        }
        let Some(NodeEnum::List(options)) = c.def.as_deref_mut().and_then(|d| d.node.as_mut()) else {
            return true;
        };
        let before = options.items.len();
        options.items.retain(|o| {
            !matches!(&o.node, Some(NodeEnum::DefElem(d)) if SERVER_STAMPS.contains(&d.defname.as_str()))
        });
        stripped |= options.items.len() != before;
        !options.items.is_empty()
    });
    if !stripped {
        return Ok(Some(sql.to_string()));
    }
    if a.cmds.is_empty() {
        return Ok(None);
    }
    pg_query::deparse(&parsed.protobuf, Default::default())
        .map(Some)
        .map_err(|e| SchemaError::Parse(format!("{e}: {}", short(sql))))
}

/// A `--clean` dump cut in two: the drops it starts with, and the rest.
pub struct CleanDump {
    pub drops: Vec<Statement>,
    pub creates: Vec<Statement>,
}

pub fn split_clean(statements: Vec<Statement>) -> CleanDump {
    let mut drops = Vec::new();
    let mut creates = Vec::new();
    let mut in_drops = true;
    for s in statements {
        match (&s.kind, in_drops) {
            (Kind::Setting(_), _) => creates.push(s),
            (Kind::DropIfExists { .. }, true) => drops.push(s),
            _ => {
                in_drops = false;
                creates.push(s);
            }
        }
    }
    CleanDump { drops, creates }
}

/// The script that removes what the schema statements created: post-data
/// drops, then pre-data drops, minus extensions and schemas that existed
/// before pgrepl ran.
pub fn cleanup_script(
    post_drops: &[Statement],
    pre_drops: &[Statement],
    preexisting_schemas: &HashSet<String>,
) -> String {
    post_drops
        .iter()
        .chain(pre_drops)
        .filter(|s| match &s.kind {
            Kind::DropIfExists {
                extension: true, ..
            } => false,
            Kind::DropIfExists {
                schema: Some(name), ..
            } => !preexisting_schemas.contains(name),
            _ => true,
        })
        .map(|s| format!("{};\n", s.sql))
        .collect()
}

/// Settings the target does not know (`transaction_timeout` on PG < 17
/// from a newer pg_dump) are left out rather than failing the restore.
pub async fn known_settings(client: &impl GenericClient) -> Result<HashSet<String>, SchemaError> {
    let rows = client
        .query("SELECT name FROM pg_settings", &[])
        .await
        .map_err(|e| SchemaError::Query {
            what: "reading settings",
            message: describe(&e),
        })?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Schemas already on the target (kept by cleaning, reused by CREATE SCHEMA).
pub async fn existing_schemas(client: &impl GenericClient) -> Result<HashSet<String>, SchemaError> {
    let rows = client
        .query("SELECT nspname::text FROM pg_namespace", &[])
        .await
        .map_err(|e| SchemaError::Query {
            what: "reading schemas",
            message: describe(&e),
        })?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Settings pg_settings does not list that every server knows (pg_dump
/// sets the grantor of a GRANT with SET SESSION AUTHORIZATION).
const ALWAYS_KNOWN: &[&str] = &["session_authorization", "role"];

/// Gives pg_dump's `CREATE EXTENSION` statements the source's versions
/// (pg_dump names none, so the target would pick its default).
pub fn pin_extension_versions(
    statements: &mut [Statement],
    version: impl Fn(&str) -> Option<String>,
) {
    for s in statements.iter_mut() {
        if let Kind::CreateExtension(name) = &s.kind {
            if let Some(v) = version(name) {
                let body = s.sql.trim_end().trim_end_matches(';');
                s.sql = format!("{body} VERSION {};", crate::sql::quote_literal(&v));
            }
        }
    }
}

/// Runs statements one by one on `client` (inside the caller's transaction
/// when there is one), naming the statement the target rejects.
pub async fn run_statements(
    client: &impl GenericClient,
    statements: &[Statement],
    known: &HashSet<String>,
    existing: &HashSet<String>,
) -> Result<(), SchemaError> {
    for s in statements {
        let sql = match &s.kind {
            Kind::Setting(name)
                if !known.contains(name) && !ALWAYS_KNOWN.contains(&name.as_str()) =>
            {
                tracing::debug!(setting = %name, "target does not know this setting; skipped");
                continue;
            }
            Kind::PgreplEventTrigger | Kind::DropIfExists { .. } => continue,
            // A schema the DBA created beforehand is reused, not an error.
            Kind::CreateSchema(name) if existing.contains(name) => {
                format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(name))
            }
            _ => s.sql.clone(),
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| SchemaError::Rejected {
                statement: short(&sql),
                message: describe(&e),
            })?;
    }
    Ok(())
}

/// The session settings of a script, to replay on every connection that
/// runs part of it.
pub fn settings(statements: &[Statement]) -> Vec<Statement> {
    statements
        .iter()
        .filter(|s| matches!(s.kind, Kind::Setting(_)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN_PRE: &str = r#"
--
\restrict abc
SET statement_timeout = 0;
SET transaction_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
ALTER TABLE IF EXISTS shop.products ALTER COLUMN id DROP DEFAULT;
DROP VIEW IF EXISTS shop.v;
DROP TABLE IF EXISTS shop."we""ird";
DROP EXTENSION IF EXISTS hstore;
DROP SCHEMA IF EXISTS shop;
DROP SCHEMA IF EXISTS public;
CREATE SCHEMA shop;
CREATE TABLE shop."we""ird" (id int, "select" text);
CREATE FUNCTION shop.f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
\unrestrict abc
"#;

    #[test]
    fn clean_dumps_split_into_drops_and_creates() {
        let d = split_clean(parse_dump(CLEAN_PRE).expect("parses"));
        assert_eq!(d.drops.len(), 6);
        assert!(d
            .creates
            .iter()
            .any(|s| s.kind == Kind::CreateSchema("shop".into())));
        assert!(
            d.creates.iter().any(|s| s.sql.contains("$$ SELECT 1; $$")),
            "function body kept whole"
        );
        assert_eq!(
            d.creates
                .iter()
                .filter(|s| matches!(s.kind, Kind::Setting(_)))
                .count(),
            3,
            "settings are replayed on the create side"
        );
        let mut existing = HashSet::new();
        existing.insert("public".to_string());
        let script = cleanup_script(&[], &d.drops, &existing);
        assert!(script.contains("DROP TABLE IF EXISTS shop.\"we\"\"ird\";"));
        assert!(script.contains("DROP SCHEMA IF EXISTS shop;"));
        assert!(!script.contains("EXTENSION"), "extensions are kept");
        assert!(!script.contains("public"), "schemas that existed are kept");
    }

    #[test]
    fn the_servers_own_column_stamps_stay_behind() {
        let dump = "CREATE TABLE public.zz (a integer, b text);
ALTER TABLE ONLY public.zz ALTER COLUMN a SET (pg_attver=121752640);
ALTER TABLE ONLY public.zz ALTER COLUMN b SET (n_distinct=5, pg_attver=121752640);
ALTER TABLE ONLY public.zz REPLICA IDENTITY FULL;";
        let sql: Vec<String> = parse_dump(dump)
            .expect("parses")
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(sql.len(), 3, "{sql:?}");
        assert!(sql.iter().all(|s| !s.contains("pg_attver")), "{sql:?}");
        assert!(
            sql[1].contains("n_distinct") && sql[1].contains("ALTER COLUMN b"),
            "{sql:?}"
        );
        assert!(sql[2].contains("REPLICA IDENTITY FULL"), "{sql:?}");
    }

    #[test]
    fn index_builds_are_recognised() {
        let s = parse_dump(
            "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);
             ALTER TABLE ONLY public.t ADD CONSTRAINT t_fk FOREIGN KEY (x) REFERENCES public.u(id);
             CREATE UNIQUE INDEX t_x ON public.t USING btree (x);
             CREATE EVENT TRIGGER pgrepl_ddl_end ON ddl_command_end EXECUTE FUNCTION pgrepl.capture();
             CREATE TRIGGER trg BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.f();
             CREATE MATERIALIZED VIEW public.mv AS SELECT 1 AS x WITH NO DATA;",
        )
        .expect("parses");
        let kinds: Vec<_> = s.iter().map(|s| s.kind.clone()).collect();
        assert_eq!(
            kinds[0],
            Kind::BuildsIndex(Some(TableName::new("public", "t")))
        );
        assert_eq!(kinds[1], Kind::Other);
        assert_eq!(
            kinds[2],
            Kind::BuildsIndex(Some(TableName::new("public", "t")))
        );
        assert_eq!(kinds[3], Kind::PgreplEventTrigger);
        assert_eq!(kinds[4], Kind::Other);
        assert_eq!(
            kinds[5],
            Kind::CreateMatView(TableName::new("public", "mv"))
        );
    }

    #[test]
    fn extensions_get_the_source_version_and_pgrepl_owners_stay_behind() {
        let mut s = parse_dump(
            "CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA public;
             ALTER EVENT TRIGGER pgrepl_ddl_end OWNER TO postgres;
             ALTER TABLE app.t OWNER TO app_owner;",
        )
        .expect("parses");
        pin_extension_versions(&mut s, |n| (n == "hstore").then(|| "1.7".to_string()));
        assert_eq!(
            s[0].sql,
            "CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA public VERSION '1.7';"
        );
        assert!(pg_query::parse(&s[0].sql, 0).is_ok());
        assert_eq!(s[1].kind, Kind::PgreplEventTrigger);
        assert_eq!(s[2].kind, Kind::Other);
    }
}
