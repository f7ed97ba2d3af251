//! DDL replication through the schema log: every kind of DDL the issue
//! lists, in order with the rows around it, each run ending with source and
//! target equal in schema (from the catalog) and in data.

mod support;
#[path = "ddl/without_ddl.rs"]
mod without_ddl;

use std::time::Duration;

use support::schema::assert_same_shape;
use support::{assert_same_data, pgrepl, Pair};

const LIMIT: Duration = Duration::from_secs(240);

async fn sync(pair: &Pair, extra: &[&str]) -> pgrepl::Output {
    let mut a: Vec<String> = vec!["sync".into()];
    a.extend(pair.args());
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::run(&a, LIMIT).await
}

async fn equal(pair: &Pair) {
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_same_shape(&s, &t).await;
    assert_same_data(&s, &t).await;
}

const BASE: &str = "
    CREATE SCHEMA app;
    CREATE TABLE app.items (id int PRIMARY KEY, name text, qty int);
    INSERT INTO app.items SELECT g, 'item ' || g, g FROM generate_series(1, 100) g;
    CREATE TABLE app.events (id bigint NOT NULL, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
    CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    INSERT INTO app.events VALUES (1, '2024-03-01');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_columns_indexes_types_and_other_objects_replay_in_order() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    // Each statement is its own command, as psql or a migration tool sends them.
    for sql in [
        // Tables and columns: add, default, not null, change type, rename, drop.
        "CREATE TABLE app.orders (id serial PRIMARY KEY, item int, note text)",
        "INSERT INTO app.orders (item, note) SELECT id, 'n' FROM app.items WHERE id <= 20",
        "ALTER TABLE app.orders ADD COLUMN status text DEFAULT 'new' NOT NULL",
        "ALTER TABLE app.orders ALTER COLUMN note SET DEFAULT 'none'",
        "ALTER TABLE app.orders ALTER COLUMN item TYPE bigint",
        "ALTER TABLE app.orders ALTER COLUMN item SET NOT NULL",
        "ALTER TABLE app.orders RENAME COLUMN note TO remark",
        "ALTER TABLE app.items DROP COLUMN qty",
        "ALTER TABLE app.orders ADD CONSTRAINT orders_item_fk FOREIGN KEY (item) REFERENCES app.items (id)",
        "ALTER TABLE app.orders ADD CONSTRAINT orders_status_check CHECK (status <> '')",
        "ALTER TABLE app.items RENAME TO products",
        // ... and taken back: constraint, default, NOT NULL, a whole table.
        "CREATE TABLE app.gone (id int PRIMARY KEY, v text NOT NULL DEFAULT 'v' CHECK (v <> ''))",
        "INSERT INTO app.gone VALUES (1)",
        "ALTER TABLE app.gone DROP CONSTRAINT gone_v_check",
        "ALTER TABLE app.gone ALTER COLUMN v DROP DEFAULT",
        "ALTER TABLE app.gone ALTER COLUMN v DROP NOT NULL",
        "INSERT INTO app.gone VALUES (2, NULL)",
        "CREATE TABLE app.dropped (id int PRIMARY KEY)",
        "INSERT INTO app.dropped VALUES (1)",
        "DROP TABLE app.dropped",
        "INSERT INTO app.orders (item, remark) VALUES (5, 'after rename')",
        // Indexes, plain and CONCURRENTLY.
        "CREATE INDEX orders_status_idx ON app.orders (status)",
        "CREATE UNIQUE INDEX CONCURRENTLY products_name_idx ON app.products (name)",
        "DROP INDEX CONCURRENTLY app.orders_status_idx",
        // Types: enum with ADD VALUE used in the next transaction, composite, domain.
        "CREATE TYPE app.mood AS ENUM ('sad', 'ok')",
        "ALTER TYPE app.mood ADD VALUE 'happy'",
        "ALTER TABLE app.orders ADD COLUMN mood app.mood",
        "UPDATE app.orders SET mood = 'happy' WHERE id % 2 = 0",
        "CREATE TYPE app.pair AS (a int, b text)",
        "CREATE DOMAIN app.positive AS int CHECK (VALUE > 0)",
        "DROP TYPE app.pair",
        // Schemas, views, materialized views, functions, triggers, sequences.
        "CREATE SCHEMA reporting",
        "CREATE VIEW reporting.open_orders AS SELECT id, item FROM app.orders WHERE status = 'new'",
        "CREATE MATERIALIZED VIEW reporting.order_counts AS SELECT status, count(*) AS n FROM app.orders GROUP BY status",
        "CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.remark := coalesce(NEW.remark, '') || '!'; RETURN NEW; END $$",
        "CREATE TRIGGER orders_touch BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch()",
        "UPDATE app.orders SET status = 'paid' WHERE id <= 3",
        "CREATE TRIGGER orders_touch2 BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch()",
        "DROP TRIGGER orders_touch2 ON app.orders",
        "CREATE SEQUENCE app.ticket_seq START 100",
        "ALTER SEQUENCE app.ticket_seq INCREMENT BY 5 MAXVALUE 100000",
        "CREATE SEQUENCE app.spare_seq",
        "DROP SEQUENCE app.spare_seq",
        "CREATE FUNCTION app.spare(x int) RETURNS int LANGUAGE sql AS 'SELECT x + 1'",
        "ALTER FUNCTION app.spare(int) RENAME TO spare2",
        "CREATE FUNCTION app.spare3() RETURNS int LANGUAGE sql AS 'SELECT 3'",
        "DROP FUNCTION app.spare3()",
        "CREATE MATERIALIZED VIEW reporting.spare_mv AS SELECT 1 AS x",
        "DROP MATERIALIZED VIEW reporting.spare_mv",
        "CREATE DOMAIN app.spare_domain AS text",
        "DROP DOMAIN app.spare_domain",
        "CREATE SCHEMA scratch", "CREATE TABLE scratch.t (x int PRIMARY KEY)", "DROP SCHEMA scratch CASCADE",
        "DROP VIEW reporting.open_orders",
        "REFRESH MATERIALIZED VIEW reporting.order_counts",
        // Partitions: attach a new one, detach an old one.
        "CREATE TABLE app.events_2025 (id bigint NOT NULL, at date NOT NULL)",
        "ALTER TABLE app.events ATTACH PARTITION app.events_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "INSERT INTO app.events VALUES (2, '2025-06-01')",
        "ALTER TABLE app.events DETACH PARTITION app.events_2024",
        "INSERT INTO app.events_2024 VALUES (3, '2024-07-01')",
        // Comments.
        "COMMENT ON TABLE app.orders IS 'customer orders'",
        "COMMENT ON COLUMN app.orders.status IS 'new, paid, ...'",
    ] {
        pair.source.exec(sql).await;
    }
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("replaying DDL"), "{out}");
    equal(&pair).await;
    assert_eq!(
        pair.target
            .value("SELECT string_agg(remark, ',' ORDER BY id) FROM app.orders WHERE id <= 3")
            .await,
        pair.source
            .value("SELECT string_agg(remark, ',' ORDER BY id) FROM app.orders WHERE id <= 3")
            .await,
        "user triggers do not fire on the target: the source's values come through as they are"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tables_arrive_with_their_rows() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.source
        .exec(
            // One query string mixing DDL and DML: only the DDL is replayed,
            // the rows come through the stream (never twice).
            "CREATE TABLE app.mixed (id int PRIMARY KEY, v text);
             INSERT INTO app.mixed SELECT g, 'v' || g FROM generate_series(1, 50) g;
             ALTER TABLE app.mixed ADD COLUMN w int;
             UPDATE app.mixed SET w = id * 2;
             CREATE INDEX mixed_w ON app.mixed (w);",
        )
        .await;
    pair.source
        .exec("CREATE TABLE app.copy_of_items AS SELECT * FROM app.items WHERE id % 2 = 0")
        .await;
    pair.source
        .exec("SELECT id, name INTO app.selected_items FROM app.items WHERE id > 90")
        .await;
    // Inputs the target does not have (a temporary table, volatile values),
    // a collation of its own, and no rows at all: the tables come as they
    // came out on the source, never recomputed.
    pair.source
        .exec(
            "CREATE TEMP TABLE scratch AS SELECT g AS id FROM generate_series(1, 12) g;
             CREATE TABLE app.from_temp AS
                 SELECT id, random() AS r, ('x' || id) COLLATE \"C\" AS c, ARRAY[id]::int[] AS a FROM scratch;
             CREATE TABLE app.no_rows AS SELECT * FROM app.items WHERE false;",
        )
        .await;
    // Created and filled in one transaction.
    {
        let mut c = pair.source.client().await;
        let tx = c.transaction().await.expect("begin");
        tx.batch_execute("CREATE TABLE app.born (id int PRIMARY KEY, note text)")
            .await
            .expect("create");
        tx.batch_execute(
            "INSERT INTO app.born SELECT g, 'born ' || g FROM generate_series(1, 30) g",
        )
        .await
        .expect("fill");
        tx.commit().await.expect("commit");
    }
    // DDL interleaved with DML in one transaction, statement by statement.
    {
        let mut c = pair.source.client().await;
        let tx = c.transaction().await.expect("begin");
        tx.batch_execute("ALTER TABLE app.items ADD COLUMN c int")
            .await
            .expect("alter");
        tx.batch_execute("UPDATE app.items SET c = id")
            .await
            .expect("update");
        tx.commit().await.expect("commit");
    }
    // Temporary tables stay on the source.
    pair.source
        .exec("CREATE TEMP TABLE t_tmp AS SELECT 1 AS x")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stderr
            .contains("creating the table of a CREATE TABLE AS from its rows"),
        "with FOR ALL TABLES the rows come first: {out}"
    );
    equal(&pair).await;
    for (t, n) in [
        ("app.mixed", "50"),
        ("app.copy_of_items", "50"),
        ("app.selected_items", "10"),
        ("app.born", "30"),
    ] {
        assert_eq!(
            pair.target
                .value(&format!("SELECT count(*) FROM {t}"))
                .await
                .as_deref(),
            Some(n),
            "{t}"
        );
    }
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM app.items WHERE c = id")
            .await,
        Some("100".into())
    );
    let states = pair.target.value("SELECT string_agg(table_name || '=' || state, ',' ORDER BY table_name) FROM pgrepl.tables WHERE table_name IN ('born', 'mixed')").await;
    assert_eq!(states, Some("born=streaming,mixed=streaming".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_include_patterns_a_matching_new_table_joins_the_publication() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    pair.source
        .exec("CREATE SCHEMA other; CREATE TABLE other.x (id int PRIMARY KEY); INSERT INTO other.x VALUES (1);")
        .await;
    assert!(sync(&pair, &["--copy-only", "--include", "app.*"])
        .await
        .success());
    {
        let mut c = pair.source.client().await;
        let tx = c.transaction().await.expect("begin");
        tx.batch_execute("CREATE TABLE app.fresh (id int PRIMARY KEY)")
            .await
            .expect("create");
        tx.batch_execute("INSERT INTO app.fresh SELECT generate_series(1, 25)")
            .await
            .expect("fill");
        tx.commit().await.expect("commit");
    }
    pair.source
        .exec("CREATE TABLE app.derived AS SELECT id FROM app.items WHERE id < 11")
        .await;
    // Rows the target could not compute itself (volatile, and from a table
    // the sync leaves out), and names left to the search_path.
    pair.source
        .exec(
            "SET search_path = app, public;
             CREATE TABLE drawn AS SELECT g AS id, random() AS r, (SELECT count(*) FROM other.x) AS others
                 FROM generate_series(1, 40) g;
             SELECT id, random() AS r INTO picked FROM items WHERE id <= 5;
             CREATE TABLE plain (id int PRIMARY KEY);
             INSERT INTO plain VALUES (1), (2);
             RESET search_path;",
        )
        .await;
    pair.source.exec("CREATE TABLE other.y (id int PRIMARY KEY); INSERT INTO other.y VALUES (1); ALTER TABLE other.x ADD COLUMN z int;").await;
    pair.source.exec("INSERT INTO app.fresh VALUES (26)").await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("outside --include/--exclude"), "{out}");
    assert_eq!(
        pair.target.value("SELECT count(*) FROM app.fresh").await,
        Some("26".into())
    );
    assert_eq!(
        pair.target.value("SELECT count(*) FROM app.derived").await,
        Some("10".into())
    );
    // Every app table equal by checksum: the random() values came through
    // the stream, not from a second run of the query on the target.
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    support::assert_same_tables(
        &src,
        &tgt,
        &[
            "app.fresh",
            "app.derived",
            "app.drawn",
            "app.picked",
            "app.plain",
            "app.items",
        ],
    )
    .await;
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM app.drawn WHERE others = 1")
            .await,
        Some("40".into())
    );
    let states = pair
        .target
        .value("SELECT string_agg(schema_name || '.' || table_name, ',' ORDER BY 1) FROM pgrepl.tables WHERE table_name IN ('drawn', 'picked', 'plain')")
        .await;
    assert_eq!(states.as_deref(), Some("app.drawn,app.picked,app.plain"));
    // The schema came with pg_dump; its tables are left out, old and new.
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_tables WHERE schemaname = 'other'")
            .await,
        Some("0".into())
    );
    let published = pair
        .source
        .value("SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1) FROM pg_publication_tables WHERE pubname = 'pgrepl_pgrepl'")
        .await
        .unwrap_or_default();
    assert!(
        published.contains("app.fresh")
            && published.contains("app.derived")
            && published.contains("app.drawn")
            && !published.contains("other."),
        "{published}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_exclude_patterns_new_tables_join_the_publication_too() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    pair.source
        .exec("CREATE SCHEMA other; CREATE TABLE other.x (id int PRIMARY KEY);")
        .await;
    assert!(sync(&pair, &["--copy-only", "--exclude", "other.*"])
        .await
        .success());
    pair.source
        .exec(
            "CREATE TABLE app.later (id int PRIMARY KEY, v text);
             INSERT INTO app.later SELECT g, md5(g::text) FROM generate_series(1, 30) g;
             CREATE TABLE public.made AS SELECT g AS id, random() AS r FROM generate_series(1, 7) g;
             CREATE TABLE other.skipped (id int PRIMARY KEY);
             INSERT INTO other.skipped VALUES (1);",
        )
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    support::assert_same_tables(&src, &tgt, &["app.later", "public.made", "app.items"]).await;
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_tables WHERE schemaname = 'other'")
            .await,
        Some("0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_ddl_stops_the_sync_and_skip_ddl_goes_on() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    // The target already has an index of that name (on another table).
    pair.target
        .exec("CREATE TABLE app.local (x int); CREATE INDEX clash ON app.local (x);")
        .await;
    pair.source
        .exec("INSERT INTO app.items VALUES (1000, 'before', 1)")
        .await;
    pair.source
        .exec("CREATE INDEX clash ON app.items (name)")
        .await;
    pair.source
        .exec("INSERT INTO app.items VALUES (1001, 'after', 1)")
        .await;
    let id = pair
        .source
        .value("SELECT id::text FROM pgrepl.schema_log WHERE command_tag = 'CREATE INDEX'")
        .await
        .expect("logged");

    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains(&format!("target rejected DDL #{id}")), "{err}");
    assert!(
        err.contains("CREATE INDEX clash ON app.items (name)"),
        "{err}"
    );
    assert!(err.contains("already exists"), "{err}");
    assert!(err.contains(&format!("--skip-ddl {id}")), "{err}");
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM app.items WHERE id = 1000")
            .await,
        Some("1".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM app.items WHERE id = 1001")
            .await,
        Some("0".into())
    );

    let out = sync(&pair, &["--until-caught-up", "--skip-ddl", &id]).await;
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("DDL not replicated"), "{out}");
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM app.items WHERE id = 1001")
            .await,
        Some("1".into())
    );
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_eq!(
        support::table_checksum(&s, "app.items").await,
        support::table_checksum(&t, "app.items").await
    );
}

