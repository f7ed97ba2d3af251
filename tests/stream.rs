//! Streaming apply against real clusters: every change type, exactly once,
//! conflicts that stop cleanly, and stopping/restarting at any moment.

#[path = "stream/recovery.rs"]
mod recovery;
mod support;

use std::time::Duration;

use support::workload::{self, Workload};
use support::{assert_same_data, pgrepl, wait_for, Pair};

const LIMIT: Duration = Duration::from_secs(240);

fn sync_args(pair: &Pair, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["sync".into()];
    a.extend(pair.args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

async fn sync(pair: &Pair, extra: &[&str]) -> pgrepl::Output {
    let a = sync_args(pair, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::run(&a, LIMIT).await
}

fn spawn_sync(pair: &Pair, extra: &[&str]) -> pgrepl::Running {
    let a = sync_args(pair, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::spawn(&a)
}

/// Same schema (from the catalog) and same rows on both sides.
async fn equal(pair: &Pair) -> i64 {
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    support::schema::assert_same_shape(&s, &t).await;
    assert_same_data(&s, &t).await
}

/// Every fixture type, hostile names, TOAST, partitions, generated columns
/// and RI FULL tables changing in the stream. Runs cross-version too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fidelity_changes_stream_exactly() {
    let pair = Pair::start();
    pair.source
        .exec(include_str!("../fixtures/fidelity.sql"))
        .await;
    let out = sync(&pair, &["--copy-only"]).await;
    assert!(out.success(), "{out}");
    pair.source
        .exec(
            r#"
            -- New rows copying every value of every type.
            CREATE TEMP TABLE tmp AS SELECT * FROM fidelity.types;
            UPDATE tmp SET id = id + 100;
            INSERT INTO fidelity.types SELECT * FROM tmp;
            -- Every column of rows 1..3 takes another row's values.
            DO $$ DECLARE cols text; BEGIN
              SELECT string_agg(format('%I', attname), ', ' ORDER BY attnum) INTO cols FROM pg_attribute
               WHERE attrelid = 'fidelity.types'::regclass AND attnum > 1 AND NOT attisdropped;
              EXECUTE format('UPDATE fidelity.types t SET (%s) = (SELECT %s FROM fidelity.types s
                              WHERE s.id = CASE t.id WHEN 1 THEN 2 WHEN 2 THEN 3 ELSE 1 END) WHERE t.id IN (1, 2, 3)', cols, cols);
            END $$;
            DELETE FROM fidelity.types WHERE id = 4;
            UPDATE fidelity.types SET id = 1000 WHERE id = 5;
            -- Unchanged TOAST: only the small column changes.
            UPDATE fidelity.big SET small = 'changed ' || id;
            UPDATE fidelity.big SET doc = doc || ' more' WHERE id = 2;
            -- Hostile identifiers, key change included.
            UPDATE fidelity."we""ird tbl" SET "Mixed Case" = 'changed', "ünï" = NULL WHERE "select" <= 10;
            UPDATE fidelity."we""ird tbl" SET "select" = "select" + 1000 WHERE "select" BETWEEN 11 AND 20;
            DELETE FROM fidelity."we""ird tbl" WHERE "select" BETWEEN 21 AND 30;
            INSERT INTO fidelity."we""ird tbl" ("select", "Mixed Case") VALUES (5000, 'new');
            -- RI FULL with duplicates, json and point columns: exactly one of two equal rows changes.
            UPDATE fidelity.nopk SET b = 'one of the dups' WHERE ctid = (SELECT ctid FROM fidelity.nopk WHERE a = 1 LIMIT 1);
            DELETE FROM fidelity.nopk WHERE a = 2;
            INSERT INTO fidelity.nopk VALUES (3, 'x', '[]', '(0,0)');
            DELETE FROM fidelity.nopk WHERE ctid = (SELECT ctid FROM fidelity.nopk WHERE a = 3 LIMIT 1);
            -- Partitions: rows move across partitions.
            UPDATE fidelity.events SET happened = happened + 365 WHERE id % 10 = 0 AND happened < '2024-01-01';
            DELETE FROM fidelity.events WHERE id % 13 = 0;
            INSERT INTO fidelity.events SELECT g, date '2024-06-01', 'new' FROM generate_series(3000, 3100) g;
            -- Generated columns recomputed on the target.
            UPDATE fidelity.gen SET qty = qty + 1 WHERE id % 2 = 0;
            INSERT INTO fidelity.gen (price, qty) VALUES (9.99, 3);
            -- A second schema with a self-referencing foreign key.
            INSERT INTO "Other Schema".things VALUES (4, 'leaf', 3);
            UPDATE "Other Schema".things SET name = 'ROOT' WHERE id = 1;
            "#,
        )
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    let rows = equal(&pair).await;
    assert!(rows > 2000, "{rows}");
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM fidelity.nopk WHERE b = 'one of the dups'")
            .await,
        Some("1".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM fidelity.events_2024 WHERE id % 10 = 0")
            .await,
        pair.source
            .value("SELECT count(*) FROM fidelity.events_2024 WHERE id % 10 = 0")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_of_several_tables_with_cascade_and_restart_identity() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE parent (id serial PRIMARY KEY, v text);
             CREATE TABLE child (id serial PRIMARY KEY, parent int REFERENCES parent (id));
             CREATE TABLE other (id int PRIMARY KEY);
             INSERT INTO parent (v) SELECT 'p' FROM generate_series(1, 50);
             INSERT INTO child (parent) SELECT g FROM generate_series(1, 50) g;
             INSERT INTO other SELECT generate_series(1, 10);",
        )
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    // A table only the target has, referencing parent: TRUNCATE parent
    // succeeds on the target only with CASCADE.
    pair.target
        .exec("CREATE TABLE local_ref (p int REFERENCES parent (id))")
        .await;
    assert_eq!(
        pair.target
            .value("SELECT last_value::text FROM parent_id_seq")
            .await,
        Some("50".into()),
        "the copy set the sequence"
    );
    pair.source
        .exec(
            "TRUNCATE parent RESTART IDENTITY CASCADE;
             INSERT INTO parent (v) VALUES ('after');
             CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
             INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (3);
             TRUNCATE a, b;
             INSERT INTO b VALUES (4);
             BEGIN; TRUNCATE other; INSERT INTO other VALUES (42); COMMIT;",
        )
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    pair.target.exec("DROP TABLE local_ref").await;
    equal(&pair).await;
    assert_eq!(
        pair.target.value("SELECT count(*) FROM child").await,
        Some("0".into())
    );
    // The inserted id comes from the source; the target's own sequence was
    // restarted by RESTART IDENTITY (it stood at 50 after the copy).
    assert_eq!(
        pair.target
            .value("SELECT last_value::text || ' ' || is_called::text FROM parent_id_seq")
            .await,
        Some("1 false".into()),
        "identity restarted on the target"
    );
    assert_eq!(
        pair.target
            .value("SELECT last_value::text || ' ' || is_called::text FROM child_id_seq")
            .await,
        Some("1 false".into()),
        "the cascaded table's identity restarted too"
    );
    assert_eq!(
        pair.target
            .value("SELECT string_agg(id::text, ',' ORDER BY id) FROM b")
            .await,
        Some("4".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_row_stops_the_sync_and_a_rerun_retries_it() {
    let pair = Pair::start();
    pair.source.exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g;").await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.target.exec("DELETE FROM t WHERE id = 5").await;
    let before = pair
        .target
        .value("SELECT pg_replication_origin_progress('pgrepl_pgrepl', false)::text")
        .await;
    pair.source
        .exec("INSERT INTO t VALUES (100, 'first')")
        .await;
    let bad_lsn = pair
        .source
        .value("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .expect("lsn");
    pair.source
        .exec("UPDATE t SET v = 'changed' WHERE id = 5")
        .await;
    pair.source
        .exec("INSERT INTO t VALUES (101, 'after')")
        .await;

    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains("conflict on public.t"), "{err}");
    assert!(err.contains("(id)=(5)"), "{err}");
    assert!(err.contains("UPDATE found no matching row"), "{err}");
    assert!(err.contains("at LSN"), "{err}");
    // The transaction before the conflict is in, the one after is not, and
    // the origin stopped exactly before the conflicting transaction.
    assert_eq!(
        pair.target.value("SELECT v FROM t WHERE id = 100").await,
        Some("first".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM t WHERE id = 101")
            .await,
        Some("0".into())
    );
    let origin = pair
        .target
        .value("SELECT pg_replication_origin_progress('pgrepl_pgrepl', false)::text")
        .await;
    assert_ne!(origin, before);
    let origin_lsn: ::pgrepl::Lsn = origin.expect("origin").parse().expect("lsn");
    let bad: ::pgrepl::Lsn = bad_lsn.parse().expect("lsn");
    assert!(
        origin_lsn <= bad,
        "origin {origin_lsn} passed the conflicting transaction at {bad}"
    );
    let confirmed: ::pgrepl::Lsn = pair
        .source
        .value("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
        .await
        .expect("slot")
        .parse()
        .expect("lsn");
    assert!(
        confirmed <= bad,
        "slot acknowledged {confirmed} past the conflict at {bad}"
    );

    // A rerun retries the same transaction and stops the same way.
    let again = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(again.code, Some(1), "{again}");
    assert!(again.stderr.contains("(id)=(5)"), "{again}");
    // Once the target is fixed, the rerun goes through.
    pair.target.exec("INSERT INTO t VALUES (5, 'v')").await;
    let fixed = sync(&pair, &["--until-caught-up"]).await;
    assert!(fixed.success(), "{fixed}");
    equal(&pair).await;
}

/// Many rows of one table change at once: they go set-based, as arrays
/// unnested on the target or, for columns no array can carry (arrays
/// themselves, box with its ';' delimiter), through a stage table. Values
/// that array and COPY syntax treat specially, NULLs, the text 'NULL',
/// composite and enum values, and a two-column key all come through exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_based_changes_of_every_column_kind_apply_exactly() {
    let pair = Pair::start();
    pair.source
        .exec(
            r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TYPE pt AS (x int, label text);
             CREATE TABLE plain (a int, b text, m mood, c pt, j jsonb, n numeric, PRIMARY KEY (a, b));
             CREATE TABLE arrayed (id int PRIMARY KEY, tags int[], names text[], bx box, v text);
             INSERT INTO plain SELECT g, 'k' || g, 'ok', ROW(g, 'l"a,b{c}\\' || g)::pt, '{"k": [1, "x"]}', g / 3.0
                 FROM generate_series(1, 400) g;
             INSERT INTO arrayed SELECT g, ARRAY[g, g + 1], ARRAY['a', NULL, 'c,"d"'], box(point(g, g), point(0, 0)), 'v'
                 FROM generate_series(1, 400) g;"#,
        )
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.source
        .exec(
            r#"BEGIN;
             UPDATE plain SET m = 'happy', c = ROW(a * 2, E'tab\there "q" \\ back, {x}')::pt, j = '{"a": "b\"c"}',
                 n = NULL WHERE a <= 200;
             UPDATE plain SET b = 'NULL' || a WHERE a BETWEEN 201 AND 220;
             DELETE FROM plain WHERE a > 300;
             UPDATE arrayed SET tags = ARRAY[[1, 2], [3, 4]], names = '{}', bx = box(point(-1, -1), point(id, 2)),
                 v = E'new
line' WHERE id <= 250;
             UPDATE arrayed SET v = NULL, names = NULL WHERE id BETWEEN 251 AND 280;
             DELETE FROM arrayed WHERE id > 350;
             COMMIT;"#,
        )
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    equal(&pair).await;
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM plain WHERE b LIKE 'NULL%'")
            .await,
        Some("20".into())
    );
}

/// Changes of many rows go to the target set-based (one statement over
/// all of a table's rows); a row missing among them is still found, named,
/// and nothing of its transaction is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_row_inside_a_large_batch_is_named_and_nothing_of_it_applied() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 1000) g;")
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    for (missing, change, verb, mark) in [
        (
            777,
            "UPDATE t SET v = 'u' WHERE id <= 500; DELETE FROM t WHERE id > 600 AND id <= 900",
            "DELETE",
            "u",
        ),
        (42, "UPDATE t SET v = 'w' WHERE id <= 300", "UPDATE", "w"),
    ] {
        pair.target
            .exec(&format!("DELETE FROM t WHERE id = {missing}"))
            .await;
        pair.source
            .exec(&format!(
                "INSERT INTO t VALUES ({}, 'before')",
                2000 + missing
            ))
            .await;
        let bad: ::pgrepl::Lsn = pair
            .source
            .value("SELECT pg_current_wal_insert_lsn()::text")
            .await
            .expect("lsn")
            .parse()
            .expect("lsn");
        pair.source.exec(&format!("BEGIN; {change}; COMMIT;")).await;
        pair.source
            .exec(&format!(
                "INSERT INTO t VALUES ({}, 'after')",
                3000 + missing
            ))
            .await;
        let out = sync(&pair, &["--until-caught-up"]).await;
        assert_eq!(out.code, Some(1), "{out}");
        let err = out.error_line();
        assert!(err.contains("conflict on public.t"), "{err}");
        assert!(err.contains(&format!("(id)=({missing})")), "{err}");
        assert!(
            err.contains(&format!("{verb} found no matching row")),
            "{err}"
        );
        assert_eq!(
            pair.target
                .value(&format!("SELECT v FROM t WHERE id = {}", 2000 + missing))
                .await,
            Some("before".into()),
            "the transaction before is applied"
        );
        assert_eq!(
            pair.target
                .value(&format!(
                    "SELECT count(*) FROM t WHERE v = '{mark}' OR id = {}",
                    3000 + missing
                ))
                .await,
            Some("0".into()),
            "nothing of the conflicting transaction or after it is applied"
        );
        let confirmed: ::pgrepl::Lsn = pair
            .source
            .value("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
            .await
            .expect("slot")
            .parse()
            .expect("lsn");
        assert!(
            confirmed <= bad,
            "slot acknowledged {confirmed} past the conflict at {bad}"
        );
        // Fixed by hand, the rerun applies it whole.
        pair.target
            .exec(&format!("INSERT INTO t VALUES ({missing}, 'v')"))
            .await;
        let fixed = sync(&pair, &["--until-caught-up"]).await;
        assert!(fixed.success(), "{fixed}");
        equal(&pair).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_stops_the_sync_with_the_targets_message() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE \"Odd\" (\"Key\" text PRIMARY KEY, v int)")
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.target
        .exec("INSERT INTO \"Odd\" VALUES ('k1', 0)")
        .await;
    pair.source
        .exec("INSERT INTO \"Odd\" VALUES ('k1', 1)")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains("conflict on public.\"Odd\""), "{err}");
    assert!(err.contains("(Key)=(k1)"), "{err}");
    assert!(
        err.contains("duplicate key value violates unique constraint"),
        "{err}"
    );
    assert_eq!(
        pair.target.value("SELECT v::text FROM \"Odd\"").await,
        Some("0".into())
    );
}
