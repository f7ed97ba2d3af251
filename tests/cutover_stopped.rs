//! A cutover stopped where it cannot clean up after itself (`kill -9`
//! under its fence): the fence's lasting parts stay on the source, and
//! `status` says so; `cutover --abandon` lifts them and the sync goes on
//! (and refuses while a cutover runs); killed again at the same point, a
//! cutover run again that fails lifts the fence it found, one that
//! succeeds finishes the cutover over it, exactly; `--abandon` then
//! refuses.

mod support;

use std::time::Duration;

use support::{assert_same_data, db_error, wait_for, wait_for_phase, Cluster, Pair};

const LIMIT: Duration = Duration::from_secs(240);

const SCHEMA: &str = "
    CREATE TABLE a (id serial PRIMARY KEY, v text);
    CREATE SEQUENCE free_seq START 500;
    INSERT INTO a (v) SELECT 'a' FROM generate_series(1, 100);
    SELECT nextval('free_seq') FROM generate_series(1, 7);
";

/// An INSERT from a new session on the source: `Err` with the server's
/// message when refused.
async fn insert(source: &Cluster, v: &str) -> Result<(), String> {
    source
        .client()
        .await
        .batch_execute(&format!("INSERT INTO a (v) VALUES ('{v}')"))
        .await
        .map_err(|e| db_error(&e))
}

/// Starts a cutover that fences the source and then waits on `blocker`'s
/// open write transaction (up to 10 minutes before it would end it), and
/// kills it with SIGKILL there (first checking that `--abandon` refuses
/// while it runs, with `refuse_abandon`).
async fn kill_a_cutover_under_its_fence(
    pair: &Pair,
    blocker: &tokio_postgres::Client,
    refuse_abandon: bool,
) {
    blocker
        .batch_execute("BEGIN; INSERT INTO a (v) VALUES ('open when the fence went up')")
        .await
        .expect("open write transaction");
    let mut cutover = pair.spawn("cutover", &["--terminate", "--wait", "10m"]);
    // Past the lasting parts: the fence's lock waits on the blocker.
    wait_for("the cutover waiting on the fence's lock", LIMIT, || {
        let s = pair.source.client();
        async move {
            let waiting: bool = s
                .await
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pgrepl_fence.active)
                        AND EXISTS (SELECT 1 FROM pg_stat_activity
                                     WHERE application_name = 'pgrepl' AND wait_event_type = 'Lock')",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            waiting.then_some(())
        }
    })
    .await;
    cutover.assert_running();
    if refuse_abandon {
        // While it runs, --abandon leaves its fence alone and names it.
        let out = pair.run("cutover", &["--abandon"]).await;
        assert_eq!(out.code, Some(1), "{out}");
        assert!(out.error_line().contains("is running"), "{out}");
        assert!(out.error_line().contains("pid"), "{out}");
    }
    cutover.kill().await;
    blocker
        .batch_execute("COMMIT")
        .await
        .expect("the blocker commits: its session was opened before the fence");
}

/// Waits for the row with `v` to reach the target: the sync streams.
async fn applied_on_target(pair: &Pair, v: &str) {
    let q = format!("SELECT count(*) FROM a WHERE v = '{v}'");
    wait_for("the sync applying it", LIMIT, || {
        let (t, q) = (&pair.target, &q);
        async move { (t.value(q).await == Some("1".into())).then_some(()) }
    })
    .await;
}

async fn slots(c: &Cluster) -> Option<String> {
    c.value("SELECT count(*) FROM pg_replication_slots").await
}

