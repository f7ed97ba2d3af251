//! What a running sync measures about itself, for whoever watches it
//! (`observe` serves it over HTTP): one process-wide set of Prometheus
//! metrics (the `prometheus` crate: its registry, types and text format),
//! the copy's per-table progress, a lag history for the last hour, the
//! last warnings and errors, and whether the sync is retrying.
//!
//! The stages write here with atomic operations only (a counter add per
//! apply group, never per row), so watching costs the sync nothing it
//! would notice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use serde::Serialize;

use super::table_stats::TableStats;

/// One hour of lag samples, one per `SAMPLE_EVERY`.
const HISTORY: usize = 720;
/// How many warnings and errors the page shows.
const RECENT: usize = 20;

/// The phases a sync goes through, as the `phase` label says them.
pub const PHASES: &[&str] = &[
    "checking",
    "copying",
    "streaming",
    "stopped",
    "cut over",
    "failed",
];

/// A point of the lag history.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LagPoint {
    /// Unix seconds.
    pub at: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// A warning or error as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub at: u64,
    pub level: String,
    pub message: String,
}

/// The slot's WAL health, as the WAL-safety watch last read it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlotHealth {
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    pub retained_bytes: i64,
    /// `--warn-wal`, for the page's margin bar.
    pub warn_bytes: u64,
}

/// A table's copy, as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TableProgress {
    pub table: String,
    pub state: &'static str,
    pub rows: u64,
    pub bytes: u64,
    pub estimated_rows: u64,
    pub estimated_bytes: u64,
    pub seconds: f64,
    /// Seconds left at the rate so far (none before rows flow).
    pub eta_seconds: Option<f64>,
}

pub struct Telemetry {
    pub registry: Registry,
    /// The sync's name ("" for commands that never named one).
    pub sync: String,
    /// The database, in a whole-server move.
    pub database: Option<String>,
    /// What the target holds durably, as a u64 LSN (0 until known): every
    /// log line about a failure says where the sync stood.
    pub position: std::sync::atomic::AtomicU64,
    started: Instant,
    phase_gauge: IntGaugeVec,
    phase: Mutex<&'static str>,
    pub applied_transactions: IntCounter,
    pub applied_rows: IntCounter,
    pub applied_wal_bytes: IntCounter,
    pub apply_group_transactions: Histogram,
    pub copy_bytes: IntCounter,
    pub lag_bytes: IntGauge,
    pub lag_seconds: Gauge,
    pub slot_retained_bytes: IntGauge,
    pub slot_safe_wal_size: IntGauge,
    slot_wal_status: IntGaugeVec,
    pub sequences_behind: IntGauge,
    pub retries: IntCounterVec,
    pub errors: IntCounterVec,
    table_rows: IntGaugeVec,
    table_bytes: IntGaugeVec,
    table_state: IntGaugeVec,
    tables: Mutex<Vec<Arc<TableStats>>>,
    retrying_since: Mutex<Option<Instant>>,
    recent: Mutex<VecDeque<Event>>,
    history: Mutex<VecDeque<LagPoint>>,
    slot: Mutex<SlotHealth>,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Each database's telemetry in a whole-server move (see `scope`).
static DATABASES: Mutex<Vec<&'static Telemetry>> = Mutex::new(Vec::new());

/// The running task's telemetry: its database's in a whole-server move,
/// else the process's (labelled with the sync's name once `init` ran;
/// unlabelled for commands that never call it).
pub fn telemetry() -> &'static Telemetry {
    if let Ok(t) = TASK.try_with(|t| *t) {
        return t;
    }
    TELEMETRY.get_or_init(|| Telemetry::new("", None))
}

tokio::task_local! {
    /// The database's telemetry of a task in a whole-server move; set by
    /// `scope` together with the rest of the task's scope.
    static TASK: &'static Telemetry;
}

/// Runs `f` with `t` as [`telemetry`] (see `scope::within`).
pub(super) async fn within<F: std::future::Future>(t: &'static Telemetry, f: F) -> F::Output {
    TASK.scope(t, f).await
}

