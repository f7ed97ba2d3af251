//! A cutover stopped where it cannot clean up after itself (`kill -9`
//! under its fence): the fence's lasting parts stay on the source, and
//! `status` says so; `cutover --abandon` lifts them and the sync goes on
//! (and refuses while a cutover runs); killed again at the same point, a
//! cutover run again that fails lifts the fence it found, one that
//! succeeds finishes the cutover over it, exactly; `--abandon` then
//! refuses. (A sync stopped while it holds for a cutover: hold_stopped.)

mod support;

use support::held::{applied_on_target, insert, LIMIT, SCHEMA};
use support::{assert_same_data, db_error, wait_for, wait_for_phase, Cluster, Pair};

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
