//! Large transactions streamed by the source while still in progress
//! (pgoutput v2; sources 14 and later): applied as they arrive on a
//! connection of their own, visible only at their commit, exact through
//! subtransaction and whole aborts, interleaved with transactions that
//! commit first, and safe to kill at any point. The sources here stream
//! anything over 64 kB (`logical_decoding_work_mem`).

mod support;

use std::time::Duration;

use support::{assert_same_data, pgrepl, wait_for, ClusterOptions, Pair};

const LIMIT: Duration = Duration::from_secs(240);

fn streaming_pair() -> Option<Pair> {
    let pair = Pair::start_with(
        ClusterOptions {
            settings: vec!["logical_decoding_work_mem = '64kB'".into()],
            ..ClusterOptions::default()
        },
        ClusterOptions::default(),
    );
    if pair.source.major() < 14 {
        eprintln!(
            "source {} streams no transaction in progress: nothing to test",
            pair.source.major()
        );
        return None;
    }
    Some(pair)
}

fn args(pair: &Pair, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["sync".into()];
    a.extend(pair.args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

async fn sync(pair: &Pair, extra: &[&str]) -> pgrepl::Output {
    let a = args(pair, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::run(&a, LIMIT).await
}

fn spawn(pair: &Pair, extra: &[&str]) -> pgrepl::Running {
    let a = args(pair, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::spawn(&a)
}

async fn run(c: &tokio_postgres::Client, sql: &str) {
    if let Err(e) = c.batch_execute(sql).await {
        panic!("{sql}: {}", support::db_error(&e));
    }
}

/// Stops `running` (SIGINT) and checks it ended well, having applied a
/// transaction streamed while in progress.
async fn stopped_after_streaming(running: pgrepl::Running) -> pgrepl::Output {
    running.signal(libc::SIGINT);
    let out = running.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stderr.contains("streamed while in progress"),
        "no large transaction was streamed: {out}"
    );
    out
}

/// An apply connection holds a streamed transaction open on the target:
/// it has written (an xid) and stays open (the main connection's
/// transactions last a fraction of a second).
async fn streamed_open(target: &tokio_postgres::Client) -> Option<()> {
    let n: i64 = target
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrepl'
               AND backend_xid IS NOT NULL AND now() - xact_start > interval '1 s'",
            &[],
        )
        .await
        .ok()?
        .get(0);
    (n > 0).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_apply_exactly_with_savepoints_aborts_and_ddl() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec(
            "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
             CREATE TABLE small (id int PRIMARY KEY, n int);
             CREATE TABLE log (at int, what text);
             CREATE TABLE scratch (id int PRIMARY KEY, v text);
             CREATE TABLE later (id int PRIMARY KEY);
             ALTER TABLE log REPLICA IDENTITY FULL;
             INSERT INTO big SELECT g, 'seed' FROM generate_series(1, 1000) g;",
        )
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    let running = spawn(&pair, &["-v"]);
    let target = pair.target.client().await;
    let (a, b, c) = (
        pair.source.client().await,
        pair.source.client().await,
        pair.source.client().await,
    );
    run(
        &a,
        "BEGIN; INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(10001, 30000) g",
    )
    .await;
    // Streamed and open on the target, yet invisible there.
    wait_for(
        "the streamed transaction to be open on the target",
        LIMIT,
        || streamed_open(&target),
    )
    .await;
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM big WHERE id > 10000")
            .await,
        Some("0".into())
    );
    // Transactions that commit meanwhile are applied before it.
    run(&b, "INSERT INTO small VALUES (1, 1)").await;
    wait_for("a transaction committed meanwhile", LIMIT, || {
        let t = &target;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM small", &[])
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    run(
        &a,
        "SAVEPOINT s1; UPDATE big SET v = 'rolled back' WHERE id <= 20000; ROLLBACK TO s1;
         SAVEPOINT s2; DELETE FROM big WHERE id BETWEEN 10001 AND 10100; RELEASE s2;
         SAVEPOINT s3; INSERT INTO big SELECT g, 'gone' FROM generate_series(40001, 45000) g;
         SAVEPOINT s4; UPDATE big SET v = 'gone too' WHERE id <= 500; ROLLBACK TO s3;",
    )
    .await;
    // A second large transaction, streamed alongside, then aborted.
    run(
        &c,
        "BEGIN; INSERT INTO scratch SELECT g, repeat('a', 100) FROM generate_series(1, 20000) g",
    )
    .await;
    run(&b, "INSERT INTO small VALUES (2, 2)").await;
    run(
        &a,
        "ALTER TABLE big ADD COLUMN extra int;
         UPDATE big SET extra = id % 7 WHERE id <= 12000;
         CREATE TABLE born (id int PRIMARY KEY, v text);
         INSERT INTO born SELECT g, repeat('b', 50) FROM generate_series(1, 5000) g;
         INSERT INTO log SELECT g, 'keyless' FROM generate_series(1, 3000) g;
         CREATE TABLE made AS SELECT g AS id, md5(g::text) AS v, random() AS r FROM generate_series(1, 4000) g;
         INSERT INTO later VALUES (1);",
    )
    .await;
    run(&c, "ROLLBACK").await;
    run(&a, "COMMIT").await;
    // After the commit the source counts the tables described inside it
    // as described: their next rows come without a new description.
    run(
        &b,
        "INSERT INTO born VALUES (6000, 'after'); INSERT INTO later VALUES (2); INSERT INTO made VALUES (0, 'after', 0);
         UPDATE small SET n = n * 10",
    )
    .await;

    wait_for("the target to have everything", LIMIT, || {
        let t = &target;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM small WHERE n = 20", &[])
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    stopped_after_streaming(running).await;
    let rows = assert_same_data(&pair.source.client().await, &target).await;
    assert!(rows > 25_000, "{rows}");
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM big WHERE id > 40000")
            .await,
        Some("0".into()),
        "rolled back rows applied"
    );
    let cols = "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
                WHERE attrelid = 'big'::regclass AND attnum > 0 AND NOT attisdropped";
    assert_eq!(pair.target.value(cols).await, pair.source.value(cols).await);
}

/// The main applier reads the target's catalog of the sync's tables ahead
/// at a first change (see `apply::catalog`). A streamed transaction that
/// changes one of those tables on its own connection must void what was
/// read, or the table's next first change is written to the table as it
/// was: here an UPDATE setting a column that has just become GENERATED
/// ALWAYS AS IDENTITY, which the target refuses (such a table's updates
/// are written as a DELETE and an INSERT OVERRIDING SYSTEM VALUE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transactions_ddl_voids_the_catalog_the_main_applier_read_ahead() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec(
            "CREATE TABLE items (id int PRIMARY KEY);
             CREATE TABLE ident (id int PRIMARY KEY, v int NOT NULL, w int);
             INSERT INTO ident VALUES (1, 1, 1);
             CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);",
        )
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    let mut running = spawn(&pair, &["-v"]);
    let target = pair.target.client().await;
    let has = |sql: &'static str| {
        let t = &target;
        async move { t.query_opt(sql, &[]).await.ok().flatten().map(|_| ()) }
    };
    // The session's first change: `ident`'s catalog is read with `items'`.
    pair.source.exec("INSERT INTO items VALUES (1)").await;
    wait_for("the first change", LIMIT, || {
        has("SELECT 1 FROM items WHERE id = 1")
    })
    .await;
    // Within the 5 s what was read ahead is trusted: a streamed transaction
    // changes `ident`, then `ident` has its first change on the main one.
    pair.source
        .exec(
            "BEGIN;
             ALTER TABLE ident ALTER COLUMN v ADD GENERATED ALWAYS AS IDENTITY;
             INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;
             COMMIT;
             UPDATE ident SET w = 2 WHERE id = 1;
             INSERT INTO items VALUES (2);",
        )
        .await;
    wait_for("the change after the streamed one", LIMIT, || {
        running.assert_running();
        has("SELECT 1 FROM items WHERE id = 2")
    })
    .await;
    let out = stopped_after_streaming(running).await;
    // What was read ahead was still fresh when `ident` was mapped (else
    // this test tested nothing), and was set aside for the schema change.
    let said = |what: &str| {
        out.stderr
            .lines()
            .any(|l| l.contains(what) && l.contains("public.ident"))
    };
    assert!(
        !said("the catalog read ahead is too old"),
        "the catalog read ahead expired before ident's first change (over 5 s): nothing was tested: {out}"
    );
    assert!(
        said("the catalog read ahead is void"),
        "what was read ahead of ident was not set aside: {out}"
    );
    // Mapped right the first time: a stale mapping fails on the target,
    // and the session then starts over and gets it right, which must not
    // be what happened.
    assert!(
        !out.stderr.contains("streaming interrupted")
            && !out.stderr.contains("replaying without them"),
        "written as the table was before the streamed transaction: {out}"
    );
    assert_eq!(
        pair.target
            .value("SELECT attidentity::text FROM pg_attribute WHERE attrelid = 'ident'::regclass AND attname = 'v'")
            .await,
        Some("a".into())
    );
    assert_eq!(
        pair.target
            .value("SELECT format('%s %s', v, w) FROM ident WHERE id = 1")
            .await,
        Some("1 2".into())
    );
    assert_same_data(&pair.source.client().await, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_a_streamed_transaction_then_rerun_applies_it_once() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    let running = spawn(&pair, &[]);
    let target = pair.target.client().await;
    let a = pair.source.client().await;
    run(&a, "BEGIN").await;
    for chunk in 0..5 {
        run(
            &a,
            &format!(
                "INSERT INTO t SELECT g, repeat('k', 200) FROM generate_series({}, {}) g",
                chunk * 4000 + 1,
                chunk * 4000 + 4000
            ),
        )
        .await;
    }
    wait_for(
        "the streamed transaction to be open on the target",
        LIMIT,
        || streamed_open(&target),
    )
    .await;
    running.kill().await;
    run(&a, "UPDATE t SET v = 'last' WHERE id % 3 = 0; COMMIT").await;
    assert_eq!(
        pair.target.value("SELECT count(*) FROM t").await,
        Some("0".into()),
        "a killed streamed transaction left rows behind"
    );
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    let rows = assert_same_data(&pair.source.client().await, &target).await;
    assert_eq!(rows, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_inside_a_streamed_transaction_names_the_row_and_commits_nothing_of_it() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.target
        .exec("INSERT INTO t VALUES (7777, 'in the way')")
        .await;
    pair.source
        .exec("INSERT INTO t SELECT g, repeat('c', 100) FROM generate_series(1, 20000) g")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains("conflict on public.t"), "{err}");
    assert!(err.contains("(id)=(7777)"), "{err}");
    assert!(err.contains("streamed while in progress"), "{err}");
    assert!(err.contains("duplicate key"), "{err}");
    assert_eq!(
        pair.target.value("SELECT count(*) FROM t").await,
        Some("1".into())
    );
    pair.target.exec("DELETE FROM t").await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert_same_data(&pair.source.client().await, &pair.target.client().await).await;
}

/// A unique index only the target has: a transaction committing while a
/// streamed one is open would wait on it forever. The wait times out,
/// the sync goes on without streaming, and so meets the conflict in
/// commit order and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_between_the_two_connections_falls_back_to_commit_order() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY, code int, pad text)")
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    pair.target
        .exec("CREATE UNIQUE INDEX only_here ON t (code)")
        .await;
    let running = spawn(&pair, &[]);
    let target = pair.target.client().await;
    let (a, b) = (pair.source.client().await, pair.source.client().await);
    run(&a, "BEGIN; INSERT INTO t VALUES (1, 5, 'streamed'); INSERT INTO t SELECT g, NULL, repeat('p', 100) FROM generate_series(10, 10000) g").await;
    wait_for(
        "the streamed transaction to be open on the target",
        LIMIT,
        || streamed_open(&target),
    )
    .await;
    run(&b, "INSERT INTO t VALUES (2, 5, 'committed first')").await;
    run(&a, "COMMIT").await;
    let out = running.wait(LIMIT).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("without streaming"), "{out}");
    let err = out.error_line();
    assert!(err.contains("duplicate key"), "{err}");
    assert!(err.contains("only_here"), "{err}");
    assert_eq!(
        pair.target.value("SELECT pad FROM t WHERE code = 5").await,
        Some("committed first".into())
    );
}

