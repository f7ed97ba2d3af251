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
//! The functions are SECURITY DEFINER (only they may write the log) and
//! pin their own search_path while they work, restoring the caller's. A
//! failure inside them is a WARNING, never an error: the user's DDL always
//! goes through.

use tokio_postgres::GenericClient;

use crate::source::selection::{Pattern, Selection};
use crate::sql::{quote_literal, PublicationName, SyncName};

const INSTALL: &str = r#"
CREATE SCHEMA IF NOT EXISTS pgrepl;
COMMENT ON SCHEMA pgrepl IS 'pgrepl DDL capture: remove with pgrepl teardown';
CREATE TABLE IF NOT EXISTS pgrepl.schema_log (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    xid bigint NOT NULL DEFAULT txid_current(),
    command_tag text NOT NULL,
    event text NOT NULL,
    objects jsonb NOT NULL DEFAULT '[]',
    ddl text NOT NULL,
    search_path text NOT NULL,
    username text NOT NULL DEFAULT session_user,
    creation_schema text
);
CREATE TABLE IF NOT EXISTS pgrepl.config (
    sync_name text PRIMARY KEY,
    publication text NOT NULL,
    include jsonb NOT NULL DEFAULT '[]',
    exclude jsonb NOT NULL DEFAULT '[]',
    patterns jsonb NOT NULL DEFAULT '{}'
);
REVOKE ALL ON SCHEMA pgrepl FROM PUBLIC;

-- The table an object belongs to, as {schema, name} (partitions: their root).
CREATE OR REPLACE FUNCTION pgrepl.table_of(p_classid oid, p_objid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    WITH rel AS (
        SELECT CASE
            WHEN p_classid = 'pg_class'::regclass THEN
                (SELECT CASE WHEN c.relkind IN ('i', 'I') THEN (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = c.oid)
                             WHEN c.relkind = 'S' THEN coalesce((SELECT d.refobjid FROM pg_depend d
                                   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                                     AND d.deptype IN ('a', 'i') LIMIT 1), c.oid)
                             ELSE c.oid END FROM pg_class c WHERE c.oid = p_objid)
            WHEN p_classid = 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = p_objid)
            WHEN p_classid = 'pg_constraint'::regclass THEN (SELECT nullif(conrelid, 0) FROM pg_constraint WHERE oid = p_objid)
            WHEN p_classid = 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = p_objid)
            WHEN p_classid = 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = p_objid)
            WHEN p_classid = 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = p_objid)
        END AS oid
    ), top AS (
        SELECT coalesce(pg_partition_root(rel.oid), rel.oid) AS oid FROM rel
    )
    SELECT jsonb_build_object('schema', n.nspname, 'name', c.relname)
    FROM top JOIN pg_class c ON c.oid = top.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')
$fn$;

