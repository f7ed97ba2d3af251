//! Watching a running sync: Prometheus metrics, a status page and a health
//! check over HTTP (`http`, `sync --listen`), and the WAL-safety watch on
//! the source's slot (`wal`). It reads what the stages measure
//! (`progress::telemetry`); no stage depends on it.

pub mod http;
pub mod wal;

use tokio::sync::watch;

use crate::conn::Endpoint;
use crate::sql::SyncName;

/// Starts the WAL-safety watch; the receiver turns `Some(reason)` if the
/// slot is lost (the sync must stop).
pub fn watch_wal(
    source: &Endpoint,
    name: &SyncName,
    warn_bytes: u64,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<Option<String>>) {
    let (tx, rx) = watch::channel(None);
    let task = crate::progress::scope::spawn(wal::watch_slot(
        source.decoder(),
        name.clone(),
        warn_bytes,
        tx,
    ));
    (task, rx)
}
