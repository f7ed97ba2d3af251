//! Finishing a migration, measured: `pgrepl verify` against `pgcopydb
//! compare data` on the same live pair while pgbench writes to the
//! source, and `pgrepl cutover` under that load (write downtime, time to
//! ready, sequences exact, nothing lost).
//!
//! Both parts start from a running `pgrepl sync` of pgbench at scale 30
//! (5 with --quick) plus a TOAST table (values of ~20 kB stored out of
//! line) and an `orders` table whose bigserial the pgbench script feeds.

use std::time::{Duration, Instant};

use crate::env::{mib, secs, until, Env};
use crate::report::{percentile, Report};
use crate::support::Cluster;

const SETUP: &str = "
    ALTER TABLE pgbench_history REPLICA IDENTITY FULL;
    CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL);
    ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
    CREATE TABLE orders (id bigserial PRIMARY KEY, account int NOT NULL, at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE marker (id int PRIMARY KEY);
";

/// What each pgbench client runs, besides tpcb-like: an order with a
/// sequence-assigned key, and now and then a TOASTed document rewritten.
const ORDERS_SCRIPT: &str =
    "\\set aid random(1, 100000)\nINSERT INTO orders (account) VALUES (:aid);\n";
const DOCS_SCRIPT: &str =
    "\\set d random(1, 2000)\nUPDATE docs SET body = md5(random()::text) || body WHERE id = :d;\n";

struct Live {
    source: Cluster,
    target: Cluster,
    sync: tokio::process::Child,
    scripts: tempfile::TempDir,
}

impl Live {
    async fn start(env: &Env, name: &str) -> Live {
        let scale = if env.quick { 5 } else { 30 };
        let source = env.cluster(&format!("bench-{name}-source"));
        let target = env.cluster(&format!("bench-{name}-target"));
        env.pgbench_init(&source, scale).await;
        source.exec(SETUP).await;
        source
            .exec("INSERT INTO docs SELECT g, string_agg(md5(g::text || i::text), '') FROM generate_series(1, 2000) g, generate_series(1, 600) i GROUP BY g")
            .await;
        source.exec("VACUUM ANALYZE").await;
        let scripts = tempfile::tempdir().expect("tempdir");
        std::fs::write(scripts.path().join("orders.sql"), ORDERS_SCRIPT).expect("script");
        std::fs::write(scripts.path().join("docs.sql"), DOCS_SCRIPT).expect("script");
        let sync = env
            .pgrepl(&Live::args("sync", &source, &target, &[]))
            .spawn()
            .expect("pgrepl sync");
        let mut live = Live {
            source,
            target,
            sync,
            scripts,
        };
        crate::support::wait_for_phase(&live.target, "streaming", Duration::from_secs(1800)).await;
        live.caught_up(Duration::from_secs(600)).await;
        live
    }

    fn args(cmd: &str, source: &Cluster, target: &Cluster, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![cmd.into(), "--name".into(), "bench".into()];
        a.extend([
            "--source".into(),
            source.conninfo(),
            "--target".into(),
            target.conninfo(),
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn cmd_args(&self, cmd: &str, extra: &[&str]) -> Vec<String> {
        Live::args(cmd, &self.source, &self.target, extra)
    }

    /// Commits a marker on the source and waits for it on the target.
    async fn caught_up(&mut self, limit: Duration) {
        let n: i32 = self
            .source
            .value("INSERT INTO marker SELECT coalesce(max(id), 0) + 1 FROM marker RETURNING id")
            .await
            .and_then(|v| v.parse().ok())
            .expect("marker");
        let t = self.target.client().await;
        let sync = &mut self.sync;
        until("the sync to catch up", limit, || {
            let t = &t;
            if let Ok(Some(status)) = sync.try_wait() {
                panic!("pgrepl sync exited ({status}) before catching up");
            }
            async move {
                t.query_opt("SELECT 1 FROM marker WHERE id = $1", &[&n])
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            }
        })
        .await;
    }

    /// pgbench with 4 clients for `secs`: tpcb-like, orders and documents.
    /// `async_commit`: the clients commit with synchronous_commit off, as
    /// a busy application may (the cutover's 5k txn/s need it here: with
    /// both servers and pgrepl on two cores, fsync'd commits top out
    /// near half that).
    fn load(&self, env: &Env, secs: u64, async_commit: bool) -> tokio::process::Child {
        let orders = self.scripts.path().join("orders.sql").display().to_string();
        let docs = self.scripts.path().join("docs.sql").display().to_string();
        env.pgbench_cmd(
            &self.source,
            "postgres",
            &[
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                &secs.to_string(),
                "-n",
                "-b",
                "tpcb-like@16",
                "-f",
                &format!("{orders}@3"),
                "-f",
                &format!("{docs}@1"),
            ],
        )
        .env(
            "PGOPTIONS",
            if async_commit {
                "-c synchronous_commit=off"
            } else {
                ""
            },
        )
        .spawn()
        .expect("pgbench")
    }

    /// Stops the sync; its peak RSS (KiB).
    async fn stop(mut self) -> u64 {
        crate::env::interrupt(&mut self.sync).await
    }
}

/// `pgrepl verify` and `pgcopydb compare data`, alternating, while
/// pgbench writes; then, the load stopped and the sync caught up, one more
/// `pgrepl verify` decides which reported differences were real.
pub async fn verify(env: &Env, report: &mut Report) {
    let Some(pgcopydb) = env.pgcopydb.clone().filter(|p| has_compare(p)) else {
        report.note("verify: no pgcopydb with `compare data` (0.13+; Debian bookworm ships 0.10): the verify row is skipped".into());
        return;
    };
    let rounds = if env.quick { 2 } else { 3 };
    println!("\n== verify while pgbench writes ({rounds} alternating rounds)");
    let mut live = Live::start(env, "verify").await;
    let mut load = live.load(env, 3600, false);
    // pgcopydb compares every table of the source, pgrepl's own included,
    // unless its catalog, cached in its work directory, was made with
    // filters: `dump schema --filters` makes it once, untimed.
    let filters = live.scripts.path().join("filters.ini");
    std::fs::write(&filters, "[exclude-schema]\npgrepl\n").expect("filters");
    let workdir = tempfile::tempdir().expect("tempdir");
    let pg_bin = env
        .pg_dump
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let path = format!("{pg_bin}:{}", std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new(&pgcopydb)
        .args(["dump", "schema", "--source", &live.source.conninfo()])
        .arg("--dir")
        .arg(workdir.path())
        .arg("--filters")
        .arg(&filters)
        .env("PATH", &path)
        .output()
        .await
        .expect("pgcopydb dump schema");
    assert!(
        out.status.success(),
        "pgcopydb dump schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut ours, mut theirs, mut held) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_diffs, mut their_diffs) = (0u64, 0u64);
    let mut verify_peak = 0u64;
    for round in 0..rounds {
        for turn in 0..2 {
            if (turn == 0) == (round % 2 == 0) {
                let out = env.pgrepl_run(&live.cmd_args("verify", &["--json"])).await;
                let took = secs(out.took);
                verify_peak = verify_peak.max(out.peak_kib);
                let v: serde_json::Value = serde_json::from_str(&out.stdout)
                    .unwrap_or_else(|e| panic!("verify --json: {e}: {}", out.stderr));
                let diffs = v["tables"]
                    .as_array()
                    .map(|ts| ts.iter().filter(|t| t["data"] != "equal").count())
                    .unwrap_or(0) as u64;
                our_diffs += diffs;
                held.push(v["held_ms"].as_f64().unwrap_or(f64::NAN));
                ours.push(took);
                println!("  round {round}: pgrepl verify {took:.2} s, {diffs} table(s) different, apply held {} ms", v["held_ms"]);
            } else {
                let start = Instant::now();
                let out = tokio::process::Command::new(&pgcopydb)
                    .args([
                        "compare",
                        "data",
                        "--source",
                        &live.source.conninfo(),
                        "--target",
                        &live.target.conninfo(),
                    ])
                    .arg("--dir")
                    .arg(workdir.path())
                    .env("PATH", &path)
                    .output()
                    .await
                    .expect("pgcopydb compare data");
                let took = secs(start.elapsed());
                assert!(
                    out.status.success(),
                    "pgcopydb compare data failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // One line per table; "!" in the second column marks a difference.
                let diffs = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.split('|').nth(1).is_some_and(|c| c.trim() == "!"))
                    .count() as u64;
                their_diffs += diffs;
                theirs.push(took);
                println!("  round {round}: pgcopydb compare data {took:.2} s, {diffs} table(s) reported different");
            }
        }
    }
    let _ = load.kill().await;
    live.caught_up(Duration::from_secs(600)).await;
    let out = env
        .pgrepl(&live.cmd_args("verify", &[]))
        .output()
        .await
        .expect("pgrepl verify");
    let really_equal = out.status.success();
    let sync_peak = live.stop().await;
    let (o, t) = (percentile(&ours, 50.0), percentile(&theirs, 50.0));
    let pause = held.iter().cloned().fold(0.0, f64::max);
    let ratio = o / t.max(0.001);
    let false_ours = if really_equal { our_diffs } else { 0 };
    let false_theirs = if really_equal { their_diffs } else { 0 };
    report.row(
        &format!("verify, pgbench scale {} + TOAST table while pgbench writes (4 clients), {rounds} runs each", if env.quick { 5 } else { 30 }),
        format!(
            "median {o:.2} s, {false_ours} false differences, apply held ≤ {pause:.0} ms; peak RSS verify {:.0} MiB, sync {:.0} MiB",
            mib(verify_peak),
            mib(sync_peak)
        ),
        format!("pgcopydb compare data median {t:.2} s, {false_theirs} false differences"),
        Some(ratio),
        "≤ 1.0 × time, 0 false differences, hold ≤ 100 ms",
        Some(ratio <= 1.0 && false_ours == 0 && pause <= 100.0),
    );
    if !really_equal {
        report.note(format!(
            "verify: after the load the pair was NOT equal — a real difference, not a false one: {}",
            String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default()
        ));
    }
}

fn has_compare(pgcopydb: &std::path::Path) -> bool {
    std::process::Command::new(pgcopydb)
        .args(["compare", "data", "--help"])
        .output()
        .is_ok_and(|o| {
            o.status.success() || String::from_utf8_lossy(&o.stderr).contains("--source")
        })
}

/// `pgrepl cutover` while pgbench writes to the source as fast as it can.
pub async fn cutover(env: &Env, report: &mut Report) {
    println!("\n== cutover under pgbench");
    let mut live = Live::start(env, "cutover").await;
    let mut load = live.load(env, 3600, true);
    // Let the load settle into its rate, then read the rate on the source.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, t0) = (history_rows(&live.source).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tps = (history_rows(&live.source).await - a) / secs(t0.elapsed()) * 20.0 / 16.0;
    let out = env
        .pgrepl_run(&live.cmd_args("cutover", &["--json", "--terminate"]))
        .await;
    let took = secs(out.took);
    assert!(out.ok, "pgrepl cutover: {}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("cutover --json");
    let downtime = v["write_downtime_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let sync_peak = crate::env::peak_rss(&live.sync);
    let _ = load.kill().await;
    let _ = tokio::time::timeout(Duration::from_secs(60), live.sync.wait()).await;
    let equal = |sql: &'static str| {
        let (s, t) = (&live.source, &live.target);
        async move { (s.value(sql).await, t.value(sql).await) }
    };
    let history = equal("SELECT count(*) FROM pgbench_history").await;
    let orders = equal("SELECT count(*) || ' ' || coalesce(max(id), 0) FROM orders").await;
    let seq = equal("SELECT last_value || ' ' || is_called FROM orders_id_seq").await;
    let nothing_lost = history.0 == history.1 && orders.0 == orders.1;
    let seq_exact = seq.0 == seq.1;
    let steps: Vec<String> = v["steps"]
        .as_array()
        .map(|ss| {
            ss.iter()
                .map(|s| format!("{} {} ms", s["step"].as_str().unwrap_or("?"), s["ms"]))
                .collect()
        })
        .unwrap_or_default();
    println!("  cutover steps: {}", steps.join(", "));
    println!(
        "  cutover: {took:.2} s, write downtime {downtime:.3} s; pgbench_history {:?}, orders {:?}, orders_id_seq {:?}",
        history, orders, seq
    );
    live.stop().await;
    report.row(
        &format!("cutover while pgbench writes (4 clients, {tps:.0} txn/s on the source)"),
        format!(
            "write downtime {downtime:.3} s, command to ready {took:.2} s; {}; {}; peak RSS cutover {:.0} MiB, sync {:.0} MiB",
            if seq_exact {
                "sequences exact"
            } else {
                "SEQUENCES DIFFER"
            },
            if nothing_lost {
                "nothing lost"
            } else {
                "ROWS DIFFER"
            },
            mib(out.peak_kib),
            mib(sync_peak)
        ),
        "-".into(),
        None,
        "downtime ≤ 1 s at ~5k txn/s, sequences exact, nothing lost",
        Some(downtime <= 1.0 && seq_exact && nothing_lost),
    );
    if tps < 5000.0 {
        report.note(format!(
            "cutover: this machine's source reached {tps:.0} txn/s with both servers and pgrepl on its cores, short of the 5k txn/s the target names"
        ));
    }
}

async fn history_rows(c: &Cluster) -> f64 {
    c.client()
        .await
        .query_one("SELECT count(*)::float8 FROM pgbench_history", &[])
        .await
        .map(|r| r.get::<_, f64>(0))
        .unwrap_or(0.0)
}
