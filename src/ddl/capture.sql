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
-- Added after the first release: existing logs gain them.
ALTER TABLE pgrepl.schema_log ADD COLUMN IF NOT EXISTS settings jsonb;
ALTER TABLE pgrepl.schema_log ADD COLUMN IF NOT EXISTS fixed_defaults jsonb;
ALTER TABLE pgrepl.schema_log ADD COLUMN IF NOT EXISTS failure jsonb;
-- The role the command ran as: SET ROLE's, else the session user's (the
-- capture functions run as their owner, so not current_user). Added
-- without a default, then given one: rows logged before it stay NULL
-- (unknown) rather than all stamped with whoever upgraded.
ALTER TABLE pgrepl.schema_log ADD COLUMN IF NOT EXISTS role text;
ALTER TABLE pgrepl.schema_log ALTER COLUMN role
    SET DEFAULT CASE pg_catalog.current_setting('role') WHEN 'none' THEN session_user::text
                                                    ELSE pg_catalog.current_setting('role') END;
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

-- The session settings that decide how the command reads its values
-- (a timestamptz literal, a timestamp turned timestamptz): replayed too.
CREATE OR REPLACE FUNCTION pgrepl.settings() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT jsonb_build_object('TimeZone', current_setting('TimeZone'), 'DateStyle', current_setting('DateStyle'),
                              'IntervalStyle', current_setting('IntervalStyle'))
$fn$;

