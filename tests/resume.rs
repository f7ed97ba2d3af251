//! A copy interrupted anywhere resumes where it was: kill -9 at random
//! points of the copy while the source is written to, a source restart
//! ridden by --retry-for, a schema changed in between (started over).
//! Every run ends with source and target compared by checksum.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::workload::{self, Workload};
use support::{assert_same_data, wait_for, Pair};

const LIMIT: Duration = Duration::from_secs(240);

/// Every column kind (the fidelity fixture), the workload's tables, and a
/// large table split into chunks, all written to while the copy runs.
async fn seed(pair: &Pair) {
    pair.source
        .exec(include_str!("../fixtures/fidelity.sql"))
        .await;
    pair.source.exec(workload::SCHEMA).await;
    pair.source
        .exec(
            "CREATE TABLE big (id int PRIMARY KEY, n int NOT NULL, pad text);
             INSERT INTO big SELECT g, 0, repeat(md5(g::text), 3) FROM generate_series(1, 600000) g;
             ANALYZE big;",
        )
        .await;
}

/// What the target recorded of the copy: chunks kept, phase.
/// Tables whose every chunk is recorded (kept whole by a resume, unless it
/// starts over).
async fn whole_tables(target: &tokio_postgres::Client) -> i64 {
    target
        .query_one(
            "SELECT CASE WHEN to_regclass('pgrepl.copied_chunks') IS NULL THEN 0
                    ELSE (SELECT count(*) FROM (SELECT 1 FROM pgrepl.copied_chunks
                          GROUP BY schema_name, table_name HAVING count(*) >= max(chunks)) t) END",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

/// Waits until `n` chunks of the copy are recorded.
async fn until_chunks(target: &tokio_postgres::Client, n: i64) {
    wait_for("some chunks to be copied", LIMIT, || async move {
        (copy_state(target).await.0 >= n).then_some(())
    })
    .await;
}

async fn copy_state(target: &tokio_postgres::Client) -> (i64, String) {
    let chunks = target
        .query_one(
            "SELECT CASE WHEN to_regclass('pgrepl.copied_chunks') IS NULL THEN 0
                    ELSE (SELECT count(*) FROM pgrepl.copied_chunks) END",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0);
    let phase = target
        .query_opt("SELECT phase FROM pgrepl.sync", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|| "none".into());
    (chunks, phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_killed_at_random_points_of_the_copy_it_resumes_and_ends_equal() {
    support::init_logs();
    let pair = Pair::start();
    seed(&pair).await;
    let load = Workload::start(&pair.source).await;
    // Updates that move rows of the split table between pages (and so
    // between chunks), and count: applied twice or missed, n differs.
    let writer = {
        let source = pair.source.client().await;
        tokio::spawn(async move {
            let mut k: i64 = 0;
            loop {
                k += 1;
                let id = (k * 7919) % 600_000 + 1;
                let sql = format!(
                    "UPDATE big SET n = n + 1, pad = pad || 'x' WHERE id = {id};
                     UPDATE fidelity.types SET c_int8 = c_int8 + 1, c_text = c_text || 'x' WHERE id = 1;
                     UPDATE fidelity.nopk SET b = b || 'y' WHERE a = 3;
                     DELETE FROM big WHERE id = {};
                     INSERT INTO big VALUES ({}, 1, 'new');",
                    600_001 - id,
                    600_000 + k
                );
                if source.batch_execute(&sql).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let seed: u64 = std::env::var("PGREPL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("seed {seed} (PGREPL_TEST_SEED={seed} runs these kill points again)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let target = pair.target.client().await;
    let extra = ["--jobs", "1", "--chunk-size", "1MB"];
    let mut killed_copying = 0;
    let mut resumed_with_kept = 0;
    for round in 0..10 {
        let (before, phase) = copy_state(&target).await;
        if round > 0 && phase != "copying" {
            break;
        }
        let running = pair.spawn("sync", &extra);
        // Once this run has copied something more (or the copy is done),
        // then a random moment later. (Polled tightly: a chunk takes a few
        // milliseconds.)
        // From the sixth round, if no resume has kept a table yet (the
        // largest table goes first: on a slow machine the first rounds may
        // all fall in it), until a whole table is recorded too.
        let want_whole = round >= 5 && resumed_with_kept == 0;
        let whole_before = whole_tables(&target).await;
        let since = std::time::Instant::now();
        loop {
            let (chunks, phase) = copy_state(&target).await;
            if phase == "copied" || phase == "streaming" {
                break;
            }
            if chunks > before && (!want_whole || whole_tables(&target).await > whole_before) {
                break;
            }
            assert!(
                since.elapsed() < LIMIT,
                "round {round}: the copy did not go on"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after = Duration::from_millis(rng.random_range(0..120));
        tokio::time::sleep(after).await;
        let output = running.output_so_far();
        running.kill().await;
        let (chunks, phase) = copy_state(&target).await;
        eprintln!("round {round}: killed {after:?} after a chunk; {chunks} chunks recorded, phase {phase}");
        if phase == "copying" {
            killed_copying += 1;
        }
        if round > 0 {
            assert!(
                output.contains("was interrupted: resuming it") || phase != "copying",
                "round {round} did not resume:\n{output}"
            );
            assert!(!output.contains("starting the copy over"), "{output}");
            if output.contains("table(s) kept") && !output.contains("Resuming the copy: 0 table(s)")
            {
                resumed_with_kept += 1;
            }
        }
    }
    assert!(
        killed_copying >= 3,
        "only {killed_copying} kills hit the copy"
    );
    assert!(resumed_with_kept >= 1, "no resume kept a table");

    writer.abort();
    let batches = load.stop().await;
    assert!(batches > 0);
    let out = pair.run("sync", &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert!(!out.stdout.contains("starting the copy over"), "{out}");
    let rows = assert_same_data(&pair.source.client().await, &target).await;
    assert!(rows > 600_000, "{rows}");
    support::schema::assert_same_shape(&pair.source.client().await, &target).await;
    let verify = pair.run("verify", &["--stopped"]).await;
    assert!(verify.success(), "{verify}");
}

/// A source restart in the middle of the copy kills its snapshot: the sync
/// goes on under a new one by itself, within --retry-for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_restart_during_the_copy_is_ridden_by_retry_for() {
    support::init_logs();
    let mut pair = Pair::start();
    seed(&pair).await;
    let load = Workload::start(&pair.source).await;
    let target = pair.target.client().await;
    let running = pair.spawn(
        "sync",
        &[
            "--copy-only",
            "--jobs",
            "1",
            "--chunk-size",
            "2MB",
            "--retry-for",
            "90s",
        ],
    );
    until_chunks(&target, 3).await;
    let batches = load.stop().await;
    pair.source.restart();
    let load = Workload::start_from(&pair.source, batches).await;
    let n = load.batches.load(Ordering::SeqCst);
    wait_for("the workload to go on", Duration::from_secs(30), || {
        let now = load.batches.load(Ordering::SeqCst);
        async move { (now > n + 5).then_some(()) }
    })
    .await;
    let out = running.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    assert!(out.all().contains("resuming it"), "{out}");
    assert!(out.stdout.contains("Resuming the copy"), "{out}");
    load.stop().await;
    // The copy is one consistent state per table plus the stream: caught
    // up, the target equals the source.
    let out = pair.run("sync", &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert_same_data(&pair.source.client().await, &target).await;
}

/// The target crashing (immediate stop) and starting again in the middle
/// of the copy: chunks committed asynchronously and lost are copied again,
/// the rest kept, within --retry-for, in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_crash_during_the_copy_is_ridden_by_retry_for() {
    support::init_logs();
    let mut pair = Pair::start();
    seed(&pair).await;
    let load = Workload::start(&pair.source).await;
    let running = pair.spawn(
        "sync",
        &[
            "--copy-only",
            "--jobs",
            "2",
            "--chunk-size",
            "2MB",
            "--retry-for",
            "90s",
        ],
    );
    until_chunks(&pair.target.client().await, 3).await;
    pair.target.stop_mode("immediate");
    pair.target.start_again();
    let out = running.wait(LIMIT).await;
    assert!(out.success(), "{out}");
    load.stop().await;
    let out = pair.run("sync", &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    assert_same_data(&pair.source.client().await, &pair.target.client().await).await;
}

/// A schema changed while the copy was down cannot be resumed: the copy
/// starts over, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_changed_in_between_starts_the_copy_over() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g;
             CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 10);",
        )
        .await;
    let running = pair.spawn("sync", &["--copy-only", "--jobs", "1", "--chunk-size", "0"]);
    let target = pair.target.client().await;
    support::wait_for_phase(&pair.target, "copying", LIMIT).await;
    wait_for("the copy of big to be under way", LIMIT, || {
        let t = &target;
        async move {
            t.query_opt(
                "SELECT 1 FROM pgrepl.tables WHERE table_name = 'big' AND state = 'copying'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
        }
    })
    .await;
    running.kill().await;
    pair.source
        .exec("ALTER TABLE small ADD COLUMN note text DEFAULT 'n'")
        .await;
    let out = pair.run("sync", &["--copy-only"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("was interrupted"), "{out}");
    assert!(
        out.stdout
            .contains("cannot be resumed (the source's schema changed since the copy began)"),
        "{out}"
    );
    assert!(out.stdout.contains("starting the copy over"), "{out}");
    assert_same_data(&pair.source.client().await, &target).await;
}

/// Ctrl-C in the middle of the copy stops it and keeps what it copied; the
/// next run resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_copy_keeps_it_and_a_rerun_resumes() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 10);
             CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g;
             ANALYZE big;",
        )
        .await;
    let running = pair.spawn("sync", &["--jobs", "1", "--chunk-size", "1MB"]);
    let target = pair.target.client().await;
    wait_for("some chunks of big to be copied", LIMIT, || {
        let t = &target;
        async move {
            t.query_opt(
                "SELECT 1 FROM pgrepl.copied_chunks WHERE table_name = 'big' AND chunk > 0 LIMIT 1",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
        }
    })
    .await;
    running.signal(libc::SIGINT);
    let out = running.wait(LIMIT).await;
    assert_eq!(out.code, Some(130), "{out}");
    assert!(out.stderr.contains("what is copied is kept"), "{out}");
    let (chunks, phase) = copy_state(&target).await;
    assert_eq!(phase, "copying");
    assert!(chunks >= 2, "{chunks}");
    // status says what is kept, what remains, and at what pace.
    let status = pair.run("status", &[]).await;
    assert!(status.success(), "{status}");
    assert!(
        status
            .stdout
            .contains(&format!("{chunks} chunk(s) kept on the target")),
        "{status}"
    );
    assert!(
        status.stdout.contains("rows/s over the last minute, about"),
        "{status}"
    );

    let out = pair.run("sync", &["--copy-only"]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("Resuming the copy"), "{out}");
    // Nothing wrote to big since: the chunks it had are kept.
    assert!(
        out.stdout.contains("chunk(s) of 1 split table(s) kept"),
        "{out}"
    );
    assert_same_data(&pair.source.client().await, &target).await;
}
