//! The snapshot copy (`pgrepl sync --copy-only`) against real clusters.

mod support;

use std::time::Duration;

use support::workload::{self, Workload};
use support::{assert_same_data, pgrepl, wait_for, Pair};

const LIMIT: Duration = Duration::from_secs(180);

fn args<'a>(cmd: &'a str, pair: &'a Pair, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = vec![cmd.into()];
    v.extend(pair.args());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

async fn pgrepl_run(cmd: &str, pair: &Pair, extra: &[&str]) -> pgrepl::Output {
    let a = args(cmd, pair, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::run(&a, LIMIT).await
}

/// Every fixture table equal, and the workload exactly one snapshot,
/// while the workload writes during the whole copy. Runs cross-version too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fidelity_copy_is_exactly_the_snapshot_under_writes() {
    support::init_logs();
    let pair = Pair::start();
    pair.source
        .exec(include_str!("../fixtures/fidelity.sql"))
        .await;
    pair.source.exec(workload::SCHEMA).await;
    let load = Workload::start(&pair.source).await;
    wait_for("the workload to start", Duration::from_secs(30), || {
        let n = load.batches.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n >= 5).then_some(()) }
    })
    .await;
    let out = pgrepl_run(
        "sync",
        &pair,
        &["--copy-only", "--chunk-size", "2MB", "--jobs", "3"],
    )
    .await;
    let written = load.stop().await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Copied"), "{out}");
    assert!(out.stdout.contains("Copy done as of source LSN"), "{out}");

    let k = workload::assert_consistent_snapshot(&pair.target).await;
    assert!(
        k >= 5 && k < written,
        "the copy should sit inside the workload: K = {k}, written = {written}"
    );

    // Fixture tables (untouched by the workload) equal by checksum.
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    let fixture_tables: Vec<String> = support::user_tables(&src)
        .await
        .into_iter()
        .filter(|t| !t.starts_with("wl."))
        .collect();
    assert_eq!(fixture_tables.len(), 9, "{fixture_tables:?}");
    // The same schema, from the catalog: columns, indexes, keys, triggers,
    // views, functions, types, sequences, comments.
    support::schema::assert_same_shape(&src, &tgt).await;
    for t in &fixture_tables {
        let (a, b) = (
            support::table_checksum(&src, t).await,
            support::table_checksum(&tgt, t).await,
        );
        assert_eq!(a, b, "{t} differs");
        assert!(a.rows > 0, "{t} is empty");
    }
    // Schema details that only pg_dump + post-data bring: the generated
    // column recomputed, the index built, the matview refreshed, sequences set.
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM fidelity.event_counts")
            .await,
        pair.source
            .value("SELECT count(*) FROM fidelity.event_counts")
            .await
    );
    assert_eq!(
        pair.target
            .value("SELECT sum(total)::text FROM fidelity.gen")
            .await,
        pair.source
            .value("SELECT sum(total)::text FROM fidelity.gen")
            .await
    );
    assert_eq!(
        pair.target
            .value("SELECT last_value::text FROM fidelity.gen_serial_no_seq")
            .await,
        Some("500".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_indexes WHERE indexname = 'things_name_lower'")
            .await,
        Some("1".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT relreplident::text FROM pg_class WHERE oid = 'fidelity.nopk'::regclass")
            .await,
        Some("f".into())
    );

    // A second --copy-only finds the copy done.
    let again = pgrepl_run("sync", &pair, &["--copy-only"]).await;
    assert!(again.success(), "{again}");
    assert!(again.stdout.contains("already done"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_copy_resumes_and_ends_equal() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g;
             CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 10);",
        )
        .await;
    let a = args(
        "sync",
        &pair,
        &["--copy-only", "--jobs", "1", "--chunk-size", "0"],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let running = pgrepl::spawn(&a);
    let target = pair.target.client().await;
    wait_for("the copy of big to be under way", Duration::from_secs(60), || {
        let t = &target;
        async move {
            let row = t
                .query_opt("SELECT 1 FROM pgrepl.tables WHERE table_name = 'big' AND state = 'copying'", &[])
                .await
                .ok()
                .flatten();
            row.map(|_| ())
        }
    })
    .await;
    running.kill().await;
    assert_eq!(
        pair.target.value("SELECT phase FROM pgrepl.sync").await,
        Some("copying".into())
    );

    let out = pgrepl_run("sync", &pair, &["--copy-only"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("was interrupted: resuming it"), "{out}");
    assert!(out.stdout.contains("Resuming the copy"), "{out}");
    assert!(!out.stdout.contains("starting the copy over"), "{out}");
    assert_same_data(&pair.source.client().await, &target).await;
    assert_eq!(
        pair.target.value("SELECT phase FROM pgrepl.sync").await,
        Some("copied".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_removes_everything_and_says_so_twice() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);")
        .await;
    let out = pgrepl_run("sync", &pair, &["--copy-only"]).await;
    assert!(out.success(), "{out}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("1".into())
    );

    let out = pgrepl_run("teardown", &pair, &[]).await;
    assert!(out.success(), "{out}");
    for what in [
        "replication slot pgrepl_pgrepl",
        "publication pgrepl_pgrepl",
        "replication origin pgrepl_pgrepl",
        "pgrepl state",
    ] {
        assert!(out.stdout.contains(what), "{what} not reported:\n{out}");
    }
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_publication")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrepl'")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_replication_origin")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrepl'")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.target.value("SELECT count(*) FROM t").await,
        Some("100".into()),
        "user data stays"
    );

    let out = pgrepl_run("teardown", &pair, &[]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Nothing to remove"), "{out}");
}

/// A pg_dump that cannot dump the source, or is no pg_dump at all: one
/// clear line, and nothing created on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_pg_dump_is_refused_before_anything_changes() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = |name: &str, says: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{says}'\n")).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        path.display().to_string()
    };
    let old = fake("pg_dump", "pg_dump (PostgreSQL) 11.22");
    let other = fake("not_pg_dump", "hello");
    let major = pair.source.major();
    for (path, says) in [
        (
            &old,
            format!("pg_dump 11 cannot dump a PostgreSQL {major} source"),
        ),
        (&other, "is not a working pg_dump".to_string()),
    ] {
        let out = pgrepl_run("sync", &pair, &["--copy-only", "--pg-dump", path]).await;
        assert_eq!(out.code, Some(1), "{out}");
        let err = out.error_line();
        assert!(err.contains(&says), "{err}");
        for (side, sql) in [
            (&pair.source, "SELECT count(*) FROM pg_replication_slots"),
            (&pair.source, "SELECT count(*) FROM pg_publication"),
            (
                &pair.source,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrepl'",
            ),
            (
                &pair.target,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrepl'",
            ),
            (
                &pair.target,
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
            ),
        ] {
            assert_eq!(
                side.value(sql).await,
                Some("0".into()),
                "{sql} after: {err}"
            );
        }
    }
}

