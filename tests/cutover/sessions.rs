//! The application's sessions at the fence: one calling nextval() is ended
//! or named before the sequences are read, one deadlocking with the fence
//! does not stop the cutover. Part of the `cutover` test binary.

use super::*;

/// Under load, with a session that keeps calling nextval(): without
/// --terminate the cutover refuses, naming it, and changes nothing; with
/// it, the session is ended before the sequences are read, and every
/// sequence on the target is at or past the source's final value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_calling_nextval_is_ended_or_named_before_the_sequences_are_read() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &["--roles", "copy"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let writer = Writer::start(&pair.source, "app").await;
    let caller = Nextval::start(&pair.source).await;
    wait_for("nextval calls", LIMIT, || {
        let n = caller.calls.load(Ordering::SeqCst);
        async move { (n > 5).then_some(()) }
    })
    .await;
    // Without --terminate: refused, naming both sessions; nothing fenced.
    let out = pair.run("cutover", &["--wait", "2s"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let err = out.error_line();
    assert!(err.contains("could still move a sequence"), "{err}");
    assert!(err.contains("user app, nextval-loop"), "{err}");
    assert!(err.contains("--terminate"), "{err}");
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM pg_trigger WHERE tgname = 'pgrepl_fence'")
            .await,
        Some("0".into())
    );
    let calls = caller.calls.load(Ordering::SeqCst);
    wait_for("nextval goes on", LIMIT, || {
        let n = caller.calls.load(Ordering::SeqCst);
        async move { (n > calls + 3).then_some(()) }
    })
    .await;
    // With --terminate: the sessions end after the fence, the sequences
    // are read once they are gone.
    let out = pair.run("cutover", &["--terminate"]).await;
    assert!(out.success(), "{out}");
    // The caller reconnects and is refused: new sessions are read-only.
    let refused_at = caller.calls.load(Ordering::SeqCst);
    wait_for("the new session refused", LIMIT, || {
        let n = caller.read_only.load(Ordering::SeqCst);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let errors = caller.stop().await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("terminating connection") || e.contains("closed")),
        "{errors:?}"
    );
    let _ = writer.stop().await;
    assert!(sync.wait(LIMIT).await.success());
    let (s, t) = (pair.source.client().await, pair.target.client().await);
    let (src, tgt) = (sequences(&s).await, sequences(&t).await);
    for ((name, sv, scalled), (_, tv, tcalled)) in src.iter().zip(&tgt) {
        let next = |v: i64, called: bool| if called { v + 1 } else { v };
        assert!(
            next(*tv, *tcalled) >= next(*sv, *scalled),
            "{name}: target {tv} behind the source's final {sv} ({refused_at} calls)"
        );
    }
    assert_same_data(&s, &t).await;
}

/// A writer that holds one synced table and then wants another the fence
/// has locked already deadlocks with the fence; the server cancels the
/// fence's LOCK (the one that waited first). The fence gives its locks
/// back and tries again, and the cutover finishes (the writer, opened
/// before the fence, is ended with --terminate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_deadlocking_with_the_fence_does_not_stop_the_cutover() {
    let pair = Pair::start();
    pair.source.exec(SCHEMA).await;
    let sync = pair.spawn("sync", &["--roles", "copy"]);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    // Holds b (the fence locks a, then b).
    let writer = pair.source.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO b (v) VALUES ('held')")
        .await
        .unwrap();
    let cutover = pair.spawn("cutover", &["--terminate", "--wait", "30s"]);
    // Once the fence waits for b (holding a), the writer wants a.
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                   WHERE c.relname = 'b' AND l.mode = 'ExclusiveLock' AND NOT l.granted";
    wait_for("the fence to wait for b", LIMIT, || async {
        (pair.source.value(waiting).await.as_deref() == Some("1")).then_some(())
    })
    .await;
    let deadlock = tokio::spawn(async move {
        writer
            .batch_execute("INSERT INTO a (v) VALUES ('wants a'); COMMIT")
            .await
    });
    let out = cutover.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    let _ = deadlock.await;
    let _ = sync.wait(LIMIT).await;
    assert_same_data(&pair.source.client().await, &pair.target.client().await).await;
}