async fn status(pair: &Pair) -> String {
    let out = pair.run("status", &[]).await;
    assert!(out.success(), "{out}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_killed_under_its_fence_is_named_then_abandoned_or_finished() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &[]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    assert!(
        !status(&pair).await.contains("cutover:"),
        "nothing to say yet"
    );
    let blocker = pair.source.client().await;

    // 1. Killed under its fence: new sessions on the source are read-only,
    // and status says what stands and what to do.
    kill_a_cutover_under_its_fence(&pair, &blocker, true).await;
    let refused = insert(&pair.source, "after the kill").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("read-only")),
        "{refused:?}"
    );
    let text = status(&pair).await;
    assert!(text.contains("cutover: NOT FINISHED"), "{text}");
    assert!(text.contains("--abandon"), "{text}");
    let json = pair.run("status", &["--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("status JSON");
    assert_eq!(v["cutover"]["source_fenced"], true, "{json}");

    // 2. --abandon lifts it; the sync goes on streaming what comes after.
    let out = pair.run("cutover", &["--abandon"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Lifted the fence"), "{out}");
    insert(&pair.source, "after the abandon")
        .await
        .expect("the source takes writes again");
    applied_on_target(&pair, "after the abandon").await;
    assert!(!status(&pair).await.contains("cutover:"), "nothing stands");
    // Sequences do not stream: only a cutover carries these.
    pair.source
        .exec("SELECT nextval('free_seq') FROM generate_series(1, 3)")
        .await;
    let out = pair.run("cutover", &["--abandon"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Nothing to abandon"), "{out}");

    // 3. Killed at the same point again, then run again where it cannot
    // finish (a session stays open, no --terminate): that run lifts the
    // fence it took over, as any cutover that fails.
    kill_a_cutover_under_its_fence(&pair, &blocker, false).await;
    let out = pair.run("cutover", &["--wait", "2s"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("fenced already"), "{out}");
    insert(&pair.source, "after a failed rerun")
        .await
        .expect("the failed rerun lifted the fence it took over");

    // 4. Killed once more: running cutover again finishes it over the
    // fence it finds.
    kill_a_cutover_under_its_fence(&pair, &blocker, false).await;
    let out = pair.run("cutover", &["--terminate", "--wait", "1m"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("fenced already"), "{out}");
    assert!(out.stdout.contains("The target is ready"), "{out}");
    assert!(sync.wait(LIMIT).await.success());
    let (s, tc) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &tc).await;
    let next = |c: tokio_postgres::Client| async move {
        c.query_one("SELECT nextval('free_seq')", &[])
            .await
            .expect("nextval")
            .get::<_, i64>(0)
    };
    assert_eq!(next(tc).await, 510, "the sequence carried exactly");
    // The lasting fence: past the read-only default, the tables' triggers.
    let writer = pair.source.client().await;
    writer
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .expect("a session may turn the default off");
    let refused = writer
        .batch_execute("INSERT INTO a (v) VALUES ('x')")
        .await
        .map_err(|e| db_error(&e));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("cut over by pgrepl")),
        "{refused:?}"
    );
    let text = status(&pair).await;
    assert!(text.contains("cutover: done at source LSN"), "{text}");

    // 5. Once cut over, --abandon refuses and changes nothing.
    let out = pair.run("cutover", &["--abandon"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("was cut over at"), "{out}");
    assert!(insert(&pair.source, "still fenced").await.is_err());
}

/// Killed while it sets up the way back (`--reverse`), its reverse slot
/// made on the target and its state not yet recorded on the old source
/// (held up here by a table of that name being made in a transaction left
/// open): left, that slot would hold the target's WAL for good.
/// `--abandon` lifts the fence and removes it with the rest of the way
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_killed_setting_up_the_way_back_leaves_no_slot_after_abandon() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &[]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    assert_eq!(slots(&pair.target).await, Some("0".into()));
    // Named as pgrepl's own (the fence and its sessions rule let it be).
    let (hold, conn) = tokio_postgres::connect(
        &format!("{} application_name=pgrepl", pair.source.conninfo()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    hold.batch_execute("BEGIN; CREATE TABLE pgrepl.sync (x int)")
        .await
        .expect("a table in the way, not committed");
    let cutover = pair.spawn("cutover", &["--reverse", "--terminate", "--wait", "10m"]);
    wait_for("the way back's slot made, its state waiting", LIMIT, || {
        let s = pair.source.client();
        let t = &pair.target;
        async move {
            let waiting: bool = s
                .await
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                     WHERE application_name = 'pgrepl' AND wait_event_type = 'Lock'
                                       AND query LIKE '%pgrepl.sync%')",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (waiting && slots(t).await == Some("1".into())).then_some(())
        }
    })
    .await;
    cutover.kill().await;
    hold.batch_execute("ROLLBACK").await.expect("rollback");
    let text = status(&pair).await;
    assert!(text.contains("cutover: NOT FINISHED"), "{text}");

    let out = pair.run("cutover", &["--abandon"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Lifted the fence"), "{out}");
    assert!(
        out.stdout.contains("replication slot pgrepl_pgrepl_r"),
        "{out}"
    );
    assert_eq!(slots(&pair.target).await, Some("0".into()), "no slot left");
    insert(&pair.source, "after the abandon")
        .await
        .expect("the source takes writes again");
    // The forward sync's DDL capture on the source is whole: a column
    // added there reaches the target.
    pair.source.exec("ALTER TABLE a ADD COLUMN w int").await;
    wait_for("the DDL replayed after the abandon", LIMIT, || {
        let t = &pair.target;
        async move {
            let n = t
                .value("SELECT count(*) FROM information_schema.columns WHERE table_name = 'a' AND column_name = 'w'")
                .await;
            (n == Some("1".into())).then_some(())
        }
    })
    .await;
    applied_on_target(&pair, "after the abandon").await;
    sync.signal(libc::SIGTERM);
    assert!(sync.wait(LIMIT).await.success());
    let (s, tc) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &tc).await;
}

/// Waits until the sync applies what the source writes: its session owns
/// the slot and its control channel is open (a cutover started earlier
/// would find no sync running and start its own).
async fn streams(pair: &Pair) {
    insert(&pair.source, "streaming")
        .await
        .expect("the source takes writes");
    applied_on_target(pair, "streaming").await;
}

/// The states of the sync's control requests, in order.
const STATES: &str = "SELECT string_agg(state->>'state', ',' ORDER BY id) FROM pgrepl.control";

/// Asks the running sync to hold, as a verify does, with no requester
/// behind it, and waits until it holds.
async fn hold(pair: &Pair) {
    pair.target
        .exec("INSERT INTO pgrepl.control (sync_name, request) VALUES ('pgrepl', '{\"kind\": \"hold\"}'); NOTIFY pgrepl_control;")
        .await;
    wait_for("the sync holding", LIMIT, || async {
        (pair.target.value(STATES).await == Some("held".into())).then_some(())
    })
    .await;
}

/// How many rows with `v` the target holds.
async fn rows_with(pair: &Pair, v: &str) -> Option<String> {
    pair.target
        .value(&format!("SELECT count(*) FROM a WHERE v = '{v}'"))
        .await
}

/// Waits until the sync's walsender has sent everything the source wrote
/// so far (so what follows may check what the sync did with it).
async fn sent_all(pair: &Pair) {
    let now = pair
        .source
        .value("SELECT pg_current_wal_lsn()::text")
        .await
        .expect("an LSN");
    let q = format!(
        "SELECT coalesce(bool_or(r.sent_lsn >= '{now}'::pg_lsn), false)
           FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
          WHERE s.slot_name = 'pgrepl_pgrepl'"
    );
    wait_for("the walsender sending it", LIMIT, || {
        let q = &q;
        async move { (pair.source.value(q).await == Some("t".into())).then_some(()) }
    })
    .await;
}

/// Waits until a sync started again says it holds for the request its
/// killed process held for.
async fn serving_the_held_request(sync: &support::pgrepl::Running) {
    wait_for("the new process holding for the request", LIMIT, || {
        let log = sync.stderr.clone();
        async move {
            let log = log.lock().expect("output lock");
            log.contains("serving on the request the last session held for")
                .then_some(())
        }
    })
    .await;
}

/// A sync killed while it holds for a request (a verify's, say) and
/// started again (by its supervisor) holds again where it was: nothing
/// after the held point reaches the target until the requester lets it go.
/// (While a session holds it reads nothing, so the session ending under it
/// is the process ending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_while_it_holds_holds_again_when_started_again() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &[]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    streams(&pair).await;
    hold(&pair).await;
    sync.kill().await;
    insert(&pair.source, "while held")
        .await
        .expect("the source takes writes");
    let sync = pair.spawn("sync", &[]);
    serving_the_held_request(&sync).await;
    sent_all(&pair).await;
    assert_eq!(
        rows_with(&pair, "while held").await,
        Some("0".into()),
        "nothing past the hold"
    );
    // Stopped as a supervisor stops it (the stop records where it was),
    // and started again: it holds again there too.
    sync.signal(libc::SIGTERM);
    assert!(sync.wait(LIMIT).await.success());
    insert(&pair.source, "while stopped")
        .await
        .expect("the source takes writes");
    let sync = pair.spawn("sync", &[]);
    serving_the_held_request(&sync).await;
    sent_all(&pair).await;
    for v in ["while held", "while stopped"] {
        assert_eq!(
            rows_with(&pair, v).await,
            Some("0".into()),
            "nothing past the hold"
        );
    }
    // Let go: it applies on.
    pair.target
        .exec("UPDATE pgrepl.control SET state = '{\"state\": \"released\"}' WHERE state->>'state' = 'held'; NOTIFY pgrepl_control;")
        .await;
    applied_on_target(&pair, "while held").await;
    applied_on_target(&pair, "while stopped").await;
    let state = pair.target.value(STATES).await;
    assert_eq!(state, Some("done".into()), "the release answered");
    sync.signal(libc::SIGTERM);
    assert!(sync.wait(LIMIT).await.success());
}

/// How a test stops a sync.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGKILL: nothing recorded on the way out.
    Kill,
    /// SIGTERM: what was applied committed, where it was recorded.
    Term,
}

/// The sync killed while it holds at a cutover's fence (the cutover busy
/// under it, setting sequences: a target session holds one of them), and
/// started again: `before_end`, while the cutover still works under the
/// fence; else once the cutover has committed its fence and asked the sync
/// to end (with no sync running to answer). Either way the new process
/// answers for the one killed: the cutover finishes, exactly.
async fn a_sync_killed_at_the_fence(before_end: bool, stop: Stop) {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &[]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    streams(&pair).await;
    let blocker = pair.target.client().await;
    blocker
        .batch_execute("BEGIN; ALTER SEQUENCE free_seq CACHE 1")
        .await
        .expect("a target session holds the sequence");
    let cutover = pair.spawn("cutover", &["--terminate", "--wait", "10m"]);

    wait_for("the sync held at the fence", LIMIT, || async {
        (pair.target.value(STATES).await == Some("held".into())).then_some(())
    })
    .await;
    match stop {
        Stop::Kill => sync.kill().await,
        Stop::Term => {
            sync.signal(libc::SIGTERM);
            assert!(sync.wait(LIMIT).await.success());
        }
    }
    let restarted = if before_end {
        let sync = pair.spawn("sync", &[]);
        serving_the_held_request(&sync).await;
        blocker.batch_execute("COMMIT").await.expect("commit");
        sync
    } else {
        blocker.batch_execute("COMMIT").await.expect("commit");
        wait_for("the cutover ending the sync", LIMIT, || async {
            (pair.target.value(STATES).await == Some("end".into())).then_some(())
        })
        .await;
        pair.spawn("sync", &[])
    };
    let out = cutover.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("The target is ready"), "{out}");
    let ended = restarted.wait(LIMIT).await;
    assert!(ended.success(), "{ended}");
    assert_eq!(
        pair.target.value(STATES).await,
        Some("done".into()),
        "ended as cut over"
    );
    let (s, tc) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &tc).await;
    let next: i64 = tc
        .query_one("SELECT nextval('free_seq')", &[])
        .await
        .expect("nextval")
        .get(0);
    assert_eq!(next, 507, "the sequence carried exactly");
    // A sync started again now refuses: it was cut over.
    let out = pair.run("sync", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("was cut over at"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_at_the_fence_and_started_again_lets_the_cutover_finish() {
    a_sync_killed_at_the_fence(true, Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_at_the_fence_and_started_after_the_fence_is_committed_ends_as_cut_over() {
    a_sync_killed_at_the_fence(false, Stop::Kill).await;
}

/// As above, the sync stopped as a supervisor stops it (SIGTERM: the stop
/// records how far it had read, past the fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stopped_at_the_fence_and_started_again_lets_the_cutover_finish() {
    a_sync_killed_at_the_fence(true, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stopped_at_the_fence_and_started_after_the_fence_is_committed_ends_as_cut_over() {
    a_sync_killed_at_the_fence(false, Stop::Term).await;
}

/// A sync killed while it holds for a requester that is gone too, and
/// started again: it holds no longer than it would have (the requester
/// silent past the hold limit, 2 s here), then applies on and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_for_a_requester_that_is_gone_expires_after_a_restart() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let short_hold = [("PGREPL_HOLD_LIMIT_MS", "2000")];
    let args = pair.command("sync", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sync = support::pgrepl::spawn_with_env(&args, &short_hold);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    streams(&pair).await;
    hold(&pair).await;
    sync.kill().await;
    insert(&pair.source, "after the requester left")
        .await
        .expect("the source takes writes");
    let sync = support::pgrepl::spawn_with_env(&args, &short_hold);
    serving_the_held_request(&sync).await;
    applied_on_target(&pair, "after the requester left").await;
    assert_eq!(pair.target.value(STATES).await, Some("expired".into()));
    sync.signal(libc::SIGTERM);
    assert!(sync.wait(LIMIT).await.success());
}
