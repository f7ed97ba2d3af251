//! A sync stopped while it holds for a request (a verify's, a cutover's)
//! and started again serves the request on, from where its last process
//! held: it holds again, advances as far as it was asked and no further,
//! answers a cutover's end, and never claims a hold the target is already
//! past.

mod support;

use support::held::{
    applied_on_target, hold, insert, rows_with, sent_all, serving_the_held_request, source_lsn,
    states_are, stop, streaming_sync, sync_with, Stop, LIMIT, STATES,
};

/// A hold limit long enough that no hold in these tests expires by itself.
const LONG_HOLD: &[(&str, &str)] = &[("PGREPL_HOLD_LIMIT_MS", "600000")];
use support::{assert_same_data, wait_for, Pair};

/// A sync killed while it holds for a request (a verify's, say) and
/// started again (by its supervisor) holds again where it was: nothing
/// after the held point reaches the target until the requester lets it go.
/// (While a session holds it reads nothing, so the session ending under it
/// is the process ending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_while_it_holds_holds_again_when_started_again() {
    let pair = Pair::start();
    let sync = streaming_sync(&pair, &[]).await;
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
    stop(sync).await;
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
    stop(sync).await;
}

/// The sync killed while it holds at a cutover's fence (the cutover busy
/// under it, setting sequences: a target session holds one of them), and
/// started again: `before_end`, while the cutover still works under the
/// fence; else once the cutover has committed its fence and asked the sync
/// to end (with no sync running to answer). Either way the new process
/// answers for the one killed: the cutover finishes, exactly.
async fn a_sync_killed_at_the_fence(before_end: bool, how: Stop) {
    let pair = Pair::start();
    let sync = streaming_sync(&pair, &[]).await;
    let blocker = pair.target.client().await;
    blocker
        .batch_execute("BEGIN; ALTER SEQUENCE free_seq CACHE 1")
        .await
        .expect("a target session holds the sequence");
    let cutover = pair.spawn("cutover", &["--terminate", "--wait", "10m"]);

    states_are(&pair, "held").await;
    match how {
        Stop::Kill => sync.kill().await,
        Stop::Term => stop(sync).await,
    }
    let restarted = if before_end {
        let sync = pair.spawn("sync", &[]);
        serving_the_held_request(&sync).await;
        blocker.batch_execute("COMMIT").await.expect("commit");
        sync
    } else {
        blocker.batch_execute("COMMIT").await.expect("commit");
        states_are(&pair, "end").await;
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
    let short_hold = [("PGREPL_HOLD_LIMIT_MS", "2000")];
    let sync = streaming_sync(&pair, &short_hold).await;
    hold(&pair).await;
    sync.kill().await;
    insert(&pair.source, "after the requester left")
        .await
        .expect("the source takes writes");
    let sync = sync_with(&pair, &short_hold);
    serving_the_held_request(&sync).await;
    applied_on_target(&pair, "after the requester left").await;
    assert_eq!(pair.target.value(STATES).await, Some("expired".into()));
    stop(sync).await;
}

/// Leaves a request in the control table as a sync stopped while serving
/// it leaves it (`request` and `state` as their rows' JSON).
async fn left_request(pair: &Pair, request: &str, state: &str) {
    pair.target
        .exec(&format!(
            "INSERT INTO pgrepl.control (sync_name, request, state) VALUES ('pgrepl', '{request}', '{state}')"
        ))
        .await;
}

/// A verify's advance left by a sync stopped while it applied toward the
/// verify's LSN (the row reads `advance`): the next process applies
/// exactly the transactions committing before that LSN, holds there and
/// says so; what came after waits for the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stopped_while_it_advances_advances_as_far_as_asked_when_started_again() {
    let pair = Pair::start();
    let sync = streaming_sync(&pair, LONG_HOLD).await;
    stop(sync).await;
    insert(&pair.source, "before").await.expect("a write");
    let through = source_lsn(&pair).await;
    insert(&pair.source, "after").await.expect("a write");
    left_request(
        &pair,
        r#"{"kind": "hold"}"#,
        &format!(r#"{{"state": "advance", "through": "{through}"}}"#),
    )
    .await;

    let sync = sync_with(&pair, LONG_HOLD);
    states_are(&pair, "held").await;
    sent_all(&pair).await;
    assert_eq!(
        rows_with(&pair, "before").await,
        Some("1".into()),
        "applied up to the LSN"
    );
    assert_eq!(
        rows_with(&pair, "after").await,
        Some("0".into()),
        "nothing past it"
    );
    let at = pair
        .target
        .value("SELECT state->>'at' FROM pgrepl.control")
        .await;
    assert_eq!(
        at.as_deref(),
        Some(through.as_str()),
        "held at the LSN asked for"
    );

    pair.target
        .exec(
            "UPDATE pgrepl.control SET state = '{\"state\": \"released\"}'; NOTIFY pgrepl_control;",
        )
        .await;
    applied_on_target(&pair, "after").await;
    assert_eq!(pair.target.value(STATES).await, Some("done".into()));
    stop(sync).await;
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &t).await;
}

