//! Copy: pgbench data plus a wide table of TOASTed values, copied by
//! pgrepl (binary COPY, and text for comparison), by `pg_dump -Fc |
//! pg_restore`, by a native subscription's initial sync (schema first,
//! then the sync), and by `pgcopydb clone`, in rotating order so the
//! machine's drift hits all of them alike.

use std::time::{Duration, Instant};

use crate::env::{fresh_db, mib, secs, timed_shell, until, Env};
use crate::report::{mean, Report};
use crate::support::Cluster;

const WIDE: &str = "
    CREATE TABLE wide (id int PRIMARY KEY, doc text NOT NULL, meta jsonb NOT NULL);
    ALTER TABLE wide ALTER COLUMN doc SET STORAGE EXTERNAL;
";

fn shell_conn(c: &Cluster, db: &str) -> String {
    format!(
        "-h {} -p {} -U postgres -d {db}",
        c.socket_dir().display(),
        c.port
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Pgrepl,
    /// pgrepl with `--copy-format text`.
    PgreplText,
    DumpRestore,
    Native,
    Pgcopydb,
}

pub async fn run(env: &Env, report: &mut Report) {
    let scale = if env.quick { 5 } else { 30 };
    let wide_rows = if env.quick { 2_000 } else { 12_000 };
    println!("\n== copy: pgbench scale {scale} + {wide_rows} wide rows");
    let source = env.cluster("bench-copy-source");
    let target = env.cluster("bench-copy-target");
    env.pgbench_init(&source, scale).await;
    source
        .exec("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        .await;
    source.exec(WIDE).await;
    source
        .exec(&format!(
            "INSERT INTO wide SELECT g, (SELECT string_agg(md5(g::text || i::text || random()::text), '') FROM generate_series(1, 128) i),
                    jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b', g)) FROM generate_series(1, {wide_rows}) g"
        ))
        .await;
    source.exec("VACUUM ANALYZE").await;
    let bytes: i64 = source
        .value("SELECT pg_database_size('postgres')")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();

    let mut tools = vec![
        Tool::Pgrepl,
        Tool::DumpRestore,
        Tool::PgreplText,
        Tool::Native,
    ];
    if env.pgcopydb.is_some() {
        tools.push(Tool::Pgcopydb);
    } else {
        report.note("pgcopydb not installed (apt install pgcopydb): its column is skipped".into());
    }
    let mut times: Vec<(Tool, f64)> = Vec::new();
    let mut rss = Vec::new();
    // Untimed: the source's tables read once, so no tool pays for a cold
    // cache that the others then enjoy.
    source
        .exec("SELECT count(*) FROM pgbench_accounts; SELECT count(*) FROM pgbench_history; SELECT sum(length(doc)) FROM wide")
        .await;
    for round in 0..env.rounds {
        let mut order = tools.clone();
        order.rotate_left(round % tools.len());
        for tool in order {
            fresh_db(&target, "copy").await;
            let took = match tool {
                Tool::Pgrepl | Tool::PgreplText => {
                    let mut args: Vec<String> = vec![
                        "sync".into(),
                        "--copy-only".into(),
                        "--name".into(),
                        "bench".into(),
                    ];
                    args.extend([
                        "--source".into(),
                        source.conninfo(),
                        "--target".into(),
                        target.conninfo_db("copy"),
                    ]);
                    args.extend(["--jobs".into(), jobs.clone()]);
                    if tool == Tool::PgreplText {
                        args.extend(["--copy-format".into(), "text".into()]);
                    }
                    let (took, ok, peak, log) = env.pgrepl_measured(&args).await;
                    assert!(ok, "pgrepl copy failed:\n{log}");
                    rss.push(peak);
                    let teardown: Vec<String> = vec![
                        "teardown".into(),
                        "--name".into(),
                        "bench".into(),
                        "--source".into(),
                        source.conninfo(),
                        "--target".into(),
                        target.conninfo_db("copy"),
                    ];
                    let out = env.pgrepl(&teardown).output().await.expect("teardown");
                    assert!(
                        out.status.success(),
                        "teardown: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    took
                }
                Tool::DumpRestore => {
                    timed_shell(
                        "pg_dump | pg_restore",
                        &format!(
                            "{} -Fc {} | {} {}",
                            env.pg_dump.display(),
                            shell_conn(&source, "postgres"),
                            env.pg_restore.display(),
                            shell_conn(&target, "copy")
                        ),
                        &[],
                    )
                    .await
                }
                Tool::Native => native_initial_sync(env, &source, &target).await,
                Tool::Pgcopydb => {
                    let dir = tempfile::tempdir().expect("tmp");
                    let uri = |c: &Cluster, db: &str| {
                        format!(
                            "postgresql:///{db}?host={}&port={}&user=postgres",
                            c.socket_dir().display(),
                            c.port
                        )
                    };
                    timed_shell(
                        "pgcopydb clone",
                        &format!(
                            "pgcopydb clone --source '{}' --target '{}' --dir {} --table-jobs {jobs} --index-jobs {jobs} --no-owner --no-acl >/dev/null 2>&1 || pgcopydb clone --source '{}' --target '{}' --dir {} --table-jobs {jobs} --index-jobs {jobs} --no-owner --no-acl --restart",
                            uri(&source, "postgres"),
                            uri(&target, "copy"),
                            dir.path().display(),
                            uri(&source, "postgres"),
                            uri(&target, "copy"),
                            dir.path().display(),
                        ),
                        &[("PATH", format!("{}:{}", env.pg.bin_dir().display(), std::env::var("PATH").unwrap_or_default()))],
                    )
                    .await
                }
            };
            println!("  round {round}: {tool:?} {:.2}s", secs(took));
            times.push((tool, secs(took)));
        }
    }
    let avg = |t: Tool| {
        mean(
            &times
                .iter()
                .filter(|(x, _)| *x == t)
                .map(|(_, s)| *s)
                .collect::<Vec<_>>(),
        )
    };
    let mbps = |s: f64| bytes as f64 / 1048576.0 / s.max(0.001);
    let ours = avg(Tool::Pgrepl);
    let dump = avg(Tool::DumpRestore);
    let ratio = ours / dump.max(0.001);
    report.row(
        &format!(
            "copy, pgbench scale {scale} + TOAST table ({:.0} MiB)",
            bytes as f64 / 1048576.0
        ),
        format!("{ours:.2} s ({:.0} MiB/s)", mbps(ours)),
        format!(
            "pg_dump -Fc \\| pg_restore {dump:.2} s ({:.0} MiB/s)",
            mbps(dump)
        ),
        Some(ratio),
        "≤ 0.70 × time",
        Some(ratio <= 0.70),
    );
    let native = avg(Tool::Native);
    report.row(
        "copy, same data",
        format!("{ours:.2} s"),
        format!("native subscription (schema + initial sync) {native:.2} s"),
        Some(ours / native.max(0.001)),
        "(time ratio)",
        None,
    );
    if tools.contains(&Tool::Pgcopydb) {
        let pgc = avg(Tool::Pgcopydb);
        report.row(
            "copy, same data",
            format!("{ours:.2} s"),
            format!("pgcopydb clone {pgc:.2} s"),
            Some(ours / pgc.max(0.001)),
            "(time ratio)",
            None,
        );
    }
    let text = avg(Tool::PgreplText);
    report.row(
        "copy, same data, binary COPY (pgrepl's default here)",
        format!("{ours:.2} s"),
        format!("pgrepl --copy-format text {text:.2} s"),
        Some(ours / text.max(0.001)),
        "(time ratio)",
        None,
    );
    let peak = rss.iter().copied().max().unwrap_or(0);
    report.row(
        "peak RSS during the copy",
        format!("{:.0} MiB", mib(peak)),
        "-".into(),
        None,
        "≤ 200 MiB",
        Some(mib(peak) <= 200.0),
    );
    report.note(format!(
        "copy runs (s): {}",
        times
            .iter()
            .map(|(t, s)| format!("{t:?} {s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

/// Schema with pg_dump | pg_restore, then a subscription with copy_data,
/// until every table is ready.
async fn native_initial_sync(env: &Env, source: &Cluster, target: &Cluster) -> Duration {
    let start = Instant::now();
    timed_shell(
        "native schema",
        &format!(
            "{} -Fc -s {} | {} {}",
            env.pg_dump.display(),
            shell_conn(source, "postgres"),
            env.pg_restore.display(),
            shell_conn(target, "copy")
        ),
        &[],
    )
    .await;
    source.exec("DROP PUBLICATION IF EXISTS bench_native; CREATE PUBLICATION bench_native FOR ALL TABLES").await;
    let t = target.client_db("copy").await;
    t.batch_execute(&format!(
        "CREATE SUBSCRIPTION bench_native CONNECTION '{}' PUBLICATION bench_native",
        source.conninfo()
    ))
    .await
    .expect("create subscription");
    until("the native initial sync", Duration::from_secs(1800), || {
        let t = &t;
        async move {
            t.query_one(
                "SELECT count(*) > 0 AND bool_and(srsubstate = 'r') FROM pg_subscription_rel",
                &[],
            )
            .await
            .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false))
            .unwrap_or(false)
        }
    })
    .await;
    let took = start.elapsed();
    t.batch_execute("DROP SUBSCRIPTION bench_native")
        .await
        .expect("drop subscription");
    source.exec("DROP PUBLICATION bench_native").await;
    took
}
