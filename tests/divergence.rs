//! Silent divergences found by trying pgrepl as a new user would, each
//! reproduced against real servers: the target must end equal to the
//! source (by the independent checksum), or the sync must refuse with one
//! clear line. Every test here failed before its fix.

#[path = "divergence/position.rs"]
mod position;
#[path = "divergence/setup.rs"]
mod setup;
mod support;

use std::time::Duration;

use support::{assert_same_data, pgrepl, wait_for, ClusterOptions, Pair};

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

async fn copy(pair: &Pair) {
    let out = sync(pair, &["--copy-only"]).await;
    assert!(out.success(), "{out}");
}

async fn catch_up(pair: &Pair) -> pgrepl::Output {
    let out = sync(pair, &["--until-caught-up", "-v"]).await;
    assert!(out.success(), "{out}");
    // The process is gone; its sessions on the target end a moment later
    // (until then the replication origin is still theirs).
    let t = pair.target.client().await;
    wait_for(
        "pgrepl's target sessions to end",
        Duration::from_secs(60),
        || {
            let t = &t;
            async move {
                let n: i64 = t
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrepl'",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                (n == 0).then_some(())
            }
        },
    )
    .await;
    out
}

async fn equal(pair: &Pair) -> i64 {
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &t).await
}

/// A source that streams every transaction over 64 kB while in progress.
fn streaming_pair() -> Option<Pair> {
    let pair = Pair::start_with(
        ClusterOptions {
            settings: vec!["logical_decoding_work_mem = '64kB'".into()],
            ..Default::default()
        },
        ClusterOptions::default(),
    );
    if pair.source.major() < 14 {
        eprintln!("source {} streams nothing in progress", pair.source.major());
        return None;
    }
    Some(pair)
}

/// 1. A set-based UPDATE passes each column as an array cast to the
/// column's type: without its typmod, `character[]` is `char(1)[]` and
/// 'USD' arrived as 'U'. Every type with a typmod goes through the unnest
/// path here (no array column, which would take the stage table instead),
/// and the log shows the unnest statement ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typmods_survive_set_based_updates() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, code char(3), v varchar(5), n numeric(6,2), b bit(4), vb varbit(6),
                 ts timestamp(0), tsz timestamptz(2), tm time(1), tmz timetz(3), i interval hour to minute, i2 interval(2),
                 k int);
             INSERT INTO t SELECT g, 'USD', 'abcde', 1234.56, B'1010', B'101101', '2024-01-01 10:00:01',
                 '2024-01-01 10:00:01.12+00', '10:00:01.5', '10:00:01.123+02', '3 hours 4 minutes', '1 day 00:00:01.25', 0
             FROM generate_series(1, 50) g;
             CREATE TABLE arr (id int PRIMARY KEY, ca char(3)[], na numeric(5,1)[], k int);
             INSERT INTO arr SELECT g, ARRAY['abc', 'de'], ARRAY[1.5, 2.25], 0 FROM generate_series(1, 50) g;",
        )
        .await;
    copy(&pair).await;
    pair.source
        .exec("UPDATE t SET k = k + 1; UPDATE arr SET k = k + 1;")
        .await;
    let out = catch_up(&pair).await;
    assert!(
        out.stderr
            .contains("unnest($1::integer[], $2::character(3)[]"),
        "the set-based unnest path ran: {out}"
    );
    equal(&pair).await;
    assert_eq!(
        pair.target
            .value("SELECT string_agg(DISTINCT code, ',') FROM t")
            .await,
        Some("USD".into())
    );
}

