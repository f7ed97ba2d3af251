//! `just demo`: two throwaway PostgreSQL servers on this machine, a small
//! shop loaded into the source, and pgrepl run against them. No setup
//! beyond `just` and the PostgreSQL binaries it installs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::{pgrepl, Pair};

fn say(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    say("starting two throwaway PostgreSQL servers (source and target)");
    let pair = Pair::start();
    println!(
        "source: {}  (PostgreSQL {})",
        pair.source.conninfo(),
        pair.source.major()
    );
    println!(
        "target: {}  (PostgreSQL {})",
        pair.target.conninfo(),
        pair.target.major()
    );

    say("loading a small shop into the source (customers, products, orders, order_items)");
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

    say("pgrepl check");
    let mut args = vec!["check".to_string()];
    args.extend(pair.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("$ pgrepl {}", args.join(" "));
    let out = pgrepl::run(&args, Duration::from_secs(60)).await;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    say("stopping the servers");
    drop(pair);
    if !out.success() {
        std::process::exit(1);
    }
}
