//! The live status line of a streaming sync: in a terminal one line
//! redrawn every second (lag in bytes and seconds, txn/s, rows/s, the
//! applied and durable positions), else a log line every ten seconds; and
//! the lag and applied WAL it feeds the telemetry. It spans the sync's
//! sessions: each new session's counters are attached to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::shared::Shared;
use crate::conn::Endpoint;
use crate::lsn::Lsn;
use crate::progress::human_bytes;
use crate::progress::ui::ProgressMode;
use crate::stream::receiver::Feedback;

/// The counters of the current streaming session.
pub struct StatusSource {
    pub shared: Arc<Shared>,
    pub feedback: Arc<Feedback>,
}

struct Totals {
    source: Option<StatusSource>,
    /// Counts of earlier sessions (each session starts from zero).
    txns_before: u64,
    rows_before: u64,
}

/// The live status line, across the sessions of one `sync` run.
pub struct LiveStatus {
    totals: Arc<Mutex<Totals>>,
    flushed: Arc<AtomicU64>,
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl LiveStatus {
    pub fn start(mode: ProgressMode, source: Endpoint, until: Option<Lsn>) -> Self {
        let totals = Arc::new(Mutex::new(Totals {
            source: None,
            txns_before: 0,
            rows_before: 0,
        }));
        let flushed = Arc::new(AtomicU64::new(0));
        let bar = (mode == ProgressMode::Bars).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").expect("constant template"),
            );
            let multi = indicatif::MultiProgress::new();
            let bar = multi.add(bar);
            crate::progress::ui::route_through(Some(multi));
            bar
        });
        let task = crate::progress::scope::spawn(status_loop(
            mode,
            source,
            until,
            totals.clone(),
            flushed.clone(),
            bar.clone(),
        ));
        LiveStatus {
            totals,
            flushed,
            task,
            bar,
        }
    }

    /// A new session's counters.
    pub fn attach(&self, source: StatusSource) {
        if let Ok(mut t) = self.totals.lock() {
            if let Some(old) = t.source.take() {
                t.txns_before += old.shared.txns.load(Ordering::Relaxed);
                t.rows_before += old.shared.rows.load(Ordering::Relaxed);
                self.flushed
                    .fetch_max(old.feedback.flushed().0, Ordering::SeqCst);
            }
            t.source = Some(source);
        }
    }

    pub fn set_flushed(&self, lsn: Lsn) {
        self.flushed.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// The highest position reported durable so far.
    pub fn flushed(&self) -> Lsn {
        let current = self
            .totals
            .lock()
            .ok()
            .and_then(|t| t.source.as_ref().map(|s| s.feedback.flushed().0))
            .unwrap_or(0);
        Lsn(self.flushed.load(Ordering::SeqCst).max(current))
    }

    pub fn finish(&self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            crate::progress::ui::route_through(None);
        }
    }
}

impl Drop for LiveStatus {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn status_loop(
    mode: ProgressMode,
    source: Endpoint,
    until: Option<Lsn>,
    totals: Arc<Mutex<Totals>>,
    flushed: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
) {
    let mut src: Option<Client> = None;
    let mut source_lsn = Lsn::ZERO;
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut last_line = Instant::now();
    let mut last_flushed = Lsn::ZERO;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        if src.is_none() {
            src = source.connect().await.ok();
        }
        if let Some(c) = &src {
            match c.query_one("SELECT pg_current_wal_lsn()", &[]).await {
                Ok(row) => source_lsn = row.get(0),
                Err(_) => src = None,
            }
        }
        let (applied, flushed_now, txns, rows, commit_ts) = {
            let Ok(t) = totals.lock() else { continue };
            let Some(s) = &t.source else { continue };
            (
                s.shared.idle_through(),
                s.feedback
                    .flushed()
                    .max(Lsn(flushed.load(Ordering::SeqCst))),
                t.txns_before + s.shared.txns.load(Ordering::Relaxed),
                t.rows_before + s.shared.rows.load(Ordering::Relaxed),
                s.shared.last_commit_ts.load(Ordering::Relaxed),
            )
        };
        let elapsed = last.0.elapsed().as_secs_f64().max(0.001);
        let (tps, rps) = (
            (txns - last.1.min(txns)) as f64 / elapsed,
            (rows - last.2.min(rows)) as f64 / elapsed,
        );
        last = (Instant::now(), txns, rows);
        let lag_bytes = source_lsn.bytes_since(applied);
        let lag_secs = if lag_bytes == 0 || commit_ts == 0 {
            0.0
        } else {
            seconds_since_pg_micros(commit_ts)
        };
        // For whoever watches: the lag to what is durable on the target.
        let watch = crate::progress::telemetry::telemetry();
        if source_lsn > Lsn::ZERO && flushed_now > Lsn::ZERO {
            let durable_lag = source_lsn.bytes_since(flushed_now);
            watch.lag(durable_lag, if durable_lag == 0 { 0.0 } else { lag_secs });
        }
        if last_flushed > Lsn::ZERO && flushed_now > last_flushed {
            watch
                .applied_wal_bytes
                .inc_by(flushed_now.bytes_since(last_flushed));
        }
        last_flushed = last_flushed.max(flushed_now);
        watch.position.fetch_max(last_flushed.0, Ordering::Relaxed);
        let goal = until.map(|u| format!("  until {u}")).unwrap_or_default();
        let line = format!(
            "streaming  lag {} / {:.1}s  {tps:.0} txn/s  {rps:.0} rows/s  applied {applied}  flushed {flushed_now}{goal}",
            human_bytes(lag_bytes),
            lag_secs
        );
        match (&bar, mode) {
            (Some(b), _) => b.set_message(line),
            (None, _) if last_line.elapsed() >= Duration::from_secs(10) => {
                last_line = Instant::now();
                tracing::info!(
                    lag_bytes,
                    lag_seconds = lag_secs,
                    txn_per_s = tps,
                    rows_per_s = rps,
                    applied = %applied,
                    flushed = %flushed_now,
                    "{line}"
                );
            }
            _ => {}
        }
    }
}

/// Seconds from a Postgres timestamp (µs since 2000-01-01) to now.
fn seconds_since_pg_micros(micros: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - 946_684_800_000_000;
    ((now - micros as i64).max(0) as f64) / 1e6
}
