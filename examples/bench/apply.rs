//! Apply capacity by the backlog method: the slots hold WAL while a load
//! runs on the source; then each subscriber catches up alone and the time
//! is taken, pgrepl and a native subscription taking turns going first.
//! Beside them, the source's own decoding rate on the same backlog (a
//! third slot read with pg_logical_slot_get_binary_changes): the ceiling
//! for any subscriber; a walsender feeding pg_recvlogical (a rate that
//! applies nothing) and one feeding a subscriber that only reads (its CPU:
//! what receiving alone costs). Then keep-up under pgbench
//! (`keep_up`), and memory across one
//! very large transaction.

use std::time::{Duration, Instant};

use crate::env::{mib, secs, until, Env};
use crate::report::{spread_note, Report, Runs};
use crate::support::Cluster;

const SETUP: &str = "
    ALTER TABLE pgbench_history REPLICA IDENTITY FULL;
    CREATE TABLE bulk (id int PRIMARY KEY, v text NOT NULL);
    CREATE TABLE huge (id int PRIMARY KEY, v text NOT NULL);
    CREATE TABLE upd (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
    CREATE TABLE marker (id int PRIMARY KEY);
    CREATE TABLE hb (id int PRIMARY KEY, ts timestamptz NOT NULL);
    INSERT INTO hb VALUES (1, clock_timestamp());
";

/// A little WAL, not transactional and for no table: on an otherwise idle
/// source a slot's restart point moves only at a running-xacts record its
/// subscriber has confirmed past, and an idle server writes none (one
/// settle waited 120 s for it once). Every subscriber's settle gets it.
pub(crate) const WAL_POKE: &str = "SELECT pg_logical_emit_message(false, 'pgrepl-bench', 'settle')";

/// The source's own decoding of the backlog, read from a slot of its own.
const DECODE: &str = "SELECT count(*) FROM pg_logical_slot_get_binary_changes('decode', NULL, NULL, 'proto_version', '1', 'publication_names', 'native_pub')";

/// Consumes the null subscriber's slot where its settle needs it.
const RECV_POKE: &str = "SELECT count(*) FROM pg_logical_slot_get_binary_changes('recv', NULL, NULL, 'proto_version', '1', 'publication_names', 'native_pub')";

/// Consumes the reading-only subscriber's slot (it confirms nothing).
const DRAIN_POKE: &str = "SELECT count(*) FROM pg_logical_slot_get_binary_changes('drain', NULL, NULL, 'proto_version', '1', 'publication_names', 'native_pub')";

const TABLES: &str = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, bulk, huge, upd, marker, hb";

pub(crate) struct Setup {
    pub(crate) source: Cluster,
    pub(crate) target: Cluster,
    marker: i32,
}

impl Setup {
    pub(crate) fn sync_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["sync".into(), "--name".into(), "bench".into()];
        a.extend([
            "--source".into(),
            self.source.conninfo(),
            "--target".into(),
            self.target.conninfo_db("t_pgrepl"),
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Untimed, before every timed catch-up: a checkpoint of the target,
    /// so that no subscriber's catch-up is the one that runs into the
    /// server's own (8 GB of WAL or 30 min) and pays its writes and the
    /// full-page images of every first touch after it.
    pub(crate) async fn checkpoint_target(&self) {
        self.target.exec("CHECKPOINT").await;
    }

    /// Keeps a subscriber running, after its timed catch-up, until its
    /// slot's restart point is past the load: otherwise the next
    /// measurement would start by decoding this load again (a slot only
    /// moves its restart point at a running-xacts record it has passed,
    /// which CHECKPOINT writes). Untimed; every slot gets the same.
    /// `poke`: SQL run on the source each round (to read a slot nobody
    /// streams).
    pub(crate) async fn settle(&mut self, slot: &str, poke: Option<&str>) {
        let before = self
            .source
            .value("SELECT pg_current_wal_lsn()::text")
            .await
            .expect("wal position");
        self.source.exec("CHECKPOINT").await;
        self.mark().await;
        let src = self.source.client().await;
        let q =
            "SELECT restart_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2";
        until(
            "the slot to move past the load",
            Duration::from_secs(300),
            || {
                let src = &src;
                let before = &before;
                async move {
                    if let Some(sql) = poke {
                        let _ = src.batch_execute(sql).await;
                    }
                    src.query_one(q, &[before, &slot])
                        .await
                        .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false))
                        .unwrap_or(false)
                }
            },
        )
        .await;
    }

    /// Commits a marker row on the source: once a subscriber has it, it has
    /// everything committed before.
    pub(crate) async fn mark(&mut self) -> i32 {
        self.marker += 1;
        self.source
            .exec(&format!("INSERT INTO marker VALUES ({})", self.marker))
            .await;
        self.marker
    }
}

pub(crate) async fn has_marker(c: &tokio_postgres::Client, n: i32) -> bool {
    c.query_opt("SELECT 1 FROM marker WHERE id = $1", &[&n])
        .await
        .ok()
        .flatten()
        .is_some()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subscriber {
    Pgrepl,
    Native,
    /// Native with `binary` and `streaming` on.
    NativeBest,
    /// The reading-only subscriber (a reference; no rate of its own).
    Reader,
}

/// Enables a native subscription and waits until it has marker `n`.
async fn native_catch_up(db: &tokio_postgres::Client, name: &str, n: i32) {
    db.batch_execute(&format!("ALTER SUBSCRIPTION {name} ENABLE"))
        .await
        .expect("enable");
    until("native to catch up", Duration::from_secs(3600), || {
        has_marker(db, n)
    })
    .await;
}

/// Disables a native subscription and waits for its walsender to stop.
async fn native_stop(s: &Setup, db: &tokio_postgres::Client, name: &str) {
    db.batch_execute(&format!("ALTER SUBSCRIPTION {name} DISABLE"))
        .await
        .expect("disable");
    let src = s.source.client().await;
    until(
        "the native walsender to stop",
        Duration::from_secs(60),
        || {
            let src = &src;
            async move {
                src.query_one(
                    "SELECT NOT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&name],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            }
        },
    )
    .await;
}

struct Workload {
    name: &'static str,
    unit: &'static str,
    target_ratio: f64,
}

pub async fn run(env: &Env, report: &mut Report) {
    let scale = if env.quick { 5 } else { 30 };
    let (bulk_rows, upd_rows, pgbench_secs) = if env.quick {
        (200_000, 150_000, 8)
    } else {
        (1_000_000, 750_000, 30)
    };
    println!("\n== apply capacity (backlog method), keep-up, memory");
    let source = env.cluster("bench-apply-source");
    let target = env.cluster("bench-apply-target");
    env.pgbench_init(&source, scale).await;
    source.exec(SETUP).await;
    let upd_table = upd_rows * 4 / 3;
    source
        .exec(&format!(
            "INSERT INTO upd SELECT g, g, repeat('p', 80) FROM generate_series(1, {upd_table}) g"
        ))
        .await;
    source.exec("VACUUM ANALYZE").await;
    target.exec("CREATE DATABASE t_pgrepl").await;
    let mut s = Setup {
        source,
        target,
        marker: 0,
    };

    // pgrepl copies; the native subscriber starts from a copy of that copy.
    let out = env
        .pgrepl(&s.sync_args(&["--copy-only"]))
        .output()
        .await
        .expect("pgrepl copy");
    assert!(
        out.status.success(),
        "pgrepl --copy-only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.target
        .exec("CREATE DATABASE t_native TEMPLATE t_pgrepl")
        .await;
    s.source
        .exec(&format!("CREATE PUBLICATION native_pub FOR TABLE {TABLES}"))
        .await;
    s.source
        .exec("SELECT pg_create_logical_replication_slot('native', 'pgoutput')")
        .await;
    for slot in ["decode", "recv", "drain"] {
        s.source
            .exec(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .await;
    }
    let major = crate::support::pg::major_of(&env.pg.bin_dir().join("postgres")).unwrap_or(0);
    let best_options = crate::anchors::native_best_options(major);
    s.target
        .exec("CREATE DATABASE t_native_best TEMPLATE t_pgrepl")
        .await;
    s.source
        .exec("SELECT pg_create_logical_replication_slot('native_best', 'pgoutput')")
        .await;
    let native_db = s.target.client_db("t_native").await;
    let best_db = s.target.client_db("t_native_best").await;
    for (db, name, options) in [
        (&native_db, "native", String::new()),
        (&best_db, "native_best", format!(", {best_options}")),
    ] {
        db.batch_execute(&format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION native_pub
             WITH (create_slot = false, slot_name = '{name}', copy_data = false, enabled = false{options})",
            s.source.conninfo()
        ))
        .await
        .expect("create subscription");
    }
    let pgrepl_db = s.target.client_db("t_pgrepl").await;

    let workloads = [
        Workload {
            name: "pgbench tpcb-like",
            unit: "txn/s",
            target_ratio: 2.0,
        },
        Workload {
            name: "one bulk INSERT transaction",
            unit: "rows/s",
            target_ratio: 1.2,
        },
        Workload {
            name: "UPDATE/DELETE rows",
            unit: "rows/s",
            target_ratio: 1.5,
        },
    ];
    // Per workload: pgrepl, native, native at its best, decoding, the
    // walsender feeding a subscriber that discards everything.
    let mut rates: Vec<[Runs; 5]> = vec![Default::default(); workloads.len()];
    let mut peaks = vec![0u64; workloads.len()];
    // CPU per unit: pgrepl, native, native at its best, a subscriber that
    // only reads.
    let mut cpus: Vec<[crate::cpu::PerUnit; 4]> = vec![Default::default(); workloads.len()];
    // The source's own backend making the changes of a set-based load (per
    // unit, µs): the cost of the changes themselves, for the target's.
    let mut loads: Vec<Runs> = vec![Default::default(); workloads.len()];
    let src = s.source.client().await;
    for round in 0..env.rounds {
        for (i, w) in workloads.iter().enumerate() {
            // The load, held back by the slots.
            let units: f64 = match i {
                0 => env.pgbench_backlog(&s.source, pgbench_secs).await,
                1 => {
                    let cost = crate::cpu::run_load(
                        &src,
                        &format!(
                            "TRUNCATE bulk; INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, {bulk_rows}) g"
                        ),
                    )
                    .await;
                    loads[i].push(cost * 1e6 / bulk_rows as f64);
                    bulk_rows as f64
                }
                _ => {
                    let cost = crate::cpu::run_load(
                        &src,
                        &format!(
                            "UPDATE upd SET v = v + 1 WHERE id <= {};
                             DELETE FROM upd WHERE id > {} AND id <= {};
                             INSERT INTO upd SELECT g, g, repeat('p', 80) FROM generate_series({}, {}) g;",
                            upd_rows * 2 / 3,
                            upd_rows * 2 / 3,
                            upd_rows,
                            upd_rows * 2 / 3 + 1,
                            upd_rows
                        ),
                    )
                    .await;
                    loads[i].push(cost * 1e6 / upd_rows as f64);
                    upd_rows as f64
                }
            };
            let n = s.mark().await;
            let end_lsn = s
                .source
                .value("SELECT pg_current_wal_lsn()::text")
                .await
                .expect("wal position");
            let mut rate = [0.0; 3];
            // Rotated so that none always comes first or last, the
            // reference included.
            let mut order = [
                Subscriber::Pgrepl,
                Subscriber::Native,
                Subscriber::NativeBest,
                Subscriber::Reader,
            ];
            let turn = (round + i) % order.len();
            order.rotate_left(turn);
            for who in order {
                // The subscribers that write start from a clean target.
                if who != Subscriber::Reader {
                    s.checkpoint_target().await;
                }
                let start = Instant::now();
                match who {
                    Subscriber::Reader => {
                        let end = end_lsn.parse().expect("an LSN");
                        let reader = crate::drain::run(&s.source, "drain", "native_pub", end).await;
                        cpus[i][3].push(reader, units);
                        s.settle("drain", Some(DRAIN_POKE)).await;
                    }
                    Subscriber::Pgrepl => {
                        let mut child = env.pgrepl(&s.sync_args(&[])).spawn().expect("pgrepl sync");
                        until("pgrepl to catch up", Duration::from_secs(3600), || {
                            has_marker(&pgrepl_db, n)
                        })
                        .await;
                        rate[0] = units / secs(start.elapsed());
                        let pid = child.id().unwrap_or(0);
                        let cpu =
                            crate::cpu::pgrepl(&src, &pgrepl_db, "pgrepl_bench", "t_pgrepl", pid);
                        cpus[i][0].push(cpu.await, units);
                        s.settle("pgrepl_bench", Some(WAL_POKE)).await;
                        peaks[i] = peaks[i].max(crate::env::interrupt(&mut child).await);
                    }
                    Subscriber::Native | Subscriber::NativeBest => {
                        let (db, name, slot) = if who == Subscriber::Native {
                            (&native_db, "native", 1)
                        } else {
                            (&best_db, "native_best", 2)
                        };
                        native_catch_up(db, name, n).await;
                        rate[slot] = units / secs(start.elapsed());
                        cpus[i][slot].push(crate::cpu::native(&src, db, name).await, units);
                        s.settle(name, Some(WAL_POKE)).await;
                        native_stop(&s, db, name).await;
                    }
                }
            }
            let start = Instant::now();
            s.source.exec(DECODE).await;
            let decode_rate = units / secs(start.elapsed());
            s.settle("decode", Some(DECODE)).await;
            let took = env
                .null_subscriber(&s.source, "recv", "native_pub", &end_lsn)
                .await;
            let recv_rate = units / secs(took);
            s.settle("recv", Some(RECV_POKE)).await;
            println!(
                "  round {round} {}: pgrepl {:.0}, native {:.0}, native ({best_options}) {:.0}, decoding {decode_rate:.0}, walsender to a null subscriber {recv_rate:.0} {} ({:?} first)",
                w.name, rate[0], rate[1], rate[2], w.unit, order[0]
            );
            for (k, r) in rate.into_iter().chain([decode_rate, recv_rate]).enumerate() {
                rates[i][k].push(r);
            }
        }
    }
    for (i, w) in workloads.iter().enumerate() {
        let [ours, native, tuned, decode, recv] = &rates[i];
        // Native at its best: the faster of its two settings on this load.
        let best = if tuned.median() >= native.median() {
            tuned
        } else {
            native
        };
        let ratio = ours.median() / best.median().max(0.001);
        let what = match i {
            0 => format!(
                "apply, {} ({pgbench_secs} s, 4 clients, scale {scale})",
                w.name
            ),
            1 => format!("apply, {} ({bulk_rows} rows)", w.name),
            _ => format!("apply, {} ({upd_rows} rows)", w.name),
        };
        let of_decode = ours.median() / decode.median().max(0.001);
        report.row(
            &what,
            format!(
                "{} = {:.0} % of decoding; peak RSS {:.0} MiB",
                ours.show(w.unit, 0),
                of_decode * 100.0,
                mib(peaks[i])
            ),
            format!(
                "native ({best_options}) {}; native (defaults) {}; source decoding alone {}; walsender to pg_recvlogical (applies nothing) {}",
                tuned.show(w.unit, 0),
                native.show(w.unit, 0),
                decode.show(w.unit, 0),
                recv.show(w.unit, 0)
            ),
            Some(ratio),
            &format!(
                "≥ {:.1} × native at its best (the faster setting)",
                w.target_ratio
            ),
            Some(ratio >= w.target_ratio),
        );
        spread_note(report, &what, ours, best, ratio, w.target_ratio);
        let unit = if i == 0 { "transaction" } else { "row" };
        let [cpu_ours, cpu_native, cpu_best, cpu_reader] = &cpus[i];
        let load = (i > 0).then(|| loads[i].median());
        crate::cpu::rows(
            report,
            w.name,
            unit,
            cpu_ours,
            [cpu_native, cpu_best],
            cpu_reader,
            load,
        );
        if i == 0 {
            report.row(
                "apply, pgbench: pgrepl against the source's decoding (the ceiling)",
                format!("{:.0} {}", ours.median(), w.unit),
                format!("decoding alone {:.0} {}", decode.median(), w.unit),
                Some(of_decode),
                "≥ 0.40 × decoding",
                Some(of_decode >= 0.40),
            );
            // A reference for what the walsender's sending leaves: the same
            // backlog decoded and sent to pg_recvlogical, which writes it to
            // /dev/null and applies nothing (not a hard ceiling: it reads
            // eagerly, one wake-up per message, where pgrepl gathers).
            let of_recv = ours.median() / recv.median().max(0.001);
            report.row(
                "apply, pgbench: pgrepl against a subscriber that applies nothing (walsender to pg_recvlogical -f /dev/null)",
                format!("{:.0} {} = {:.0} % of it", ours.median(), w.unit, of_recv * 100.0),
                format!(
                    "walsender to pg_recvlogical {} = {:.0} % of decoding alone",
                    recv.show(w.unit, 0),
                    recv.median() / decode.median().max(0.001) * 100.0
                ),
                Some(of_recv),
                "(reference: what the walsender's sending leaves)",
                None,
            );
        }
    }
    best_db
        .batch_execute("DROP SUBSCRIPTION native_best")
        .await
        .expect("drop subscription");
    native_db
        .batch_execute("DROP SUBSCRIPTION native")
        .await
        .expect("drop subscription");
    for slot in ["decode", "recv", "drain"] {
        s.source
            .exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await;
    }

    crate::keep_up::run(env, &mut s, &pgrepl_db, report).await;
    crate::observe::metrics_cost(env, &mut s, &pgrepl_db, report).await;
    memory(env, &mut s, &pgrepl_db, report).await;
}

/// Peak RSS of pgrepl applying one very large transaction.
async fn memory(env: &Env, s: &mut Setup, pgrepl_db: &tokio_postgres::Client, report: &mut Report) {
    let rows: i64 = if env.quick { 2_000_000 } else { 10_000_000 };
    s.source
        .exec(&format!(
            "INSERT INTO huge SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
        ))
        .await;
    let n = s.mark().await;
    let (took, ok, peak, log) = env
        .pgrepl_measured(&s.sync_args(&["--until-caught-up"]))
        .await;
    assert!(ok, "pgrepl --until-caught-up: {log}");
    assert!(
        has_marker(pgrepl_db, n).await,
        "the marker after the large transaction is missing"
    );
    report.row(
        &format!("peak RSS applying one {rows}-row transaction"),
        format!(
            "{:.0} MiB ({:.0} rows/s)",
            mib(peak),
            rows as f64 / secs(took)
        ),
        "-".into(),
        None,
        "≤ 200 MiB",
        Some(mib(peak) <= 200.0),
    );
}
