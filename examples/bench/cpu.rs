//! CPU time per applied source transaction, per process, read from
//! `/proc/PID/stat` (utime, stime) at the moment a subscriber has caught
//! up. Unlike a rate, it holds on any machine: on two cores the walsender's
//! sending caps every subscriber, so throughput mostly measures CPU
//! sharing; with cores to spare the slowest stage sets the pace.
//!
//! What is counted: the walsender serving the subscriber (source), and
//! - pgrepl: its own process (user and system apart) and every backend it
//!   opened on the target (application_name `pgrepl`);
//! - native: the subscription's workers on the target (the apply worker
//!   receives, decodes and applies in one process; a parallel apply
//!   worker, if any, is counted with it).
//!
//! Two references beside them: a subscriber that only reads the same
//! backlog through its own walsender ([`crate::drain`]: what receiving
//! alone costs, about the least any subscriber's own process spends), and, for the
//! set-based loads, the source's own backend making the changes (what the
//! changes themselves cost a backend running them in bulk).
//!
//! Processes are sampled while they run (they exit when the subscriber
//! stops), so each one's whole life is counted: start-up included, which
//! is the same for every round.

use crate::report::{Report, Runs};

/// USER_HZ: the unit of utime and stime in /proc, 100 on every Linux
/// architecture pgrepl builds for.
const TICKS_PER_SEC: f64 = 100.0;

/// User and system CPU of `pid` so far, in seconds (0 when it is gone).
fn proc_cpu(pid: i32) -> (f64, f64) {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// User and system CPU in seconds from a `stat` file of /proc (a process's
/// or a thread's; 0 when it is gone).
pub fn stat_cpu(path: &str) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return (0.0, 0.0);
    };
    // The command name is in parentheses and may hold spaces: fields are
    // counted after its closing one (state is field 3, utime 14, stime 15).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            / TICKS_PER_SEC
    };
    (tick(11), tick(12))
}

pub fn total(pids: &[i32]) -> f64 {
    pids.iter()
        .map(|&p| {
            let (u, s) = proc_cpu(p);
            u + s
        })
        .sum()
}

async fn pids(c: &tokio_postgres::Client, sql: &str, arg: &str) -> Vec<i32> {
    c.query(sql, &[&arg])
        .await
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r.get::<_, Option<i32>>(0))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn walsender(source: &tokio_postgres::Client, slot: &str) -> Vec<i32> {
    pids(
        source,
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )
    .await
}

/// Runs `sql` on `client` and returns the CPU seconds its backend spent.
pub async fn run_load(client: &tokio_postgres::Client, sql: &str) -> f64 {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let before = total(&[pid]);
    client.batch_execute(sql).await.expect("the load");
    total(&[pid]) - before
}

/// CPU seconds of one subscriber's catch-up, by process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub walsender: f64,
    /// pgrepl's process: user, system. Zero for native.
    pub user: f64,
    pub system: f64,
    /// pgrepl's target backends, or native's workers.
    pub target: f64,
}

/// pgrepl (`child`) streaming from `slot` into database `db`.
pub async fn pgrepl(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    slot: &str,
    db: &str,
    child: u32,
) -> Sample {
    let backends = pids(
        target,
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pgrepl' AND backend_type = 'client backend'",
        db,
    )
    .await;
    let (user, system) = proc_cpu(child as i32);
    Sample {
        walsender: total(&walsender(source, slot).await),
        user,
        system,
        target: total(&backends),
    }
}

/// A native subscription `name` (its slot of the same name).
pub async fn native(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    name: &str,
) -> Sample {
    let workers = pids(
        target,
        "SELECT pid FROM pg_stat_subscription WHERE subname = $1",
        name,
    )
    .await;
    Sample {
        walsender: total(&walsender(source, name).await),
        target: total(&workers),
        ..Default::default()
    }
}

/// Per-unit figures (µs) over the rounds of one workload.
#[derive(Clone, Debug, Default)]
pub struct PerUnit {
    pub walsender: Runs,
    pub user: Runs,
    pub system: Runs,
    pub target: Runs,
}

