//! `pgrepl cutover` against real servers: writers with open sessions (a
//! normal role and a superuser) are fenced and nothing of theirs reaches
//! the source after the fence; sequences of all three kinds are exact and
//! the target takes INSERTs; a cutover that cannot finish leaves the
//! source writable and the sync streaming; the way back carries writes
//! back, and a second cutover returns.

#[path = "cutover/sessions.rs"]
mod sessions;
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{assert_same_data, wait_for, wait_for_phase, Cluster, ClusterOptions, Pair};

const LIMIT: Duration = Duration::from_secs(240);

const SCHEMA: &str = "
    CREATE SEQUENCE free_seq START 1000;
    CREATE TABLE a (id serial PRIMARY KEY, v text);
    CREATE TABLE b (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
    CREATE TABLE c (id bigint PRIMARY KEY DEFAULT nextval('free_seq'), v text);
    INSERT INTO a (v) SELECT 'a' FROM generate_series(1, 100);
    INSERT INTO b (v) SELECT 'b' FROM generate_series(1, 100);
    INSERT INTO c (v) SELECT 'c' FROM generate_series(1, 100);
    CREATE ROLE app LOGIN;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app;
    GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app;
";

/// A session that keeps writing (one INSERT per transaction into each
/// table) until stopped; counts what went through and what was refused.
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    async fn start(cluster: &Cluster, user: &str) -> Writer {
        Writer::start_with(cluster, user, "").await
    }

    /// `options`: server options for the session (libpq `options`).
    async fn start_with(cluster: &Cluster, user: &str, options: &str) -> Writer {
        let conninfo = format!(
            "host={} port={} user={user} dbname=postgres options='{options}'",
            cluster.socket_dir().display(),
            cluster.port
        );
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("writer connects");
        tokio::spawn(conn);
        let (stop, ok, refused) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, o, r) = (stop.clone(), ok.clone(), refused.clone());
        let lazy = options.contains("synchronous_commit=off");
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            while !s.load(Ordering::SeqCst) {
                for sql in [
                    "INSERT INTO a (v) VALUES ('w')",
                    "INSERT INTO b (v) VALUES ('w')",
                    "INSERT INTO c (v) VALUES ('w')",
                ] {
                    match client.batch_execute(sql).await {
                        Ok(()) => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            r.fetch_add(1, Ordering::SeqCst);
                            if errors.len() < 5 {
                                errors.push(support::db_error(&e));
                            }
                        }
                    }
                }
                // Its session ended (cutover --terminate): nothing more to do.
                if client.is_closed() {
                    break;
                }
                // The asynchronous writer as fast as it can: its last commits
                // are then in WAL not yet written when the fence goes up.
                if !lazy {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            errors
        });
        Writer {
            stop,
            ok,
            refused,
            task,
        }
    }

    async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.task.await.expect("writer");
        (
            self.ok.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst),
            errors,
        )
    }
}

