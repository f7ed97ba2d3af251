//! A copy killed half way and resumed against the same copy left alone:
//! pgbench data (pgbench_accounts split into chunks), `pgrepl sync
//! --copy-only` killed with SIGKILL once half the rows are on the target,
//! then run again; the total wall time of both runs against one
//! uninterrupted copy, alternating, medians of 5 after an untimed warm-up.
//! Rows compared by checksum after each resumed copy.

use std::time::{Duration, Instant};

use crate::anchors::{jobs, teardown};
use crate::env::{fresh_db, secs, until, Env};
use crate::report::{Report, Runs};
use crate::support::Cluster;

pub async fn run(env: &Env, report: &mut Report) {
    let scale = if env.quick { 20 } else { 100 };
    println!("\n== resume: pgbench scale {scale}, copy killed at 50 % and resumed");
    let source = env.cluster("bench-resume-source");
    let target = env.cluster("bench-resume-target");
    env.pgbench_init(&source, scale).await;
    source
        .exec("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .await;
    source.exec("VACUUM ANALYZE").await;
    let rows: i64 = source
        .value("SELECT count(*) FROM pgbench_accounts")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Untimed: the source's tables read once, so the first timed copy
    // does not pay for a cold cache the others then enjoy.
    fresh_db(&target, "resume").await;
    copy(env, &source, &target).await;
    teardown(env, &source, &target, "resume").await;
    let rounds = if env.quick { 2 } else { 5 };
    let (mut whole, mut resumed) = (Runs::default(), Runs::default());
    for round in 0..rounds {
        for interrupted in [round % 2 == 1, round % 2 == 0] {
            fresh_db(&target, "resume").await;
            let took = if interrupted {
                killed_and_resumed(env, &source, &target, rows).await
            } else {
                copy(env, &source, &target).await
            };
            println!(
                "  round {round}: {} {:.2}s",
                if interrupted {
                    "killed at 50 % + resumed"
                } else {
                    "uninterrupted"
                },
                secs(took)
            );
            match interrupted {
                true => resumed.push(secs(took)),
                false => whole.push(secs(took)),
            }
            teardown(env, &source, &target, "resume").await;
        }
    }
    let ratio = resumed.median() / whole.median().max(0.001);
    report.row(
        &format!(
            "copy killed at 50 % and resumed, pgbench scale {scale}, --jobs {}",
            jobs()
        ),
        format!("{} (both runs)", resumed.show("s", 2)),
        format!("one uninterrupted copy {}", whole.show("s", 2)),
        Some(ratio),
        "≤ 1.1 × the uninterrupted copy",
        Some(ratio <= 1.1),
    );
}

fn args(source: &Cluster, target: &Cluster) -> Vec<String> {
    vec![
        "sync".into(),
        "--copy-only".into(),
        "--name".into(),
        "bench".into(),
        "--source".into(),
        source.conninfo(),
        "--target".into(),
        target.conninfo_db("resume"),
        "--jobs".into(),
        jobs().to_string(),
        "--chunk-size".into(),
        "32MiB".into(),
    ]
}

async fn copy(env: &Env, source: &Cluster, target: &Cluster) -> Duration {
    let started = Instant::now();
    let out = env
        .pgrepl(&args(source, target))
        .output()
        .await
        .expect("pgrepl");
    assert!(
        out.status.success(),
        "pgrepl copy failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// The first run killed once half of pgbench_accounts is on the target,
/// the second to the end; both runs' time.
async fn killed_and_resumed(env: &Env, source: &Cluster, target: &Cluster, rows: i64) -> Duration {
    let started = Instant::now();
    let mut first = env
        .pgrepl(&args(source, target))
        .spawn()
        .expect("spawn pgrepl");
    let client = target.client_db("resume").await;
    until("half the rows on the target", Duration::from_secs(600), || {
        let c = &client;
        async move {
            c.query_one(
                "SELECT coalesce(sum(rows), 0)::int8 FROM pgrepl.copied_chunks WHERE table_name = 'pgbench_accounts'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) * 2 >= rows)
            .unwrap_or(false)
        }
    })
    .await;
    first.kill().await.expect("kill pgrepl");
    let out = env
        .pgrepl(&args(source, target))
        .output()
        .await
        .expect("pgrepl");
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("Resuming the copy"),
        "the resumed copy failed:\n{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::support::assert_same_data(&source.client().await, &client).await;
    took
}