/// When the capture cannot even record that it failed (here the log
/// refuses every row), the user's DDL fails with a message saying why:
/// a DDL no sync can see would leave the target different without a word.
/// Changes to pgrepl's own objects are never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_the_capture_cannot_record_fails_and_says_why() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.source
        .exec("ALTER TABLE pgrepl.schema_log ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .await;
    let c = pair.source.client().await;
    for ddl in [
        "CREATE TABLE app.despite (id int PRIMARY KEY)",
        "CREATE TABLE app.despite_too AS SELECT 1 AS x",
    ] {
        let err = c.batch_execute(ddl).await.expect_err("refused");
        let db = err.as_db_error().expect("a server error");
        assert!(
            db.message().contains("pgrepl could not record this")
                && db.hint().is_some_and(|h| h.contains("pgrepl teardown")),
            "{ddl}: {db:?}"
        );
    }
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_tables WHERE tablename IN ('despite', 'despite_too')")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pgrepl.schema_log WHERE ddl LIKE '%schema_log%' OR ddl LIKE '%despite%'")
            .await,
        Some("0".into()),
        "neither pgrepl's own DDL nor the refused rows are in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_inside_a_do_block_is_a_clear_stop() {
    let pair = Pair::start();
    pair.source.exec(BASE).await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.source
        .exec("DO $$ BEGIN EXECUTE 'CREATE TABLE app.dynamic (id int)'; END $$")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("cannot be matched to a statement"),
        "{out}"
    );
    assert!(out.stderr.contains("--skip-ddl"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_replicate_unless_roles_skip() {
    let pair = Pair::start();
    pair.source
        .exec(&format!("{BASE}; CREATE ROLE reader;"))
        .await;
    pair.target.exec("CREATE ROLE reader").await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.source
        .exec("GRANT SELECT ON app.items TO reader")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    let can = "SELECT has_table_privilege('reader', 'app.items', 'SELECT')::text";
    assert_eq!(
        pair.target.value(can).await,
        Some("true".into()),
        "replayed by default"
    );
    pair.source
        .exec("GRANT UPDATE ON app.items TO reader")
        .await;
    let out = sync(&pair, &["--until-caught-up", "--roles", "skip"]).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stderr
            .contains("privileges and ownership (--roles skip)"),
        "{out}"
    );
    let can = "SELECT has_table_privilege('reader', 'app.items', 'UPDATE')::text";
    assert_eq!(
        pair.target.value(can).await,
        Some("false".into()),
        "not with --roles skip"
    );
    pair.source
        .exec("GRANT UPDATE ON app.items TO reader; REVOKE SELECT ON app.items FROM reader")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert_eq!(pair.target.value(can).await, Some("true".into()));
    let can = "SELECT has_table_privilege('reader', 'app.items', 'SELECT')::text";
    assert_eq!(
        pair.target.value(can).await,
        Some("false".into()),
        "a REVOKE stays revoked"
    );
}
