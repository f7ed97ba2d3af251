//! DDL capture on the source: schema `pgrepl` with `pgrepl.schema_log`
//! (published with the data, so DDL arrives in commit order inside its own
//! transaction) and event triggers that log one row per DDL command.
//!
//! - `ddl_command_end` logs every DDL command with the objects it touched
//!   (and, for tables, the table they belong to), and adds new tables that
//!   a sync's `--include` / `--exclude` patterns select to its publication,
//!   in the same transaction, so their rows are published from the first
//!   one.
//! - `CREATE TABLE AS` / `SELECT INTO` are never replayed as queries (the
//!   target may lack their inputs: temporary tables, tables left out, and
//!   volatile functions would compute other rows). `ddl_command_start` logs
//!   that a table is coming (its rows are written, and published with FOR
//!   ALL TABLES, before the command ends: the target creates the table from
//!   their relation description); `ddl_command_end` logs the table as it
//!   came out, column by column (`table_created`). When such a table only
//!   joins the publication at the end (a table list), its rows were written
//!   unpublished: the end trigger writes them again (TRUNCATE, then INSERT
//!   of the same rows), so they reach the target through the stream like
//!   any others.
//!
//! Each row also records `current_schema()`: where an unqualified CREATE
//! put its object.
//! - `sql_drop` remembers what a DROP removed for the end row.
//!
//! - `table_rewrite` remembers tables an ALTER rewrites; when a new column's
//!   default was computed row by row (volatile defaults, serial, identity),
//!   the end trigger publishes the rows again as they are, so the target
//!   takes the source's values. A default computed once for all rows (a
//!   fast default such as `now()`) is logged as its value
//!   (`fixed_defaults`), and the session's TimeZone, DateStyle and
//!   IntervalStyle with every command (`settings`): the target replays
//!   with both.
//!
//! The functions are SECURITY DEFINER (only they may write the log) and
//! pin their own search_path while they work, restoring the caller's.
//!
//! The rule: no DDL the sync cannot follow goes by unnoticed. When the
//! capture fails at any step (a lock timeout adding a table to a
//! publication, say), the user's DDL still goes through, and a
//! `capture_failed` row in the log stops every sync at exactly that point
//! with what failed. Only when even that row cannot be written does the
//! user's DDL fail, saying why.

use tokio_postgres::GenericClient;

use crate::source::selection::{Pattern, Selection};
use crate::sql::{quote_literal, PublicationName, SyncName, TableName};

const INSTALL: &str = include_str!("capture.sql");