/// The target is gone (decommissioned, unreachable): the source's slot,
/// which would fill its disk, is removed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_with_the_target_down_still_frees_the_source() {
    let mut pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    assert!(pgrepl_run("sync", &pair, &["--copy-only"]).await.success());
    pair.target.stop();
    let out = pgrepl_run("teardown", &pair, &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("source: replication slot pgrepl_pgrepl"),
        "{out}"
    );
    let err = out.error_line();
    assert!(
        err.contains("teardown is incomplete") && err.contains("target"),
        "{err}"
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("0".into())
    );
    // Once the target is back, a second run removes its part.
    pair.target.start_again();
    let out = pgrepl_run("teardown", &pair, &[]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("target: replication origin"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_and_exclude_select_exactly_the_named_tables() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE SCHEMA a; CREATE SCHEMA b;
             CREATE TABLE a.t1 (id int PRIMARY KEY); CREATE TABLE a.t2 (id int PRIMARY KEY);
             CREATE TABLE b.t3 (id int PRIMARY KEY); CREATE TABLE b.order_x (id int PRIMARY KEY);
             CREATE TABLE b.orders (id int PRIMARY KEY);
             INSERT INTO a.t1 VALUES (1); INSERT INTO a.t2 VALUES (2); INSERT INTO b.t3 VALUES (3);
             INSERT INTO b.order_x VALUES (4); INSERT INTO b.orders VALUES (5);",
        )
        .await;
    // A pattern that matches nothing: an error, and nothing created.
    let out = pgrepl_run(
        "sync",
        &pair,
        &["--copy-only", "--include", "a.*", "--include", "c.*"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.all().contains("--include c.* matches no table"),
        "{out}"
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_publication")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_namespace WHERE nspname IN ('a', 'b', 'pgrepl')")
            .await,
        Some("0".into())
    );

    let out = pgrepl_run(
        "sync",
        &pair,
        &[
            "--copy-only",
            "--include",
            "a.*",
            "--include",
            "b.order_*",
            "--exclude",
            "a.t2",
        ],
    )
    .await;
    assert!(out.success(), "{out}");
    let tables = support::user_tables(&pair.target.client().await).await;
    assert_eq!(tables, vec!["a.t1".to_string(), "b.order_x".to_string()]);
    let published = pair
        .source
        .value("SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1) FROM pg_publication_tables WHERE pubname = 'pgrepl_pgrepl'")
        .await;
    assert_eq!(published, Some("a.t1,b.order_x,pgrepl.schema_log".into()));
}

