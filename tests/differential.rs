//! The randomized differential test: a seeded generator (see
//! `support::gen`) makes a schema with every column kind and a workload of
//! single-row and bulk changes, key changes, swaps, TRUNCATEs and DDL,
//! committed as many small transactions and some large ones while `pgrepl
//! sync` streams them. After each round the target must equal the source,
//! table by table, by the independent checksum; at the end the catalogs
//! must match too, and the log must show that every apply path ran for
//! the wide tables that carry every column kind: single statements,
//! set-based (arrays unnested, or a stage table), COPY, DELETE + INSERT for
//! identity columns, transactions streamed while in progress (sources 14+)
//! or applied whole when large (12, 13), and source transactions grouped
//! into one target transaction.
//!
//! A failure names its seed; `PGREPL_DIFF_SEEDS=42 PGREPL_DIFF_ROUNDS=5
//! just fuzz-apply` runs exactly that seed again. The generated SQL of each
//! run is kept in `target/differential/seed-N.sql`.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::gen::{self, Gen, Shape};
use support::stops::{self, Stop, Syncs};
use support::{assert_same_data, pgrepl, wait_for, ClusterOptions, Pair};

const LIMIT: Duration = Duration::from_secs(300);

/// The apply paths the log showed for one table.
#[derive(Debug, Default, Clone)]
struct Paths(BTreeMap<String, u64>);

impl Paths {
    fn get(&self, path: &str) -> u64 {
        self.0.get(path).copied().unwrap_or(0)
    }
}

/// `apply paths table=public.x single=1 unnest=2 ...` lines of a `-v` log,
/// by table; and the `apply groups` counters.
fn parse_paths(log: &str) -> (BTreeMap<String, Paths>, BTreeMap<String, u64>) {
    let mut tables = BTreeMap::new();
    let mut groups = BTreeMap::new();
    for line in log.lines() {
        let plain = support::strip_ansi(line);
        let pairs = |from: &str| -> BTreeMap<String, String> {
            from.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect()
        };
        if let Some(at) = plain.find("apply paths") {
            let kv = pairs(&plain[at + "apply paths".len()..]);
            let table = kv.get("table").cloned().unwrap_or_default();
            // `counts` is one field holding `single=1 unnest=2 ...`.
            let counts = plain
                .split_once("counts=")
                .map(|(_, c)| pairs(c.trim_matches('"')))
                .unwrap_or_default();
            // Several runs of the sync (stops): their counts add up.
            let p: &mut Paths = tables.entry(table).or_default();
            for (k, v) in counts {
                if let Ok(n) = v.parse::<u64>() {
                    *p.0.entry(k).or_default() += n;
                }
            }
        } else if let Some(at) = plain.find("apply groups") {
            for (k, v) in pairs(&plain[at + "apply groups".len()..]) {
                if let Ok(n) = v.parse::<u64>() {
                    *groups.entry(k).or_default() += n;
                }
            }
        }
    }
    (tables, groups)
}

/// Keeps the generated SQL of a run, for a person rerunning a seed.
struct Script {
    path: std::path::PathBuf,
    text: String,
}

impl Script {
    fn new(seed: u64) -> Script {
        let dir = support::pg::repo_root().join("target/differential");
        let _ = std::fs::create_dir_all(&dir);
        Script {
            path: dir.join(format!("seed-{seed}.sql")),
            text: String::new(),
        }
    }

    fn add(&mut self, sql: &str) {
        self.text.push_str(sql);
        self.text.push('\n');
        let _ = std::fs::write(&self.path, &self.text);
    }
}

/// Names the seed in a failure, however the test fails.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "differential test failed with seed {0}: rerun it with PGREPL_DIFF_SEEDS={0} just fuzz-apply; its SQL is in target/differential/seed-{0}.sql",
                self.0
            );
        }
    }
}