/// Patterns as the trigger matches them: POSIX regexes per part.
fn regexes(patterns: &[Pattern]) -> String {
    let items: Vec<serde_json::Value> = patterns
        .iter()
        .map(|p| {
            let (schema, table) = p.regex_parts();
            serde_json::json!({ "schema": schema, "table": table })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// What the schema's comment says of the capture installed: this
/// pgrepl's, byte for byte, when it ends with this fingerprint of the SQL.
fn marker() -> String {
    // FNV-1a: a fingerprint, not a defence (whoever may replace the
    // functions may replace the comment).
    let hash = INSTALL.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("pgrepl DDL capture {hash:016x}: remove with pgrepl teardown")
}

/// The capture, installed (or refreshed) in one statement batch, marked.
fn install_sql() -> String {
    format!(
        "{INSTALL};\nCOMMENT ON SCHEMA pgrepl IS {};\n",
        quote_literal(&marker())
    )
}

/// The capture made by a role that may create event triggers for `role`,
/// which may not: `role` then records its syncs in `pgrepl.config`, and
/// adds `pgrepl.schema_log` to its own pgrepl publications through
/// `pgrepl.publish_schema_log` (publishing a table takes its owner). The
/// rule: everything the installer's SECURITY DEFINER code runs stays the
/// installer's; `role` owns nothing there (an owner of schema_log could
/// hang a trigger on it and run code as the installer).
/// For `pgrepl install-capture`.
pub fn install_for(role: &str) -> String {
    let role = crate::sql::quote_ident(role);
    format!(
        r#"{}CREATE OR REPLACE FUNCTION pgrepl.publish_schema_log(p_publication text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF p_publication !~ '^pgrepl_[a-z0-9_]+$' OR NOT EXISTS (
           SELECT 1 FROM pg_publication p
           WHERE p.pubname = p_publication AND NOT p.puballtables
             AND pg_has_role(session_user, p.pubowner, 'USAGE')) THEN
        RAISE EXCEPTION 'publication % is not a pgrepl table-list publication of yours', p_publication;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = p_publication AND r.prrelid = 'pgrepl.schema_log'::regclass) THEN
        PERFORM set_config('pgrepl.internal', 'on', true);
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE pgrepl.schema_log', p_publication);
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION pgrepl.publish_schema_log(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgrepl TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON pgrepl.config TO {role};
GRANT EXECUTE ON FUNCTION pgrepl.publish_schema_log(text) TO {role};
"#,
        install_sql()
    )
}

/// Adds `pgrepl.schema_log` to a table-list publication this role made:
/// through the installer's function when the capture was made for it,
/// else directly (the role owns the log).
pub async fn publish_log(
    client: &impl GenericClient,
    publication: &PublicationName,
) -> Result<(), tokio_postgres::Error> {
    let helper: bool = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                                WHERE n.nspname = 'pgrepl' AND p.proname = 'publish_schema_log')
                    AND NOT pg_has_role((SELECT relowner FROM pg_class WHERE oid = {}), 'USAGE')",
                TableName::new("pgrepl", "schema_log").oid_sql()
            ),
            &[],
        )
        .await?
        .get(0);
    if helper {
        client
            .execute(
                "SELECT pgrepl.publish_schema_log($1)",
                &[&publication.as_str()],
            )
            .await?;
    } else {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE pgrepl.schema_log",
                publication.quoted()
            ))
            .await?;
    }
    Ok(())
}

/// Whether the capture installed is this pgrepl's, whole and enabled.
pub async fn is_current(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT obj_description(oid, 'pg_namespace') = $1 FROM pg_namespace WHERE nspname = 'pgrepl'), false)
                AND (SELECT count(*) FROM pg_event_trigger
                     WHERE evtname IN ('pgrepl_ddl_start', 'pgrepl_ddl_end', 'pgrepl_sql_drop', 'pgrepl_rewrite')
                       AND evtenabled IN ('O', 'A')) = 4",
            &[&marker()],
        )
        .await?
        .get(0))
}

/// Installs (or refreshes) the capture unless this pgrepl's is there, and
/// records this sync's patterns. A role that may not create event triggers
/// uses one made for it ahead (`install_for`); `check` has made sure.
pub async fn install(
    client: &impl GenericClient,
    name: &SyncName,
    publication: &PublicationName,
    selection: &Selection,
) -> Result<(), tokio_postgres::Error> {
    // In one transaction, unseen by a capture already installed (another
    // sync's): pgrepl's own DDL is never replicated.
    if !is_current(client).await? {
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL pgrepl.internal = 'on'; {}; COMMIT;",
                install_sql()
            ))
            .await?;
    }
    client
        .batch_execute(&format!(
            "INSERT INTO pgrepl.config (sync_name, publication, include, exclude, patterns) VALUES ({}, {}, {}::jsonb, {}::jsonb, {}::jsonb)
             ON CONFLICT (sync_name) DO UPDATE SET publication = EXCLUDED.publication, include = EXCLUDED.include,
                 exclude = EXCLUDED.exclude, patterns = EXCLUDED.patterns",
            quote_literal(name.as_str()),
            quote_literal(publication.as_str()),
            quote_literal(&regexes(&selection.include)),
            quote_literal(&regexes(&selection.exclude)),
            quote_literal(&patterns(selection)),
        ))
        .await
}

fn patterns(selection: &Selection) -> String {
    let texts = |ps: &[Pattern]| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
    serde_json::json!({ "include": texts(&selection.include), "exclude": texts(&selection.exclude) }).to_string()
}

