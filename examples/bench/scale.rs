//! Scale: how the copy behaves as what it copies grows, every row against
//! `pg_dump -Fd -Z 0 -j N` + `pg_restore -j N` in the same run, alternating:
//! - 3,000 small tables in 100 schemas (a schema-per-tenant shape): the
//!   copy, then streaming one transaction into every table;
//! - pgbench at scale 10, 30 and 100: time and MiB/s per size. At 100 the
//!   data is one 10M-row table (pgbench_accounts), the case the chunked copy
//!   exists for: the target's concurrent COPY sessions are counted while
//!   each tool runs, so "uses every job" is seen, not assumed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::anchors::{self, jobs};
use crate::env::{fresh_db, mib, secs, until, Env};
use crate::report::{spread_note, Report, Runs};
use crate::support::Cluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Pgrepl,
    DumpFd,
    DumpFc,
}

fn rounds(env: &Env) -> usize {
    if env.quick {
        1
    } else {
        3
    }
}

pub async fn run(env: &Env, report: &mut Report) {
    tables(env, report).await;
    sizes(env, report).await;
}

/// Source and target for one part, with room for pg_dump's and pgrepl's
/// locks on thousands of tables.
fn clusters(env: &Env, name: &str) -> (Cluster, Cluster) {
    (
        env.cluster(&format!("bench-{name}-source")),
        env.cluster(&format!("bench-{name}-target")),
    )
}