impl PerUnit {
    pub fn push(&mut self, s: Sample, units: f64) {
        let us = |x: f64| x * 1e6 / units.max(1.0);
        self.walsender.push(us(s.walsender));
        self.user.push(us(s.user));
        self.system.push(us(s.system));
        self.target.push(us(s.target));
    }

    fn own(&self) -> f64 {
        self.user.median() + self.system.median()
    }
}

/// The ratio targets of one workload, as rows of the report.
/// `reader`: a subscriber that only reads the same backlog ([`crate::drain`]);
/// `load`: the source backend's own CPU per unit making the changes (a
/// set-based load), beside the target's.
pub fn rows(
    report: &mut Report,
    what: &str,
    unit: &str,
    ours: &PerUnit,
    natives: [&PerUnit; 2],
    reader: &PerUnit,
    load: Option<f64>,
) {
    // Native at its cheapest: the setting whose apply worker spent less.
    let native = if natives[0].target.median() <= natives[1].target.median() {
        natives[0]
    } else {
        natives[1]
    };
    let ws = ours.walsender.median().max(f64::MIN_POSITIVE);
    let own = ours.own();
    let target = ours.target.median();
    let detail = format!(
        "{own:.2} µs (user {:.2} + system {:.2}), its target backends {target:.2} µs, walsender {ws:.2} µs per {unit} (medians of {})",
        ours.user.median(),
        ours.system.median(),
        ours.user.0.len()
    );
    let native_detail = format!(
        "native apply worker {:.2} µs, its walsender {:.2} µs per {unit}; other setting's worker {:.2} µs",
        native.target.median(),
        native.walsender.median(),
        if std::ptr::eq(native, natives[0]) {
            natives[1].target.median()
        } else {
            natives[0].target.median()
        }
    );
    // What merely receiving costs, against its own walsender.
    let reader_own = reader.own();
    let reader_ws = reader.walsender.median().max(f64::MIN_POSITIVE);
    let reader_ratio = reader_own / reader_ws;
    report.row(
        &format!("CPU per {unit}, {what}: a subscriber that only reads (pgrepl's socket reader, every message discarded)"),
        format!(
            "{reader_own:.2} µs (user {:.2} + system {:.2}) per {unit}",
            reader.user.median(),
            reader.system.median()
        ),
        format!("the walsender feeding it {reader_ws:.2} µs per {unit}"),
        Some(reader_ratio),
        "(reference: what receiving alone costs)",
        None,
    );
    let r = own / ws;
    report.row(
        &format!("CPU per {unit}, {what}: pgrepl's own process"),
        detail.clone(),
        format!("the walsender feeding it {ws:.2} µs per {unit}"),
        Some(r),
        "≤ 0.35 × the walsender's",
        Some(r <= 0.35),
    );
    let r = target / ws;
    report.row(
        &format!("CPU per {unit}, {what}: target backends"),
        match load {
            Some(l) => format!(
                "{target:.2} µs per {unit}; the source's own backend making the same changes (the load's statements) {l:.2} µs"
            ),
            None => format!("{target:.2} µs per {unit}"),
        },
        format!("the walsender feeding it {ws:.2} µs per {unit}"),
        Some(r),
        "≤ 0.8 × the walsender's",
        Some(r <= 0.8),
    );
    let native_cpu = native.target.median().max(f64::MIN_POSITIVE);
    let r = (own + target) / native_cpu;
    report.row(
        &format!("CPU per {unit}, {what}: pgrepl + its target backends against native"),
        format!(
            "{:.2} µs per {unit}; if pgrepl spent only what the reading-only subscriber does ({reader_own:.2} µs), with these target backends, {:.3} × native",
            own + target,
            (reader_own + target) / native_cpu
        ),
        native_detail,
        Some(r),
        "≤ 0.5 × native's apply worker (the cheaper setting)",
        Some(r <= 0.5),
    );
}
