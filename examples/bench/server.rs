//! A whole server moved: 10 databases × pgbench scale 5 on one source
//! server (3 × 1 with --quick). pgrepl moves it online: `sync
//! --all-databases` to caught up, then `cutover --all-databases` while
//! pgbench writes to every database (time, and the write downtime the
//! cutover reports). Beside it `pg_dumpall | psql`, which moves it offline:
//! the application stops writing for the whole copy. pgcopydb's `clone
//! --all-databases` (0.18+) is offline too; Debian bookworm ships 0.10,
//! without it, so its column is skipped there. Rounds alternate which
//! tool goes first; each round has fresh targets.

use std::time::{Duration, Instant};

use crate::env::{mib, peak_rss, secs, timed_shell, until, Env};
use crate::report::{Report, Runs};
use crate::support::Cluster;

const LIMIT: Duration = Duration::from_secs(3600);

fn db(i: usize) -> String {
    format!("d{i}")
}

pub async fn run(env: &Env, report: &mut Report) {
    let (count, scale) = if env.quick { (3, 1) } else { (10, 5) };
    let rounds = if env.quick { 1 } else { 3 };
    println!("whole server: {count} databases × pgbench scale {scale}, {rounds} round(s)");
    let source = env.cluster("bench-server-source");
    for i in 0..count {
        source.exec(&format!("CREATE DATABASE {}", db(i))).await;
        let out = env
            .pgbench_cmd(&source, &db(i), &["-i", "-s", &scale.to_string(), "-q"])
            .output()
            .await
            .expect("pgbench -i");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = source.client_db(&db(i)).await;
        for sql in [
            "ALTER TABLE pgbench_history REPLICA IDENTITY FULL",
            "VACUUM ANALYZE",
        ] {
            c.batch_execute(sql)
                .await
                .expect("history identity, statistics");
        }
    }
    let (mut online, mut synced, mut downtime, mut dumpall, mut rss) = (
        Runs::default(),
        Runs::default(),
        Runs::default(),
        Runs::default(),
        Runs::default(),
    );
    for round in 0..rounds {
        let pgrepl_first = round % 2 == 0;
        for step in 0..2 {
            if (step == 0) == pgrepl_first {
                let (total, sync, down, peak) = pgrepl_round(env, &source, count, round).await;
                online.push(total);
                synced.push(sync);
                downtime.push(down);
                rss.push(peak);
            } else {
                dumpall.push(dumpall_round(env, &source, round).await);
            }
        }
    }
    report.row(
        &format!("whole server: {count} dbs × pgbench {scale}, online vs pg_dumpall \\| psql (offline), time"),
        format!(
            "{} (sync to caught up {}, cutover under load; peak RSS {})",
            online.show("s", 1),
            synced.show("s", 1),
            rss.show("MiB", 0)
        ),
        format!("pg_dumpall \\| psql {}", dumpall.show("s", 1)),
        Some(online.median() / dumpall.median()),
        "measured (no target)",
        None,
    );
    report.row(
        &format!("whole server: {count} dbs × pgbench {scale}, write downtime"),
        format!(
            "{} (one fence across every database)",
            downtime.show("ms", 0)
        ),
        format!(
            "pg_dumpall \\| psql {} (the application stops for all of it)",
            dumpall.show("s", 1)
        ),
        Some(downtime.median() / 1000.0 / dumpall.median()),
        "measured (no target)",
        None,
    );
    report.note(
        "whole server: pgcopydb `clone --all-databases` needs pgcopydb 0.18+ (Debian bookworm ships 0.10): not in the table; it is offline like pg_dumpall".into(),
    );
}

/// One pgrepl move to a fresh target: (total s, sync to caught up s,
/// write downtime ms, peak RSS MiB). The source is given back writable
/// and without pgrepl's objects.
async fn pgrepl_round(
    env: &Env,
    source: &Cluster,
    count: usize,
    round: usize,
) -> (f64, f64, f64, f64) {
    let target = env.cluster(&format!("bench-server-target-{round}"));
    let ends = |cmd: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            cmd.into(),
            "--all-databases".into(),
            "--exclude-databases".into(),
            "postgres".into(),
            "--name".into(),
            "bench".into(),
            "--source".into(),
            source.conninfo(),
            "--target".into(),
            target.conninfo(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let start = Instant::now();
    let mut sync = env
        .pgrepl(&ends("sync", &["--roles", "copy"]))
        .spawn()
        .expect("pgrepl sync");
    let lsn: String = source
        .value("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .expect("lsn");
    for i in 0..count {
        let origin = format!("pgrepl_bench_{}", db(i));
        until("a database caught up", LIMIT, || {
            let (target, origin, lsn, dbname) = (&target, &origin, &lsn, db(i));
            async move {
                let Ok((c, conn)) = tokio_postgres::connect(&target.conninfo_db(&dbname), tokio_postgres::NoTls).await else {
                    return false;
                };
                tokio::spawn(conn);
                c.query_one(
                    "SELECT coalesce(pg_replication_origin_progress($1, false) >= $2::text::pg_lsn, false)",
                    &[origin, lsn],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            }
        })
        .await;
    }
    let caught_up = start.elapsed();
    // Every database written to while the cutover runs.
    let mut loads: Vec<tokio::process::Child> = (0..count)
        .map(|i| {
            env.pgbench_cmd(source, &db(i), &["-c", "1", "-R", "50", "-T", "600", "-n"])
                .spawn()
                .expect("pgbench")
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = peak_rss(&sync);
    let cut = env
        .pgrepl(&ends("cutover", &["--terminate"]))
        .output()
        .await
        .expect("pgrepl cutover");
    let total = start.elapsed();
    for l in &mut loads {
        let _ = l.kill().await;
    }
    let said = String::from_utf8_lossy(&cut.stdout).into_owned();
    assert!(
        cut.status.success(),
        "cutover --all-databases failed:\n{said}{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let down: f64 = said
        .split("Write downtime ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .expect("the cutover says its write downtime");
    let _ = tokio::time::timeout(Duration::from_secs(60), sync.wait()).await;
    let down_ok = env
        .pgrepl(&ends("teardown", &["--unfence"]))
        .output()
        .await
        .expect("teardown");
    assert!(
        down_ok.status.success(),
        "{}",
        String::from_utf8_lossy(&down_ok.stderr)
    );
    (secs(total), secs(caught_up), down, mib(peak))
}

/// One `pg_dumpall | psql` to a fresh target, in seconds.
async fn dumpall_round(env: &Env, source: &Cluster, round: usize) -> f64 {
    let target = env.cluster(&format!("bench-server-dumpall-{round}"));
    let bin = env
        .pg_dump
        .parent()
        .expect("pg_dump's folder")
        .to_path_buf();
    let conn = |c: &Cluster| format!("-h {} -p {} -U postgres", c.socket_dir().display(), c.port);
    let took = timed_shell(
        "pg_dumpall | psql",
        &format!(
            "{0}/pg_dumpall {1} | {0}/psql -q -X {2} -d postgres >/dev/null 2>&1; true",
            bin.display(),
            conn(source),
            conn(&target)
        ),
        &[],
    )
    .await;
    // The copy happened: the last database's rows are there.
    let rows = target
        .client_db("d0")
        .await
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0);
    assert!(rows > 0, "pg_dumpall | psql copied nothing");
    secs(took)
}