/// A large transaction, applied, then the sync run again: a source may
/// stream that very transaction once more from its start (its commit
/// record ends where the target stands, and the invalidations it carries,
/// from DDL or TRUNCATE, push the decoder over its memory limit right
/// there) and then abort it. The sync drops that block and applies nothing
/// twice. An open transaction begun before it keeps the slot's restart
/// point before it, so the next run decodes it again. `body` is the
/// transaction, on `big (k, v, c1)` holding keys 1..=20000 as `key`s.
async fn sent_again_after_a_restart(key: &str, body: &str) {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec(&format!(
            "CREATE TABLE big (k {key} PRIMARY KEY, v text NOT NULL, c1 int);
             CREATE TABLE small (id int PRIMARY KEY); CREATE TABLE scratch (id int PRIMARY KEY);
             INSERT INTO big SELECT g::text::{key}, 'seed', g FROM generate_series(1, 20000) g;"
        ))
        .await;
    assert!(sync(&pair, &["--copy-only"]).await.success());
    let (x, t) = (pair.source.client().await, pair.source.client().await);
    run(&x, "BEGIN; INSERT INTO small VALUES (1)").await;
    run(&t, &format!("BEGIN; {body}; TRUNCATE scratch; COMMIT;")).await;
    let first = sync(&pair, &["--until-caught-up"]).await;
    assert!(first.success(), "{first}");
    // What the source sends from where the target stands: a Stream Abort
    // ('A') means it streams the applied transaction again (14 and 15 do;
    // 16 and later decide by where the record starts).
    let peek = "SELECT count(*) FILTER (WHERE substr(data, 1, 1) = '\\x41'::bytea)
                FROM pg_logical_slot_peek_binary_changes('pgrepl_pgrepl', NULL, NULL, 'proto_version', '2',
                     'streaming', 'on', 'publication_names', 'pgrepl_pgrepl')";
    // The walsender lets go of the slot once it notices the sync gone.
    wait_for("the slot released by the first run", LIMIT, || async {
        let active = pair
            .source
            .value(
                "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'",
            )
            .await;
        (active.as_deref() == Some("false")).then_some(())
    })
    .await;
    let sent_again = pair.source.value(peek).await != Some("0".into());
    eprintln!(
        "source {}: streams the applied transaction again: {sent_again}",
        pair.source.major()
    );
    // Something after it, so the next run reads on.
    run(&t, "INSERT INTO small VALUES (2)").await;
    let out = sync(&pair, &["--until-caught-up", "-v"]).await;
    assert!(out.success(), "the run after it: {out}");
    assert_eq!(
        out.stderr
            .contains("streams again a transaction the target applied"),
        sent_again,
        "{out}"
    );
    run(&x, "COMMIT").await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert_same_data(&pair.source.client().await, &pair.target.client().await).await;
}

/// Rows updated, then deleted: sent again, the UPDATE would find none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_again_update_of_rows_it_deleted_is_not_applied_twice() {
    sent_again_after_a_restart(
        "int",
        "UPDATE big SET v = repeat('u', 100) WHERE k <= 15000; DELETE FROM big WHERE k <= 15000",
    )
    .await;
}

/// The same with a text key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_again_update_by_text_key_is_not_applied_twice() {
    sent_again_after_a_restart(
        "text",
        "UPDATE big SET v = repeat('u', 100) WHERE c1 <= 15000; DELETE FROM big WHERE c1 % 3 = 0",
    )
    .await;
}

/// Rows written through a column, then the column dropped: sent again,
/// its rows would name a column the target no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_again_rows_of_a_column_it_dropped_are_not_applied_twice() {
    sent_again_after_a_restart(
        "int",
        "INSERT INTO big SELECT g, repeat('i', 100), g FROM generate_series(20001, 40000) g;
         ALTER TABLE big DROP COLUMN c1",
    )
    .await;
}
