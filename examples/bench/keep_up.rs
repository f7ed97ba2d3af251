//! Keep-up: pgbench on the source while pgrepl streams, the lag read from a
//! heartbeat row, and the catch-up once the load stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::{has_marker, Setup};
use crate::env::{mib, secs, until, Env};
use crate::report::{percentile, Report};

/// pgbench with 4 clients while pgrepl streams: lag from a heartbeat row
/// updated every 100 ms on the source, and catch-up after the load.
pub async fn run(
    env: &Env,
    s: &mut Setup,
    pgrepl_db: &tokio_postgres::Client,
    report: &mut Report,
) {
    let run_secs = if env.quick { 15 } else { 60 };
    let n = s.mark().await;
    let mut child = env.pgrepl(&s.sync_args(&[])).spawn().expect("pgrepl sync");
    until("pgrepl to catch up", Duration::from_secs(600), || {
        has_marker(pgrepl_db, n)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let beat = {
        let stop = stop.clone();
        let src = s.source.client().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = src
                    .batch_execute("UPDATE hb SET ts = clock_timestamp() WHERE id = 1")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let samples = {
        let stop = stop.clone();
        let tgt = s.target.client_db("t_pgrepl").await;
        tokio::spawn(async move {
            let mut v = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = tgt
                    .query_one(
                        "SELECT extract(epoch FROM clock_timestamp() - ts)::float8 FROM hb",
                        &[],
                    )
                    .await
                {
                    v.push(r.get::<_, f64>(0));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            v
        })
    };
    let out = env
        .pgbench_cmd(
            &s.source,
            "postgres",
            &["-c", "4", "-j", "2", "-T", &run_secs.to_string(), "-n"],
        )
        .output()
        .await
        .expect("pgbench");
    let tps = crate::env::pgbench_tps(&out);
    let ended = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let _ = beat.await;
    let lags = samples.await.unwrap_or_default();
    let n = s.mark().await;
    let catch_up = until(
        "pgrepl to catch up after the load",
        Duration::from_secs(600),
        || has_marker(pgrepl_db, n),
    )
    .await;
    let catch_up = catch_up.max(ended.elapsed().min(catch_up));
    let peak = crate::env::interrupt(&mut child).await;
    let (p50, p99) = (percentile(&lags, 50.0), percentile(&lags, 99.0));
    report.row(
        &format!("keep-up, pgbench 4 clients {run_secs} s ({tps:.0} txn/s on the source)"),
        format!(
            "lag p50 {p50:.2} s, p99 {p99:.2} s; catch-up {:.2} s; peak RSS {:.0} MiB",
            secs(catch_up),
            mib(peak)
        ),
        "-".into(),
        None,
        "catch-up ≤ 1 s",
        Some(secs(catch_up) <= 1.0),
    );
    report.note(format!(
        "keep-up lag is read from a heartbeat row updated every 100 ms on the source ({} samples), so it includes up to 0.1 s of heartbeat age",
        lags.len()
    ));
}