/// 2. An identity column GENERATED ALWAYS that UPDATE may not set: outside
/// the key (single rows, many rows set-based, a DELETE + INSERT of a key
/// folded into one UPDATE), and as the key when the key changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_columns_always_take_the_sources_values() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, seq int GENERATED ALWAYS AS IDENTITY, v text, big text);
             INSERT INTO t (id, v, big) SELECT g, 'a', repeat('x', 5000) || g FROM generate_series(1, 60) g;
             ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE TABLE k (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
             INSERT INTO k (v) SELECT 'a' FROM generate_series(1, 50) g;",
        )
        .await;
    copy(&pair).await;
    pair.source
        .exec(
            "UPDATE t SET seq = DEFAULT WHERE id <= 3;
             UPDATE t SET seq = DEFAULT, v = 'b' WHERE id > 30;
             BEGIN; DELETE FROM t WHERE id = 10; INSERT INTO t (id, v, big) VALUES (10, 'x', 'small'); COMMIT;
             UPDATE t SET seq = DEFAULT WHERE id = 11;
             UPDATE k SET id = DEFAULT WHERE id <= 2;
             UPDATE k SET id = DEFAULT, v = 'many' WHERE id BETWEEN 20 AND 45;",
        )
        .await;
    catch_up(&pair).await;
    equal(&pair).await;
}

/// 3 and 4. A TRUNCATE of one partition (Postgres publishes none through
/// the partition root) and `TRUNCATE ONLY` of an inheritance parent (the
/// target ran it without ONLY and emptied the children too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_of_a_partition_and_of_only_a_parent() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE ev (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
             CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
             CREATE TABLE ev_2 PARTITION OF ev FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
             INSERT INTO ev SELECT g, '2024-01-01'::date + g % 59 FROM generate_series(1, 100) g;
             CREATE TABLE par (id int PRIMARY KEY);
             CREATE TABLE chi (x int) INHERITS (par); ALTER TABLE chi ADD PRIMARY KEY (id);
             INSERT INTO par SELECT generate_series(1, 10);
             INSERT INTO chi SELECT generate_series(11, 20), 1;",
        )
        .await;
    copy(&pair).await;
    pair.source
        .exec(
            "TRUNCATE ev_1; TRUNCATE ONLY par;
             INSERT INTO ev VALUES (1000, '2024-01-15'), (1001, '2024-02-15');
             UPDATE ev SET d = '2024-02-20' WHERE id = 1000;",
        )
        .await;
    catch_up(&pair).await;
    equal(&pair).await;
    assert_eq!(
        pair.target.value("SELECT count(*) FROM ONLY chi").await,
        Some("10".into())
    );
    assert_eq!(
        pair.target.value("SELECT count(*) FROM ev_1").await,
        Some("0".into())
    );
}

/// 11. DDL inside a transaction streamed while in progress: the column it
/// adds and drops again is in a relation description the main connection
/// got after the commit, and mapping it stopped the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_and_truncate_inside_a_streamed_transaction() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec(
            "CREATE TABLE d (k bigint PRIMARY KEY, c0 date);
             INSERT INTO d SELECT g, current_date FROM generate_series(1, 50) g;
             CREATE TABLE z (k int PRIMARY KEY, v int);
             INSERT INTO z SELECT g, 0 FROM generate_series(1, 3000) g;",
        )
        .await;
    copy(&pair).await;
    pair.source
        .exec(
            "BEGIN; INSERT INTO d SELECT g, current_date FROM generate_series(51, 30050) g;
             ALTER TABLE d ADD COLUMN a text DEFAULT 'x'; DELETE FROM d WHERE k % 2 = 1;
             ALTER TABLE d DROP COLUMN a; COMMIT;
             BEGIN; UPDATE z SET v = 1 WHERE k % 2 = 0; TRUNCATE z; INSERT INTO z VALUES (1, 5); COMMIT;
             BEGIN; DELETE FROM z; INSERT INTO z SELECT g, 2 FROM generate_series(1, 3000) g;
             UPDATE z SET v = 3 WHERE k % 3 = 0; TRUNCATE z; INSERT INTO z SELECT g, 4 FROM generate_series(1, 100) g; COMMIT;
             INSERT INTO d VALUES (100000, current_date);",
        )
        .await;
    let out = catch_up(&pair).await;
    assert!(
        out.stderr.contains("streamed while in progress"),
        "the transactions were streamed: {out}"
    );
    equal(&pair).await;
}

