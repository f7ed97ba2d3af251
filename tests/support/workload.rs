//! A workload whose every transaction leaves a checkable mark, so a copy
//! can be proven to hold exactly one snapshot: batch k inserts batch k and
//! its 50 items, sets the counter to k, deletes doomed row k and updates
//! doomed row 100000 - k. A consistent copy holds batches 1..=K for some K
//! and nothing else of the workload.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::Cluster;

pub const DOOMED_ROWS: i64 = 100_000;

pub const SCHEMA: &str = "
CREATE SCHEMA wl;
CREATE TABLE wl.batches (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE wl.items (batch int NOT NULL, n int NOT NULL, payload text, PRIMARY KEY (batch, n));
CREATE TABLE wl.counter (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO wl.counter VALUES (1, 0);
CREATE TABLE wl.doomed (id int PRIMARY KEY, filler text NOT NULL);
INSERT INTO wl.doomed SELECT g, 'original ' || repeat(md5(g::text), 6) FROM generate_series(1, 100000) g;
ANALYZE wl.doomed;
";

pub struct Workload {
    stop: Arc<AtomicBool>,
    pub batches: Arc<AtomicI64>,
    handle: JoinHandle<()>,
}

impl Workload {
    /// Starts committing batches, one transaction each, as fast as it can.
    pub async fn start(source: &Cluster) -> Workload {
        Self::start_from(source, 0).await
    }

    /// Goes on after batch `last` (after a restart of the source).
    pub async fn start_from(source: &Cluster, last: i64) -> Workload {
        let client = source.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicI64::new(last));
        let (s, b) = (stop.clone(), batches.clone());
        let handle = tokio::spawn(async move {
            let mut k: i64 = last;
            while !s.load(Ordering::SeqCst) && k < DOOMED_ROWS / 2 {
                k += 1;
                let sql = format!(
                    "BEGIN;
                     INSERT INTO wl.batches (id) VALUES ({k});
                     INSERT INTO wl.items SELECT {k}, n, 'item ' || n || ' of ' || {k} FROM generate_series(1, 50) n;
                     UPDATE wl.counter SET v = {k} WHERE id = 1;
                     DELETE FROM wl.doomed WHERE id = {k};
                     UPDATE wl.doomed SET filler = 'updated {k}' WHERE id = {};
                     COMMIT;",
                    DOOMED_ROWS - k
                );
                client.batch_execute(&sql).await.expect("workload batch");
                b.store(k, Ordering::SeqCst);
            }
        });
        Workload {
            stop,
            batches,
            handle,
        }
    }

    pub async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("workload task");
        self.batches.load(Ordering::SeqCst)
    }
}

/// Checks that `target` holds the workload as of one snapshot; returns K.
pub async fn assert_consistent_snapshot(target: &Cluster) -> i64 {
    let c = target.client().await;
    let one = |sql: &'static str| {
        let c = &c;
        async move {
            c.query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, i64>(0)
        }
    };
    let k = one("SELECT coalesce(max(id), 0)::int8 FROM wl.batches").await;
    assert_eq!(
        one("SELECT count(*) FROM wl.batches").await,
        k,
        "batches are not a prefix 1..{k}"
    );
    assert_eq!(
        one("SELECT count(*) FROM wl.items").await,
        50 * k,
        "items do not match batches 1..{k}"
    );
    assert_eq!(
        one("SELECT coalesce(max(batch), 0)::int8 FROM wl.items").await,
        k
    );
    assert_eq!(
        one("SELECT v::int8 FROM wl.counter").await,
        k,
        "counter does not match batch {k}"
    );
    assert_eq!(
        one("SELECT count(*) FROM wl.doomed").await,
        DOOMED_ROWS - k,
        "doomed rows do not match batch {k}"
    );
    assert_eq!(
        one("SELECT coalesce(min(id), 0)::int8 FROM wl.doomed").await,
        k + 1,
        "doomed rows 1..{k} should be gone and no other"
    );
    assert_eq!(
        one("SELECT count(*) FROM wl.doomed WHERE filler LIKE 'updated %'").await,
        k,
        "updates of batches 1..{k} missing or extra"
    );
    let wrong: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM wl.doomed WHERE filler LIKE 'updated %' AND filler <> 'updated ' || ({DOOMED_ROWS} - id)"),
            &[],
        )
        .await
        .expect("check updates")
        .get(0);
    assert_eq!(wrong, 0, "an update landed on the wrong row");
    k
}

/// pgbench's connection arguments for a cluster (its socket, superuser).
pub fn pgbench_conn(c: &Cluster) -> Vec<String> {
    [
        "-h",
        &c.socket_dir().display().to_string(),
        "-p",
        &c.port.to_string(),
        "-U",
        "postgres",
    ]
    .map(String::from)
    .to_vec()
}

/// `pgbench -i -s 1` in `db`, and a key on its history: a row applied
/// twice would be refused on the target, a lost one would show in the
/// count.
pub async fn pgbench_init_keyed(c: &Cluster, db: &str) {
    let out = tokio::process::Command::new(super::pg::pgbench())
        .args(pgbench_conn(c))
        .args(["-i", "-s", "1", "-q", db])
        .output()
        .await
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.client_db(db)
        .await
        .batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
        .await
        .expect("a key on pgbench_history");
}

/// pgbench writing to `db` for `seconds` (2 clients), killed when dropped.
pub fn pgbench_load(c: &Cluster, db: &str, seconds: u32) -> tokio::process::Child {
    tokio::process::Command::new(super::pg::pgbench())
        .args(pgbench_conn(c))
        .args(["-c", "2", "-j", "2", "-T", &seconds.to_string(), "-n", db])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pgbench")
}