/// Waits until the target's recorded position (its origin, or the progress
/// table in that mode) is past everything the source wrote (failing at once
/// if the sync stopped).
async fn caught_up(pair: &Pair, running: &mut pgrepl::Running, mode: Mode) {
    let lsn: ::pgrepl::Lsn = pair
        .source
        .value("SELECT pg_current_wal_lsn()::text")
        .await
        .expect("lsn")
        .parse()
        .expect("lsn");
    let t = pair.target.client().await;
    let position = mode.position();
    let running = std::sync::Mutex::new(running);
    wait_for("the target caught up", LIMIT, || {
        let t = &t;
        if let Ok(mut r) = running.lock() {
            r.assert_running();
        }
        async move {
            let at: Option<::pgrepl::Lsn> = t.query_one(position, &[]).await.ok()?.get(0);
            (at? >= lsn).then_some(())
        }
    })
    .await;
}

/// One round of transactions: many small ones, some with bulk statements,
/// a few with DDL, and per wide table what each apply path needs.
fn round(g: &mut Gen) -> Vec<String> {
    use rand::Rng;
    let mut txns = Vec::new();
    let wide: Vec<usize> = g
        .tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name.starts_with("w_"))
        .map(|(i, _)| i)
        .collect();
    // Single rows in transactions of their own, back to back: grouped into
    // one target transaction, their net effects written set-based (16 or
    // more of a table) or one by one.
    for &i in &wide {
        // Rows, then a bulk UPDATE of rows that existed before it: their
        // net effects go set-based (not folded into the INSERT).
        let s = g.insert(i, 60);
        txns.push(gen::transaction(&[s]));
        let s = g.update(i, "id % 2 = 0");
        txns.push(gen::transaction(&[s]));
        for _ in 0..g.rng.random_range(18..30) {
            let pred = g.slice(i, true);
            let s = g.update(i, &pred);
            txns.push(gen::transaction(&[s]));
        }
        let s = g.insert(i, 2);
        txns.push(gen::transaction(&[s]));
    }
    for _ in 0..40 {
        let i = g.rng.random_range(0..g.tables.len());
        let n = g.rng.random_range(1..4);
        let bulk = g.rng.random_bool(0.25);
        let stmts: Vec<String> = (0..n).map(|_| g.statement(i, bulk)).collect();
        txns.push(gen::transaction(&stmts));
        if g.rng.random_bool(0.12) {
            let j = g.rng.random_range(0..g.tables.len());
            let d = g.ddl(j);
            txns.push(gen::transaction(&[d]));
        }
    }
    // A large transaction per wide table: streamed while in progress by a
    // source at 64 kB of logical_decoding_work_mem (14+), else applied
    // whole; bulk INSERT (COPY), UPDATE and DELETE (set-based) inside.
    // Half of them change a column between their rows (ADD, RENAME or
    // DROP COLUMN): DDL inside a streamed transaction.
    for &i in &wide {
        let ins = g.insert(i, 1200);
        let ddl = match g.rng.random_bool(0.5) {
            true => g.column_ddl(i),
            false => String::new(),
        };
        let pred = g.slice(i, false);
        let upd = g.update(i, &pred);
        let pred = g.slice(i, false);
        let del = format!(
            "DELETE FROM {} WHERE {pred};",
            gen::ident(&g.tables[i].name)
        );
        txns.push(gen::transaction(&[ins, ddl, upd, del]));
    }
    txns
}

/// How the sync runs while the rounds' workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One sync streams through every round.
    Through,
    /// The sync is stopped at random points of every round (SIGTERM,
    /// kill -9, a run with `--until-caught-up` ending by itself, some of
    /// them while a large transaction streams) and started again.
    Stopped,
    /// Stopped so, the target keeping its position in the progress table
    /// rather than a replication origin (`--progress-table`).
    StoppedInTable,
}

impl Mode {
    fn stops(self) -> bool {
        self != Mode::Through
    }

    /// The sync's arguments besides the connections.
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::StoppedInTable => &["--progress-table"],
            _ => &[],
        }
    }

    /// The query of the position the target applied through.
    fn position(self) -> &'static str {
        match self {
            Mode::StoppedInTable => "SELECT end_lsn FROM pgrepl.applied WHERE sync_name = 'pgrepl'",
            _ => "SELECT pg_replication_origin_progress('pgrepl_pgrepl', false)",
        }
    }
}