-- Whether schema.name matches a sync's patterns ([{schema, table}] regexes).
CREATE OR REPLACE FUNCTION pgrepl.matches(p_patterns jsonb, p_schema text, p_name text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT EXISTS (SELECT 1 FROM jsonb_array_elements(p_patterns) p
                   WHERE (p ->> 'schema' IS NULL OR p_schema ~ (p ->> 'schema')) AND p_name ~ (p ->> 'table'))
$fn$;

-- A table as it is now, in statements: CREATE TABLE of its columns and
-- their types, then one ALTER per column with a collation of its own (a
-- table the target made from the rows' description has the types only).
CREATE OR REPLACE FUNCTION pgrepl.create_table_sql(p_rel oid) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT format('CREATE TABLE IF NOT EXISTS %s (%s)', p_rel::regclass,
                  string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum))
    FROM pg_attribute a
    WHERE a.attrelid = p_rel AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    (SELECT format('ALTER TABLE %s ALTER COLUMN %I TYPE %s COLLATE %I.%I', p_rel::regclass, a.attname,
                   format_type(a.atttypid, a.atttypmod), n.nspname, co.collname)
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     JOIN pg_collation co ON co.oid = a.attcollation JOIN pg_namespace n ON n.oid = co.collnamespace
     WHERE a.attrelid = p_rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attcollation <> t.typcollation
     ORDER BY a.attnum)
$fn$;

CREATE OR REPLACE FUNCTION pgrepl.capture_start() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_path text := pg_catalog.current_setting('search_path');
    v_schema text := pg_catalog.current_schema();
BEGIN
    IF tg_tag NOT IN ('CREATE TABLE AS', 'SELECT INTO')
       OR pg_catalog.current_setting('pgrepl.internal', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    BEGIN
        INSERT INTO pgrepl.schema_log (command_tag, event, ddl, search_path, creation_schema)
        VALUES (tg_tag, 'ddl_command_start', pg_catalog.current_query(), v_path, v_schema);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgrepl could not log this DDL (it will not be replicated): %', SQLERRM;
    END;
    PERFORM pg_catalog.set_config('search_path', v_path, true);
END
$fn$;

CREATE OR REPLACE FUNCTION pgrepl.capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_path text := pg_catalog.current_setting('search_path');
BEGIN
    IF pg_catalog.current_setting('pgrepl.internal', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    BEGIN
        PERFORM set_config('pgrepl.dropped', coalesce((
            SELECT jsonb_agg(jsonb_build_object('type', d.object_type, 'identity', d.object_identity,
                   'schema', d.schema_name, 'name', d.object_name, 'temp', d.is_temporary, 'dropped', true,
                   'table', CASE WHEN d.object_type IN ('table', 'foreign table', 'view', 'materialized view')
                                 THEN jsonb_build_object('schema', d.schema_name, 'name', d.object_name) END))
            FROM pg_event_trigger_dropped_objects() d WHERE d.original), '[]')::text, true);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgrepl could not record dropped objects: %', SQLERRM;
    END;
    PERFORM pg_catalog.set_config('search_path', v_path, true);
END
$fn$;

CREATE OR REPLACE FUNCTION pgrepl.capture_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    v_path text := pg_catalog.current_setting('search_path');
    v_schema text := pg_catalog.current_schema();
    v_added boolean;
    v_objects jsonb;
    v_dropped jsonb;
    r record;
    s record;
BEGIN
    IF pg_catalog.current_setting('pgrepl.internal', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    BEGIN
        SELECT coalesce(jsonb_agg(jsonb_build_object('type', c.object_type, 'identity', c.object_identity,
                        'schema', c.schema_name, 'temp', coalesce(c.schema_name LIKE 'pg\_temp%', false),
                        'table', pgrepl.table_of(c.classid, c.objid))), '[]')
          INTO v_objects FROM pg_event_trigger_ddl_commands() c;
        v_dropped := coalesce(nullif(current_setting('pgrepl.dropped', true), ''), '[]')::jsonb;
        PERFORM set_config('pgrepl.dropped', '', true);
        v_objects := v_objects || v_dropped;
        -- pgrepl's own objects are not replicated.
        IF jsonb_array_length(v_objects) > 0 AND NOT EXISTS (
               SELECT 1 FROM jsonb_array_elements(v_objects) o WHERE coalesce(o ->> 'schema', '') <> 'pgrepl') THEN
            PERFORM pg_catalog.set_config('search_path', v_path, true);
            RETURN;
        END IF;
        IF tg_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
            -- The new table as it came out: the target creates it from this.
            INSERT INTO pgrepl.schema_log (command_tag, event, objects, ddl, search_path, creation_schema)
            SELECT tg_tag, 'table_created', v_objects, sql, v_path, v_schema
            FROM pg_event_trigger_ddl_commands() d
            JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
            CROSS JOIN LATERAL pgrepl.create_table_sql(c.oid) AS sql
            WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't';
        ELSE
            INSERT INTO pgrepl.schema_log (command_tag, event, objects, ddl, search_path, creation_schema)
            VALUES (tg_tag, 'ddl_command_end', v_objects, current_query(), v_path, v_schema);
        END IF;
        -- New tables a sync's --include/--exclude patterns select join its
        -- publication now (FOR ALL TABLES publications have them already).
        FOR r IN SELECT n.nspname, c.relname, c.oid, d.command_tag FROM pg_event_trigger_ddl_commands() d
                 JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
                   AND d.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') LOOP
            v_added := false;
            FOR s IN SELECT * FROM pgrepl.config LOOP
                IF (jsonb_array_length(s.include) = 0 OR pgrepl.matches(s.include, r.nspname, r.relname))
                   AND NOT pgrepl.matches(s.exclude, r.nspname, r.relname)
                   AND EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = s.publication AND NOT p.puballtables) THEN
                    -- Our own DDL fires these triggers again: not logged.
                    PERFORM set_config('pgrepl.internal', 'on', true);
                    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', s.publication, r.oid::regclass);
                    PERFORM set_config('pgrepl.internal', '', true);
                    v_added := true;
                END IF;
            END LOOP;
            -- Rows a CREATE TABLE AS wrote before the table was published:
            -- written again, published this time.
            IF v_added AND r.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
                PERFORM set_config('pgrepl.internal', 'on', true);
                EXECUTE format('CREATE TEMP TABLE pgrepl_unpublished_rows ON COMMIT DROP AS SELECT * FROM %s', r.oid::regclass);
                EXECUTE format('TRUNCATE %s', r.oid::regclass);
                EXECUTE format('INSERT INTO %s SELECT * FROM pg_temp.pgrepl_unpublished_rows', r.oid::regclass);
                DROP TABLE pg_temp.pgrepl_unpublished_rows;
                PERFORM set_config('pgrepl.internal', '', true);
            END IF;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgrepl could not log this DDL (it will not be replicated): %', SQLERRM;
    END;
    PERFORM pg_catalog.set_config('search_path', v_path, true);
END
$fn$;

DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_start;
DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_end;
DROP EVENT TRIGGER IF EXISTS pgrepl_sql_drop;
CREATE EVENT TRIGGER pgrepl_ddl_start ON ddl_command_start EXECUTE PROCEDURE pgrepl.capture_start();
CREATE EVENT TRIGGER pgrepl_sql_drop ON sql_drop EXECUTE PROCEDURE pgrepl.capture_drop();
CREATE EVENT TRIGGER pgrepl_ddl_end ON ddl_command_end EXECUTE PROCEDURE pgrepl.capture_end();
"#;

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

/// Installs (or refreshes) the capture and records this sync's patterns.
pub async fn install(
    client: &impl GenericClient,
    name: &SyncName,
    publication: &PublicationName,
    selection: &Selection,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(INSTALL).await?;
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
        .query_one("SELECT to_regclass('pgrepl.config') IS NOT NULL AND to_regclass('pgrepl.schema_log') IS NOT NULL", &[])
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
        .query_one("SELECT to_regclass('pgrepl.config') IS NOT NULL", &[])
        .await?
        .get(0);
    if config {
        client
            .execute(
                "DELETE FROM pgrepl.config WHERE sync_name = $1",
                &[&name.as_str()],
            )
            .await?;
        let others: i64 = client
            .query_one("SELECT count(*) FROM pgrepl.config", &[])
            .await?
            .get(0);
        if others > 0 {
            return Ok(removed);
        }
    }
    let triggers: i64 = client
        .query_one("SELECT count(*) FROM pg_event_trigger WHERE evtname IN ('pgrepl_ddl_start', 'pgrepl_ddl_end', 'pgrepl_sql_drop')", &[])
        .await?
        .get(0);
    if triggers > 0 {
        client
            .batch_execute(
                "DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_start; DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_end;
                 DROP EVENT TRIGGER IF EXISTS pgrepl_sql_drop;",
            )
            .await?;
        removed.push("DDL capture event triggers".to_string());
    }
    let schema: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgrepl')",
            &[],
        )
        .await?
        .get(0);
    if schema {
        client.batch_execute("DROP SCHEMA pgrepl CASCADE").await?;
        removed.push("schema pgrepl (schema_log)".to_string());
    }
    Ok(removed)
}
