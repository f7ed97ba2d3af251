//! `just demo`: two throwaway PostgreSQL servers on this machine, a small
//! shop loaded into the source, then pgrepl doing its job: check, copy,
//! and a live sync keeping up while orders keep coming in; at the end both
//! sides are compared table by table and everything is removed.

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

    say("pgrepl check: is everything ready?");
    let check: Vec<String> = std::iter::once("check".to_string())
        .chain(endpoints.clone())
        .collect();
    if !run(&check).await {
        eprintln!("demo: check failed");
        std::process::exit(1);
    }

    say("orders start coming in on the source; pgrepl sync copies, then streams");
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    let workload = tokio::spawn(shop_workload(
        pair.source.client().await,
        stop.clone(),
        placed.clone(),
    ));
    let sync: Vec<String> = std::iter::once("sync".to_string())
        .chain(endpoints.clone())
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

    say("the workload stops; pgrepl catches up, then Ctrl-C");
    stop.store(true, Ordering::SeqCst);
    workload.await.expect("workload");
    let last_order = pair
        .source
        .value("SELECT max(id)::text FROM shop.orders")
        .await;
    let target = pair.target.client().await;
    wait_for("the target to catch up", Duration::from_secs(60), || {
        let t = &target;
        let last_order = last_order.clone();
        async move {
            let m: Option<String> = t
                .query_one("SELECT max(id)::text FROM shop.orders", &[])
                .await
                .ok()?
                .get(0);
            (m == last_order).then_some(())
        }
    })
    .await;
    if let Some(pid) = running.id() {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    }
    let _ = running.wait().await;

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

    say("pgrepl teardown: nothing of pgrepl's is left behind");
    let teardown: Vec<String> = std::iter::once("teardown".to_string())
        .chain(endpoints.clone())
        .collect();
    run(&teardown).await;

    say("stopping the servers");
    drop(pair);
    if !all_equal {
        std::process::exit(1);
    }
}
