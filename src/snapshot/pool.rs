//! One pool of copy workers for every database of a whole-server move.
//!
//! The rule: at most `--jobs` copy workers (each a session on either side)
//! run in the process, whatever the number of databases. A worker takes a
//! place before it connects and gives it back when its database has
//! nothing left to copy; databases start largest first, so their largest
//! tables (each database's first units) go first. One database's copy
//! keeps its own snapshot, so a database waiting for places holds its slot
//! and exported snapshot meanwhile.

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

static POOL: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Shares `jobs` places among the copies of this process (once).
pub fn share(jobs: usize) {
    let _ = POOL.set(Arc::new(Semaphore::new(jobs.max(1))));
}

/// A place for one copy worker, waited for when the process shares a
/// pool; `None` (no waiting) for one database.
pub async fn place() -> Option<OwnedSemaphorePermit> {
    match POOL.get() {
        Some(pool) => pool.clone().acquire_owned().await.ok(),
        None => None,
    }
}