-- Records that the capture could not do its part for a command, so every
-- sync stops there instead of silently missing it. If even that cannot be
-- written, the command fails: a DDL no sync can see would leave the target
-- different without a word.
CREATE OR REPLACE FUNCTION pgrepl.capture_failed(p_tag text, p_failure jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    BEGIN
        INSERT INTO pgrepl.schema_log (command_tag, event, ddl, search_path, failure)
        VALUES (p_tag, 'capture_failed', current_query(), current_setting('search_path'), p_failure);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgrepl could not record this % for replication (%), nor that it failed (%)', p_tag,
            p_failure ->> 'error', SQLERRM
            USING HINT = 'The command was rolled back so that the target does not silently differ from the source. '
                         'Fix the cause, or end the sync with pgrepl teardown.';
    END;
    RAISE WARNING 'pgrepl: % (%): the sync will stop at this command', p_failure ->> 'step', p_failure ->> 'error';
END
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
        INSERT INTO pgrepl.schema_log (command_tag, event, ddl, search_path, creation_schema, settings)
        VALUES (tg_tag, 'ddl_command_start', pg_catalog.current_query(), v_path, v_schema, pgrepl.settings());
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgrepl.capture_failed(tg_tag, jsonb_build_object('step', 'logging the command', 'error', SQLERRM));
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
        PERFORM pgrepl.capture_failed(tg_tag, jsonb_build_object('step', 'recording dropped objects', 'error', SQLERRM));
    END;
    PERFORM pg_catalog.set_config('search_path', v_path, true);
END
$fn$;

-- A table is about to be rewritten (ALTER TABLE): remembered with why, for
-- the end of the command. Reason bit 2: a new column's default is computed
-- per row (a volatile default, serial, identity).
CREATE OR REPLACE FUNCTION pgrepl.capture_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    IF pg_catalog.current_setting('pgrepl.internal', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('pgrepl.rewritten',
        coalesce(pg_catalog.current_setting('pgrepl.rewritten', true), '')
        || pg_catalog.pg_event_trigger_table_rewrite_oid()::text || ':'
        || pg_catalog.pg_event_trigger_table_rewrite_reason()::text || ' ', true);
END
$fn$;

-- The values that ADD COLUMN computed once for every existing row (a fast
-- default such as now() or current_user): {column: text}, read from the
-- rows themselves, the table's and its children's. The target replays the
-- command with these values, not with what the expression gives there.
CREATE OR REPLACE FUNCTION pgrepl.fixed_defaults(p_rel oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_cols text[];
    v_out jsonb;
BEGIN
    WITH RECURSIVE tree(oid) AS (
        SELECT p_rel UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)
    SELECT array_agg(DISTINCT a.attname::text) INTO v_cols
    FROM pg_attribute a JOIN tree ON a.attrelid = tree.oid
    WHERE a.attnum > 0 AND NOT a.attisdropped AND a.atthasmissing;
    IF v_cols IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT jsonb_object(%L::text[], ARRAY[%s]) FROM %s LIMIT 1', v_cols,
                   (SELECT string_agg(format('%I::text', c), ', ') FROM unnest(v_cols) c), p_rel::regclass)
        INTO v_out;
    RETURN v_out;
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
    v_fixed jsonb;
    v_rewritten text;
    v_col text;
    v_role text;
    r record;
    s record;
BEGIN
    IF pg_catalog.current_setting('pgrepl.internal', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    v_rewritten := coalesce(current_setting('pgrepl.rewritten', true), '');
    PERFORM set_config('pgrepl.rewritten', '', true);
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
        IF tg_tag = 'ALTER TABLE' THEN
            SELECT jsonb_object_agg(c.oid::regclass::text, pgrepl.fixed_defaults(c.oid)) INTO v_fixed
            FROM pg_event_trigger_ddl_commands() d JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
            WHERE c.relkind IN ('r', 'p') AND pgrepl.fixed_defaults(c.oid) IS NOT NULL;
        END IF;
        IF tg_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
            -- The new table as it came out: the target creates it from this.
            INSERT INTO pgrepl.schema_log (command_tag, event, objects, ddl, search_path, creation_schema, settings)
            SELECT tg_tag, 'table_created', v_objects, sql, v_path, v_schema, pgrepl.settings()
            FROM pg_event_trigger_ddl_commands() d
            JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
            CROSS JOIN LATERAL pgrepl.create_table_sql(c.oid) AS sql
            WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't';
        ELSE
            INSERT INTO pgrepl.schema_log (command_tag, event, objects, ddl, search_path, creation_schema, settings, fixed_defaults)
            VALUES (tg_tag, 'ddl_command_end', v_objects, current_query(), v_path, v_schema, pgrepl.settings(), v_fixed);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgrepl.capture_failed(tg_tag, jsonb_build_object('step', 'logging the command', 'error', SQLERRM));
        PERFORM pg_catalog.set_config('search_path', v_path, true);
        RETURN;
    END;
    -- New tables a sync's --include/--exclude patterns select join its
    -- publication now (FOR ALL TABLES publications have them already). A
    -- partition follows its root; on 12, which cannot publish partitioned
    -- tables, partitions are published themselves.
    FOR r IN SELECT c.oid, d.command_tag, tn.nspname AS top_schema, tc.relname AS top_name
             FROM pg_event_trigger_ddl_commands() d
             JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
             JOIN pg_class tc ON tc.oid = coalesce(pg_partition_root(c.oid), c.oid)
             JOIN pg_namespace tn ON tn.oid = tc.relnamespace
             WHERE c.relpersistence = 'p'
               AND d.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
               AND CASE WHEN current_setting('server_version_num')::int >= 130000
                        THEN c.relkind IN ('r', 'p') AND NOT c.relispartition
                        ELSE c.relkind = 'r' END LOOP
        v_added := false;
        FOR s IN SELECT * FROM pgrepl.config LOOP
            IF (jsonb_array_length(s.include) = 0 OR pgrepl.matches(s.include, r.top_schema, r.top_name))
               AND NOT pgrepl.matches(s.exclude, r.top_schema, r.top_name)
               -- pgrepl's publications only: whoever may write pgrepl.config
               -- must not have the capture's owner alter anyone else's.
               AND s.publication LIKE 'pgrepl\_%'
               AND EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = s.publication AND NOT p.puballtables) THEN
                BEGIN
                    -- Our own DDL fires these triggers again: not logged.
                    PERFORM set_config('pgrepl.internal', 'on', true);
                    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', s.publication, r.oid::regclass);
                    PERFORM set_config('pgrepl.internal', '', true);
                    v_added := true;
                EXCEPTION WHEN OTHERS THEN
                    PERFORM set_config('pgrepl.internal', '', true);
                    PERFORM pgrepl.capture_failed(tg_tag, jsonb_build_object(
                        'step', format('adding table %s to publication %s', r.oid::regclass, s.publication),
                        'error', SQLERRM, 'publication', s.publication, 'table', r.oid::regclass::text));
                END;
            END IF;
        END LOOP;
        -- Rows a CREATE TABLE AS wrote before the table was published:
        -- written again, published this time.
        IF v_added AND r.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
            BEGIN
                PERFORM set_config('pgrepl.internal', 'on', true);
                EXECUTE format('CREATE TEMP TABLE pgrepl_unpublished_rows ON COMMIT DROP AS SELECT * FROM %s', r.oid::regclass);
                EXECUTE format('TRUNCATE %s', r.oid::regclass);
                EXECUTE format('INSERT INTO %s SELECT * FROM pg_temp.pgrepl_unpublished_rows', r.oid::regclass);
                DROP TABLE pg_temp.pgrepl_unpublished_rows;
                PERFORM set_config('pgrepl.internal', '', true);
            EXCEPTION WHEN OTHERS THEN
                PERFORM set_config('pgrepl.internal', '', true);
                PERFORM pgrepl.capture_failed(tg_tag, jsonb_build_object(
                    'step', format('publishing the rows of %s', r.oid::regclass), 'error', SQLERRM,
                    'table', r.oid::regclass::text));
            END;
        END IF;
    END LOOP;
    -- A rewrite computed a new column's value row by row (a volatile
    -- default, serial, identity): the rows are published again, as they
    -- are now, so the target takes these values rather than computing its
    -- own. As replica, so no user trigger fires and nothing else changes.
    -- Keyed tables: an UPDATE of every row (the target finds each by its
    -- key). Tables without a key (REPLICA IDENTITY FULL): the target could
    -- not find a row by its old image, which holds the new column's value
    -- already; TRUNCATE and the same rows inserted again reach it exactly.
    FOR r IN SELECT c.oid, c.relreplident, split_part(w, ':', 2)::int AS reason
             FROM unnest(string_to_array(trim(v_rewritten), ' ')) w
             JOIN pg_class c ON c.oid = split_part(w, ':', 1)::oid
             WHERE EXISTS (SELECT 1 FROM pgrepl.config cfg JOIN pg_publication_tables pt ON pt.pubname = cfg.publication
                           JOIN pg_namespace n ON n.nspname = pt.schemaname
                           WHERE n.oid = c.relnamespace AND pt.tablename = c.relname) LOOP
        CONTINUE WHEN r.reason & 2 = 0;
        BEGIN
            v_role := current_setting('session_replication_role');
            PERFORM set_config('session_replication_role', 'replica', true);
            IF r.relreplident = 'f' THEN
                SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO v_col FROM pg_attribute a
                WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
                PERFORM set_config('pgrepl.internal', 'on', true);
                EXECUTE format('CREATE TEMP TABLE pgrepl_rewritten ON COMMIT DROP AS SELECT %s FROM ONLY %s', v_col, r.oid::regclass);
                EXECUTE format('TRUNCATE ONLY %s', r.oid::regclass);
                EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM pg_temp.pgrepl_rewritten',
                               r.oid::regclass, v_col, v_col);
                DROP TABLE pg_temp.pgrepl_rewritten;
                PERFORM set_config('pgrepl.internal', '', true);
            ELSE
                SELECT a.attname INTO v_col FROM pg_attribute a
                WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity <> 'a'
                ORDER BY a.attnum LIMIT 1;
                IF v_col IS NULL THEN
                    RAISE EXCEPTION 'no column of % can be rewritten', r.oid::regclass;
                END IF;
                EXECUTE format('UPDATE ONLY %s SET %I = %I', r.oid::regclass, v_col, v_col);
            END IF;
            PERFORM set_config('session_replication_role', v_role, true);
        EXCEPTION WHEN OTHERS THEN
            PERFORM set_config('pgrepl.internal', '', true);
            PERFORM pgrepl.capture_failed(tg_tag, jsonb_build_object(
                'step', format('publishing the values the rewrite of %s computed', r.oid::regclass),
                'error', SQLERRM, 'table', r.oid::regclass::text));
        END;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', v_path, true);
END
$fn$;

DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_start;
DROP EVENT TRIGGER IF EXISTS pgrepl_ddl_end;
DROP EVENT TRIGGER IF EXISTS pgrepl_sql_drop;
DROP EVENT TRIGGER IF EXISTS pgrepl_rewrite;
CREATE EVENT TRIGGER pgrepl_ddl_start ON ddl_command_start EXECUTE PROCEDURE pgrepl.capture_start();
CREATE EVENT TRIGGER pgrepl_sql_drop ON sql_drop EXECUTE PROCEDURE pgrepl.capture_drop();
CREATE EVENT TRIGGER pgrepl_rewrite ON table_rewrite EXECUTE PROCEDURE pgrepl.capture_rewrite();
CREATE EVENT TRIGGER pgrepl_ddl_end ON ddl_command_end EXECUTE PROCEDURE pgrepl.capture_end();