async fn run_seed(seed: u64, rounds: usize, mode: Mode) {
    let _guard = SeedGuard(seed);
    support::init_logs();
    let pair = Pair::start_with(
        ClusterOptions {
            settings: vec!["logical_decoding_work_mem = '64kB'".into()],
            ..Default::default()
        },
        ClusterOptions::default(),
    );
    let major = pair.source.major();
    eprintln!(
        "differential seed {seed} ({mode:?}): {rounds} round(s), PostgreSQL {major} -> {}",
        pair.target.major()
    );
    let mut g = Gen::new(seed, major);
    // Where the stops come: a generator of its own, so the workload of a
    // seed is the same in both modes.
    let mut stop_rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5709);
    let mut script = Script::new(seed);
    let schema = g.schema();
    script.add(&schema);
    pair.source.exec(&schema).await;
    // Rows before the copy, so the copy sees every kind too.
    for i in 0..g.tables.len() {
        let s = g.insert(i, 40);
        script.add(&s);
        pair.source.exec(&s).await;
    }
    let out = pair
        .run("sync", &[&["--copy-only"], mode.args()].concat())
        .await;
    assert!(out.success(), "seed {seed}: copy: {out}");
    if mode == Mode::StoppedInTable {
        let origins = pair
            .target
            .value("SELECT count(*) FROM pg_replication_origin")
            .await;
        assert_eq!(
            origins.as_deref(),
            Some("0"),
            "seed {seed}: an origin was made"
        );
    }
    let mut syncs = Syncs::new(&pair, &["-v"], (major >= 14).then(|| mode.position()));
    syncs.start(Stop::Term);
    support::wait_for_phase(&pair.target, "streaming", LIMIT).await;
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    for r in 0..rounds {
        let txns = round(&mut g);
        script.add(&format!("-- round {r}"));
        for t in &txns {
            script.add(t);
        }
        let count = txns.len();
        let done = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let workload = {
            let client = pair.source.client().await;
            let (done, finished) = (done.clone(), finished.clone());
            tokio::spawn(async move {
                for t in &txns {
                    if let Err(e) = client.batch_execute(t).await {
                        finished.store(true, Ordering::SeqCst);
                        panic!(
                            "seed {seed}: the generated SQL failed on the source ({}): {t}",
                            support::db_error(&e)
                        );
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                finished.store(true, Ordering::SeqCst);
            })
        };
        if mode.stops() {
            let points = stops::plan(&mut stop_rng, count, 3);
            syncs.drive(&points, &done, &finished).await;
        }
        if let Err(e) = workload.await {
            std::panic::resume_unwind(e.into_panic());
        }
        syncs.settle().await;
        caught_up(&pair, syncs.running(), mode).await;
        if let Err(e) =
            tokio::time::timeout(Duration::from_secs(120), assert_same_data(&src, &tgt)).await
        {
            panic!("seed {seed}: comparing timed out: {e}");
        }
        eprintln!("seed {seed}: round {r} equal ({count} transactions)");
    }
    support::schema::assert_same_shape(&src, &tgt).await;
    syncs.finish().await;
    let t = &syncs.tally;
    eprintln!(
        "seed {seed}: stops: {} SIGTERM, {} kill -9, {} --until-caught-up, {} inside a streamed transaction",
        t.term, t.kill, t.caught_up, t.inside_streamed
    );
    // The dimension drove what it is for: stops inside streamed ones.
    if mode.stops() && major >= 14 {
        assert!(
            t.inside_streamed > 0,
            "seed {seed}: no stop came while a streamed transaction was open"
        );
    }
    let (paths, groups) = parse_paths(&t.stderr);
    eprintln!("seed {seed}: paths {paths:?} groups {groups:?}");
    check_paths(seed, &g, major, &paths, &groups);
}

/// Every apply path ran for the tables meant to drive it.
fn check_paths(
    seed: u64,
    g: &Gen,
    major: u32,
    paths: &BTreeMap<String, Paths>,
    groups: &BTreeMap<String, u64>,
) {
    let of = |name: &str| -> Paths {
        paths
            .get(&format!("public.{name}"))
            .cloned()
            .unwrap_or_default()
    };
    let mut missing = Vec::new();
    let mut need = |table: &str, path: &str, ok: bool| {
        if !ok {
            missing.push(format!("{table}: {path}"));
        }
    };
    for t in g.tables.iter().filter(|t| t.name.starts_with("w_")) {
        let p = of(&t.name);
        need(&t.name, "single", p.get("single") > 0);
        need(&t.name, "copy", p.get("copy") > 0);
        if t.arrays {
            need(&t.name, "stage", p.get("stage") > 0);
        } else {
            need(&t.name, "unnest", p.get("unnest") > 0);
        }
        if major >= 14 {
            need(&t.name, "streamed", p.get("streamed") > 0);
        }
    }
    for t in g.tables.iter().filter(|t| t.shape == Shape::Identity) {
        need(
            &t.name,
            "delete_insert",
            of(&t.name).get("delete_insert") > 0,
        );
    }
    need(
        "(all)",
        "grouped",
        groups.get("grouped_txns").copied().unwrap_or(0) > 0,
    );
    if major < 14 {
        need(
            "(all)",
            "large",
            groups.get("large_txns").copied().unwrap_or(0) > 0,
        );
    }
    assert!(
        missing.is_empty(),
        "seed {seed}: apply paths that never ran: {missing:?}\npaths: {paths:#?}\ngroups: {groups:?}"
    );
}

/// Tests of fixed seeds: `rounds` rounds each, the sync run as `mode`.
macro_rules! seeds {
    ($mode:expr, $rounds:expr; $($name:ident = $seed:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_seed($seed, $rounds, $mode).await;
            }
        )*
    };
}