/// `--existing-schema` copies into the tables as the target has them: a
/// column widened on the target is fine (copied as text, parsed into the
/// target's type); a missing column, or a NOT NULL column the source cannot
/// fill, is refused before any row moves, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_schema_accepts_wider_columns_and_refuses_missing_ones() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, n int, v text);
             INSERT INTO t SELECT g, g * 1000, 'v' || g FROM generate_series(1, 300) g;",
        )
        .await;
    for (target_ddl, problem) in [
        (
            "CREATE TABLE t (id int PRIMARY KEY, n int)",
            "t lacks column(s) v",
        ),
        (
            "CREATE TABLE t (id int PRIMARY KEY, n int, v text, must int NOT NULL)",
            "NOT NULL column(s) must without a default",
        ),
    ] {
        pair.target.exec(target_ddl).await;
        let out = pgrepl_run("sync", &pair, &["--copy-only", "--existing-schema"]).await;
        assert_eq!(out.code, Some(1), "{out}");
        let err = out.error_line();
        assert!(err.contains(problem), "{out}");
        assert_eq!(
            pair.source
                .value("SELECT count(*) FROM pg_replication_slots")
                .await,
            Some("0".into()),
            "{out}"
        );
        assert_eq!(
            pair.target.value("SELECT count(*) FROM t").await,
            Some("0".into())
        );
        pair.target.exec("DROP TABLE t").await;
    }
    pair.target
        .exec("CREATE TABLE t (id bigint PRIMARY KEY, n numeric, v varchar(20), note text DEFAULT 'local')")
        .await;
    let out = pgrepl_run("sync", &pair, &["--copy-only", "--existing-schema"]).await;
    assert!(out.success(), "{out}");
    let common = "SELECT count(*)::text || ' ' || sum(id)::text || ' ' || sum(n)::text || ' ' || string_agg(v, ',' ORDER BY id) FROM t";
    assert_eq!(
        pair.target.value(common).await,
        pair.source.value(common).await
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM t WHERE note = 'local'")
            .await,
        Some("300".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_table_is_copied_on_several_connections_at_once() {
    let pair = Pair::start();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, pad text)";
    pair.source
        .exec(&format!("{ddl}; INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g; ANALYZE t;"))
        .await;
    pair.target.exec(ddl).await;
    // Hold the target table so the chunk COPYs queue up where we can see them.
    let blocker = pair.target.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN SHARE MODE")
        .await
        .expect("lock");
    let a = args(
        "sync",
        &pair,
        &[
            "--copy-only",
            "--existing-schema",
            "--jobs",
            "3",
            "--chunk-size",
            "1MB",
        ],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let running = pgrepl::spawn(&a);
    let watcher = pair.target.client().await;
    let waiting = wait_for("chunk COPYs on several connections", Duration::from_secs(60), || {
        let w = &watcher;
        async move {
            let n: i64 = w
                .query_one(
                    "SELECT count(DISTINCT pid) FROM pg_stat_activity
                     WHERE query LIKE 'COPY \"public\".\"t\"%FROM STDIN%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n >= 3).then_some(n)
        }
    })
    .await;
    assert!(waiting >= 3, "{waiting}");
    blocker.batch_execute("COMMIT").await.expect("unlock");
    let out = running.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert_same_data(&pair.source.client().await, &pair.target.client().await).await;
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pgrepl.copied_chunks")
            .await
            .map(|n| n.parse::<i64>().unwrap_or(0) >= 3),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_target_rejects_leaves_nothing_behind() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE SCHEMA app; CREATE TYPE app.mood AS ENUM ('a'); CREATE TABLE app.t (id int PRIMARY KEY, m app.mood);")
        .await;
    // The target already has a type of that name: pre-data fails on it.
    pair.target
        .exec("CREATE SCHEMA app; CREATE TYPE app.mood AS ENUM ('x', 'y');")
        .await;
    let out = pgrepl_run("sync", &pair, &["--copy-only"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("target rejected the source's schema"),
        "{out}"
    );
    assert!(out.stderr.contains("CREATE TYPE app.mood"), "{out}");
    assert!(out.stderr.contains("already exists"), "{out}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_publication")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrepl'")
            .await,
        Some("0".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_enum WHERE enumtypid = 'app.mood'::regtype")
            .await,
        Some("2".into())
    );
}
