//! `pgrepl verify` against real servers: equal under a steady write load
//! (compared at one LSN, no false difference), every difference made behind
//! pgrepl's back found and named by key and column, tables without a key,
//! a stopped sync, and a sync that is not running.

mod support;

use std::time::Duration;

use support::{pgrepl, wait_for_phase, Pair};

const LIMIT: Duration = Duration::from_secs(240);

fn args(cmd: &str, pair: &Pair, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![cmd.into()];
    a.extend(pair.args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

async fn run(cmd: &str, pair: &Pair, extra: &[&str]) -> pgrepl::Output {
    let a = args(cmd, pair, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::run(&a, LIMIT).await
}

fn spawn_sync(pair: &Pair) -> pgrepl::Running {
    let a = args("sync", pair, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    pgrepl::spawn(&a)
}

fn pgbench(pair: &Pair) -> Vec<String> {
    vec![
        "-h".into(),
        pair.source.socket_dir().display().to_string(),
        "-p".into(),
        pair.source.port.to_string(),
        "-U".into(),
        "postgres".into(),
    ]
}

/// While pgbench writes to the source, verify reports equal, again and
/// again: both sides are read at the same LSN. The sync's apply holds
/// only for a moment, and the sync goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_verify_under_a_write_load_is_equal_every_time() {
    let pair = Pair::start();
    let bench = support::pg::pgbench();
    let conn = pgbench(&pair);
    let init = tokio::process::Command::new(&bench)
        .args(&conn)
        .args(["-i", "-s", "2", "-q", "postgres"])
        .output()
        .await
        .expect("pgbench -i");
    assert!(init.status.success(), "{init:?}");
    pair.source
        .exec("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .await;
    let sync = spawn_sync(&pair);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let mut load = tokio::process::Command::new(&bench)
        .args(&conn)
        .args(["-c", "4", "-T", "60", "-n", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench");
    for round in 0..3 {
        let out = run("verify", &pair, &["--chunk-rows", "50000"]).await;
        assert!(out.success(), "round {round}: {out}");
        assert!(out.stdout.contains("pgbench_accounts"), "{out}");
        assert!(out.stdout.contains(": equal."), "{out}");
        assert!(out.stdout.contains("the sync's apply held"), "{out}");
        eprintln!("{}", out.stdout.lines().last().unwrap_or_default());
    }
    let _ = load.kill().await;
    sync.signal(libc::SIGINT);
    let out = sync.wait(LIMIT).await;
    assert!(out.success(), "{out}");
}

/// Rows changed, deleted and inserted on the target behind pgrepl's back
/// are found and named: by key, with the columns that differ; in a table
/// without a key, by content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_are_named_by_key_and_column() {
    let pair = Pair::start();
    pair.source
        .exec(
            "CREATE TABLE t (id int PRIMARY KEY, a text, b int);
             INSERT INTO t SELECT g, 'a' || g, g FROM generate_series(1, 5000) g;
             CREATE TABLE k (x int, y text, PRIMARY KEY (x, y));
             INSERT INTO k SELECT g, 'y' || g FROM generate_series(1, 100) g;
             CREATE TABLE nokey (v int, w text);
             ALTER TABLE nokey REPLICA IDENTITY FULL;
             INSERT INTO nokey VALUES (1, 'one'), (1, 'one'), (2, 'two');",
        )
        .await;
    let sync = spawn_sync(&pair);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let out = run("verify", &pair, &["--chunk-rows", "1000"]).await;
    assert!(out.success(), "equal after the copy: {out}");
    pair.target
        .exec(
            "UPDATE t SET a = 'changed' WHERE id = 1234;
             UPDATE t SET a = 'x', b = -1 WHERE id = 4000;
             DELETE FROM t WHERE id = 77;
             INSERT INTO t VALUES (9999, 'extra', 0);
             DELETE FROM k WHERE x = 5;
             DELETE FROM nokey WHERE ctid = (SELECT ctid FROM nokey WHERE v = 1 LIMIT 1);
             INSERT INTO nokey VALUES (3, 'three');",
        )
        .await;
    pair.source
        .exec("INSERT INTO t VALUES (10000, 'after', 1)")
        .await;
    let out = run("verify", &pair, &["--chunk-rows", "1000"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    let text = &out.stdout;
    assert!(text.contains("missing on the target (1): (77)"), "{out}");
    assert!(text.contains("extra on the target (1): (9999)"), "{out}");
    assert!(text.contains("(1234) in a"), "{out}");
    assert!(text.contains("(4000) in a, b"), "{out}");
    assert!(text.contains("missing on the target (1): (5,y5)"), "{out}");
    let nokey = text
        .lines()
        .skip_while(|l| !l.starts_with("public.nokey"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        nokey.contains("missing on the target (1)") && nokey.contains("extra on the target (1)"),
        "{out}"
    );
    assert!(text.contains("3 table(s) differ"), "{out}");
    // As JSON, for machines.
    let json = run("verify", &pair, &["--json"]).await;
    assert_eq!(json.code, Some(1), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["equal"], false);
    assert!(v["lsn"].as_str().is_some_and(|l| l.contains('/')));
    // About 5000 rows in parts of about 1000: the differing parts were
    // found among several.
    let json = run("verify", &pair, &["--json", "--chunk-rows", "1000"]).await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    let t = v["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == "public.t"))
        .cloned();
    assert!(
        t.as_ref()
            .and_then(|t| t["chunks"].as_u64())
            .is_some_and(|n| n >= 5),
        "{json}"
    );
    assert_eq!(
        t.as_ref().map(|t| t["different_count"].clone()),
        Some(serde_json::json!(2)),
        "{json}"
    );
    sync.signal(libc::SIGINT);
    assert!(sync.wait(LIMIT).await.success());
}

/// Without a running sync, verify says so; with --stopped it compares
/// when the source has nothing the target lacks, and refuses otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sync_is_compared_only_when_nothing_is_pending() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);")
        .await;
    let out = run("sync", &pair, &["--until-caught-up"]).await;
    assert!(out.success(), "{out}");
    let out = run("verify", &pair, &[]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.error_line()
            .contains("no running `pgrepl sync --name pgrepl` answered"),
        "{out}"
    );
    assert!(out.error_line().contains("--stopped"), "{out}");
    let out = run("verify", &pair, &["--stopped"]).await;
    assert!(out.success(), "{out}");
    pair.source.exec("INSERT INTO t VALUES (1000)").await;
    let out = run("verify", &pair, &["--stopped"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.error_line()
            .contains("change(s) the stopped target has not applied"),
        "{out}"
    );
}

/// Across majors (13 -> 17 in CI), every type of the fidelity fixture
/// compares equal: the rows' text is canonical on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fidelity_types_compare_equal_across_majors() {
    let pair = Pair::start();
    pair.source
        .exec(include_str!("../fixtures/fidelity.sql"))
        .await;
    let sync = spawn_sync(&pair);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    pair.source
        .exec("UPDATE fidelity.types SET c_text = c_text || '!' WHERE id <= 3")
        .await;
    let out = run("verify", &pair, &[]).await;
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("fidelity.types"), "{out}");
    sync.signal(libc::SIGINT);
    assert!(sync.wait(LIMIT).await.success());
}

/// A sequence behind on the target is a note while the sync runs (it moves
/// them up every --sequence-interval; cutover sets them exactly), and a
/// difference once nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_behind_is_a_note_while_running_and_a_difference_when_stopped() {
    let pair = Pair::start();
    pair.source
        .exec("CREATE TABLE s (id serial PRIMARY KEY, v int); INSERT INTO s (v) SELECT g FROM generate_series(1, 10) g;")
        .await;
    let a = args("sync", &pair, &["--sequence-interval", "1h"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let sync = pgrepl::spawn(&a);
    wait_for_phase(&pair.target, "streaming", LIMIT).await;
    // The sync moves sequences up once as streaming starts (then every
    // hour): rows inserted right then may or may not be counted by that
    // pass. Rows inserted after the first batch has arrived come after it.
    let t = pair.target.client().await;
    for (batch, total) in [(50, 60i64), (5, 65)] {
        pair.source
            .exec(&format!(
                "INSERT INTO s (v) SELECT g FROM generate_series(1, {batch}) g"
            ))
            .await;
        support::wait_for("the rows on the target", LIMIT, || {
            let t = &t;
            async move {
                let n: i64 = t
                    .query_one("SELECT count(*) FROM s", &[])
                    .await
                    .ok()?
                    .get(0);
                (n == total).then_some(())
            }
        })
        .await;
    }
    let out = run("verify", &pair, &[]).await;
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("note: sequence public.s_id_seq is behind on the target"),
        "{out}"
    );
    sync.signal(libc::SIGINT);
    assert!(sync.wait(LIMIT).await.success());
    let out = run("verify", &pair, &["--stopped"]).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains(" < 66): its next value would collide"),
        "{out}"
    );
}