/// 5. DDL whose values the source computes: per row (a volatile default,
/// serial, identity: the table is rewritten, which is not decoded), once
/// for all rows (`now()`, `current_user`), or under the session's TimeZone
/// (a timestamptz literal, timestamp turned timestamptz). The target must
/// hold the source's values, and the source's rows must not change beyond
/// what the DDL did (no user trigger fires for the rows pgrepl publishes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_computing_values_gives_the_target_the_sources_values() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, ts timestamp, touched int NOT NULL DEFAULT 0, big text);
             INSERT INTO t SELECT g, '2024-01-01 12:00:00', 0, CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 400) END
             FROM generate_series(1, 500) g;
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.touched := NEW.touched + 1; RETURN NEW; END $$;
             CREATE TRIGGER touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch();
             CREATE TABLE p (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
             CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
             CREATE TABLE p_2 PARTITION OF p FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
             INSERT INTO p SELECT g, '2024-01-01'::date + g % 59 FROM generate_series(1, 300) g;",
        )
        .await;
    copy(&pair).await;
    pair.source
        .exec(
            "SET TimeZone = 'Asia/Tokyo';
             ALTER TABLE t ADD COLUMN created timestamptz NOT NULL DEFAULT clock_timestamp();
             ALTER TABLE t ADD COLUMN u text DEFAULT md5(random()::text), ADD COLUMN s serial;
             ALTER TABLE t ADD COLUMN n timestamptz DEFAULT now(), ADD COLUMN who text DEFAULT current_user || random()::int;
             ALTER TABLE t ADD COLUMN idn int GENERATED ALWAYS AS IDENTITY;
             ALTER TABLE t ADD COLUMN lit timestamptz DEFAULT '2024-06-01 00:00:00';
             ALTER TABLE t ALTER COLUMN ts TYPE timestamptz;
             ALTER TABLE p ADD COLUMN r float8 DEFAULT random(), ADD COLUMN at timestamptz DEFAULT transaction_timestamp();
             INSERT INTO t (id) VALUES (1000);
             UPDATE t SET big = 'changed' WHERE id = 20;",
        )
        .await;
    catch_up(&pair).await;
    equal(&pair).await;
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM t WHERE touched <> 0")
            .await,
        Some("1".into()),
        "only the user's own UPDATE fired the user's trigger"
    );
}

/// 8. A step of the DDL capture fails (here adding a new table to a table
/// list publication runs into a lock timeout): the user's DDL goes through,
/// and the sync stops at exactly that command saying what failed, instead
/// of never publishing the new table's rows. `--skip-ddl` goes past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_capture_step_stops_the_sync_at_that_command() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY); CREATE TABLE app.other (id int PRIMARY KEY);")
        .await;
    let out = sync(
        &pair,
        &[
            "--copy-only",
            "--include",
            "app.*",
            "--exclude",
            "app.other",
        ],
    )
    .await;
    assert!(out.success(), "{out}");
    // Another session holds the publication: ALTER PUBLICATION waits.
    let mut holder = pair.source.client().await;
    let tx = holder.transaction().await.expect("begin");
    tx.batch_execute("ALTER PUBLICATION pgrepl_pgrepl ADD TABLE app.other")
        .await
        .expect("hold the publication");
    let c = pair.source.client().await;
    c.batch_execute("SET lock_timeout = '200ms'; CREATE TABLE app.n1 (id int PRIMARY KEY)")
        .await
        .expect("the user's DDL goes through");
    tx.rollback().await.expect("release");
    c.batch_execute("INSERT INTO app.n1 VALUES (1); INSERT INTO app.t VALUES (1);")
        .await
        .expect("rows");
    let failed = pair
        .source
        .value("SELECT id FROM pgrepl.schema_log WHERE event = 'capture_failed'")
        .await
        .expect("a capture_failed row");
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains("DDL capture failed on CREATE TABLE"), "{err}");
    assert!(
        err.contains("adding table app.n1 to publication pgrepl_pgrepl"),
        "{err}"
    );
    assert!(
        err.contains("the rows of app.n1 are not published"),
        "{err}"
    );
    assert!(err.contains(&format!("--skip-ddl {failed}")), "{err}");
    assert_eq!(
        pair.target.value("SELECT count(*) FROM app.t").await,
        Some("0".into()),
        "nothing after the failed command was applied"
    );
    // Made right by hand (the table joins, its row is put on the target),
    // the sync goes on past exactly that command.
    pair.source
        .exec("ALTER PUBLICATION pgrepl_pgrepl ADD TABLE app.n1")
        .await;
    let out = sync(&pair, &["--until-caught-up", "--skip-ddl", &failed]).await;
    assert!(out.success(), "{out}");
    pair.target.exec("INSERT INTO app.n1 VALUES (1)").await;
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    support::assert_same_tables(&src, &tgt, &["app.t", "app.n1"]).await;
}