async fn sequences(c: &tokio_postgres::Client) -> Vec<(String, i64, bool)> {
    let mut out = Vec::new();
    for name in ["free_seq", "a_id_seq", "b_id_seq"] {
        let r = c
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await
            .expect("sequence");
        out.push((name.to_string(), r.get(0), r.get(1)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_writers_are_fenced_and_the_target_takes_over_exactly() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &["--roles", "copy"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let app = Writer::start(&pair.source, "app").await;
    let admin = Writer::start(&pair.source, "postgres").await;
    let ok_before = |w: &Writer| w.ok.load(Ordering::SeqCst);
    let t = pair.target.client().await;
    wait_for("the writers' rows on the target", LIMIT, || {
        let t = &t;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM a", &[])
                .await
                .ok()?
                .get(0);
            (n > 150).then_some(())
        }
    })
    .await;
    assert!(ok_before(&app) > 0 && ok_before(&admin) > 0);
    let out = pair
        .run("cutover", &["--verify", "--json", "--terminate"])
        .await;
    assert!(out.success(), "{out}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).expect("json summary");
    let fence: ::pgrepl::Lsn = summary["fence_lsn"]
        .as_str()
        .expect("fence lsn")
        .parse()
        .expect("lsn");
    assert!(summary["verified"].as_bool() == Some(true), "{out}");
    assert!(summary["write_downtime_ms"].as_u64().is_some(), "{out}");
    assert!(out.stderr.contains("other session(s) ended"), "{out}");
    // The writers' sessions were ended (--terminate), superuser's too.
    let (_, _, app_errors) = app.stop().await;
    let (_, _, admin_errors) = admin.stop().await;
    for errors in [&app_errors, &admin_errors] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains("terminating connection") || e.contains("closed")),
            "{errors:?}"
        );
    }
    // A session that turns the read-only default off on purpose, any
    // role, meets the fence's triggers.
    for user in ["app", "postgres"] {
        let w =
            Writer::start_with(&pair.source, user, "-c default_transaction_read_only=off").await;
        wait_for("the write refused", LIMIT, || {
            let n = w.refused.load(Ordering::SeqCst);
            async move { (n >= 3).then_some(()) }
        })
        .await;
        let (ok, _, errors) = w.stop().await;
        assert_eq!(ok, 0, "{user} wrote to the fenced source");
        assert!(
            errors.iter().any(|e| e.contains("cut over by pgrepl")),
            "{errors:?}"
        );
    }
    // The sync applied through the fence and ended.
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains(&format!("fence at {fence}")), "{out}");
    // Nothing reached the source after the fence: both sides are equal.
    let (s, tc) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &tc).await;
    assert_eq!(sequences(&s).await, sequences(&tc).await, "sequences exact");
    pair.target
        .exec("INSERT INTO a (v) VALUES ('new'); INSERT INTO b (v) VALUES ('new'); INSERT INTO c (v) VALUES ('new');")
        .await;
    // New sessions, any role, and DDL: refused on the old source.
    let c = s.batch_execute("INSERT INTO a (v) VALUES ('late')").await;
    assert!(c.is_err(), "a new session writes");
    let ddl = s.batch_execute("CREATE TABLE late (x int)").await;
    assert!(ddl.is_err(), "DDL on the fenced source");
    // The sync started again (a supervisor restarting it) must not apply
    // to the target it was cut over to: it says so and exits; a second
    // cutover has nothing to do.
    let out = pair.run("sync", &[]).await;
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains(&format!("was cut over at {fence}")),
        "{out}"
    );
    let out = pair.run("cutover", &[]).await;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("already cut over"), "{out}");
    // Teardown --unfence makes it writable again, deliberately.
    let out = pair.run("teardown", &["--unfence"]).await;
    assert!(out.success(), "{out}");
    pair.source
        .exec("INSERT INTO a (v) VALUES ('after unfence')")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_cannot_finish_leaves_the_source_writable_and_the_sync_streaming() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &["--roles", "copy"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    // 1. Verify finds a difference made behind pgrepl's back.
    pair.target
        .exec("UPDATE a SET v = 'tampered' WHERE id = 7")
        .await;
    let out = pair.run("cutover", &["--verify"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("verify found differences"), "{out}");
    assert!(out.stderr.contains("(7) in v"), "{out}");
    assert!(out.error_line().contains("the fence is lifted"), "{out}");
    pair.target.exec("UPDATE a SET v = 'a' WHERE id = 7").await;
    // 2. An open transaction that keeps a table written, no --terminate.
    let blocker = pair.source.client().await;
    blocker
        .batch_execute("BEGIN; INSERT INTO a (v) VALUES ('open')")
        .await
        .expect("open transaction");
    let out = pair.run("cutover", &["--wait", "2s"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("--terminate"), "{out}");
    blocker
        .batch_execute("COMMIT")
        .await
        .expect("still alive: not terminated");
    // 3. The lag stays above the limit: the sync holds (asked on its
    // control channel, as verify would) while the source writes on.
    pair.target
        .exec("INSERT INTO pgrepl.control (sync_name, request) VALUES ('pgrepl', '{\"kind\": \"hold\"}'); NOTIFY pgrepl_control;")
        .await;
    wait_for("the sync holding", LIMIT, || {
        let t = pair.target.client();
        async move {
            let held: bool = t
                .await
                .query_one(
                    "SELECT count(*) > 0 FROM pgrepl.control WHERE state ->> 'state' = 'held'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            held.then_some(())
        }
    })
    .await;
    pair.source
        .exec("INSERT INTO a (v) SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
        .await;
    let out = pair
        .run("cutover", &["--max-lag", "1kB", "--wait", "2s"])
        .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.error_line().contains("lag stayed above the limit"),
        "{out}"
    );
    pair.target
        .exec(
            "UPDATE pgrepl.control SET state = '{\"state\": \"released\"}'; NOTIFY pgrepl_control;",
        )
        .await;
    // In every case: the source takes writes, the sync streams them.
    pair.source
        .exec("INSERT INTO a (v) VALUES ('still streaming')")
        .await;
    let t = pair.target.client().await;
    wait_for("the sync still applies", LIMIT, || {
        let t = &t;
        async move {
            let n: i64 = t
                .query_one("SELECT count(*) FROM a WHERE v = 'still streaming'", &[])
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    assert!(
        pair.source
            .value("SELECT count(*) FROM pg_trigger WHERE tgname = 'pgrepl_fence'")
            .await
            == Some("0".into())
    );
    // 4. With --terminate, the session in the way is ended.
    let blocker = pair.source.client().await;
    blocker
        .batch_execute("BEGIN; INSERT INTO a (v) VALUES ('open, rolled back')")
        .await
        .expect("open transaction");
    let out = pair.run("cutover", &["--wait", "2s", "--terminate"]).await;
    assert!(out.success(), "{out}");
    assert!(blocker.batch_execute("COMMIT").await.is_err(), "terminated");
    assert!(sync.wait(LIMIT).await.success());
    let (s, tc) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_way_back_carries_writes_back_and_a_second_cutover_returns() {
    let pair = Pair::start_with(Default::default(), Default::default());
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &["--roles", "copy"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let out = pair.run("cutover", &["--reverse"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("pgrepl_r"), "{out}");
    assert!(sync.wait(LIMIT).await.success());
    // The application now writes to the target; the reverse sync carries
    // its writes back into the fenced old source.
    let back = Pair {
        source: pair.target,
        target: pair.source,
    };
    let reverse = back.spawn("sync", &["--name", "pgrepl_r"]);
    back.source
        .exec("INSERT INTO a (v) VALUES ('written on the new server'); UPDATE b SET v = 'changed' WHERE id <= 10; DELETE FROM c WHERE id <= 1005;")
        .await;
    let old = back.target.client().await;
    wait_for("the writes back on the old source", LIMIT, || {
        let old = &old;
        async move {
            let n: i64 = old
                .query_one(
                    "SELECT count(*) FROM a WHERE v = 'written on the new server'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    // Back again.
    let out = back
        .run("cutover", &["--name", "pgrepl_r", "--verify"])
        .await;
    assert!(out.success(), "{out}");
    assert!(reverse.wait(LIMIT).await.success());
    let (s, t) = (back.source.client().await, back.target.client().await);
    assert_same_data(&s, &t).await;
    // The old source is the primary again: it takes writes; the new one
    // is fenced.
    back.target
        .exec("INSERT INTO a (v) VALUES ('home again')")
        .await;
    assert!(s
        .batch_execute("INSERT INTO a (v) VALUES ('x')")
        .await
        .is_err());
    // A cut back that died after the sync ended, before it lifted the old
    // source's fence (made up here): running it again finishes that, but
    // leaves a fence newer than the cut back (another cutover's) alone.
    back.target
        .exec("CREATE SCHEMA pgrepl_fence;
               CREATE TABLE pgrepl_fence.active (fenced boolean PRIMARY KEY DEFAULT true, since timestamptz NOT NULL);
               INSERT INTO pgrepl_fence.active (since) VALUES ('2999-01-01');")
        .await;
    let fence_left = || {
        back.target
            .value("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgrepl_fence'")
    };
    let out = back.run("cutover", &["--name", "pgrepl_r"]).await;
    assert!(out.stderr.contains("nothing to do"), "{out}");
    assert_eq!(fence_left().await, Some("1".into()), "a newer fence stays");
    back.target
        .exec("UPDATE pgrepl_fence.active SET since = '2000-01-01'")
        .await;
    let out = back.run("cutover", &["--name", "pgrepl_r"]).await;
    assert!(out.stderr.contains("still fenced from before"), "{out}");
    assert_eq!(
        fence_left().await,
        Some("0".into()),
        "the old fence is gone"
    );
    // The way back torn down: the new server keeps the forward sync's
    // state beside it (the schema is shared).
    let out = back.run("teardown", &["--name", "pgrepl_r"]).await;
    assert!(out.success(), "{out}");
    assert_eq!(
        back.source
            .value("SELECT count(*) FROM pgrepl.sync WHERE name = 'pgrepl'")
            .await,
        Some("1".into()),
        "{out}"
    );
}

/// An application committing with synchronous_commit off: its last
/// commits before the fence are in WAL the server has not written yet
/// (the WAL writer waits 10 s here). The fence LSN must be past them, and
/// the sync must apply them: nothing committed on the source is left
/// behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_not_yet_written_when_the_fence_goes_up_still_cross() {
    let source = ClusterOptions {
        settings: vec![
            "wal_writer_delay = 10s".into(),
            "wal_writer_flush_after = '1GB'".into(),
        ],
        ..Default::default()
    };
    let pair = Pair::start_with(source, ClusterOptions::default());
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &["--roles", "copy"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let lazy = Writer::start_with(&pair.source, "app", "-c synchronous_commit=off").await;
    wait_for("the writer's rows on the target", LIMIT, || {
        let ok = lazy.ok.load(Ordering::SeqCst);
        async move { (ok > 300).then_some(()) }
    })
    .await;
    let out = pair.run("cutover", &["--json", "--terminate"]).await;
    assert!(out.success(), "{out}");
    let (ok, _, errors) = lazy.stop().await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("terminating connection") || e.contains("closed")),
        "{errors:?}"
    );
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &t).await;
    eprintln!("{ok} asynchronous commits, all on the target");
}

/// A session that calls nextval() on a free-standing sequence and a
/// serial's every 50 ms, reconnecting when its session is ended, until
/// stopped; what it was refused.
struct Nextval {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    /// Calls refused as read-only.
    read_only: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Nextval {
    async fn start(cluster: &Cluster) -> Nextval {
        let conninfo = format!(
            "host={} port={} user=app dbname=postgres application_name=nextval-loop",
            cluster.socket_dir().display(),
            cluster.port
        );
        let (stop, calls, read_only) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n, ro) = (stop.clone(), calls.clone(), read_only.clone());
        let connect = |conninfo: String| async move {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        };
        let mut client = connect(conninfo.clone()).await.expect("nextval session");
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match client
                    .batch_execute("SELECT nextval('free_seq'), nextval('a_id_seq')")
                    .await
                {
                    Ok(()) => {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        let e = support::db_error(&e);
                        if e.contains("read-only transaction") {
                            ro.fetch_add(1, Ordering::SeqCst);
                        }
                        if errors.len() < 20 {
                            errors.push(e);
                        }
                        if client.is_closed() {
                            if let Ok(c) = connect(conninfo.clone()).await {
                                client = c;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            errors
        });
        Nextval {
            stop,
            calls,
            read_only,
            task,
        }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("nextval session")
    }
}
