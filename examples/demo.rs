//! `just demo`: two throwaway PostgreSQL servers on this machine, a small
//! shop loaded into the source (with its application's role and a large
//! object), then pgrepl doing its job: check, copy, a live sync keeping up
//! while orders keep coming in, `verify` at one LSN while it runs, and the
//! `cutover` that fences the source and hands over; the application then
//! logs in on the target and places an order. Both sides are compared table
//! by table and everything is removed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{pgrepl, table_checksum, user_tables, wait_for, Pair};

fn say(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

fn command(args: &[String]) -> tokio::process::Command {
    println!("$ pgrepl {}", args.join(" "));
    let mut c = tokio::process::Command::new(pgrepl::binary());
    c.args(args).stdin(Stdio::null());
    if let Some(pg_dump) = support::pg::newest_pg_dump() {
        c.env("PGREPL_PG_DUMP", pg_dump);
    }
    c
}

/// One HTTP/1.1 GET; the body ("" when it fails).
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    if s.write_all(req.as_bytes()).await.is_ok() {
        let _ = s.read_to_end(&mut raw).await;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

async fn run(args: &[String]) -> bool {
    command(args)
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Orders keep coming: each transaction places an order with two lines,
/// pays an older one and cancels (deletes) another.
async fn shop_workload(
    client: tokio_postgres::Client,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let sql = format!(
            "BEGIN;
             WITH o AS (INSERT INTO shop.orders (customer_id, note) VALUES (1 + {n} % 5000, 'demo order {n}') RETURNING id)
             INSERT INTO shop.order_items (order_id, line, product_id, quantity, unit_price)
             SELECT o.id, l, 1 + ({n} * l) % 500, l, 19.99 FROM o, generate_series(1, 2) l;
             UPDATE shop.orders SET status = 'paid' WHERE id = (SELECT min(id) FROM shop.orders WHERE status = 'new');
             DELETE FROM shop.orders WHERE id = (SELECT min(id) FROM shop.orders WHERE status = 'cancelled');
             COMMIT;"
        );
        if client.batch_execute(&sql).await.is_err() {
            break;
        }
        done.store(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    say("starting two throwaway PostgreSQL servers");
    let pair = Pair::start();
    println!(
        "source: {}  (PostgreSQL {})",
        pair.source.conninfo(),
        pair.source.major()
    );
    println!(
        "target: {}  (PostgreSQL {}, empty)",
        pair.target.conninfo(),
        pair.target.major()
    );
    let endpoints = pair.args();

    say("loading a small shop into the source");
    pair.source.exec(include_str!("../fixtures/demo.sql")).await;
    for t in [
        "shop.customers",
        "shop.products",
        "shop.orders",
        "shop.order_items",
    ] {
        let n = pair
            .source
            .value(&format!("SELECT count(*) FROM {t}"))
            .await
            .unwrap_or_default();
        println!("  {t:<18} {n:>7} rows");
    }

    say("pgrepl check: is everything ready? (the application's role moves too: --roles copy)");
    let check: Vec<String> = std::iter::once("check".to_string())
        .chain(endpoints.clone())
        .chain(["--roles".to_string(), "copy".to_string()])
        .collect();
    if !run(&check).await {
        eprintln!("demo: check failed");
        std::process::exit(1);
    }

    say("orders start coming in on the source; pgrepl sync starts copying");
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    let workload = tokio::spawn(shop_workload(
        pair.source.client().await,
        stop.clone(),
        placed.clone(),
    ));
    // The copy dies half way; the sync below resumes it.
    let first: Vec<String> = std::iter::once("sync".to_string())
        .chain(endpoints.clone())
        .chain(
            [
                "--roles",
                "copy",
                "--copy-only",
                "--jobs",
                "1",
                "--chunk-size",
                "256kB",
            ]
            .map(String::from),
        )
        .collect();
    let mut killed = command(&first)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgrepl sync");
    let target = pair.target.client().await;
    wait_for(
        "a first chunk on the target",
        Duration::from_secs(120),
        || {
            let t = &target;
            async move {
                let n: i64 = t
                    .query_one("SELECT count(*) FROM pgrepl.copied_chunks", &[])
                    .await
                    .ok()?
                    .get(0);
                (n > 0).then_some(())
            }
        },
    )
    .await;
    let _ = killed.kill().await;
    say("... and the copy is killed (kill -9) in the middle; status shows what it kept");
    let status: Vec<String> = std::iter::once("status".to_string())
        .chain(endpoints.clone())
        .collect();
    run(&status).await;

    say("pgrepl sync again: resumes the copy (keeps what is there), then streams");
    let listen = format!("127.0.0.1:{}", support::cluster::free_port());
    let sync: Vec<String> = std::iter::once("sync".to_string())
        .chain(endpoints.clone())
        .chain(["--roles".to_string(), "copy".to_string()])
        .chain(["--listen".to_string(), listen.clone()])
        .collect();
    let mut running = command(&sync).spawn().expect("start pgrepl sync");
    support::wait_for_phase(&pair.target, "streaming", Duration::from_secs(120)).await;
    // Let it stream for a while with the workload running.
    let streamed_from = placed.load(Ordering::SeqCst);
    wait_for("some orders to stream", Duration::from_secs(60), || {
        let n = placed.load(Ordering::SeqCst);
        async move { (n >= streamed_from + 300).then_some(()) }
    })
    .await;

    say("pgrepl status, from another shell");
    let status: Vec<String> = std::iter::once("status".to_string())
        .chain(endpoints.clone())
        .collect();
    run(&status).await;

    say(&format!(
        "what a dashboard scrapes: http://{listen}/metrics (a status page at http://{listen}/)"
    ));
    let metrics = http_get(&listen, "/metrics").await;
    let shown = [
        "pgrepl_phase{",
        "pgrepl_lag_",
        "pgrepl_applied_transactions_total",
        "pgrepl_slot_wal_status{",
    ];
    // The phase and wal_status gauges: only the one that is 1.
    let one_hot =
        |l: &str| l.starts_with("pgrepl_phase{") || l.starts_with("pgrepl_slot_wal_status{");
    for line in metrics
        .lines()
        .filter(|l| shown.iter().any(|p| l.starts_with(p)) && !(one_hot(l) && l.ends_with(" 0")))
    {
        println!("  {line}");
    }

    say("pgrepl tail: the decoded stream as JSON lines (a temporary slot, nothing left behind)");
    let tail: Vec<String> = [
        "tail",
        "--source",
        &endpoints[1],
        "--temporary",
        "--include",
        "shop.orders",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tailing = pgrepl::spawn(&tail.iter().map(String::as_str).collect::<Vec<_>>());
    let lines = wait_for("a few tailed changes", Duration::from_secs(60), || {
        let out = tailing.stdout.lock().map(|s| s.clone()).unwrap_or_default();
        async move { (out.lines().count() >= 3).then_some(out) }
    })
    .await;
    for line in lines.lines().take(3) {
        let short: String = line.chars().take(160).collect();
        println!("  {short}");
    }
    tailing.signal(libc::SIGINT);
    tailing.wait(Duration::from_secs(30)).await;

    say("pgrepl verify: both sides compared at one LSN, while orders keep coming");
    let verify: Vec<String> = std::iter::once("verify".to_string())
        .chain(endpoints.clone())
        .collect();
    let verified = run(&verify).await;

    say("pgrepl cutover: fence the source, catch up, end the shop's open session (--terminate: it could still call nextval), sequences, large objects, verify under the fence");
    let cutover: Vec<String> = std::iter::once("cutover".to_string())
        .chain(endpoints.clone())
        .chain(["--verify".to_string(), "--terminate".to_string()])
        .collect();
    let cut = run(&cutover).await;
    // The shop's session was ended; the fenced source takes no more: it stops.
    stop.store(true, Ordering::SeqCst);
    workload.await.expect("workload");
    let _ = running.wait().await;
    if !(verified && cut) {
        eprintln!("demo: verify or cutover failed");
        std::process::exit(1);
    }

    say("source and target compared, table by table (row count and a hash of every row)");
    let (src, tgt) = (pair.source.client().await, pair.target.client().await);
    let mut all_equal = true;
    for t in user_tables(&src).await {
        let (a, b) = (
            table_checksum(&src, &t).await,
            table_checksum(&tgt, &t).await,
        );
        let same = a == b;
        all_equal &= same;
        println!(
            "  {t:<20} source {:>7} rows  target {:>7} rows  {}",
            a.rows,
            b.rows,
            if same { "equal" } else { "DIFFERENT" }
        );
    }
    println!(
        "  {} orders were placed while pgrepl ran",
        placed.load(Ordering::SeqCst)
    );
    let invoice = |c: tokio_postgres::Client| async move {
        c.query_one(
            "SELECT convert_from(lo_get(min(oid)), 'UTF8') FROM pg_largeobject_metadata",
            &[],
        )
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default()
    };
    let (a, b) = (invoice(src).await, invoice(tgt).await);
    all_equal &= a == b;
    println!("  large object: source {a:?}  target {b:?}");

    say("the application switches: it logs in on the target with its own password and places an order");
    let app = tokio_postgres::connect(
        &pair
            .target
            .tcp_conninfo("shop_app", "shop-app-pw", "postgres"),
        tokio_postgres::NoTls,
    )
    .await;
    match app {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            match client
                .query_one(
                    "INSERT INTO shop.orders (customer_id, note) VALUES (1, 'first order on the new server') RETURNING id",
                    &[],
                )
                .await
            {
                Ok(row) => println!("  order {} placed on the target", row.get::<_, i64>(0)),
                Err(e) => {
                    all_equal = false;
                    println!("  the application could not write: {e}");
                }
            }
        }
        Err(e) => {
            all_equal = false;
            println!("  the application could not log in: {e}");
        }
    }

    say("pgrepl teardown: nothing of pgrepl's is left behind (--unfence lifts the old source's fence)");
    let teardown: Vec<String> = std::iter::once("teardown".to_string())
        .chain(endpoints.clone())
        .chain(["--unfence".to_string()])
        .collect();
    run(&teardown).await;

    say("a whole server: two more databases of the old server, with their own owner, moved together: one sync each in one process, one cutover for both");
    for sql in [
        "CREATE ROLE crm_owner LOGIN PASSWORD 'crm-pw'",
        "CREATE DATABASE crm OWNER crm_owner",
        "CREATE DATABASE reports",
    ] {
        pair.source.exec(sql).await;
    }
    for (db, sql) in [
        ("crm", "SET ROLE crm_owner; CREATE TABLE contacts (id int PRIMARY KEY, name text); INSERT INTO contacts SELECT g, 'contact ' || g FROM generate_series(1, 500) g"),
        ("reports", "CREATE TABLE daily (day date PRIMARY KEY, orders int); INSERT INTO daily SELECT d::date, 10 FROM generate_series('2026-01-01'::date, '2026-06-30', '1 day') d"),
    ] {
        if let Err(e) = pair.source.client_db(db).await.batch_execute(sql).await {
            eprintln!("demo: {db}: {e}");
            std::process::exit(1);
        }
    }
    let servers = |cmd: &str, extra: &[&str]| -> Vec<String> {
        std::iter::once(cmd.to_string())
            .chain(endpoints.clone())
            .chain(["--databases".to_string(), "crm,reports".to_string()])
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let moved = run(&servers("sync", &["--roles", "copy", "--until-caught-up"])).await
        && run(&servers("status", &[])).await
        && run(&servers("cutover", &["--terminate"])).await
        && run(&servers("teardown", &["--unfence"])).await;
    all_equal &= moved;
    for db in ["crm", "reports"] {
        let (s, t) = (
            pair.source.client_db(db).await,
            pair.target.client_db(db).await,
        );
        for table in user_tables(&s).await {
            let same = table_checksum(&s, &table).await == table_checksum(&t, &table).await;
            all_equal &= same;
            println!(
                "  {db}.{table:<16} {}",
                if same { "equal" } else { "DIFFERENT" }
            );
        }
    }

    say("stopping the servers");
    drop(pair);
    if !all_equal {
        std::process::exit(1);
    }
}
