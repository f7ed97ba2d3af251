//! Where the sync starts: the position it reads must be durable (on the
//! origin and in the progress table), a target behind the slot is refused,
//! and idle stretches move the origin with the slot. Part of the
//! `divergence` test binary.

use super::*;

/// 6. After a reconnect inside one run, the first position reported as
/// flushed was the origin's in-memory one: a commit the target had not yet
/// flushed (asynchronous commit), lost in a crash right after. The start
/// position must be durable when it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_position_is_durable_when_it_is_read() {
    let mut target = support::Cluster::start_with(
        "target",
        support::PgInstall::for_target(),
        ClusterOptions {
            // Asynchronous commits stay unflushed for up to 10 s.
            settings: vec!["wal_writer_delay = '10s'".into()],
            ..Default::default()
        },
    );
    target
        .exec("CREATE TABLE x (id int); SELECT pg_replication_origin_create('pgrepl_pgrepl');")
        .await;
    let c = target.client().await;
    c.batch_execute(
        "SET synchronous_commit = off;
         SELECT pg_replication_origin_session_setup('pgrepl_pgrepl');
         BEGIN; INSERT INTO x VALUES (1);
         SELECT pg_replication_origin_xact_setup('0/ABCDEF0', now());
         COMMIT;
         SELECT pg_replication_origin_session_reset();",
    )
    .await
    .expect("an asynchronous commit under the origin");
    let endpoint = pgrepl::endpoint(&target, ::pgrepl::conn::Side::Target);
    let name = ::pgrepl::sql::SyncName::default();
    let ledger = ::pgrepl::progress::ledger::Ledger::Origin(name.origin());
    let (session, start) = ::pgrepl::apply::session::apply_session(&endpoint, &ledger, &name)
        .await
        .expect("apply session");
    assert_eq!(start.to_string(), "0/ABCDEF0");
    drop(session);
    target.stop_mode("immediate");
    target.start_again();
    assert_eq!(
        target
            .value("SELECT pg_replication_origin_progress('pgrepl_pgrepl', false)::text")
            .await,
        Some("0/ABCDEF0".into()),
        "what the session started from (and reports as flushed) survived a crash"
    );
}

/// 6b. The same with the position kept in the progress table: the row an
/// asynchronous commit wrote is made durable before it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_position_in_the_progress_table_is_durable_when_it_is_read() {
    let mut target = support::Cluster::start_with(
        "target",
        support::PgInstall::for_target(),
        ClusterOptions {
            settings: vec!["wal_writer_delay = '10s'".into()],
            ..Default::default()
        },
    );
    let c = target.client().await;
    ::pgrepl::progress::state::ensure_schema(&c)
        .await
        .expect("pgrepl's state schema");
    c.batch_execute(
        "INSERT INTO pgrepl.sync (name, phase, schema_created, ledger) VALUES ('pgrepl', 'streaming', false, 'table');
         INSERT INTO pgrepl.applied VALUES ('pgrepl', NULL, '0/1000');
         CHECKPOINT;
         SET synchronous_commit = off;
         UPDATE pgrepl.applied SET end_lsn = '0/ABCDEF0';",
    )
    .await
    .expect("an asynchronous commit of the position");
    let endpoint = pgrepl::endpoint(&target, ::pgrepl::conn::Side::Target);
    let name = ::pgrepl::sql::SyncName::default();
    let ledger = ::pgrepl::progress::state::ledger_of(&c, &name)
        .await
        .expect("the sync's ledger");
    assert_eq!(ledger, ::pgrepl::progress::ledger::Ledger::Table);
    let (session, start) = ::pgrepl::apply::session::apply_session(&endpoint, &ledger, &name)
        .await
        .expect("apply session");
    assert_eq!(start.to_string(), "0/ABCDEF0");
    drop(session);
    target.stop_mode("immediate");
    target.start_again();
    assert_eq!(
        target
            .value("SELECT end_lsn::text FROM pgrepl.applied")
            .await,
        Some("0/ABCDEF0".into()),
        "what the session started from (and reports as flushed) survived a crash"
    );
}

/// 7. A target behind the slot (restored from a backup, or its last
/// transactions lost): the source would start at the slot's confirmed
/// position and the gap would never be applied. The sync refuses instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_behind_the_slot_is_refused() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);")
        .await;
    copy(&pair).await;
    let copied = pair
        .target
        .value("SELECT pg_replication_origin_progress('pgrepl_pgrepl', false)::text")
        .await
        .expect("origin");
    pair.source
        .exec("INSERT INTO t SELECT generate_series(11, 20)")
        .await;
    catch_up(&pair).await;
    // The target as it was right after the copy.
    pair.target
        .exec(&format!(
            "DELETE FROM t WHERE id > 10; SELECT pg_replication_origin_advance('pgrepl_pgrepl', '{copied}');"
        ))
        .await;
    pair.source
        .exec("INSERT INTO t SELECT generate_series(21, 30)")
        .await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains(&format!("only through {copied}")), "{err}");
    assert!(err.contains("were lost on the target"), "{err}");
    assert!(err.contains("pgrepl teardown"), "{err}");
    assert_eq!(
        pair.target.value("SELECT count(*) FROM t").await,
        Some("10".into()),
        "nothing was applied"
    );
}

/// After idle stretches (WAL of another database only), the origin moves
/// with the slot: a stop and a restart are not mistaken for a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stretches_move_the_origin_with_the_slot() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY)")
        .await;
    pair.source.exec("CREATE DATABASE other").await;
    copy(&pair).await;
    let a = sync_args(&pair, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let running = pgrepl::spawn(&a);
    support::wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let other = pair.source.client_db("other").await;
    other
        .batch_execute("CREATE TABLE w (x int); INSERT INTO w SELECT generate_series(1, 10000)")
        .await
        .expect("writes elsewhere");
    let after: ::pgrepl::Lsn = pair
        .source
        .value("SELECT pg_current_wal_lsn()::text")
        .await
        .expect("lsn")
        .parse()
        .expect("lsn");
    let t = pair.target.client().await;
    wait_for("the origin past the idle WAL", LIMIT, || {
        let t = &t;
        async move {
            let lsn: Option<::pgrepl::Lsn> = t
                .query_one(
                    "SELECT pg_replication_origin_progress('pgrepl_pgrepl', false)",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (lsn? >= after).then_some(())
        }
    })
    .await;
    running.signal(libc::SIGINT);
    let out = running.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    pair.source.exec("INSERT INTO t VALUES (1)").await;
    catch_up(&pair).await;
    equal(&pair).await;
}