/// A hold whose point the target is already past (a sync that went on
/// without it, an older pgrepl's say): what its requester relied on is
/// gone, so the next process expires it at once instead of claiming it,
/// and applies on (the hold limit is ten minutes here: only the expiry
/// lets the row through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_the_target_is_already_past_is_expired_not_claimed() {
    let pair = Pair::start();
    // Before the sync starts: its position will be past it.
    let behind = source_lsn(&pair).await;
    let sync = streaming_sync(&pair, LONG_HOLD).await;
    stop(sync).await;
    left_request(
        &pair,
        r#"{"kind": "hold"}"#,
        &format!(r#"{{"state": "held", "at": "{behind}"}}"#),
    )
    .await;
    insert(&pair.source, "after the stop")
        .await
        .expect("a write");

    let sync = sync_with(&pair, LONG_HOLD);
    applied_on_target(&pair, "after the stop").await;
    assert_eq!(pair.target.value(STATES).await, Some("expired".into()));
    stop(sync).await;
}

/// A cutover's end at a fence the target is already past: the sync can
/// neither claim the cutover nor apply on (the source took no more writes
/// after the fence, and the cutover recorded it as the end): it refuses,
/// as a sync cut over does, applies nothing, and leaves the request as it
/// found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_ended_behind_the_target_is_refused_and_nothing_applied() {
    let pair = Pair::start();
    // Before the sync starts: its position will be past it.
    let fence = source_lsn(&pair).await;
    let sync = streaming_sync(&pair, LONG_HOLD).await;
    stop(sync).await;
    left_request(
        &pair,
        &format!(r#"{{"kind": "hold_at", "lsn": "{fence}"}}"#),
        &format!(r#"{{"state": "end", "at": "{fence}"}}"#),
    )
    .await;
    insert(&pair.source, "after the stop")
        .await
        .expect("a write");

    let out = pair.run("sync", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("was cut over at"), "{out}");
    assert!(out.error_line().contains(&fence), "{out}");
    assert_eq!(rows_with(&pair, "after the stop").await, Some("0".into()));
    assert_eq!(pair.target.value(STATES).await, Some("end".into()));
}

/// Pauses the sync (SIGSTOP) outside a round of large objects and roles:
/// a round paused holding its lock would keep any cutover waiting on it.
async fn pause_outside_a_round(pair: &Pair, sync: &support::pgrepl::Running) {
    const ROUND: &str = "SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 2
          AND classid::int8 = (hashtext('pgrepl carry')::int8 & 4294967295)";
    wait_for("the sync paused outside a round", LIMIT, || async {
        sync.signal(libc::SIGSTOP);
        if pair.target.value(ROUND).await == Some("0".into()) {
            return Some(());
        }
        sync.signal(libc::SIGCONT);
        None
    })
    .await;
}

/// A sync between two sessions: started, streaming, then paused (outside
/// a round) with its walsender ended, so its slot is idle while its
/// process runs.
async fn between_two_sessions(pair: &Pair) -> support::pgrepl::Running {
    let sync = streaming_sync(pair, &[]).await;
    pause_outside_a_round(pair, &sync).await;
    pair.source
        .exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'")
        .await;
    wait_for("the slot idle", LIMIT, || async {
        (pair.source.value(SLOT_IDLE).await == Some("t".into())).then_some(())
    })
    .await;
    sync
}

/// Waits until a cutover says it waits for the sync between two sessions
/// (the test fails at once if it says it found none).
async fn waiting_for_the_sync(cutover: &support::pgrepl::Running) {
    let said = wait_for("the cutover saying what it found", LIMIT, || {
        let text = cutover.output_so_far();
        async move {
            (text.contains("between two sessions") || text.contains("No sync is running"))
                .then_some(text)
        }
    })
    .await;
    assert!(said.contains("between two sessions"), "{said}");
}

/// The sync between two sessions gone (killed) while a cutover waits for
/// it: no sync runs now, so the cutover runs one itself and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_gone_while_the_cutover_waits_for_it_leaves_the_cutover_to_run_one() {
    let pair = Pair::start();
    let sync = between_two_sessions(&pair).await;
    let cutover = pair.spawn("cutover", &["--wait", "2m"]);
    waiting_for_the_sync(&cutover).await;
    sync.kill().await;
    let out = cutover.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stderr
            .contains("The sync stopped while the cutover waited"),
        "{out}"
    );
    assert!(out.stdout.contains("The target is ready"), "{out}");
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &t).await;
}