/// Labels every metric with `sync="name"`; first call wins.
pub fn init(sync: &str) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| Telemetry::new(sync, None))
}

/// A database's own telemetry in a whole-server move, its metrics
/// labelled `sync` and `database`; it lives as long as the process.
pub fn for_database(sync: &str, database: &str) -> &'static Telemetry {
    let t: &'static Telemetry = Box::leak(Box::new(Telemetry::new(sync, Some(database))));
    if let Ok(mut all) = DATABASES.lock() {
        all.push(t);
    }
    t
}

/// Databases of the source created after a whole-server move started:
/// not synced, for metrics and the page.
static UNSYNCED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Notes a source database the move does not sync.
pub fn note_unsynced_database(database: &str) {
    if let Ok(mut u) = UNSYNCED.lock() {
        if !u.iter().any(|d| d == database) {
            u.push(database.to_string());
        }
    }
}

/// The databases noted so far.
pub fn unsynced_databases() -> Vec<String> {
    UNSYNCED.lock().map(|u| u.clone()).unwrap_or_default()
}

/// Every database's telemetry of a whole-server move (empty otherwise).
pub fn databases() -> Vec<&'static Telemetry> {
    DATABASES.lock().map(|d| d.clone()).unwrap_or_default()
}

/// The process's metrics in the Prometheus text format: each database's
/// in a whole-server move (one family per metric, a series per
/// database), else the one sync's.
pub fn render_all() -> String {
    let all = databases();
    if all.is_empty() {
        return telemetry().render();
    }
    let mut families: Vec<prometheus::proto::MetricFamily> = Vec::new();
    for t in all {
        let _ = t.tables();
        for f in t.registry.gather() {
            match families.iter_mut().find(|g| g.name() == f.name()) {
                Some(g) => {
                    for m in f.get_metric() {
                        g.mut_metric().push(m.clone());
                    }
                }
                None => families.push(f),
            }
        }
    }
    let missed = unsynced_databases();
    if !missed.is_empty() {
        // (A family without series would fail the whole encoding.)
        let mut opts = Opts::new(
            "database_unsynced",
            "1 for each source database created after the move started: not synced",
        )
        .namespace("pgrepl");
        if !telemetry().sync.is_empty() {
            opts = opts.const_label("sync", telemetry().sync.clone());
        }
        let unsynced = IntGaugeVec::new(opts, &["database"]).expect("valid");
        for db in &missed {
            unsynced.with_label_values(&[db.as_str()]).set(1);
        }
        families.extend(prometheus::core::Collector::collect(&unsynced));
    }
    let mut out = String::new();
    if prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut out)
        .is_err()
    {
        out.clear();
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Telemetry {
    fn new(sync: &str, database: Option<&str>) -> Telemetry {
        let mut labels = std::collections::HashMap::new();
        if !sync.is_empty() {
            labels.insert("sync".to_string(), sync.to_string());
        }
        if let Some(db) = database {
            labels.insert("database".to_string(), db.to_string());
        }
        // Registration fails only on a duplicate name, which the list
        // below never has: the metrics are fixed at compile time.
        let registry =
            Registry::new_custom(Some("pgrepl".into()), Some(labels)).expect("a valid namespace");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let r = &registry;
        let t = Telemetry {
            phase_gauge: reg(r, IntGaugeVec::new(Opts::new("phase", "1 for the phase the sync is in"), &["phase"]).expect("valid")),
            applied_transactions: reg(r, IntCounter::new("applied_transactions_total", "Source transactions applied on the target").expect("valid")),
            applied_rows: reg(r, IntCounter::new("applied_rows_total", "Row changes applied on the target").expect("valid")),
            applied_wal_bytes: reg(r, IntCounter::new("applied_wal_bytes_total", "Source WAL the target made durable, in bytes").expect("valid")),
            apply_group_transactions: reg(r, Histogram::with_opts(
                HistogramOpts::new("apply_group_transactions", "Source transactions per target transaction")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0]),
            ).expect("valid")),
            copy_bytes: reg(r, IntCounter::new("copy_bytes_total", "Bytes copied by the snapshot copy").expect("valid")),
            lag_bytes: reg(r, IntGauge::new("lag_bytes", "Source WAL not yet durable on the target").expect("valid")),
            lag_seconds: reg(r, Gauge::new("lag_seconds", "Age of the oldest source commit not yet applied (0 when caught up)").expect("valid")),
            slot_retained_bytes: reg(r, IntGauge::new("slot_retained_wal_bytes", "WAL the replication slot keeps on the source").expect("valid")),
            slot_safe_wal_size: reg(r, IntGauge::new("slot_safe_wal_size_bytes", "WAL the source may still write before the slot is lost (PostgreSQL 13+, -1 when unbounded)").expect("valid")),
            slot_wal_status: reg(r, IntGaugeVec::new(Opts::new("slot_wal_status", "1 for the slot's wal_status (reserved, extended, unreserved, lost)"), &["wal_status"]).expect("valid")),
            sequences_behind: reg(r, IntGauge::new("sequences_behind", "How far the furthest sequence on the target is behind the source's").expect("valid")),
            retries: reg(r, IntCounterVec::new(Opts::new("retries_total", "Sessions restarted after a transient error"), &["kind"]).expect("valid")),
            errors: reg(r, IntCounterVec::new(Opts::new("errors_total", "Errors and warnings logged"), &["level"]).expect("valid")),
            table_rows: reg(r, IntGaugeVec::new(Opts::new("table_rows_copied", "Rows the snapshot copy wrote"), &["table"]).expect("valid")),
            table_bytes: reg(r, IntGaugeVec::new(Opts::new("table_bytes_copied", "Bytes the snapshot copy wrote"), &["table"]).expect("valid")),
            table_state: reg(r, IntGaugeVec::new(Opts::new("table_state", "1 for the table's copy state"), &["table", "state"]).expect("valid")),
            registry,
            sync: sync.to_string(),
            database: database.map(str::to_string),
            position: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            phase: Mutex::new("checking"),
            tables: Mutex::new(Vec::new()),
            retrying_since: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            history: Mutex::new(VecDeque::new()),
            slot: Mutex::new(SlotHealth::default()),
        };
        t.set_phase("checking");
        t
    }

    pub fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
        for p in PHASES {
            self.phase_gauge
                .with_label_values(&[p])
                .set(i64::from(*p == phase));
        }
    }

    pub fn phase(&self) -> &'static str {
        self.phase.lock().map(|p| *p).unwrap_or("checking")
    }

    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The copy's tables (replacing any earlier list).
    pub fn watch_tables(&self, tables: Vec<Arc<TableStats>>) {
        if let Ok(mut t) = self.tables.lock() {
            *t = tables;
        }
    }

    /// A session failed for a transient reason and is being replaced.
    pub fn retrying(&self, kind: &str) {
        self.retries.with_label_values(&[kind]).inc();
        if let Ok(mut r) = self.retrying_since.lock() {
            r.get_or_insert_with(Instant::now);
        }
    }

    /// A session is up again.
    pub fn recovered(&self) {
        if let Ok(mut r) = self.retrying_since.lock() {
            *r = None;
        }
    }

    /// How long the sync has been retrying, if it is.
    pub fn retrying_for(&self) -> Option<std::time::Duration> {
        self.retrying_since
            .lock()
            .ok()
            .and_then(|r| r.map(|at| at.elapsed()))
    }

    /// A warning or error was logged.
    pub fn event(&self, level: &str, message: String) {
        self.errors.with_label_values(&[level]).inc();
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(Event {
                at: unix_now(),
                level: level.to_string(),
                message,
            });
        }
    }

    pub fn recent(&self) -> Vec<Event> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The lag now; kept in the history too.
    pub fn lag(&self, bytes: u64, seconds: f64) {
        self.lag_bytes.set(bytes.min(i64::MAX as u64) as i64);
        self.lag_seconds.set(seconds);
        if let Ok(mut h) = self.history.lock() {
            let at = unix_now();
            // One point per SAMPLE_EVERY seconds at most.
            if h.back().is_some_and(|p| at < p.at + SAMPLE_EVERY) {
                return;
            }
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(LagPoint { at, bytes, seconds });
        }
    }

    pub fn history(&self) -> Vec<LagPoint> {
        self.history
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn set_slot(&self, health: SlotHealth) {
        for s in ["reserved", "extended", "unreserved", "lost"] {
            self.slot_wal_status
                .with_label_values(&[s])
                .set(i64::from(health.wal_status.as_deref() == Some(s)));
        }
        self.slot_retained_bytes.set(health.retained_bytes);
        self.slot_safe_wal_size
            .set(health.safe_wal_size.unwrap_or(-1));
        if let Ok(mut s) = self.slot.lock() {
            *s = health;
        }
    }

    pub fn slot(&self) -> SlotHealth {
        self.slot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Each table's copy as it stands (and the per-table gauges updated).
    pub fn tables(&self) -> Vec<TableProgress> {
        let tables = self.tables.lock().map(|t| t.clone()).unwrap_or_default();
        tables
            .iter()
            .map(|t| {
                use std::sync::atomic::Ordering::Relaxed;
                let (rows, bytes) = (t.rows.load(Relaxed), t.bytes.load(Relaxed));
                let seconds = t.elapsed().as_secs_f64();
                let state = match (t.units_left.load(Relaxed), seconds > 0.0) {
                    (0, _) => "copied",
                    (_, true) => "copying",
                    _ => "pending",
                };
                let eta_seconds = (state == "copying" && bytes > 0 && t.estimated_bytes > bytes)
                    .then(|| seconds * (t.estimated_bytes - bytes) as f64 / bytes as f64);
                let name = t.name.to_string();
                self.table_rows.with_label_values(&[&name]).set(rows as i64);
                self.table_bytes
                    .with_label_values(&[&name])
                    .set(bytes as i64);
                for s in ["pending", "copying", "copied"] {
                    self.table_state
                        .with_label_values(&[&name, s])
                        .set(i64::from(s == state));
                }
                TableProgress {
                    table: name,
                    state,
                    rows,
                    bytes,
                    estimated_rows: t.estimated_rows,
                    estimated_bytes: t.estimated_bytes,
                    seconds,
                    eta_seconds,
                }
            })
            .collect()
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let _ = self.tables();
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder
            .encode_utf8(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// Seconds between lag history points.
pub const SAMPLE_EVERY: u64 = 5;

/// A `tracing` layer that counts warnings and errors and keeps the last
/// few for the status page.
pub struct RecentEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentEvents {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0 = format!("{value}{}", self.0);
                } else {
                    self.0.push_str(&format!(" {}={value}", field.name()));
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        let level = if level == tracing::Level::ERROR {
            "error"
        } else {
            "warning"
        };
        telemetry().event(level, m.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_the_sync_label() {
        let t = Telemetry::new("orders", None);
        t.set_phase("streaming");
        t.applied_transactions.inc_by(3);
        t.lag(10, 0.5);
        let text = t.render();
        assert!(
            text.contains("pgrepl_applied_transactions_total{sync=\"orders\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pgrepl_phase{phase=\"streaming\",sync=\"orders\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgrepl_lag_bytes{sync=\"orders\"} 10"),
            "{text}"
        );
        assert_eq!(t.history().len(), 1);
        t.lag(0, 0.0);
        assert_eq!(t.history().len(), 1, "one point per sampling period");
    }

    #[test]
    fn retrying_is_timed_until_recovered() {
        let t = Telemetry::new("x", None);
        assert!(t.retrying_for().is_none());
        t.retrying("connection");
        assert!(t.retrying_for().is_some());
        t.recovered();
        assert!(t.retrying_for().is_none());
    }
}