/// The selection a sync was set up with, if its DDL capture is installed.
pub async fn stored_selection(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<Option<Selection>, tokio_postgres::Error> {
    if !installed(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT patterns::text FROM pgrepl.config WHERE sync_name = $1",
            &[&name.as_str()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap_or_default();
    let parse = |key: &str| -> Vec<Pattern> {
        value[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .filter_map(|t| t.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Some(Selection {
        include: parse("include"),
        exclude: parse("exclude"),
    }))
}

/// Whether the capture is installed.
pub async fn installed(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            &format!(
                "SELECT {} IS NOT NULL AND {} IS NOT NULL",
                TableName::new("pgrepl", "config").oid_sql(),
                TableName::new("pgrepl", "schema_log").oid_sql()
            ),
            &[],
        )
        .await?
        .get(0))
}

/// Removes this sync's part; the triggers and schema go with the last sync.
/// Returns what was removed, for `teardown` to say.
pub async fn remove(
    client: &impl GenericClient,
    name: &SyncName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut removed = Vec::new();
    let config: bool = client
        .query_one(
            &format!(
                "SELECT {} IS NOT NULL",
                TableName::new("pgrepl", "config").oid_sql()
            ),
            &[],
        )
        .await?
        .get(0);
    if config {
        let mine = client
            .execute(
                "DELETE FROM pgrepl.config WHERE sync_name = $1",
                &[&name.as_str()],
            )
            .await?;
        // Not this sync's capture (one made ahead, another's): not ours
        // to remove.
        if mine == 0 {
            return Ok(removed);
        }
        let others: i64 = client
            .query_one("SELECT count(*) FROM pgrepl.config", &[])
            .await?
            .get(0);
        if others > 0 {
            return Ok(removed);
        }
    }
    // Only a superuser may drop an event trigger: one made ahead for a
    // role that is not stays, for the admin who made it to remove.
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    if !superuser {
        if config {
            removed.push(
                "this sync's DDL capture settings (the capture itself stays: a superuser removes it with `pgrepl teardown`, or DROP EVENT TRIGGER pgrepl_ddl_start, pgrepl_ddl_end, pgrepl_sql_drop, pgrepl_rewrite; DROP SCHEMA pgrepl CASCADE)"
                    .to_string(),
            );
        }
        return Ok(removed);
    }
    let triggers: i64 = client
        .query_one("SELECT count(*) FROM pg_event_trigger WHERE evtname IN ('pgrepl_ddl_start', 'pgrepl_ddl_end', 'pgrepl_sql_drop', 'pgrepl_rewrite')", &[])
        .await?
        .get(0);
    if triggers > 0 {
        client
            .batch_execute(
                "DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_start; DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_end;
                 DROP EVENT TRIGGER IF EXISTS pgrepl_sql_drop; DROP EVENT TRIGGER IF EXISTS pgrepl_rewrite;",
            )
            .await?;
        removed.push("DDL capture event triggers".to_string());
    }
    // Rule: the schema goes only when it holds nothing but the capture's
    // tables. A server can be a sync's target and another's source at once
    // (the way back of a cutover: the new server holds the forward sync's
    // state in `pgrepl` and the reverse sync's capture beside it); dropping
    // the schema then would take the other sync's state with it.
    let (schema, others): (bool, i64) = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgrepl'),
                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = 'pgrepl' AND c.relkind IN ('r', 'p')
                        AND c.relname NOT IN ('schema_log', 'config'))",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    if schema && others == 0 {
        client.batch_execute("DROP SCHEMA pgrepl CASCADE").await?;
        removed.push("schema pgrepl (schema_log)".to_string());
    } else if schema {
        // The capture's own tables go; the schema stays with the state.
        client
            .batch_execute("DROP TABLE IF EXISTS pgrepl.schema_log, pgrepl.config CASCADE")
            .await?;
        removed.push(
            "DDL capture tables (schema pgrepl stays: it holds a sync's state too)".to_string(),
        );
    }
    Ok(removed)
}