/// The sync's slot: whether a session streams from it.
const SLOT_IDLE: &str =
    "SELECT active_pid IS NULL FROM pg_replication_slots WHERE slot_name = 'pgrepl_pgrepl'";

/// A cutover started while the sync runs but does not stream (between two
/// sessions: here its process is paused and its walsender ended, so its
/// slot is idle) waits for it instead of running a sync of its own beside
/// it (and refuses, fencing nothing, if it waits in vain; a verify of a
/// stopped sync and a teardown refuse it as running); the sync,
/// streaming again, holds at the fence and ends as cut over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_waits_for_a_sync_between_two_sessions() {
    let pair = Pair::start();
    let sync = between_two_sessions(&pair).await;
    let status = pair.run("status", &[]).await;
    assert!(
        status
            .stdout
            .contains("idle, the sync runs (between two sessions)"),
        "{status}"
    );
    let json = pair.run("status", &["--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("status JSON");
    assert_eq!(v["running"], true, "{json}");
    // A stopped sync's verify is refused too: this one is about to move.
    let out = pair.run("verify", &["--stopped"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("between two sessions"), "{out}");

    // Nor is it torn down from under it.
    let out = pair.run("teardown", &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("is running"), "{out}");
    assert!(out.error_line().contains("Nothing was removed"), "{out}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_replication_slots")
            .await,
        Some("1".into())
    );
    // A cutover that waits for it in vain refuses before it fences
    // anything, naming the sync's session.
    let out = pair.run("cutover", &["--wait", "3s"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.error_line().contains("did not stream for"), "{out}");
    assert!(out.error_line().contains("pg_terminate_backend("), "{out}");
    insert(&pair.source, "nothing fenced")
        .await
        .expect("the source takes writes");

    let cutover = pair.spawn("cutover", &["--wait", "2m"]);
    waiting_for_the_sync(&cutover).await;
    sync.signal(libc::SIGCONT);
    let out = cutover.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("The target is ready"), "{out}");
    let ended = sync.wait(LIMIT).await;
    assert!(ended.success(), "{ended}");
    assert_eq!(pair.target.value(STATES).await, Some("done".into()));
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    assert_same_data(&s, &t).await;
    // Its process gone, its session ends a moment later: status says so.
    wait_for("status saying no sync runs", LIMIT, || async {
        let json = pair.run("status", &["--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&json.stdout).ok()?;
        (v["running"] == false).then_some(())
    })
    .await;
}
