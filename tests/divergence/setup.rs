//! The copy and the setup around it: a target restarting during the copy
//! loses no chunk, a table created during the setup is copied or refused,
//! a second sync on the same source leaves the first alone. Part of the
//! `divergence` test binary.

use super::*;

/// 9. The target crashes and restarts during the copy: copy sessions
/// commit asynchronously, so chunks already recorded as copied can be lost
/// with it. The copy reconnects, finds what the target really kept, copies
/// the rest again, and ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_restart_during_the_copy_loses_no_chunk() {
    let pair = Pair::start_with(
        ClusterOptions::default(),
        ClusterOptions {
            // Asynchronous commits stay in memory as long as possible.
            settings: vec![
                "wal_writer_delay = '10s'".into(),
                "wal_buffers = '16MB'".into(),
            ],
            ..Default::default()
        },
    );
    pair.source
        .exec(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;",
        )
        .await;
    let a = sync_args(
        &pair,
        &["--copy-only", "--chunk-size", "256kB", "--jobs", "2"],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let running = pgrepl::spawn(&a);
    let t = pair.target.client().await;
    wait_for("a few chunks copied", LIMIT, || {
        let t = &t;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM pgrepl.copied_chunks", &[])
                .await
                .ok()?
                .get(0);
            (n >= 20).then_some(())
        }
    })
    .await;
    drop(t);
    let mut target = pair.target;
    target.stop_mode("immediate");
    target.start_again();
    let pair = Pair {
        source: pair.source,
        target,
    };
    let out = running.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    eprintln!(
        "chunks lost and copied again: {}",
        out.stderr
            .contains("copied chunks were lost by a target restart")
    );
    equal(&pair).await;
}

/// 10. A table created between the preflight and the slot is in the
/// snapshot (pg_dump creates it on the target): it is copied too, and with
/// a table list that missed it, the setup stops clearly instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_during_setup_is_copied_or_refused() {
    for include in [false, true] {
        let pair = Pair::start();
        pair.source
            .exec("CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY); INSERT INTO app.t VALUES (1);")
            .await;
        // A transaction creating a table is open while pgrepl starts: the
        // slot waits for it to end, and the table is in its snapshot.
        let mut late = pair.source.client().await;
        let tx = late.transaction().await.expect("begin");
        tx.batch_execute("CREATE TABLE app.late (id int PRIMARY KEY); INSERT INTO app.late SELECT generate_series(1, 100);")
            .await
            .expect("late table");
        let extra: &[&str] = if include {
            &["--copy-only", "--include", "app.*"]
        } else {
            &["--copy-only"]
        };
        let a = sync_args(&pair, extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let running = pgrepl::spawn(&a);
        let s = pair.source.client().await;
        wait_for("the slot waiting for the open transaction", LIMIT, || {
            let s = &s;
            async move {
                let n: i64 = s
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE_REPLICATION_SLOT%' AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                (n > 0).then_some(())
            }
        })
        .await;
        tx.commit().await.expect("commit");
        let out = running.wait(LIMIT).await;
        if include {
            assert_eq!(out.code, Some(1), "{out}");
            let err = out.error_line();
            assert!(
                err.contains("app.late appeared while the sync was being set up")
                    && err.contains("run pgrepl sync again"),
                "{err}"
            );
            assert_eq!(
                pair.source
                    .value("SELECT count(*) FROM pg_replication_slots")
                    .await,
                Some("0".into()),
                "nothing left behind"
            );
            let again = sync(&pair, &["--copy-only", "--include", "app.*"]).await;
            assert!(again.success(), "{again}");
        } else {
            assert!(out.success(), "{out}");
        }
        pair.source.exec("INSERT INTO app.late VALUES (1000)").await;
        catch_up(&pair).await;
        equal(&pair).await;
    }
}

/// 12a. A second sync set up on the same source installs the DDL capture
/// again and writes pgrepl's own config table, which a FOR ALL TABLES
/// publication publishes too: the first sync neither replays pgrepl's own
/// DDL on its target nor stops on pgrepl's tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sync_on_the_same_source_leaves_the_first_alone() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    pair.target.exec("CREATE DATABASE second").await;
    let a = sync_args(&pair, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let first = pgrepl::spawn(&a);
    support::wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let second_target = pair.target.conninfo_db("second");
    let out = pgrepl::run(
        &[
            "sync",
            "--source",
            &pair.source.conninfo(),
            "--target",
            &second_target,
            "--name",
            "second",
            "--copy-only",
        ],
        LIMIT,
    )
    .await;
    assert!(out.success(), "{out}");
    pair.source.exec("INSERT INTO t VALUES (2)").await;
    let t = pair.target.client().await;
    wait_for("the first sync applies on", LIMIT, || {
        let t = &t;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .ok()?
                .get(0);
            (n == 2).then_some(())
        }
    })
    .await;
    first.signal(libc::SIGINT);
    let out = first.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(!out.stderr.contains("pgrepl.config"), "{out}");
    assert_eq!(
        pair.target
            .value("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgrepl' AND c.relname = 'config'")
            .await,
        Some("0".into()),
        "pgrepl's own tables stay on the source"
    );
    equal(&pair).await;
}
