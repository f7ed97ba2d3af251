//! A sync says it runs, on the target, for as long as its process runs —
//! between its streaming sessions too (a session ended by a transient
//! error, the backoff before the next, a restarted process checking and
//! setting up). Without it a sync between sessions looks like no sync at
//! all: its slot is idle, so a cutover started then ran a sync of its own
//! beside it, and a verify of a "stopped" sync compared a target about to
//! move.
//!
//! The rule: a running sync keeps one target session holding the shared
//! advisory lock `(hashtext('pgrepl sync'), hashtext(name))` (shared: a
//! second process of the same sync, a cutover's own, may hold it too);
//! the server lets it go the moment that session ends, with the process
//! (killed or not; a host gone without closing its socket: when the
//! session's TCP keepalives give up). Commands read it from `pg_locks`,
//! never take it.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::Instrument;

use crate::conn::Endpoint;
use crate::sql::advisory::SYNC_RUNS as LABEL;
use crate::sql::SyncName;

/// How long a presence must stand to count.
const SETTLE: Duration = Duration::from_secs(2);
/// How long [`Presence::hold`] waits for the first lock.
const FIRST: Duration = Duration::from_secs(5);

/// While alive, the sync holds its presence on the target (taken again
/// whenever its session ends: a target restart, an idle timeout).
pub struct Presence {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Presence {
    /// Starts holding, and returns once held (or after [`FIRST`]: a target
    /// that refuses the session is the sync's own error to report, and the
    /// holding goes on trying).
    pub async fn hold(target: &Endpoint, name: &SyncName) -> Presence {
        let (target, name) = (target.clone(), name.clone());
        let (held_tx, mut held) = watch::channel(false);
        let span = tracing::info_span!("presence", sync = %name);
        let task = crate::progress::scope::spawn(
            async move {
                let mut backoff = Duration::from_secs(1);
                let mut warned = false;
                loop {
                    match keep(&target, &name, &held_tx).await {
                        // The session ended after holding: take it again now.
                        Ok(()) => {
                            backoff = Duration::from_secs(1);
                            warned = false;
                            continue;
                        }
                        Err(e) if !warned => {
                            warned = true;
                            tracing::warn!(error = %e, "cannot say on the target that this sync runs (a cutover started now may run a sync of its own); trying again");
                        }
                        Err(e) => tracing::debug!(error = %e, "presence not held; trying again"),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            .instrument(span),
        );
        let _ = tokio::time::timeout(FIRST, held.wait_for(|h| *h)).await;
        Presence { task }
    }
}

/// Takes the presence on a new target session and returns when that
/// session ends.
async fn keep(
    target: &Endpoint,
    name: &SyncName,
    held: &watch::Sender<bool>,
) -> Result<(), String> {
    let client = target.connect().await.map_err(|e| e.to_string())?;
    let describe = |e: tokio_postgres::Error| crate::conn::error::describe(&e);
    // An idle session is what this one is: never ended for it (14+).
    client
        .batch_execute(
            "SELECT pg_catalog.set_config('idle_session_timeout', '0', false)
              WHERE pg_catalog.current_setting('server_version_num')::int >= 140000",
        )
        .await
        .map_err(describe)?;
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_lock_shared(pg_catalog.hashtext($1), pg_catalog.hashtext($2))",
            &[&LABEL, &name.as_str()],
        )
        .await
        .map_err(describe)?;
    held.send_replace(true);
    while !client.is_closed() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// The target session holding sync `name`'s presence, if one does: the
/// sync runs (streaming, or between two sessions). A process that just
/// ended lets its presence go a moment later (when its server session
/// sees the connection close): a holder counts only if it is still there
/// after [`SETTLE`].
pub async fn holder(
    client: &Client,
    name: &SyncName,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let since = std::time::Instant::now();
    loop {
        let pid = crate::sql::advisory::holder(client, LABEL, name).await?;
        if pid.is_none() || since.elapsed() >= SETTLE {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