// The fixed seeds CI runs (two rounds each); `just fuzz-apply` runs more.
seeds! { Mode::Through, 2;
    differential_seed_01 = 1, differential_seed_02 = 2, differential_seed_03 = 3,
    differential_seed_04 = 4, differential_seed_05 = 5, differential_seed_06 = 6,
    differential_seed_07 = 7, differential_seed_08 = 8, differential_seed_09 = 9,
    differential_seed_10 = 10, differential_seed_11 = 11, differential_seed_12 = 12,
    differential_seed_13 = 13, differential_seed_14 = 14, differential_seed_15 = 15,
    differential_seed_16 = 16, differential_seed_17 = 17, differential_seed_18 = 18,
    differential_seed_19 = 19, differential_seed_20 = 20,
}

// The same workloads with the sync stopped and started again at random
// points (CI runs these on every pair; `just fuzz-apply --stopped` more).
seeds! { Mode::Stopped, 3;
    differential_stops_01 = 101, differential_stops_02 = 102, differential_stops_03 = 103,
    differential_stops_04 = 104, differential_stops_05 = 105, differential_stops_06 = 106,
}

// Stopped so, with the position in the progress table.
seeds! { Mode::StoppedInTable, 3;
    differential_stops_table_01 = 201, differential_stops_table_02 = 202,
    differential_stops_table_03 = 203,
}

/// `just fuzz-apply`: the seeds in `PGREPL_DIFF_SEEDS` (`7`, `1,5,9` or
/// `100-140`) for `PGREPL_DIFF_ROUNDS` rounds each (default 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with `just fuzz-apply`"]
async fn differential_fuzz() {
    let seeds = std::env::var("PGREPL_DIFF_SEEDS").unwrap_or_else(|_| "1000-1009".into());
    let rounds: usize = std::env::var("PGREPL_DIFF_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut list = Vec::new();
    for part in seeds.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (
                    a.trim().parse().expect("seed"),
                    b.trim().parse().expect("seed"),
                );
                list.extend(a..=b);
            }
            None => list.push(part.trim().parse().expect("seed")),
        }
    }
    let mode = match std::env::var("PGREPL_DIFF_MODE").as_deref() {
        Ok("stopped") => Mode::Stopped,
        Ok("stopped-table") => Mode::StoppedInTable,
        _ => Mode::Through,
    };
    for seed in list {
        run_seed(seed, rounds, mode).await;
    }
}
