//! A sync stopped, starved or crashed under: SIGINT and a rerun, a slot
//! moved by unpublished WAL only, both servers crashing while it streams,
//! a target that stays down past --retry-for. Part of the `stream` test
//! binary.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_within_five_seconds_and_a_rerun_resumes() {
    let pair = Pair::start();
    pair.source.exec(workload::SCHEMA).await;
    let load = Workload::start(&pair.source).await;
    let running = spawn_sync(&pair, &[]);
    let target = pair.target.client().await;
    let copied: i32 = wait_for("streaming to start", Duration::from_secs(120), || {
        let t = &target;
        async move {
            let phase: String = t
                .query_one("SELECT phase FROM pgrepl.sync", &[])
                .await
                .ok()?
                .get(0);
            let n: i32 = t
                .query_one("SELECT count(*)::int FROM wl.batches", &[])
                .await
                .ok()?
                .get(0);
            (phase == "streaming").then_some(n)
        }
    })
    .await;
    wait_for(
        "streaming to apply workload batches",
        Duration::from_secs(120),
        || {
            let t = &target;
            async move {
                let n: i32 = t
                    .query_one("SELECT count(*)::int FROM wl.batches", &[])
                    .await
                    .ok()?
                    .get(0);
                (n > copied + 50).then_some(())
            }
        },
    )
    .await;
    running.signal(libc::SIGINT);
    let started = std::time::Instant::now();
    let out = running.wait(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        started.elapsed()
    );
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("Stopped. The target holds the source's changes through LSN"),
        "{out}"
    );
    // What the target holds is one consistent point of the workload.
    workload::assert_consistent_snapshot(&pair.target).await;
    load.stop().await;
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert!(
        !out.stdout.contains("Copied"),
        "a rerun must not copy again:\n{out}"
    );
    equal(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_advances_when_only_unpublished_wal_flows_and_status_reports() {
    let pair = Pair::start_with(
        support::ClusterOptions {
            settings: vec!["wal_sender_timeout = '4s'".into()],
            ..Default::default()
        },
        Default::default(),
    );
    pair.source.exec("CREATE TABLE pub (id int PRIMARY KEY); CREATE TABLE unpub (id int PRIMARY KEY, pad text);").await;
    let running = spawn_sync(&pair, &["--include", "public.pub"]);
    let source = pair.source.client().await;
    let pid_before: i32 = wait_for("streaming", Duration::from_secs(60), || {
        let s = &source;
        async move {
            s.query_opt(
                "SELECT pid FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .ok()?
            .map(|r| r.get(0))
        }
    })
    .await;
    // Every session pgrepl holds says who it is, on both sides.
    for (side, c) in [("source", &pair.source), ("target", &pair.target)] {
        let names = c
            .value("SELECT string_agg(DISTINCT application_name, ',' ORDER BY application_name) FROM pg_stat_activity
                    WHERE backend_type IN ('client backend', 'walsender') AND application_name <> 'harness'")
            .await;
        assert_eq!(names.as_deref(), Some("pgrepl"), "{side} sessions");
    }
    // Lots of WAL that the publication does not cover.
    pair.source
        .exec("INSERT INTO unpub SELECT g, repeat('x', 500) FROM generate_series(1, 50000) g; CHECKPOINT;")
        .await;
    let goal: ::pgrepl::Lsn = pair
        .source
        .value("SELECT pg_current_wal_lsn()::text")
        .await
        .expect("lsn")
        .parse()
        .expect("lsn");
    wait_for(
        "the slot to confirm past the unpublished WAL",
        Duration::from_secs(60),
        || {
            let s = &source;
            async move {
                let c: String = s
                    .query_one(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                let c: ::pgrepl::Lsn = c.parse().ok()?;
                (c >= goal).then_some(())
            }
        },
    )
    .await;
    // A slow apply (the target table locked for longer than
    // wal_sender_timeout) does not get the walsender to hang up.
    let blocker = pair.target.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE pub IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    pair.source.exec("INSERT INTO pub VALUES (1)").await;
    let waiting_since = std::time::Instant::now();
    let target = pair.target.client().await;
    wait_for("the apply to block on the lock", Duration::from_secs(30), || {
        let t = &target;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'pgrepl'", &[])
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        }
    })
    .await;
    // Longer than wal_sender_timeout, measured by the server's own clock.
    wait_for(
        "two wal_sender_timeouts to pass",
        Duration::from_secs(30),
        || async { (waiting_since.elapsed() > Duration::from_secs(9)).then_some(()) },
    )
    .await;
    blocker.batch_execute("COMMIT").await.expect("unlock");
    wait_for("the row to arrive", Duration::from_secs(30), || {
        let t = &target;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM pub", &[])
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    let pid_after: i32 = source
        .query_one(
            "SELECT pid FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .expect("walsender")
        .get(0);
    assert_eq!(
        pid_before, pid_after,
        "the walsender was replaced: it timed out"
    );

    let mut a: Vec<String> = vec!["status".into()];
    a.extend(pair.args());
    a.push("--json".into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let status = pgrepl::run(&a, LIMIT).await;
    assert!(status.success(), "{status}");
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status --json");
    assert_eq!(v["phase"], "streaming");
    assert!(v["slot"]["active_pid"].is_number(), "{v}");
    assert_eq!(v["tables"][0]["table"], "public.pub");
    assert_eq!(v["tables"][0]["state"], "streaming");
    let human = pgrepl::run(&a[..a.len() - 1], LIMIT).await;
    assert!(human.stdout.contains("sync pgrepl: streaming"), "{human}");
    assert!(human.stdout.contains("lag:"), "{human}");

    running.signal(libc::SIGTERM);
    let out = running.wait(Duration::from_secs(10)).await;
    assert!(out.success(), "{out}");
}

/// The servers restart under a running sync; it reconnects and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_servers_crash_and_restart_during_streaming_and_pgrepl_recovers() {
    let mut pair = Pair::start();
    pair.source.exec(workload::SCHEMA).await;
    let running = spawn_sync(&pair, &["--retry-for", "2m"]);
    support::wait_for_phase(&pair.target, "streaming", Duration::from_secs(120)).await;
    let load = Workload::start(&pair.source).await;
    let target_conninfo = pair.target.conninfo();
    let batches_on_target = |n: i32| {
        let conninfo = target_conninfo.clone();
        async move {
            wait_for("batches on the target", Duration::from_secs(120), || {
                let conninfo = conninfo.clone();
                async move {
                    let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                    tokio::spawn(conn);
                    let have: i32 = c
                        .query_one("SELECT count(*)::int FROM wl.batches", &[])
                        .await
                        .ok()?
                        .get(0);
                    (have >= n).then_some(())
                }
            })
            .await
        }
    };
    batches_on_target(20).await;
    // A crash: the apply commits asynchronously, so the target loses what it
    // had not flushed; pgrepl never acknowledged that, and the source sends
    // it again.
    pair.target.stop_mode("immediate");
    pair.target.start_again();
    let done = load.batches.load(std::sync::atomic::Ordering::SeqCst) as i32;
    batches_on_target(done + 20).await;
    load.stop().await;
    pair.source.restart();
    let last: i64 = pair
        .source
        .value("SELECT max(id)::text FROM wl.batches")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let load = Workload::start_from(&pair.source, last).await;
    let done = load.batches.load(std::sync::atomic::Ordering::SeqCst) as i32;
    batches_on_target(done + 20).await;
    let total = load.stop().await as i32;
    batches_on_target(total).await;
    running.signal(libc::SIGINT);
    let out = running.wait(Duration::from_secs(10)).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stderr.contains("streaming interrupted"),
        "no reconnect was logged:\n{out}"
    );
    let out = sync(&pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    equal(&pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stays_down_ends_the_sync_after_retry_for() {
    let mut pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    let running = spawn_sync(&pair, &["--retry-for", "3s"]);
    support::wait_for_phase(&pair.target, "streaming", Duration::from_secs(120)).await;
    pair.target.stop();
    pair.source.exec("INSERT INTO t VALUES (2)").await;
    let out = running.wait(Duration::from_secs(60)).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains("gave up after retrying for"), "{err}");
    assert!(err.contains("target"), "{err}");
    assert!(
        out.stderr.contains("streaming interrupted; resuming"),
        "it retried first: {out}"
    );
    // Back up, a rerun carries on from where the target stopped.
    pair.target.start_again();
    let again = sync(&pair, &["--until-caught-up"]).await;
    assert!(again.success(), "{again}");
    equal(&pair).await;
}
