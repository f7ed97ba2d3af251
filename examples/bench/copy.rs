//! Copy: pgbench data plus a wide table of TOASTed values, copied by
//! pgrepl (binary COPY, and text for comparison) and by every tool a user
//! would pick instead, each at its best settings (see `anchors`), in
//! rotating order so the machine's drift hits all of them alike; beside
//! them the target's own ingest ceiling. Medians of at least 5 runs (3
//! with --quick), min–max beside them.

use crate::anchors::{self, jobs};
use crate::env::{fresh_db, mib, secs, Env};
use crate::report::{spread_note, Report, Runs};

const WIDE: &str = "
    CREATE TABLE wide (id int PRIMARY KEY, doc text NOT NULL, meta jsonb NOT NULL);
    ALTER TABLE wide ALTER COLUMN doc SET STORAGE EXTERNAL;
";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tool {
    Pgrepl,
    /// pgrepl with `--copy-format text`.
    PgreplText,
    DumpFc,
    DumpFd,
    Native,
    Pgcopydb,
    /// pg_restore -j N of a dump made beforehand.
    Ceiling,
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
    let major = crate::support::pg::major_of(&env.pg.bin_dir().join("postgres")).unwrap_or(0);
    let native_options = anchors::native_best_options(major);

    let mut tools = vec![
        Tool::Pgrepl,
        Tool::DumpFd,
        Tool::PgreplText,
        Tool::Native,
        Tool::Ceiling,
        Tool::DumpFc,
    ];
    if env.pgcopydb.is_some() {
        tools.push(Tool::Pgcopydb);
    } else {
        report.note("pgcopydb not installed (apt install pgcopydb): its column is skipped".into());
    }
    // Untimed: the dump the ceiling restores, and the source's tables read
    // once so no tool pays for a cold cache that the others then enjoy.
    let dump = anchors::make_dump(env, &source).await;
    let mut runs: std::collections::HashMap<Tool, Runs> = Default::default();
    let mut rss = Vec::new();
    let rounds = env.copy_rounds();
    for round in 0..rounds {
        let mut order = tools.clone();
        order.rotate_left(round % tools.len());
        for tool in order {
            fresh_db(&target, "copy").await;
            let took = match tool {
                Tool::Pgrepl => {
                    let (took, peak) = anchors::pgrepl(env, &source, &target, "copy", &[]).await;
                    rss.push(peak);
                    took
                }
                Tool::PgreplText => {
                    let (took, peak) =
                        anchors::pgrepl(env, &source, &target, "copy", &["--copy-format", "text"])
                            .await;
                    rss.push(peak);
                    took
                }
                Tool::DumpFc => anchors::dump_fc(env, &source, &target, "copy").await,
                Tool::DumpFd => anchors::dump_fd(env, &source, &target, "copy").await,
                Tool::Native => {
                    anchors::native(env, &source, &target, "copy", native_options).await
                }
                Tool::Pgcopydb => anchors::pgcopydb(env, &source, &target, "copy").await,
                Tool::Ceiling => anchors::restore(env, &dump, &target, "copy").await,
            };
            println!("  round {round}: {tool:?} {:.2}s", secs(took));
            runs.entry(tool).or_default().push(secs(took));
        }
    }
    let get = |t: Tool| runs.get(&t).cloned().unwrap_or_default();
    let mbps = |s: f64| bytes as f64 / 1048576.0 / s.max(0.001);
    let ours = get(Tool::Pgrepl);
    let o = ours.median();
    let n = jobs();
    let data = format!(
        "copy, pgbench scale {scale} + TOAST table ({:.0} MiB), --jobs {n}",
        bytes as f64 / 1048576.0
    );
    let show = |r: &Runs| format!("{} ({:.0} MiB/s)", r.show("s", 2), mbps(r.median()));

    // The best anchor: the faster of pg_dump -Fd -j N and pgcopydb.
    let mut best = (anchors::fd_label(), get(Tool::DumpFd));
    if tools.contains(&Tool::Pgcopydb) && get(Tool::Pgcopydb).median() < best.1.median() {
        best = (
            format!("pgcopydb clone --table-jobs {n} --index-jobs {n}"),
            get(Tool::Pgcopydb),
        );
    }
    let ratio = o / best.1.median().max(0.001);
    report.row(
        &data,
        show(&ours),
        format!("best anchor: {} {}", best.0, show(&best.1)),
        Some(ratio),
        "≤ 0.75 × the best anchor's time",
        Some(ratio <= 0.75),
    );
    spread_note(
        report,
        "copy vs the best anchor",
        &ours,
        &best.1,
        ratio,
        0.75,
    );

    let ceiling = get(Tool::Ceiling);
    let ratio = o / ceiling.median().max(0.001);
    report.row(
        "copy, same data, against the target's own ingest",
        format!(
            "{} = {:.0} % of the ceiling's speed",
            ours.show("s", 2),
            100.0 / ratio.max(0.001)
        ),
        format!("{} {}", anchors::ceiling_label(), show(&ceiling)),
        Some(ratio),
        "≤ 1.25 × the ceiling's time",
        Some(ratio <= 1.25),
    );
    spread_note(report, "copy vs the ceiling", &ours, &ceiling, ratio, 1.25);

    let mut others = vec![
        (Tool::DumpFd, anchors::fd_label()),
        (Tool::DumpFc, anchors::FC_LABEL.to_string()),
        (
            Tool::Native,
            format!(
                "native subscription ({native_options}; schema by pg_dump -s first){}",
                if major < 16 {
                    "; before 16 the initial sync is text whatever the options"
                } else {
                    ""
                }
            ),
        ),
    ];
    if tools.contains(&Tool::Pgcopydb) {
        others.push((
            Tool::Pgcopydb,
            format!("pgcopydb clone --table-jobs {n} --index-jobs {n}"),
        ));
    }
    others.push((
        Tool::PgreplText,
        "pgrepl --copy-format text (binary is pgrepl's default here)".into(),
    ));
    for (tool, label) in others {
        let theirs = get(tool);
        report.row(
            "copy, same data",
            ours.show("s", 2),
            format!("{label} {}", show(&theirs)),
            Some(o / theirs.median().max(0.001)),
            "(time ratio)",
            None,
        );
    }
    let peak = rss.iter().copied().max().unwrap_or(0);
    report.row(
        "peak RSS during the copy",
        format!("{:.0} MiB", mib(peak)),
        "-".into(),
        None,
        "≤ 200 MiB",
        Some(mib(peak) <= 200.0),
    );
    let mut listed: Vec<_> = runs.iter().collect();
    listed.sort_by_key(|(t, _)| format!("{t:?}"));
    report.note(format!(
        "copy runs in seconds, in the order run within each tool: {}",
        listed
            .iter()
            .map(|(t, r)| format!(
                "{t:?} {}",
                r.0.iter()
                    .map(|s| format!("{s:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
}