async fn tables(env: &Env, report: &mut Report) {
    let (schemas, per_schema) = if env.quick { (20, 25) } else { (100, 30) };
    let count = schemas * per_schema;
    println!("\n== scale: {count} tables of 20 rows in {schemas} schemas");
    let (source, target) = clusters(env, "tables");
    for s in 1..=schemas {
        source
            .exec(&format!(
                "CREATE SCHEMA tenant_{s};
                 DO $$BEGIN FOR i IN 1..{per_schema} LOOP
                   EXECUTE format('CREATE TABLE tenant_{s}.t%s (id int PRIMARY KEY, v text NOT NULL, n int, at timestamptz NOT NULL DEFAULT now())', i);
                   EXECUTE format('INSERT INTO tenant_{s}.t%s (id, v, n) SELECT g, md5(g::text), g FROM generate_series(1, 20) g', i);
                 END LOOP; END$$"
            ))
            .await;
    }
    source
        .exec("CREATE TABLE marker (id int PRIMARY KEY)")
        .await;
    source.exec("VACUUM ANALYZE").await;

    // Every run gets a database of its own, all dropped at the end: dropping
    // thousands of files just before the next run would make that run pay
    // for the filesystem's clean-up (ext4 slows down creating files right
    // after deleting many, checked on this machine).
    let tools = [Tool::Pgrepl, Tool::DumpFd, Tool::DumpFc];
    let mut runs = [Runs::default(), Runs::default(), Runs::default()];
    let mut dbs = Vec::new();
    let mut peak = 0u64;
    for round in 0..rounds(env) {
        let mut order = tools;
        order.rotate_left(round % tools.len());
        for tool in order {
            let db = format!("tables_{}_{round}", format!("{tool:?}").to_lowercase());
            target.exec(&format!("CREATE DATABASE {db}")).await;
            dbs.push(db.clone());
            let took = match tool {
                Tool::Pgrepl => {
                    let (took, rss) = anchors::pgrepl(env, &source, &target, &db, &[]).await;
                    peak = peak.max(rss);
                    took
                }
                Tool::DumpFd => anchors::dump_fd(env, &source, &target, &db).await,
                Tool::DumpFc => anchors::dump_fc(env, &source, &target, &db).await,
            };
            println!("  round {round}: {tool:?} {:.2}s", secs(took));
            runs[tools.iter().position(|t| *t == tool).unwrap_or(0)].push(secs(took));
        }
    }
    let [ours, fd, fc] = &runs;
    let ratio = ours.median() / fd.median().max(0.001);
    let what = format!(
        "copy, {count} tables × 20 rows in {schemas} schemas, --jobs {}",
        jobs()
    );
    report.row(
        &what,
        format!("{}; peak RSS {:.0} MiB", ours.show("s", 2), mib(peak)),
        format!(
            "{} {}; {} {}",
            anchors::fd_label(),
            fd.show("s", 2),
            anchors::FC_LABEL,
            fc.show("s", 2)
        ),
        Some(ratio),
        "≤ 0.75 × pg_dump -Fd -j \\| pg_restore -j",
        Some(ratio <= 0.75),
    );
    spread_note(report, &what, ours, fd, ratio, 0.75);
    report.row(
        "same tables, against pg_dump -Fc \\| pg_restore",
        ours.show("s", 2),
        format!("{} {}", anchors::FC_LABEL, fc.show("s", 2)),
        Some(ours.median() / fc.median().max(0.001)),
        "(time ratio)",
        None,
    );

    streaming(env, report, &source, &target, schemas, per_schema).await;
    let client = target.client().await;
    for db in dbs {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
}

/// `pgrepl sync` of every table to streaming, then stopped; one
/// transaction into each table committed on the source meanwhile (a
/// backlog); pgrepl started again: every relation is new to its session
/// (and to its walsender's), so each transaction is the first change of a
/// table pgrepl has not mapped yet. The rate is the count over the time to
/// catch up less the time a start and the catch-up of one marker take
/// (measured just before, in the same round): the first rows become
/// visible only when the group they are in commits, so a first-row clock
/// would not do.
async fn streaming(
    env: &Env,
    report: &mut Report,
    source: &Cluster,
    target: &Cluster,
    schemas: usize,
    per_schema: usize,
) {
    let count = schemas * per_schema;
    target.exec("CREATE DATABASE tables_stream").await;
    let args: Vec<String> = vec![
        "sync".into(),
        "--name".into(),
        "bench".into(),
        "--source".into(),
        source.conninfo(),
        "--target".into(),
        target.conninfo_db("tables_stream"),
        "--jobs".into(),
        jobs().to_string(),
    ];
    let mut child = env.pgrepl(&args).spawn().expect("pgrepl sync");
    let t = target.client_db("tables_stream").await;
    let to_streaming = until_row(
        &t,
        "the sync of every table to stream",
        "SELECT 1 FROM pgrepl.sync WHERE phase = 'streaming'",
    )
    .await;
    let mut peak = crate::env::interrupt(&mut child).await;
    let (mut rates, mut wholes, mut idles) = (Runs::default(), Runs::default(), Runs::default());
    // Waits for marker `m` after starting pgrepl: the time from start.
    let caught_up = |m: usize| {
        let (env, args, t) = (env, &args, &t);
        async move {
            let mut child = env.pgrepl(args).spawn().expect("pgrepl sync");
            let took = until_row(
                t,
                "the marker on the target",
                &format!("SELECT 1 FROM marker WHERE id = {m}"),
            )
            .await;
            (took, crate::env::interrupt(&mut child).await)
        }
    };
    for round in 0..env.rounds.max(3) {
        let id = 1000 + round;
        // Start-up and a catch-up of one transaction: taken off below.
        source
            .exec(&format!("INSERT INTO marker VALUES ({})", 2 * round + 1))
            .await;
        let (idle, rss) = caught_up(2 * round + 1).await;
        source
            .exec(&format!(
                "DO $$BEGIN FOR s IN 1..{schemas} LOOP FOR i IN 1..{per_schema} LOOP
                   EXECUTE format('INSERT INTO tenant_%s.t%s (id, v, n) VALUES ({id}, ''streamed'', 1000)', s, i);
                   COMMIT;
                 END LOOP; END LOOP; END$$"
            ))
            .await;
        source
            .exec(&format!("INSERT INTO marker VALUES ({})", 2 * round + 2))
            .await;
        let (whole, rss2) = caught_up(2 * round + 2).await;
        peak = peak.max(rss).max(rss2);
        let rate = count as f64 / secs(whole.saturating_sub(idle)).max(0.001);
        rates.push(rate);
        wholes.push(secs(whole));
        idles.push(secs(idle));
        println!(
            "  round {round}: {count} first changes: caught up {:.2} s from start, {:.2} s without a backlog: {rate:.0} txn/s",
            secs(whole),
            secs(idle)
        );
        // Untimed: every table has its streamed row (the marker came last).
        let have: i64 = t
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname LIKE 'tenant\\_%' AND c.relkind = 'r'
                       AND (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I WHERE id = {id}', n.nspname, c.relname), false, true, '')))[1]::text::int = 1"
                ),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        assert_eq!(have as usize, count, "every table has its streamed row");
    }
    anchors::teardown(env, source, target, "tables_stream").await;
    let rate = rates.median();
    report.row(
        &format!("streaming the first change of each of {count} tables new to the session (a backlog of one transaction per table)"),
        format!(
            "{}: caught up {} from pgrepl's start, less {} to start and catch up one transaction",
            rates.show("txn/s", 0),
            wholes.show("s", 2),
            idles.show("s", 2)
        ),
        format!(
            "`pgrepl sync` from nothing to streaming: {:.2} s; pgrepl's peak RSS {:.0} MiB",
            secs(to_streaming),
            mib(peak)
        ),
        None,
        "≥ 5000 txn/s (every table's row checked)",
        Some(rate >= 5000.0),
    );
    drop(t);
    let _ = target
        .client()
        .await
        .batch_execute("DROP DATABASE tables_stream WITH (FORCE)")
        .await;
}

/// Waits until `sql` returns a row on `client`; the time it took.
async fn until_row(client: &tokio_postgres::Client, what: &str, sql: &str) -> Duration {
    until(what, Duration::from_secs(1800), || async {
        client.query_opt(sql, &[]).await.ok().flatten().is_some()
    })
    .await
}

/// Counts the target's concurrent COPY sessions into `db` while a tool
/// runs: the most seen at once, and when the last was seen.
struct CopyWatch {
    most: Arc<AtomicUsize>,
    last_ms: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CopyWatch {
    async fn start(target: &Cluster, db: &str) -> CopyWatch {
        let client = target.client().await;
        let (most, last_ms, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (m, l, s, db) = (most.clone(), last_ms.clone(), stop.clone(), db.to_string());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            while !s.load(Ordering::SeqCst) {
                if let Ok(row) = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query ILIKE 'copy %'",
                        &[&db],
                    )
                    .await
                {
                    let n = row.get::<_, i64>(0) as usize;
                    m.fetch_max(n, Ordering::SeqCst);
                    if n > 0 {
                        l.store(started.elapsed().as_millis() as usize, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        CopyWatch {
            most,
            last_ms,
            stop,
            task,
        }
    }

    /// (most concurrent COPY sessions, seconds until the last was seen).
    async fn finish(self) -> (usize, f64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (
            self.most.load(Ordering::SeqCst),
            self.last_ms.load(Ordering::SeqCst) as f64 / 1000.0,
        )
    }
}

async fn sizes(env: &Env, report: &mut Report) {
    let scales: &[u32] = if env.quick {
        &[1, 3, 5]
    } else {
        &[10, 30, 100]
    };
    let (source, target) = clusters(env, "sizes");
    let n = jobs();
    for &scale in scales {
        println!("\n== scale: copy of pgbench at scale {scale}");
        env.pgbench_init(&source, scale).await;
        source
            .exec("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
            .await;
        source.exec("VACUUM ANALYZE").await;
        let bytes: f64 = source
            .value("SELECT pg_database_size('postgres')")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let accounts: f64 = source
            .value("SELECT pg_total_relation_size('pgbench_accounts')")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let tools = [Tool::Pgrepl, Tool::DumpFd];
        let mut runs = [Runs::default(), Runs::default()];
        let mut rows_phase = [Runs::default(), Runs::default()];
        let mut most = [0usize, 0usize];
        let mut peak = 0u64;
        for round in 0..rounds(env) {
            let mut order = tools;
            order.rotate_left(round % 2);
            for tool in order {
                fresh_db(&target, "size").await;
                let watch = CopyWatch::start(&target, "size").await;
                let took = match tool {
                    Tool::Pgrepl => {
                        let (took, rss) = anchors::pgrepl(env, &source, &target, "size", &[]).await;
                        peak = peak.max(rss);
                        took
                    }
                    _ => anchors::dump_fd(env, &source, &target, "size").await,
                };
                let (seen, rows_done) = watch.finish().await;
                let k = usize::from(tool != Tool::Pgrepl);
                runs[k].push(secs(took));
                rows_phase[k].push(rows_done);
                most[k] = most[k].max(seen);
                println!(
                    "  round {round}: {tool:?} {:.2}s (rows done at {rows_done:.2}s, {seen} COPY sessions at most)",
                    secs(took)
                );
            }
        }
        fresh_db(&target, "size").await;
        let mbps = |r: &Runs| bytes / 1048576.0 / r.median().max(0.001);
        let [ours, fd] = &runs;
        let ratio = ours.median() / fd.median().max(0.001);
        let what = format!("copy, pgbench scale {scale} ({:.0} MiB)", bytes / 1048576.0);
        report.row(
            &what,
            format!(
                "{} ({:.0} MiB/s; peak RSS {:.0} MiB)",
                ours.show("s", 2),
                mbps(ours),
                mib(peak)
            ),
            format!(
                "{} {} ({:.0} MiB/s)",
                anchors::fd_label(),
                fd.show("s", 2),
                mbps(fd)
            ),
            Some(ratio),
            "(time ratio)",
            None,
        );
        if scale == *scales.last().unwrap_or(&0) {
            let every = most[0] >= n;
            report.row(
                &format!(
                    "one {}-row table (pgbench_accounts at scale {scale}, {:.1} GiB with its key)",
                    scale as u64 * 100_000,
                    accounts / 1073741824.0
                ),
                format!(
                    "rows copied in {} with {} COPY sessions at once (--jobs {n}); whole copy {}",
                    rows_phase[0].show("s", 2),
                    most[0],
                    ours.show("s", 2)
                ),
                format!(
                    "{}: rows in {} with {} COPY sessions at once; whole {}",
                    anchors::fd_label(),
                    rows_phase[1].show("s", 2),
                    most[1],
                    fd.show("s", 2)
                ),
                Some(ratio),
                "the chunked copy uses every job",
                Some(every),
            );
        }
    }
}