/// 12b. A CREATE TABLE AS of a custom type inside a transaction streamed
/// while in progress: the table is made from the rows' description, with
/// the type named as the source names it (not by the source's OID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_as_of_a_custom_type_inside_a_streamed_transaction() {
    let Some(pair) = streaming_pair() else { return };
    pair.source
        .exec(
            "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TABLE t (id int PRIMARY KEY, m mood);",
        )
        .await;
    copy(&pair).await;
    pair.source
        .exec(
            "BEGIN; INSERT INTO t SELECT g, 'ok' FROM generate_series(1, 20000) g;
             CREATE TABLE made AS SELECT id, m, ARRAY[m] AS ms FROM t;
             COMMIT;",
        )
        .await;
    let out = catch_up(&pair).await;
    assert!(out.stderr.contains("streamed while in progress"), "{out}");
    equal(&pair).await;
}

/// 12c. A transaction whose last statements fail before COMMIT is left
/// open and aborted on the server: the applier rolls it back, so the
/// session can apply the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applier_rolls_back_what_a_failed_commit_left_open() {
    use ::pgrepl::apply::applier::{Applier, GroupLimits, Shared};
    use ::pgrepl::conn::raw::RawSession;
    use ::pgrepl::stream::pgoutput::{Column, Datum, Message, Relation};
    use ::pgrepl::Lsn;

    let target = support::Cluster::start("target", support::PgInstall::for_target());
    target.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    // pgrepl's state, as a sync's copy leaves it.
    ::pgrepl::progress::state::ensure_schema(&target.client().await)
        .await
        .expect("pgrepl's state schema");
    let endpoint = pgrepl::endpoint(&target, ::pgrepl::conn::Side::Target);
    let session = RawSession::connect(::pgrepl::conn::Side::Target, &endpoint.config, false)
        .await
        .expect("session");
    // No replication origin on this session: recording the position
    // before COMMIT fails, and the transaction stays open, aborted.
    let mut applier = Applier::new(
        session,
        Shared::new(Lsn::ZERO),
        Lsn::ZERO,
        GroupLimits::default(),
        None,
        ::pgrepl::sql::SyncName::default(),
        &::pgrepl::progress::ledger::Ledger::Origin(::pgrepl::sql::SyncName::default().origin()),
    );
    let relation = Message::Relation(Relation {
        oid: 1,
        namespace: "public".into(),
        name: "t".into(),
        replica_identity: b'd',
        columns: vec![Column {
            name: "id".into(),
            key: true,
            type_oid: 23,
            type_modifier: -1,
        }],
    });
    let mut errors = Vec::new();
    for (id, lsn) in [("1", 100u64), ("2", 200)] {
        let txn = [
            Message::Begin {
                final_lsn: Lsn(lsn),
                commit_ts: 0,
                xid: lsn as u32,
            },
            relation.clone(),
            Message::Insert {
                relation: 1,
                new: vec![Datum::Text(id.as_bytes().to_vec().into())],
            },
            Message::Commit {
                commit_lsn: Lsn(lsn),
                end_lsn: Lsn(lsn + 8),
                commit_ts: 0,
            },
        ];
        let mut result = Ok(());
        for m in txn {
            result = applier.handle(m, false).await;
            if result.is_err() {
                break;
            }
        }
        errors.push(result.expect_err("no origin: the commit fails").to_string());
        applier.abort().await;
    }
    assert!(
        errors[1].contains("no replication origin is configured"),
        "the second transaction ran in a clean session: {errors:?}"
    );
}
