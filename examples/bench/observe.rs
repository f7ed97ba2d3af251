//! What watching costs: the apply rate on the same pgbench backlog with
//! and without `--listen`, the runs alternating which goes first, while a
//! scraper reads `/metrics` and the page's `/live` four times a second
//! (sixty times Prometheus's usual 15 s). Beside the ratio, the direct
//! cost: the CPU a scrape takes, as a share of one core at that rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apply::{has_marker, Setup};
use crate::env::{secs, until, Env};
use crate::report::{percentile, Report};

/// Scrapes per second while the listening sync applies.
const SCRAPES_PER_SEC: u64 = 4;

pub async fn metrics_cost(
    env: &Env,
    s: &mut Setup,
    pgrepl_db: &tokio_postgres::Client,
    report: &mut Report,
) {
    let rounds = if env.quick { 3 } else { 5 };
    let load_secs = if env.quick { 15 } else { 30 };
    println!("\n== what --listen costs the apply ({rounds} alternating rounds)");
    let mut plain = Vec::new();
    let mut listening = Vec::new();
    let mut scrape_ms = Vec::new();
    let mut peak = 0u64;
    for round in 0..rounds {
        for turn in 0..2 {
            let listen = (turn == 0) == (round % 2 == 0);
            let txns = env.pgbench_backlog(&s.source, load_secs).await;
            let n = s.mark().await;
            let port = free_port();
            let mut extra = vec![];
            let addr = format!("127.0.0.1:{port}");
            if listen {
                extra = vec!["--listen", addr.as_str()];
            }
            s.checkpoint_target().await;
            let start = Instant::now();
            let mut child = env
                .pgrepl(&s.sync_args(&extra))
                .spawn()
                .expect("pgrepl sync");
            let stop = Arc::new(AtomicBool::new(false));
            let scraper = listen.then(|| {
                let (stop, addr) = (stop.clone(), addr.clone());
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        for path in ["/metrics", "/live"] {
                            let t = Instant::now();
                            if get(&addr, path).await {
                                took.push(secs(t.elapsed()) * 1000.0);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1000 / SCRAPES_PER_SEC)).await;
                    }
                    took
                })
            });
            until("pgrepl to catch up", Duration::from_secs(3600), || {
                has_marker(pgrepl_db, n)
            })
            .await;
            let rate = txns / secs(start.elapsed());
            stop.store(true, Ordering::SeqCst);
            if let Some(scraper) = scraper {
                let took = scraper.await.unwrap_or_default();
                assert!(!took.is_empty(), "the scraper never reached {addr}");
                scrape_ms.extend(took);
            }
            s.settle("pgrepl_bench", Some(crate::apply::WAL_POKE)).await;
            peak = peak.max(crate::env::interrupt(&mut child).await);
            println!(
                "  round {round}: {} {rate:.0} txn/s",
                if listen {
                    "--listen + scraper"
                } else {
                    "no --listen"
                }
            );
            if listen {
                listening.push(rate);
            } else {
                plain.push(rate);
            }
        }
    }
    let (p, l) = (percentile(&plain, 50.0), percentile(&listening, 50.0));
    let ratio = l / p.max(0.001);
    let spread = |xs: &[f64]| {
        let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().cloned().fold(0.0, f64::max);
        (lo, hi)
    };
    let ((plo, phi), (llo, lhi)) = (spread(&plain), spread(&listening));
    let per_scrape = percentile(&scrape_ms, 50.0);
    // Two requests per tick: the share of one core the serving can take
    // at most (a request's wall time bounds its CPU time).
    let share = per_scrape * 2.0 * SCRAPES_PER_SEC as f64 / 1000.0;
    report.row(
        &format!("apply with --listen, /metrics + /live read {SCRAPES_PER_SEC}×/s (pgbench backlog, {rounds} rounds each)"),
        format!(
            "median {l:.0} txn/s (min {llo:.0}, max {lhi:.0}); peak RSS {:.0} MiB",
            crate::env::mib(peak)
        ),
        format!(
            "without --listen median {p:.0} txn/s (min {plo:.0}, max {phi:.0}); one scrape {per_scrape:.2} ms = {:.2}% of a core",
            share * 100.0
        ),
        Some(ratio),
        "≥ 0.99 × without",
        Some(ratio >= 0.99),
    );
    let widest = ((phi - plo) / p).max((lhi - llo) / l);
    if widest > 0.01 {
        report.note(format!(
            "--listen cost: run-to-run spread is {:.1}% of the median, wider than the 1% margin; the direct cost (a scrape's time as a share of one core) is the steadier figure",
            widest * 100.0
        ));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 GET, the whole answer read; true when it was a 200.
async fn get(addr: &str, path: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    raw.starts_with(b"HTTP/1.1 200")
}
